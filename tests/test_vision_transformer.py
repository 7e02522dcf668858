"""``vit_zoo.vision_transformer``: vit_zoo entries as timm models. Registry, interface, pretrained loading from
every source, user variants; bad kwargs, images (``hostile.BAD_IMAGES``) and checkpoints refused, and ``local-dir:``
/ ``hf-hub:`` folders that are corrupt, of another model type or claim more layers than their weights hold."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import yaml
from checkpoints import openai_clip, reference_image_embedding, write_torchscript_archive
from file_server import FileServer
from helpers import REPO_ROOT, TINY_NAME
from hostile import BAD_IMAGES, CORRUPT_SAFETENSORS
from hub_server import WRITE_TOKEN
from limits import budget
from reference import OPENAI_GEOMETRIES, TINY, reference_clip, relative_error, visual_state_dict
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.layers import resample_abs_pos_embed
from timm.models import save_for_hf
from timm.models._hub import load_model_config_from_path
from timm.optim import create_optimizer_v2

import vit_zoo
from vit_zoo import CheckpointError, DownloadError, UnknownVariantError, VisionTransformer, to_hf_clip_state_dict
from vit_zoo.vision_transformer import (
    TimmVisionTransformer,
    openai_state_dict,
    pretrained_filter_fn,
    timm_config_dict,
)
from vit_zoo.zoo import ZooConfigError

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def tiny_model(**kwargs) -> TimmVisionTransformer:
    torch.manual_seed(0)
    return timm.create_model(TINY_NAME, **kwargs).eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(reference_tiny_clip, tmp_path_factory) -> Path:
    """The whole reference CLIP (``visual.*`` + text tower) as a torch.save file."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny_clip.pt"
    torch.save(reference_tiny_clip.state_dict(), path)
    return path


# --- registry ---------------------------------------------------------------------------------------------


def test_every_zoo_entry_is_a_timm_model_and_pretrained_tags_are_listed():
    names = [entry.name for entry in vit_zoo.list_entries()]
    assert set(names) <= set(timm.list_models("vit_zoo*"))
    tagged = {f"{e.name}.{tag}" for e in vit_zoo.list_entries() for tag, s in e.pretrained.items() if s.url}
    assert tagged <= set(timm.list_models(pretrained=True))
    for name in ("base_patch32_clip_224", "base_patch16_clip_224", "large_patch14_clip_224", "large_patch14_clip_336"):
        assert f"vit_zoo_{name}.openai" in timm.list_pretrained("vit_zoo*")
    assert TINY_NAME not in timm.list_models(pretrained=True)  # random weights only


@pytest.mark.parametrize("entry", vit_zoo.list_entries(), ids=lambda e: e.name)
def test_each_entry_builds_and_runs_at_its_native_size(entry):
    geometry = entry.model
    full = timm.create_model(entry.name, device="meta")
    assert sum(p.numel() for p in full.parameters()) == entry.num_params
    model = timm.create_model(entry.name, layers=1).eval()
    side = geometry["input_resolution"]
    with torch.no_grad():
        out = model(torch.randn(1, geometry.get("in_channels", 3), side, side))
    assert out.shape == (1, geometry["output_dim"])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["vit_zoo_base_patch16_clip_224.openai", "vit_zoo_large_patch14_clip_336.openai"])
def test_data_config_is_openai_preprocessing(name):
    model = timm.create_model(name, device="meta")
    config = timm.data.resolve_data_config({}, model=model)
    side = int(name.split("_")[-1].split(".")[0])
    assert config["input_size"] == (3, side, side)
    assert config["mean"] == OPENAI_CLIP_MEAN and config["std"] == OPENAI_CLIP_STD
    assert config["interpolation"] == "bicubic" and config["crop_pct"] == 1.0
    transform = timm.data.create_transform(**config)
    from PIL import Image

    assert transform(Image.new("RGB", (400, 300))).shape == (3, side, side)


