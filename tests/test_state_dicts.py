"""``vit_zoo.state_dicts``: key maps (OpenAI/open_clip, bare, transformers CLIP and back), geometry inference and
state-dict checks."""

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from reference import OPENAI_GEOMETRIES, TINY, reference_clip, relative_error, visual_state_dict
from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection

from vit_zoo import VisionTransformer, VitZooConfig
from vit_zoo.errors import CheckpointError
from vit_zoo.state_dicts import (
    check_state_dict,
    infer_geometry,
    to_hf_clip_state_dict,
    to_hf_clip_vision_config,
    to_vit_zoo_state_dict,
)

TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


def assert_bit_exact(actual: dict, expected: dict):
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype and torch.equal(actual[key], tensor), key


@pytest.fixture(scope="module")
def tiny_tower(reference_tiny_clip):
    return visual_state_dict(reference_tiny_clip)


def test_openai_layout_keeps_the_image_tower_only(reference_tiny_clip, tiny_tower):
    state_dict = {**reference_tiny_clip.state_dict(), "input_resolution": torch.tensor(32), "vocab_size": torch.tensor(64)}
    tower = to_vit_zoo_state_dict(state_dict)
    assert_bit_exact(tower, tiny_tower)
    assert set(tower) == set(VisionTransformer(**TINY).state_dict())


def test_bare_image_tower_passes_through(tiny_tower):
    assert_bit_exact(to_vit_zoo_state_dict(tiny_tower), tiny_tower)


@pytest.mark.parametrize("geometry", [TINY, OPENAI_GEOMETRIES["ViT-B/16"]], ids=["tiny", "B-16"])
def test_vit_zoo_to_transformers_clip_and_back_is_bit_exact(geometry):
    tower = visual_state_dict(reference_clip(**geometry).half())
    hf = to_hf_clip_state_dict(tower)
    assert hf["visual_projection.weight"].shape == tower["proj"].T.shape
    assert_bit_exact(to_vit_zoo_state_dict(hf), tower)


def test_reverse_map_uses_transformers_own_names(tiny_tower):
    hf_model = CLIPVisionModelWithProjection(to_hf_clip_vision_config(VitZooConfig(**TINY)))
    assert set(to_hf_clip_state_dict(tiny_tower)) == set(hf_model.state_dict())


@pytest.mark.parametrize("geometry", [TINY, OPENAI_GEOMETRIES["ViT-B/32"]], ids=["tiny", "B-32"])
def test_transformers_clip_with_reverse_mapped_weights_matches_vit_zoo(geometry):
    tower = visual_state_dict(reference_clip(**geometry))
    config = VitZooConfig(**geometry)
    ours = VisionTransformer(**config.geometry).eval()
    ours.load_state_dict(tower)
    hf_model = CLIPVisionModelWithProjection(to_hf_clip_vision_config(config)).eval()
    hf_model.load_state_dict(to_hf_clip_state_dict(tower), strict=True)
    images = torch.randn(2, 3, geometry["input_resolution"], geometry["input_resolution"])
    with torch.no_grad():
        expected = ours(images)[0]
        actual = hf_model(pixel_values=images).image_embeds
    assert relative_error(actual, expected) <= 1e-5


def test_transformers_clip_model_checkpoint(tiny_tower):
    vision = to_hf_clip_vision_config(VitZooConfig(**TINY))
    clip = CLIPModel(CLIPConfig(vision_config=vision.to_dict(), text_config=TINY_TEXT, projection_dim=TINY["output_dim"]))
    clip.load_state_dict(to_hf_clip_state_dict(tiny_tower), strict=False)
    state_dict = {**clip.state_dict(), "vision_model.embeddings.position_ids": torch.arange(17)[None]}  # older saves
    assert any(key.startswith("text_model.") for key in state_dict)
    assert_bit_exact(to_vit_zoo_state_dict(state_dict), tiny_tower)


def test_open_clip_gelu_models_need_the_gelu_activation():
    """open_clip's non-QuickGELU CLIPs have the same weights; only the activation tells them apart."""
    gelu_clip = reference_clip(**TINY)
    for block in gelu_clip.visual.transformer.resblocks:
        block.mlp.gelu = torch.nn.GELU()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = gelu_clip.encode_image(images)
        errors = {}
        for activation in ("gelu", "quick_gelu"):
            model = VisionTransformer(**TINY, activation=activation).eval()
            model.load_state_dict(to_vit_zoo_state_dict(gelu_clip.state_dict()))
            errors[activation] = relative_error(model(images)[0], expected)
    assert errors["gelu"] <= 1e-5
    assert errors["quick_gelu"] > 1e-3


