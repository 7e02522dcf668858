"""``vit_zoo.modeling``: VitZooModel / VitZooForImageClassification. transformers' ModelTesterMixin checks that
apply, OpenAI parity, saving and loading (transformers' partial-loading contract), pipelines; bad images
(``hostile.BAD_IMAGES``), configs of another model type, corrupt weights and configs asking for more blocks than
the weights hold are refused before anything is built."""

import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import sdpa_calls
from hostile import BAD_IMAGES, CORRUPT_SAFETENSORS, HOSTILE_FOLDERS
from hub_server import WRITE_TOKEN
from limits import budget
from PIL import Image
from reference import OPENAI_GEOMETRIES, TINY, reference_attention_maps, reference_clip, relative_error, visual_state_dict
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    CLIPVisionConfig,
    pipeline,
    set_seed,
)

from vit_zoo import (
    VitZooConfig,
    VitZooForImageClassification,
    VitZooModel,
    VitZooModelOutput,
)

MODEL_CLASSES = (VitZooModel, VitZooForImageClassification)


def tiny_config(**overrides) -> VitZooConfig:
    return VitZooConfig(**{**TINY, **overrides})


def images(batch: int = 2, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def all_outputs(model: VitZooModel, pixel_values: torch.Tensor) -> VitZooModelOutput:
    with torch.no_grad():
        return model(pixel_values, output_attention_map=True, output_attentions=True, output_hidden_states=True)


def save_bare_visual_folder(folder, config: VitZooConfig, state_dict: dict) -> None:
    """A folder holding config.json and a model.safetensors with OpenAI's bare visual names (timm's layout)."""
    config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, folder / "model.safetensors", {"format": "pt"})


# ---------------------------------------------------------------- outputs


def test_outputs_have_documented_shapes():
    set_seed(0)
    model = VitZooModel(tiny_config()).eval()
    out = all_outputs(model, images(batch=3))
    grid, tokens, layers, heads = 4, 17, TINY["layers"], TINY["heads"]
    assert out.image_embeds.shape == (3, TINY["output_dim"])
    assert out.last_hidden_state.shape == (3, tokens, TINY["width"])
    assert out.attention_map.shape == (layers, 3, heads, grid, grid)
    assert len(out.hidden_states) == layers + 1
    assert all(h.shape == (3, tokens, TINY["width"]) for h in out.hidden_states)
    assert len(out.attentions) == layers
    assert all(a.shape == (3, heads, tokens, tokens) for a in out.attentions)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(3, heads, tokens))
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state, rtol=0, atol=0)


def test_optional_outputs_are_computed_only_when_asked():
    model = VitZooModel(tiny_config()).eval()
    with torch.no_grad():
        out = model(images())
    assert out.attention_map is None and out.attentions is None and out.hidden_states is None
    assert list(out.keys()) == ["image_embeds", "last_hidden_state"]


def test_config_defaults_ask_for_hidden_states_and_attentions():
    config = tiny_config(output_hidden_states=True, output_attentions=True)
    model = VitZooModel(config).eval()
    with torch.no_grad():
        out = model(images())
    assert len(out.hidden_states) == TINY["layers"] + 1
    assert len(out.attentions) == TINY["layers"]


def test_model_outputs_are_the_core_models_seed_tuple():
    model = VitZooModel(tiny_config()).eval()
    pixel_values = images()
    with torch.no_grad():
        out = model(pixel_values, output_attention_map=True)
        cls_feature, patch_tokens, attention_map = model.visual(pixel_values, True, True)
    torch.testing.assert_close(out.image_embeds, cls_feature, rtol=0, atol=0)
    torch.testing.assert_close(out.last_hidden_state[:, 1:], patch_tokens, rtol=0, atol=0)
    torch.testing.assert_close(out.attention_map, attention_map, rtol=0, atol=0)
    # the map is the CLS row of the full attention probabilities, without the CLS column
    out = all_outputs(model, pixel_values)
    full_rows = torch.stack([a[:, :, 0, 1:] for a in out.attentions]).unflatten(-1, (4, 4))
    torch.testing.assert_close(out.attention_map, full_rows, rtol=1e-5, atol=1e-7)