def test_pretrained_cfg_of_openai_tag():
    cfg = timm.models.get_pretrained_cfg("vit_zoo_base_patch32_clip_224.openai").to_dict()
    source = vit_zoo.get_entry("ViT-B/32").pretrained["openai"]
    assert cfg["url"] == source.url and cfg["license"] == "mit"
    assert cfg["num_classes"] == 512 and cfg["first_conv"] == "visual.conv1" and cfg["classifier"] == "head"
    assert cfg["custom_load"] is True  # an OpenAI archive is TorchScript: read by the model's load_pretrained


# --- interface ----------------------------------------------------------------------------------------------


def test_head_is_openai_projection_and_pre_logits_are_the_normed_cls_token():
    model = tiny_model()
    core = VisionTransformer(**TINY).eval()
    core.load_state_dict(openai_state_dict(model))
    with torch.no_grad():
        features = model.forward_features(IMAGES)
        assert features.shape == (2, 1 + 4 * 4, TINY["width"])
        pre_logits = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(model(IMAGES), core(IMAGES)[0], rtol=1e-6, atol=1e-6)
        tokens = core.encode(IMAGES).last_hidden_state
        torch.testing.assert_close(pre_logits, core.ln_post(tokens[:, 0]), rtol=1e-6, atol=1e-6)
    assert model.num_classes == TINY["output_dim"] == model.pretrained_cfg["num_classes"]
    assert model.num_features == model.head_hidden_size == TINY["width"]
    head = model.get_classifier()
    assert isinstance(head, torch.nn.Linear) and head.bias is None and head.weight.shape == (32, 64)
    assert head is model.head and model.pretrained_cfg["classifier"] == "head"
    core_keys = set(core.state_dict())
    # OpenAI's whole-CLIP names (visual.*), proj as the head
    assert set(model.state_dict()) == {f"visual.{key}" for key in core_keys - {"proj"}} | {"head.weight"}
    assert set(openai_state_dict(model)) == core_keys
    torch.testing.assert_close(openai_state_dict(model)["proj"], head.weight.t(), rtol=0, atol=0)


def test_reset_classifier_replaces_the_projection_and_zero_gives_pre_logits():
    model = tiny_model()
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(IMAGES), pre_logits=True)
        model.reset_classifier(10)
        head = model.get_classifier()
        assert isinstance(head, torch.nn.Linear) and (head.in_features, head.out_features) == (64, 10)
        assert head.bias is not None
        torch.testing.assert_close(model(IMAGES), head(pre_logits))
        assert {"head.weight", "head.bias"} <= set(model.state_dict())
        with pytest.raises(ValueError, match="10-way classifier in place of OpenAI's projection.*save_for_hf"):
            openai_state_dict(model)
        model.reset_classifier(0)
        assert model.num_classes == 0 and not any(k.startswith("head.") for k in model.state_dict())
        torch.testing.assert_close(model(IMAGES), pre_logits)
    assert timm.create_model(TINY_NAME, num_classes=0)(IMAGES).shape == (2, TINY["width"])
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-1)
    with pytest.raises(ValueError, match="CLS token"):
        model.reset_classifier(10, global_pool="avg")


def test_num_classes_kwarg_builds_the_classifier_over_pretrained_weights(reference_tiny_clip, tiny_checkpoint):
    model = timm.create_model(TINY_NAME, num_classes=7, pretrained=True, pretrained_cfg_overlay=dict(file=str(tiny_checkpoint)))
    assert model(IMAGES).shape == (2, 7) and model.head.weight.shape == (7, TINY["width"])
    assert model.pretrained_cfg["num_classes"] == TINY["output_dim"]
    torch.testing.assert_close(model.visual.ln_post.weight, reference_tiny_clip.visual.ln_post.weight)
    projection = timm.create_model(
        TINY_NAME, num_classes=TINY["output_dim"], pretrained=True, pretrained_cfg_overlay=dict(file=str(tiny_checkpoint))
    )
    torch.testing.assert_close(projection.head.weight, reference_tiny_clip.visual.proj.t())