# --- refusals -----------------------------------------------------------------------------------------------


def refused(state_dict, *fragments):
    with pytest.raises(CheckpointError) as error:
        to_vit_zoo_state_dict(state_dict)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_resnet_clip_is_refused():
    torch.manual_seed(0)
    resnet = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, head_width=16, image_size=64),
        text_cfg=CLIPTextCfg(context_length=8, vocab_size=64, width=64, heads=1, layers=1),
    )
    state_dict = resnet.state_dict()
    assert any(key.startswith("visual.attnpool.") for key in state_dict)
    refused(state_dict, "ResNet CLIP", "ViT-B/32")
    refused(visual_state_dict(resnet), "ResNet CLIP")


def test_text_only_checkpoints_are_refused(reference_tiny_clip):
    refused({k: v for k, v in reference_tiny_clip.state_dict().items() if not k.startswith("visual.")}, "text-only checkpoint")
    refused({"text_model.embeddings.token_embedding.weight": torch.zeros(4, 2)}, "text-only checkpoint")


def test_unknown_layouts_are_refused():
    refused({"patch_embed.proj.weight": torch.zeros(1), "blocks.0.norm1.weight": torch.zeros(1)}, "not a CLIP checkpoint")


def test_transformers_clip_without_projection_is_refused(tiny_tower):
    hf = to_hf_clip_state_dict(tiny_tower)
    del hf["visual_projection.weight"]
    refused(hf, "without visual_projection.weight", "CLIPVisionModelWithProjection")
    hf = to_hf_clip_state_dict(tiny_tower)
    del hf["vision_model.encoder.layers.1.self_attn.k_proj.bias"]
    refused(hf, "layer 1", "self_attn.['k']_proj.bias")


# --- geometry -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPENAI_GEOMETRIES))
def test_infer_geometry_as_openai_build_model(name):
    geometry = OPENAI_GEOMETRIES[name]
    tower = visual_state_dict(reference_clip(**geometry))
    assert infer_geometry(tower) == {**geometry, "in_channels": 3, "mlp_ratio": 4.0}


def geometry_error(tower, *fragments):
    with pytest.raises(CheckpointError) as error:
        check_state_dict(tower, infer_geometry(tower))
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)


def test_missing_blocks_are_named():
    tower = visual_state_dict(reference_clip(**{**OPENAI_GEOMETRIES["ViT-B/32"], "layers": 5}))
    without = {k: v for k, v in tower.items() if not k.startswith(("transformer.resblocks.1.", "transformer.resblocks.2."))}
    geometry_error(without, "transformer block(s) 1-2 missing", "has blocks 0, 3-4")


def test_incomplete_and_extra_tensors_are_listed(tiny_tower):
    tower = {**tiny_tower, "transformer.resblocks.0.attn.bias_k": torch.zeros(64)}
    del tower["ln_post.bias"], tower["transformer.resblocks.1.mlp.c_fc.bias"]
    geometry_error(
        tower,
        "missing: transformer.resblocks.1.mlp.c_fc.bias, ln_post.bias",
        "unexpected: transformer.resblocks.0.attn.bias_k",
    )


def test_inconsistent_shapes_are_listed(tiny_tower):
    tower = {**tiny_tower, "class_embedding": torch.zeros(65), "transformer.resblocks.1.ln_2.weight": torch.zeros(3)}
    geometry_error(tower, "wrong shape: class_embedding [65] (expected [64])", "transformer.resblocks.1.ln_2.weight [3]")


def test_non_float_and_empty_tensors(tiny_tower):
    geometry_error({**tiny_tower, "ln_pre.weight": torch.ones(64, dtype=torch.int64)}, "not floating point: ln_pre.weight")
    for key, empty in (("conv1.weight", torch.zeros(0, 3, 8, 8)), ("positional_embedding", torch.zeros(0, 64))):
        with pytest.raises(CheckpointError, match="empty|rows"):
            infer_geometry({**tiny_tower, key: empty})


def test_malformed_geometry_tensors():
    tower = visual_state_dict(reference_clip(**TINY))
    with pytest.raises(CheckpointError, match="missing"):
        infer_geometry({k: v for k, v in tower.items() if k != "proj"})
    with pytest.raises(CheckpointError, match="1 \\+ grid \\* grid"):
        infer_geometry({**tower, "positional_embedding": torch.zeros(18, 64)})
    with pytest.raises(CheckpointError, match="not a multiple of 64"):
        infer_geometry({**tower, "conv1.weight": torch.zeros(96, 3, 8, 8)})
    with pytest.raises(CheckpointError, match="no transformer blocks"):
        infer_geometry({k: v for k, v in tower.items() if not k.startswith("transformer.")})