def test_return_dict_false_gives_the_fields_as_a_tuple():
    model = VitZooModel(tiny_config()).eval()
    pixel_values = images()
    expected = all_outputs(model, pixel_values)
    with torch.no_grad():
        as_tuple = model(
            pixel_values,
            output_attention_map=True,
            output_attentions=True,
            output_hidden_states=True,
            return_dict=False,
        )
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 5
    for got, want in zip(as_tuple, expected.to_tuple(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    model.config.return_dict = False
    with torch.no_grad():
        plain = model(pixel_values)
    assert isinstance(plain, tuple) and len(plain) == 2


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_batching_equivalence(implementation):
    set_seed(0)
    model = VitZooModel(tiny_config(attn_implementation=implementation)).eval()
    pixel_values = images(batch=4)
    batched = all_outputs(model, pixel_values)
    for index in range(4):
        single = all_outputs(model, pixel_values[index : index + 1])
        torch.testing.assert_close(single.image_embeds[0], batched.image_embeds[index], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(single.last_hidden_state[0], batched.last_hidden_state[index], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(single.attention_map[:, 0], batched.attention_map[:, index], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- attention implementations


def test_sdpa_and_eager_agree():
    set_seed(0)
    sdpa = VitZooModel(tiny_config()).eval()
    assert sdpa.config._attn_implementation == "sdpa"
    eager = VitZooModel(tiny_config(attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    pixel_values = images(batch=3)
    got, want = all_outputs(eager, pixel_values), all_outputs(sdpa, pixel_values)
    assert sdpa_calls(lambda: eager(pixel_values)) == 0 and sdpa_calls(lambda: sdpa(pixel_values)) == TINY["layers"]
    for name in ("image_embeds", "last_hidden_state", "attention_map"):
        assert relative_error(got[name], want[name]) <= 1e-5, name
    for a, b in zip(got.attentions + got.hidden_states, want.attentions + want.hidden_states, strict=True):
        assert relative_error(a, b) <= 1e-5
    # the fused path without any probabilities requested agrees as well
    with torch.no_grad():
        assert relative_error(eager(pixel_values).image_embeds, sdpa(pixel_values).image_embeds) <= 1e-5


def test_set_attn_implementation_switches_the_blocks():
    model = VitZooModel(tiny_config()).eval()
    pixel_values = images()
    with torch.no_grad():
        before = model(pixel_values).image_embeds
        model.set_attn_implementation("eager")
        after = model(pixel_values).image_embeds
    assert model.config._attn_implementation == "eager" and sdpa_calls(lambda: model(pixel_values)) == 0
    assert relative_error(after, before) <= 1e-5


def test_unsupported_attention_implementations_are_refused():
    with pytest.raises(ValueError, match="Flash Attention"):
        VitZooModel(tiny_config(attn_implementation="flash_attention_2"))
    with pytest.raises(ValueError, match="flex"):
        VitZooModel(tiny_config(attn_implementation="flex_attention"))
    model = VitZooModel(tiny_config(attn_implementation="paged|eager"))  # transformers accepts it; we cannot
    with pytest.raises(ValueError, match="must be one of"):
        model(images())


# ---------------------------------------------------------------- save / load / init


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_save_load_round_trip_is_bit_exact(tmp_path, model_class):
    set_seed(0)
    model = model_class(tiny_config(num_labels=3)).eval()
    model.save_pretrained(tmp_path)
    loaded, info = model_class.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    saved_config = {k: v for k, v in loaded.config.to_dict().items() if k != "_name_or_path"}
    assert saved_config == {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    pixel_values = images()
    with torch.no_grad():
        pairs = zip(loaded.eval()(pixel_values).to_tuple(), model(pixel_values).to_tuple(), strict=True)
        for got, want in pairs:
            assert torch.equal(got, want)


def test_saved_keys_are_openai_visual_names(tmp_path):
    reference = reference_clip(**TINY)
    VitZooModel(tiny_config()).save_pretrained(tmp_path)
    saved = set(load_file(tmp_path / "model.safetensors"))
    assert saved == {f"visual.{key}" for key in visual_state_dict(reference)}


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_bare_visual_names_load_without_renaming(tmp_path, model_class):
    reference = reference_clip(**TINY)
    save_bare_visual_folder(tmp_path, tiny_config(), visual_state_dict(reference))
    model, info = model_class.from_pretrained(tmp_path, output_loading_info=True)
    head = {"classifier.weight", "classifier.bias"} if model_class is VitZooForImageClassification else set()
    assert info["missing_keys"] == head and not info["unexpected_keys"]
    for key, value in visual_state_dict(reference).items():
        assert torch.equal(model.visual.state_dict()[key], value), key


def test_head_and_base_checkpoints_load_into_each_other(tmp_path):
    set_seed(0)
    classifier = VitZooForImageClassification(tiny_config(num_labels=4))
    classifier.save_pretrained(tmp_path / "head")
    base, info = VitZooModel.from_pretrained(tmp_path / "head", output_loading_info=True)
    assert info["unexpected_keys"] == {"classifier.weight", "classifier.bias"} and not info["missing_keys"]
    assert torch.equal(base.visual.proj, classifier.visual.proj)
    base.save_pretrained(tmp_path / "base")
    head, info = VitZooForImageClassification.from_pretrained(tmp_path / "base", num_labels=4, output_loading_info=True)
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"} and not info["unexpected_keys"]
    assert torch.equal(head.visual.conv1.weight, classifier.visual.conv1.weight)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_init_is_deterministic_under_a_seed(model_class):
    config = tiny_config()
    set_seed(0)
    built = model_class(config).state_dict()
    set_seed(0)
    rebuilt = model_class(config).state_dict()
    set_seed(0)
    from_nothing = model_class.from_pretrained(None, config=config, state_dict={}).state_dict()
    set_seed(1)
    other_seed = model_class(config).state_dict()
    for key, value in built.items():
        assert torch.equal(rebuilt[key], value), key
        assert torch.equal(from_nothing[key], value), key
    assert not torch.equal(other_seed["visual.proj"], built["visual.proj"])


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_init_weights_covers_every_parameter(model_class):
    model = model_class(tiny_config())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    for module in model.modules():
        module._is_hf_initialized = False
    model.initialize_weights()
    not_initialised = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert not_initialised == []


def test_init_follows_openai_clip_scheme():
    width, layers = 256, 4
    set_seed(0)
    geometry = dict(input_resolution=64, patch_size=8, width=width, layers=layers, heads=4, output_dim=128)
    model = VitZooForImageClassification(VitZooConfig(**geometry, num_labels=64))
    attn_std, proj_std, fc_std = width**-0.5, width**-0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
    expected_std = {
        "visual.class_embedding": attn_std,
        "visual.positional_embedding": attn_std,
        "visual.proj": attn_std,
        "visual.conv1.weight": (3 * 8 * 8) ** -0.5,
        "classifier.weight": 128**-0.5,
    }
    for index in range(layers):
        block = f"visual.transformer.resblocks.{index}"
        expected_std |= {
            f"{block}.attn.in_proj_weight": attn_std,
            f"{block}.attn.out_proj.weight": proj_std,
            f"{block}.mlp.c_fc.weight": fc_std,
            f"{block}.mlp.c_proj.weight": proj_std,
        }
    for name, parameter in model.named_parameters():
        if name in expected_std:
            assert parameter.mean().abs().item() < 0.1 * expected_std[name], name
            assert parameter.std().item() == pytest.approx(expected_std[name], rel=0.06), name
        elif ".ln_" in name and name.endswith("weight"):
            assert torch.equal(parameter, torch.ones_like(parameter)), name
        else:  # biases, LayerNorm biases
            assert name.endswith("bias") and torch.equal(parameter, torch.zeros_like(parameter)), name


def test_partial_checkpoint_reports_missing_keys_and_initialises_them(tmp_path):
    reference = reference_clip(**TINY)
    state_dict = visual_state_dict(reference)
    del state_dict["proj"], state_dict["transformer.resblocks.1.attn.in_proj_weight"]
    state_dict["text_projection"] = torch.zeros(2, 2)
    save_bare_visual_folder(tmp_path, tiny_config(), state_dict)
    model, info = VitZooModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == {"visual.proj", "visual.transformer.resblocks.1.attn.in_proj_weight"}
    assert info["unexpected_keys"] == {"text_projection"}
    width = TINY["width"]
    for missing in (model.visual.proj, model.visual.transformer.resblocks[1].attn.in_proj_weight):
        assert torch.isfinite(missing).all()
        assert missing.std().item() == pytest.approx(width**-0.5, rel=0.25)
    for key, value in state_dict.items():
        if key != "text_projection":
            assert torch.equal(model.visual.state_dict()[key], value), key


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_loads_in_half_precision_with_dtype(tmp_path, dtype):
    set_seed(0)
    model = VitZooModel(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    half = VitZooModel.from_pretrained(tmp_path, dtype=dtype).eval()
    assert {p.dtype for p in half.parameters()} == {dtype}
    pixel_values = images()
    with torch.no_grad():
        expected = model(pixel_values, output_attention_map=True)
        got = half(pixel_values, output_attention_map=True)
    assert got.image_embeds.dtype == dtype and got.attention_map.dtype == dtype
    tolerance = 1e-2 if dtype == torch.float16 else 5e-2
    assert relative_error(got.image_embeds, expected.image_embeds) < tolerance
    assert relative_error(got.attention_map, expected.attention_map) < tolerance
    # a half-precision folder loads back in its own dtype by default
    half.save_pretrained(tmp_path / "half")
    assert VitZooModel.from_pretrained(tmp_path / "half").dtype == dtype


@pytest.mark.filterwarnings("error")  # accelerate's "device_map keys do not match any submodules" included
@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@pytest.mark.parametrize("cpu_budget", [0, "one block"])
def test_device_map_offload_to_disk_equals_the_in_memory_model_without_warnings(model_class, cpu_budget, tmp_path):
    set_seed(0)
    model = model_class(tiny_config(layers=4, num_labels=3)).eval()
    model.save_pretrained(tmp_path / "model")
    block_bytes = sum(p.numel() * p.element_size() for p in model.visual.transformer.resblocks[0].parameters())
    offloaded = model_class.from_pretrained(
        tmp_path / "model",
        device_map="auto",
        max_memory={"cpu": 0 if cpu_budget == 0 else block_bytes},  # too little for the tower: it goes to disk
        offload_folder=tmp_path / "offload",
    ).eval()
    device_map = offloaded.hf_device_map
    assert set(device_map.values()) == {"disk"} and set(device_map) <= {"", "visual", "classifier"}  # tower whole
    pixel_values = images()
    with torch.no_grad():
        expected = model(pixel_values, output_hidden_states=True)
        got = offloaded(pixel_values, output_hidden_states=True)
    assert torch.equal(got[0], expected[0])  # image_embeds / logits
    for got_hidden, expected_hidden in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert torch.equal(got_hidden, expected_hidden)


# ---------------------------------------------------------------- training


def test_gradient_checkpointing_gives_the_same_gradients():
    set_seed(0)
    model = VitZooModel(tiny_config()).train()
    pixel_values = images()

    def gradients_and_saved_tensors():
        model.zero_grad()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = model(pixel_values, output_attention_map=True)
        (out.image_embeds.square().sum() + out.attention_map.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}, len(saved)

    expected, saved_plain = gradients_and_saved_tensors()
    model.activation_checkpointing_enable()
    blocks = model.visual.transformer.resblocks
    assert model.is_activation_checkpointing and all(block.gradient_checkpointing for block in blocks)
    got, saved_checkpointed = gradients_and_saved_tensors()
    assert saved_checkpointed < saved_plain  # the blocks' activations were not kept
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing
    model.activation_checkpointing_enable(every_n_layers=2)
    assert [block.gradient_checkpointing for block in blocks] == [index % 2 == 0 for index in range(TINY["layers"])]


def test_classification_loss_and_a_training_step():
    set_seed(0)
    model = VitZooForImageClassification(tiny_config(num_labels=3)).train()
    pixel_values, labels = images(batch=6), torch.tensor([0, 1, 2, 0, 1, 2])
    out = model(pixel_values, labels=labels)
    assert out.logits.shape == (6, 3)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    loss, logits = model(pixel_values, labels=labels, return_dict=False)
    torch.testing.assert_close(loss, out.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = out.loss.item()
    for _ in range(3):
        optimizer.zero_grad()
        model(pixel_values, labels=labels).loss.backward()
        optimizer.step()
    assert model(pixel_values, labels=labels).loss.item() < first
    with torch.no_grad():
        assert model(pixel_values).loss is None


def test_interpolate_pos_encoding_accepts_other_sizes():
    model = VitZooModel(tiny_config()).eval()
    pixel_values = images(height=48, width=32)
    with pytest.raises(ValueError, match="expected images of 32x32, got 48x32"):
        model(pixel_values)
    with torch.no_grad():
        out = model(pixel_values, output_attention_map=True, output_hidden_states=True, interpolate_pos_encoding=True)
        native = model(images(), interpolate_pos_encoding=True).image_embeds
        plain = model(images()).image_embeds
    assert out.image_embeds.shape == (2, TINY["output_dim"])
    assert out.last_hidden_state.shape == (2, 6 * 4 + 1, TINY["width"])
    assert out.attention_map.shape == (TINY["layers"], 2, TINY["heads"], 6, 4)
    assert all(h.shape[1] == 25 for h in out.hidden_states)
    assert torch.equal(native, plain)  # the native size leaves the positional embedding as it is


# ---------------------------------------------------------------- Auto classes and OpenAI parity


def test_auto_classes_know_vit_zoo(tmp_path):
    config = AutoConfig.for_model("vit_zoo", **TINY)
    assert isinstance(config, VitZooConfig)
    assert type(AutoModel.from_config(config)) is VitZooModel
    assert type(AutoModelForImageClassification.from_config(config)) is VitZooForImageClassification
    VitZooModel(config).save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is VitZooModel  # installed code, no trust_remote_code
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path)) is VitZooForImageClassification


@pytest.mark.parametrize("name", ["tiny", *OPENAI_GEOMETRIES])
def test_matches_openai_reference_through_auto_model(tmp_path, name):
    geometry = TINY if name == "tiny" else OPENAI_GEOMETRIES[name]
    reference = reference_clip(**geometry)
    save_bare_visual_folder(tmp_path, VitZooConfig(**geometry), visual_state_dict(reference))
    model = AutoModel.from_pretrained(tmp_path).eval()
    resolution = geometry["input_resolution"]
    pixel_values = images(height=resolution, width=resolution)
    with torch.no_grad():
        expected = reference.encode_image(pixel_values)
        out = model(pixel_values, output_attention_map=True)
    assert relative_error(out.image_embeds, expected) <= 1e-5
    expected_maps = reference_attention_maps(reference, pixel_values)
    assert out.attention_map.shape == expected_maps.shape
    assert (out.attention_map - expected_maps).abs().max().item() <= 1e-5


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("images, message", list(BAD_IMAGES.values()), ids=list(BAD_IMAGES))
@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_bad_images_raise_the_cores_value_error(model_class, images, message):
    model = model_class(tiny_config())
    for call in (lambda: model(images), lambda: model(pixel_values=images)):
        with pytest.raises(ValueError) as error:
            call()
        assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_empty_batch_gives_empty_outputs():
    torch.manual_seed(0)
    model = VitZooModel(tiny_config()).eval()
    with torch.no_grad():
        outputs = model(torch.zeros(0, 3, 32, 32), output_attention_map=True)
    assert outputs.image_embeds.shape == (0, 32) and outputs.attention_map.shape == (TINY["layers"], 0, 4, 4, 4)


def test_folder_of_another_model_type_is_refused(clip_vision_folder):
    for loader in (VitZooModel, VitZooForImageClassification):
        with pytest.raises(ValueError, match="describes a 'clip_vision_model' model, not 'vit_zoo'"):
            loader.from_pretrained(clip_vision_folder)
    with pytest.raises(ValueError, match="needs a VitZooConfig .* got CLIPVisionConfig"):
        VitZooModel(CLIPVisionConfig.from_pretrained(clip_vision_folder))


@pytest.mark.parametrize("damage", list(CORRUPT_SAFETENSORS))
def test_corrupt_safetensors_in_a_folder(corrupt_safetensors, copied_folder, damage):
    shutil.copyfile(corrupt_safetensors[damage], copied_folder / "model.safetensors")
    for loader in (AutoModel, VitZooModel):
        with pytest.raises(ValueError) as error:
            loader.from_pretrained(copied_folder)
        message = str(error.value)
        assert message.startswith(f"{copied_folder / 'model.safetensors'}") and CORRUPT_SAFETENSORS[damage] in message
        assert message.endswith("convert or download the weights again") and "\n" not in message


def test_a_config_asking_for_more_blocks_than_the_weights_hold_is_refused(copied_folder):
    """transformers built all 20 000 blocks of a tampered config.json for minutes, filled them with random values
    and returned the model; the block count is now read from the weights' header before anything is built."""
    HOSTILE_FOLDERS["layers-20000"][0](copied_folder)
    message = f"(model.safetensors): the config asks for layers=20000 but the weights hold {TINY['layers']} blocks"
    for loader in (AutoModel, AutoModelForImageClassification):
        with budget(60), pytest.raises(ValueError) as error:  # 20 000 blocks would take minutes and gigabytes
            loader.from_pretrained(copied_folder)
        assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
    with budget(60), pytest.raises(ValueError, match=re.escape(message.replace("20000", "4"))):
        VitZooModel.from_pretrained(copied_folder, config=VitZooConfig(**dict(TINY, layers=4)))


@pytest.mark.hub
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_a_hub_repo_claiming_more_layers_than_its_weights_hold_is_refused(copied_folder, hub_server):
    from huggingface_hub import HfApi

    HOSTILE_FOLDERS["layers-20000"][0](copied_folder)
    hub_server.create_repo("org/layers-20000")
    HfApi(token=WRITE_TOKEN).upload_folder(repo_id="org/layers-20000", folder_path=copied_folder, repo_type="model")
    with budget(60), pytest.raises(ValueError, match="org/layers-20000 .model.safetensors.: the config asks for layers=20000"):
        AutoModel.from_pretrained("org/layers-20000")


def test_fewer_layers_truncate_as_transformers_does_for_its_own_models(model_folder):
    """``layers=N`` below the weights' block count keeps the first N blocks (transformers' ``num_hidden_layers``
    idiom), reporting the rest as unexpected."""
    truncated, loading_info = AutoModel.from_pretrained(model_folder, layers=1, output_loading_info=True)
    assert len(truncated.visual.transformer.resblocks) == 1
    assert {name.split(".")[2] for name in loading_info["unexpected_keys"]} == {"1", "2"}


def test_a_missing_tensor_is_reported_as_transformers_does_for_its_own_models(copied_folder):
    """transformers' contract (its ``test_model_weights_reload_no_missing_tied_weights``): tensors missing from
    the weights are initialised and reported, not refused. ``vit-zoo embed`` refuses such a folder."""
    HOSTILE_FOLDERS["missing-proj"][0](copied_folder)
    _, loading_info = AutoModel.from_pretrained(copied_folder, output_loading_info=True)
    assert loading_info["missing_keys"] == {"visual.proj"}


def test_a_new_classifier_head_is_still_initialised(model_folder):
    classifier, loading_info = AutoModelForImageClassification.from_pretrained(
        model_folder, num_labels=3, output_loading_info=True
    )
    assert sorted(loading_info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert classifier(torch.randn(1, 3, 32, 32)).logits.shape == (1, 3)


# ---------------------------------------------------------------- pipelines


@pytest.fixture(scope="module")
def saved_folder(model_folder):
    """The model of ``model_folder`` (a folder as ``vit-zoo convert`` writes it), and the folder."""
    return VitZooModel.from_pretrained(model_folder).eval(), model_folder


def photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))


def test_image_feature_extraction_pipeline_gives_the_image_embedding(saved_folder):
    model, folder = saved_folder
    extractor = pipeline("image-feature-extraction", model=str(folder))
    assert type(extractor.model) is VitZooModel
    pixel_values = AutoImageProcessor.from_pretrained(folder)(photo(), return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = model(pixel_values).image_embeds
    torch.testing.assert_close(torch.tensor(extractor(photo())), expected)
    torch.testing.assert_close(extractor(photo(), return_tensors=True), expected)


def test_image_classification_pipeline_classifies_with_the_folder_tower(saved_folder):
    model, folder = saved_folder
    classifier = pipeline("image-classification", model=str(folder), top_k=2)
    assert type(classifier.model) is VitZooForImageClassification
    for key, value in model.visual.state_dict().items():  # the tower comes from the folder, the head is new
        assert torch.equal(classifier.model.visual.state_dict()[key], value), key
    pixel_values = AutoImageProcessor.from_pretrained(folder)(photo(), return_tensors="pt").pixel_values
    with torch.no_grad():
        probabilities = classifier.model(pixel_values).logits.softmax(-1)[0]
    predictions = classifier(photo())
    top = probabilities.topk(2)
    assert [p["label"] for p in predictions] == [classifier.model.config.id2label[i.item()] for i in top.indices]
    assert [p["score"] for p in predictions] == pytest.approx(top.values.tolist(), abs=1e-6)