def test_device_and_dtype_kwargs():
    model = tiny_model(dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model(IMAGES.bfloat16()).dtype == torch.bfloat16
    meta = timm.create_model(TINY_NAME, device="meta", num_classes=3)
    assert {p.device.type for p in meta.parameters()} == {"meta"}


def test_no_weight_decay_and_grad_checkpointing_flag():
    model = tiny_model()
    assert model.no_weight_decay() == {"visual.class_embedding", "visual.positional_embedding"}
    model.set_grad_checkpointing()
    assert model.visual.transformer.grad_checkpointing and model.grad_checkpointing
    model.set_grad_checkpointing(False)
    assert not model.visual.transformer.grad_checkpointing


def test_forward_intermediates_match_the_core_hidden_states():
    model = tiny_model()
    with torch.no_grad():
        hidden = model.visual.encode(IMAGES, hidden_states=True).hidden_states
        final, maps = model.forward_intermediates(IMAGES)
        nlc = model.forward_intermediates(IMAGES, indices=[-1], output_fmt="NLC", norm=True, intermediates_only=True)
        pairs = model.forward_intermediates(IMAGES, indices=1, return_prefix_tokens=True, intermediates_only=True)
        early = model.forward_intermediates(IMAGES, indices=[0], stop_early=True, output_dict=True)
        features = model.forward_features(IMAGES)
    assert len(maps) == TINY["layers"]
    for block, feature_map in enumerate(maps):
        assert feature_map.shape == (2, TINY["width"], 4, 4)
        expected = hidden[block + 1][:, 1:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
        torch.testing.assert_close(feature_map, expected)
    torch.testing.assert_close(final, features)
    torch.testing.assert_close(nlc[0], features[:, 1:])
    spatial, prefix = pairs[0]
    assert spatial.shape == (2, TINY["width"], 4, 4) and prefix.shape == (2, 1, TINY["width"])
    torch.testing.assert_close(prefix, hidden[-1][:, :1])
    assert set(early) == {"image_intermediates", "image_features"}
    torch.testing.assert_close(early["image_intermediates"][0], maps[0])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(IMAGES, output_fmt="NHWC")


def test_prune_intermediate_layers_drops_later_blocks_norm_and_projection():
    model = tiny_model()
    with torch.no_grad():
        expected = model.forward_intermediates(IMAGES, indices=[0], intermediates_only=True)
    assert model.prune_intermediate_layers([0], prune_norm=True) == [0]
    assert len(model.visual.transformer.resblocks) == 1
    assert not any(k.startswith(("head", "visual.ln_post", "visual.transformer.resblocks.1")) for k in model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.forward_intermediates(IMAGES, indices=[0], intermediates_only=True), expected)
        assert model(IMAGES).shape == (2, TINY["width"])  # CLS token of the last kept block, no projection


def test_features_only_returns_per_block_maps(reference_tiny_clip, tiny_checkpoint):
    features = timm.create_model(
        TINY_NAME,
        features_only=True,
        out_indices=(0, 1),
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tiny_checkpoint)),
    ).eval()
    assert features.feature_info.channels() == [TINY["width"]] * 2
    assert features.feature_info.reduction() == [TINY["patch_size"]] * 2
    core = VisionTransformer(**TINY).eval()
    core.load_state_dict(visual_state_dict(reference_tiny_clip))
    with torch.no_grad():
        maps = features(IMAGES)
        hidden = core.encode(IMAGES, hidden_states=True).hidden_states
    assert [tuple(m.shape) for m in maps] == [(2, TINY["width"], 4, 4)] * 2
    for block, feature_map in enumerate(maps):
        torch.testing.assert_close(feature_map, hidden[block + 1][:, 1:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2))
    default = timm.create_model("vit_zoo_base_patch32_clip_224", features_only=True, layers=4, device="meta")
    assert len(default.feature_info.channels()) == 3  # the last 3 blocks, as timm's ViT


def test_img_size_other_than_native_resamples_the_pretrained_positional_embedding(reference_tiny_clip, tiny_checkpoint):
    model = timm.create_model(
        TINY_NAME, img_size=48, pretrained=True, pretrained_cfg_overlay=dict(file=str(tiny_checkpoint))
    ).eval()
    assert model.visual.geometry.grid_size == 6 and model.visual.positional_embedding.shape == (1 + 36, TINY["width"])
    source = reference_tiny_clip.visual.positional_embedding.detach()
    expected = resample_abs_pos_embed(source[None], new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=1)[0]
    torch.testing.assert_close(model.visual.positional_embedding.detach(), expected)
    torch.testing.assert_close(model.visual.conv1.weight, reference_tiny_clip.visual.conv1.weight)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 48, 48)).shape == (2, TINY["output_dim"])
    assert timm.models.get_model_input_config(model)["input_size"] == (3, 48, 48)
    with pytest.raises(ValueError, match="48x48"):
        model(IMAGES)


def test_patch_size_override_resamples_the_pretrained_patch_kernel(tiny_checkpoint):
    model = timm.create_model(TINY_NAME, patch_size=4, pretrained=True, pretrained_cfg_overlay=dict(file=str(tiny_checkpoint)))
    assert model.visual.conv1.weight.shape == (TINY["width"], 3, 4, 4) and model.visual.geometry.grid_size == 8
    assert model(IMAGES).shape == (2, TINY["output_dim"])


def test_dynamic_img_size_runs_other_shapes_like_the_core_interpolation():
    model = tiny_model(dynamic_img_size=True)
    images = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        embedding = model.visual.encode(images, interpolate_pos_encoding=True).image_embeds
        torch.testing.assert_close(model(images), model.head(embedding))
        maps = model.forward_intermediates(images, indices=1, intermediates_only=True)
    assert maps[0].shape == (2, TINY["width"], 5, 7)
    assert not timm.models.get_model_input_config(model)["fixed_input_size"]


def test_in_chans_adapts_pretrained_conv_weights_as_timm_does(reference_tiny_clip, tiny_checkpoint):
    model = timm.create_model(TINY_NAME, in_chans=1, pretrained=True, pretrained_cfg_overlay=dict(file=str(tiny_checkpoint)))
    torch.testing.assert_close(model.visual.conv1.weight, reference_tiny_clip.visual.conv1.weight.sum(dim=1, keepdim=True))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, TINY["output_dim"])
    assert timm.data.resolve_model_data_config(model)["input_size"] == (3, 32, 32)  # source preprocessing
    assert timm.models.get_model_input_config(model)["input_size"] == (1, 32, 32)


def test_layer_decay_optimizer_groups_follow_the_blocks():
    model = timm.create_model("vit_zoo_base_patch32_clip_224", layers=3, width=64, heads=2, output_dim=16)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.7)
    scales = sorted({group["lr_scale"] for group in optimizer.param_groups})
    assert scales == pytest.approx([0.7**4, 0.7**3, 0.7**2, 0.7, 1.0])  # stem, 3 blocks, ln_post/proj
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len(list(model.parameters()))
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(model.visual.positional_embedding) in no_decay and id(model.head.weight) not in no_decay


def test_training_step_with_new_classifier_and_grad_checkpointing_reduces_the_loss():
    model = tiny_model()
    model.reset_classifier(10)
    model.set_grad_checkpointing()
    model.train()
    labels = torch.arange(2)
    reference = tiny_model()
    reference.reset_classifier(10)
    reference.load_state_dict(model.state_dict())
    torch.nn.functional.cross_entropy(reference(IMAGES), labels).backward()
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, layer_decay=0.7)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(IMAGES), labels)
        loss.backward()
        if not losses:  # checkpointed gradients equal plain ones
            for (name, param), ref in zip(model.named_parameters(), reference.parameters(), strict=True):
                torch.testing.assert_close(param.grad, ref.grad, msg=name)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# --- pretrained weights ---------------------------------------------------------------------------------


def _save_safetensors(state_dict: dict, path: Path) -> Path:
    safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    return path


CHECKPOINT_LAYOUTS = ("openai_full_pickle", "bare_visual_safetensors", "hf_clip_safetensors")


def _write_checkpoint(clip: torch.nn.Module, layout: str, folder: Path) -> Path:
    """The reference CLIP's weights as a whole OpenAI/open_clip CLIP pickle, a bare vit_zoo tower or HF CLIP."""
    if layout == "openai_full_pickle":
        torch.save(clip.state_dict(), folder / "clip.pt")
        return folder / "clip.pt"
    tower = visual_state_dict(clip)
    return _save_safetensors(
        tower if layout == "bare_visual_safetensors" else to_hf_clip_state_dict(tower), folder / f"{layout}.safetensors"
    )


@pytest.mark.parametrize(
    ("name", "layout"),
    [*(("ViT-B/32", layout) for layout in CHECKPOINT_LAYOUTS), ("ViT-L/14@336px", "openai_full_pickle")],
)
def test_pretrained_file_reproduces_open_clip_encode_image(name, layout, tmp_path):
    geometry = OPENAI_GEOMETRIES[name]
    clip = reference_clip(**geometry)
    path = _write_checkpoint(clip, layout, tmp_path)
    entry = vit_zoo.get_entry(name)
    model = timm.create_model(
        f"{entry.name}.openai",
        pretrained=True,
        layers=geometry["layers"],
        pretrained_cfg_overlay=dict(file=str(path)),
    ).eval()
    side = geometry["input_resolution"]
    images = torch.randn(2, 3, side, side)
    with torch.no_grad():
        assert relative_error(model(images), clip.encode_image(images)) <= 1e-5


@pytest.mark.parametrize("name", ["tiny", "ViT-B/16"])
def test_fp16_openai_archive_through_file_overlay_reproduces_encode_image(name, tmp_path):
    geometry = TINY if name == "tiny" else OPENAI_GEOMETRIES[name]
    clip = openai_clip(geometry)
    archive = write_torchscript_archive(clip, tmp_path / "ViT.pt")
    entry_name = TINY_NAME if name == "tiny" else f"{vit_zoo.get_entry(name).name}.openai"
    model = timm.create_model(
        entry_name, pretrained=True, layers=geometry["layers"], pretrained_cfg_overlay=dict(file=str(archive))
    ).eval()
    assert model.visual.conv1.weight.dtype == torch.float32
    side = geometry["input_resolution"]
    images = torch.randn(2, 3, side, side)
    with torch.no_grad():
        assert relative_error(model(images), reference_image_embedding(clip, images)) <= 1e-5


@pytest.fixture
def file_server():
    with FileServer() as server:
        yield server


def test_pretrained_tag_downloads_by_url_and_checks_sha256(tiny_checkpoint, file_server, tmp_path, scratch_zoo):
    data = tiny_checkpoint.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    file_server.files["/tiny.pt"] = data
    good = dict(
        name="vit_zoo_served_tiny",
        model=dict(TINY),
        pretrained=dict(mirror=dict(url=f"{file_server.url}/tiny.pt", sha256=sha256, license="mit")),
    )
    vit_zoo.register_config(good)
    assert "vit_zoo_served_tiny.mirror" in timm.list_pretrained("vit_zoo_served*")
    cache = tmp_path / "cache"
    model = timm.create_model("vit_zoo_served_tiny.mirror", pretrained=True, cache_dir=cache).eval()
    reference = tiny_model()
    reference.load_state_dict(pretrained_filter_fn(visual_state_dict(reference_clip(**TINY)), reference))
    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), reference(IMAGES))
    assert (cache / "checkpoints" / "tiny.pt").is_file()  # vit_zoo.download's cache, SHA-256 checked

    bad = dict(
        good, name="vit_zoo_served_corrupt", pretrained=dict(mirror=dict(url=f"{file_server.url}/tiny.pt", sha256="0" * 64))
    )
    vit_zoo.register_config(bad)
    other_cache = tmp_path / "other_cache"
    with pytest.raises(DownloadError, match=f"SHA-256 {sha256}, expected 0{{64}}.*discarded"):
        timm.create_model("vit_zoo_served_corrupt.mirror", pretrained=True, cache_dir=other_cache)
    assert not (other_cache / "checkpoints" / "tiny.pt").exists()
    assert not (other_cache / "checkpoints" / "tiny.pt.part").exists()


def test_url_overlay_in_openai_layout_is_checked_against_its_folder_name(tiny_checkpoint, file_server, tmp_path):
    data = tiny_checkpoint.read_bytes()
    right, wrong = f"/{hashlib.sha256(data).hexdigest()}/tiny.pt", f"/{'f' * 64}/tiny.pt"
    file_server.files.update({right: data, wrong: data})
    model = timm.create_model(
        TINY_NAME, pretrained=True, pretrained_cfg_overlay=dict(url=file_server.url + right), cache_dir=tmp_path
    )
    torch.testing.assert_close(model.head.weight, reference_clip(**TINY).visual.proj.t())
    with pytest.raises(DownloadError, match="SHA-256"):
        timm.create_model(
            TINY_NAME,
            pretrained=True,
            pretrained_cfg_overlay=dict(url=file_server.url + wrong),
            cache_dir=tmp_path / "again",
        )


def _write_folder(folder: Path, model: TimmVisionTransformer, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    _save_safetensors(model.state_dict(), folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("num_classes", [None, 10])
def test_local_dir_folder_with_timm_config_dict_round_trips(num_classes, tmp_path):
    model = tiny_model(img_size=48, num_classes=num_classes)
    folder = _write_folder(tmp_path / "model", model, timm_config_dict(model))
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == TINY_NAME and config["num_features"] == TINY["width"]
    assert config["model_args"]["img_size"] == 48
    pretrained_cfg, architecture, model_args = load_model_config_from_path(folder)
    assert architecture == TINY_NAME and tuple(pretrained_cfg["input_size"]) == (3, 48, 48)
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert loaded.num_classes == model.num_classes
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
    assert tuple(timm.data.resolve_data_config({}, model=loaded)["mean"]) == OPENAI_CLIP_MEAN  # JSON: a list


def test_timm_config_dict_of_an_entry_describes_the_openai_weights(tmp_path):
    entry = vit_zoo.get_entry("ViT-B/16")
    config = timm_config_dict(entry, tag="openai")
    assert config["architecture"] == entry.name and config["num_classes"] == 512
    assert config["model_args"] == dict(
        img_size=224,
        patch_size=16,
        width=768,
        layers=12,
        heads=12,
        output_dim=512,
        in_chans=3,
        mlp_ratio=4.0,
        activation="quick_gelu",
        layer_norm_eps=1e-5,
        num_classes=512,
    )
    assert config["pretrained_cfg"]["custom_load"] is False and "url" not in config["pretrained_cfg"]
    assert config["pretrained_cfg"]["license"] == "mit"
    json.dumps(config)
    with pytest.raises(ValueError, match="no pretrained tag 'laion'"):
        timm_config_dict(entry, tag="laion")


def test_local_dir_folder_written_by_timm_save_for_hf_loads(tmp_path):
    model = tiny_model(num_classes=5)
    save_for_hf(model, tmp_path / "exported", safe_serialization=True)
    loaded = timm.create_model(f"local-dir:{tmp_path / 'exported'}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(IMAGES), model(IMAGES))


# --- user variants ------------------------------------------------------------------------------------------

USER_VARIANT = dict(
    name="vit_zoo_user_patch4_test_16",
    description="a user's variant",
    model=dict(input_resolution=16, patch_size=4, width=32, layers=1, heads=2, output_dim=8),
    preprocessing=dict(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], crop_pct=0.9),
)


def test_user_yaml_variant_registered_at_run_time_is_a_timm_model(tmp_path, scratch_zoo):
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(USER_VARIANT))
    vit_zoo.register_config(path)
    assert USER_VARIANT["name"] in timm.list_models("vit_zoo_user*")
    model = timm.create_model(USER_VARIANT["name"])
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 8)
    config = timm.data.resolve_data_config({}, model=model)
    assert config["mean"] == (0.5, 0.5, 0.5) and config["crop_pct"] == 0.9 and config["input_size"] == (3, 16, 16)
    vit_zoo.register_config(path)  # the same file again is a no-op
    vit_zoo.unregister_config(USER_VARIANT["name"])
    with pytest.raises(UnknownVariantError, match=f"unknown zoo variant '{USER_VARIANT['name']}'"):
        timm.create_model(USER_VARIANT["name"])
    vit_zoo.register_config(path)
    assert timm.create_model(USER_VARIANT["name"])(torch.randn(1, 3, 16, 16)).shape == (1, 8)


def _run_python(code: str, configs: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, VIT_ZOO_CONFIGS=str(configs), PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)


def test_user_variant_from_the_configs_env_folder_appears_in_timm(tmp_path):
    (tmp_path / "user.yaml").write_text(yaml.safe_dump(dict(USER_VARIANT, name="vit_zoo_env_patch4_test_16")))
    result = _run_python(
        "import timm, torch, vit_zoo\n"
        "print(timm.list_models('vit_zoo_env*'))\n"
        "print(tuple(timm.create_model('vit_zoo_env_patch4_test_16')(torch.randn(1, 3, 16, 16)).shape))\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["['vit_zoo_env_patch4_test_16']", "(1, 8)"]


def test_malformed_user_yaml_is_reported_with_its_path_and_field(tmp_path):
    broken = dict(USER_VARIANT, name="vit_zoo_broken", model=dict(USER_VARIANT["model"], patch_size=5))
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(ZooConfigError, match=f"{path}.*input_resolution \\(16\\) must be divisible by patch_size"):
        vit_zoo.register_config(path)
    assert "vit_zoo_broken" not in timm.list_models("vit_zoo_broken*")
    result = _run_python("import vit_zoo; vit_zoo.list_entries()", tmp_path)  # the zoo loads on first use
    assert result.returncode != 0
    assert str(path) in result.stderr and "patch_size" in result.stderr


def test_variant_named_like_a_timm_model_is_refused(scratch_zoo):
    with pytest.raises(ZooConfigError, match="'resnet18' is already a timm model"):
        vit_zoo.register_config(dict(USER_VARIANT, name="resnet18"))
    assert timm.create_model("resnet18").__class__.__name__ == "ResNet"


# --- bad input ----------------------------------------------------------------------------------------------


def test_unknown_entry_name_is_named():
    with pytest.raises(RuntimeError, match="Unknown model \\(vit_zoo_huge_patch99\\)"):
        timm.create_model("vit_zoo_huge_patch99")
    with pytest.raises(RuntimeError, match="tag \\(laion\\) for vit_zoo_base_patch32_clip_224"):
        timm.create_model("vit_zoo_base_patch32_clip_224.laion")


def test_bad_kwargs_name_the_entry_and_the_field():
    with pytest.raises(TypeError, match="vit_zoo_base_patch32_clip_224: unknown argument.*'depth'"):
        timm.create_model("vit_zoo_base_patch32_clip_224", depth=3)
    with pytest.raises(ValueError, match=f"{TINY_NAME}: input_resolution \\(36\\) must be divisible by patch_size"):
        timm.create_model(TINY_NAME, img_size=36)
    with pytest.raises(ValueError, match=f"{TINY_NAME}: width \\(64\\) must be divisible by heads \\(5\\)"):
        timm.create_model(TINY_NAME, heads=5)
    with pytest.raises(ValueError, match="square images.*img_size=\\(32, 48\\)"):
        timm.create_model(TINY_NAME, img_size=(32, 48))


def test_checkpoint_of_another_geometry_names_file_entry_and_both_geometries(tiny_checkpoint):
    with pytest.raises(CheckpointError) as error:
        timm.create_model(
            "vit_zoo_base_patch32_clip_224",
            layers=3,
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(tiny_checkpoint)),
        )
    message = str(error.value)
    assert str(tiny_checkpoint) in message and "vit_zoo_base_patch32_clip_224" in message
    assert "width=64, layers=3, output_dim=32" in message and "width=768, layers=3, output_dim=512" in message
    assert TINY_NAME in message  # the entry that fits


def test_pretrained_without_weights_or_with_a_missing_file_says_so(tmp_path):
    with pytest.raises(RuntimeError, match=f"No pretrained weights exist for {TINY_NAME}"):
        timm.create_model(TINY_NAME, pretrained=True)
    missing = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError, match=f"{missing} is missing"):
        timm.create_model(TINY_NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))


def test_non_clip_file_is_refused_with_what_was_expected(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(CheckpointError, match=f"{path}.*(CLIP|visual)"):
        timm.create_model(TINY_NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=str(text)):
        timm.create_model(TINY_NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(text)))


@pytest.mark.parametrize("images, message", list(BAD_IMAGES.values()), ids=list(BAD_IMAGES))
def test_bad_images_raise_the_cores_value_error(images, message):
    model = timm.create_model(TINY_NAME).eval()
    for method in (model, model.forward_features, model.forward_intermediates):
        with pytest.raises(ValueError) as error:
            method(images)
        assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_empty_batch_gives_empty_outputs():
    with torch.no_grad():
        assert tiny_model()(torch.zeros(0, 3, 32, 32)).shape == (0, TINY["output_dim"])


# --- local-dir: and hf-hub: folders that must not load ---------------------------------------------------------------


def _set_model_args(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["model_args"].update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_model_args_with_wrong_values(copied_folder):
    _set_model_args(copied_folder, width="big")
    with pytest.raises(ValueError, match=f"{TINY_NAME}: width must be a positive int, got 'big' \\(str\\)"):
        timm.create_model(f"local-dir:{copied_folder}", pretrained=True)


def test_local_dir_claiming_more_layers_than_its_weights_hold(copied_folder):
    _set_model_args(copied_folder, layers=20000)
    message = f"the config asks for layers=20000 but the weights hold {TINY['layers']} blocks"
    with budget(60), pytest.raises(CheckpointError, match=message):
        timm.create_model(f"local-dir:{copied_folder}", pretrained=True)


@pytest.mark.hub
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_hf_hub_repo_claiming_more_layers_than_its_weights_hold(copied_folder, hub_server):
    from huggingface_hub import HfApi

    _set_model_args(copied_folder, layers=20000)
    hub_server.create_repo("org/timm-bomb")
    HfApi(token=WRITE_TOKEN).upload_folder(repo_id="org/timm-bomb", folder_path=copied_folder, repo_type="model")
    with budget(60), pytest.raises(CheckpointError, match="the config asks for layers=20000 but the weights hold"):
        timm.create_model("hf-hub:org/timm-bomb", pretrained=True)


@pytest.mark.parametrize("kind", ["a FIFO (named pipe)", "a device"])
def test_weights_that_are_no_regular_file_are_named_by_every_loader(copied_folder, kind):
    """A FIFO for the weights ended timm's local-dir: with an empty FileNotFoundError (and transformers with "no
    file named model.safetensors"), /dev/zero would be read for ever: both loaders now name the file."""
    weights = copied_folder / "model.safetensors"
    weights.unlink()
    os.mkfifo(weights) if kind.startswith("a FIFO") else weights.symlink_to("/dev/zero")
    from transformers import AutoModel

    loaders = [lambda: timm.create_model(f"local-dir:{copied_folder}", pretrained=True)]
    loaders.append(lambda: AutoModel.from_pretrained(copied_folder))
    for load in loaders:
        with budget(10), pytest.raises(ValueError, match=re.escape(f"{weights} is {kind}, not a regular file")):
            load()


def test_folder_of_another_model_type(clip_vision_folder):
    with pytest.raises(KeyError, match="architecture"):  # timm's local-dir: reads config.json before any vit_zoo code
        timm.create_model(f"local-dir:{clip_vision_folder}", pretrained=True)


@pytest.mark.parametrize("damage", list(CORRUPT_SAFETENSORS))
def test_corrupt_safetensors_in_a_folder(corrupt_safetensors, copied_folder, damage):
    shutil.copyfile(corrupt_safetensors[damage], copied_folder / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        timm.create_model(f"local-dir:{copied_folder}", pretrained=True)
    message = str(error.value)
    assert message.startswith(f"{copied_folder / 'model.safetensors'}") and CORRUPT_SAFETENSORS[damage] in message
    assert message.endswith("convert or download the weights again") and "\n" not in message
