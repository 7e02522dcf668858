"""One folder for every loader: convert -> folder -> timm, transformers, remote code, vit_zoo; and via the Hub."""

import json
from pathlib import Path

import pytest
import timm
import torch
from checkpoints import openai_clip, reference_image_embedding, write_torchscript_archive
from helpers import TINY_NAME, run_cli
from hub_server import WRITE_TOKEN
from reference import TINY, relative_error
from safetensors.torch import load_file
from timm.data import OPENAI_CLIP_MEAN
from transformers import AutoImageProcessor, AutoModel, CLIPImageProcessor

import vit_zoo
from conversion.offline_demo import remote_code_embeddings
from vit_zoo import (
    OutputExistsError,
    VisionTransformer,
    VitZooConfig,
    convert_checkpoint,
    push_folder,
    push_to_hub,
    save_folder,
    save_model_folder,
)
from vit_zoo.card import model_card
from vit_zoo.folder_check import REMOTE_CODE_FILES

GEOMETRY = dict(TINY, input_resolution=32, patch_size=8)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """An fp16 OpenAI-format TorchScript archive of the tiny geometry, converted to float32."""
    root = tmp_path_factory.mktemp("converted")
    clip = openai_clip(GEOMETRY)
    archive = write_torchscript_archive(clip, root / "tiny.pt")
    folder = convert_checkpoint(archive, root / "out", dtype="float32", name="vit_zoo_tiny_patch8_test_32")
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    return folder, images, reference_image_embedding(clip, images)


def all_loaders(folder: Path, images: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        core = VisionTransformer(**VitZooConfig.from_pretrained(folder).geometry).eval()
        core.load_state_dict(load_file(folder / "model.safetensors"))
        return {
            "core": core(images)[0],
            "transformers": AutoModel.from_pretrained(folder).eval()(images).image_embeds,
            "timm": timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(images),
        }


def test_folder_layout(converted):
    folder, _, _ = converted
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        ["model.safetensors", "config.json", "preprocessor_config.json", "README.md"] + list(REMOTE_CODE_FILES)
    )
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "vit_zoo" and config["architectures"] == ["VitZooModel"]
    assert config["auto_map"] == {
        "AutoConfig": "config.VitZooConfig",
        "AutoModel": "modeling.VitZooModel",
        "AutoModelForImageClassification": "modeling.VitZooForImageClassification",
    }
    assert config["architecture"] == "vit_zoo_tiny_patch8_test_32"
    assert config["num_classes"] == GEOMETRY["output_dim"] and config["num_features"] == GEOMETRY["width"]
    assert config["model_args"]["width"] == GEOMETRY["width"] and config["model_args"]["img_size"] == 32
    assert config["pretrained_cfg"]["mean"] == list(OPENAI_CLIP_MEAN)
    assert set(load_file(folder / "model.safetensors")) == set(VisionTransformer(**GEOMETRY).state_dict())
    assert set(REMOTE_CODE_FILES) == {"config.py", "errors.py", "files.py", "model.py", "modeling.py", "spec.py"}
    for name in REMOTE_CODE_FILES:
        assert (folder / name).read_bytes() == (Path(vit_zoo.__file__).parent / name).read_bytes()


def test_every_loader_matches_openai(converted, tmp_path):
    folder, images, expected = converted
    embeddings = all_loaders(folder, images)
    embeddings["remote code"] = remote_code_embeddings(str(folder), images)
    for loader, embedding in embeddings.items():
        assert relative_error(embedding, expected) <= 1e-5, loader
        assert torch.equal(embedding, embeddings["core"]), loader


def test_image_processor_is_openais(converted):
    folder, _, _ = converted
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    assert "CLIPImageProcessor" in type(processor).__name__
    assert processor.crop_size == {"height": 32, "width": 32} and processor.size == {"shortest_edge": 32}
    assert list(processor.image_mean) == list(OPENAI_CLIP_MEAN)
    assert isinstance(AutoImageProcessor.from_pretrained(folder), CLIPImageProcessor)


def test_model_card(converted):
    folder, _, _ = converted
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlicense: other\nlibrary_name: transformers\n")
    assert "- Source SHA-256: `" in card and "float32, converted from the source's float16" in card
    assert 'timm.create_model("hf-hub:YOUR-NAME/REPO", pretrained=True)' in card
    assert 'AutoModel.from_pretrained("YOUR-NAME/REPO", trust_remote_code=True)' in card
    openai_card = model_card(vit_zoo.get_entry("ViT-B/16").config(), vit_zoo.get_entry("ViT-B/16"))
    assert openai_card.startswith("---\nlicense: mit\n") and "https://arxiv.org/abs/2103.00020" in openai_card
    assert "[12, 1, 12, 14, 14]" in openai_card


@pytest.mark.parametrize("kind", ["timm", "transformers", "core"])
def test_models_in_memory_save_to_the_same_layout(kind, tmp_path):
    torch.manual_seed(0)
    if kind == "timm":
        model = timm.create_model("vit_zoo_tiny_patch8_test_32")
    elif kind == "transformers":
        model = vit_zoo.VitZooModel(VitZooConfig(**GEOMETRY))
    else:
        model = VisionTransformer(**GEOMETRY, activation="gelu")
    folder = save_model_folder(model.eval(), tmp_path / "saved")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(images) if kind == "timm" else model(images)[0] if kind == "core" else model(images).image_embeds
    for loader, embedding in all_loaders(folder, images).items():
        assert torch.equal(embedding, expected), (kind, loader)


def test_save_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not empty"):
        save_folder(VisionTransformer(**GEOMETRY).state_dict(), VitZooConfig(**GEOMETRY), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.hub
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_hub_round_trip_for_every_loader(converted, hub_server, tmp_path):
    folder, images, _ = converted
    first = push_folder(folder, "org/tiny-clip", token=WRITE_TOKEN)
    card = hub_server.files("org/tiny-clip")["README.md"].decode()
    assert 'timm.create_model("hf-hub:org/tiny-clip", pretrained=True)' in card and "YOUR-NAME" not in card
    local = all_loaders(folder, images)["core"]
    with torch.no_grad():
        from_hub = {
            "transformers": AutoModel.from_pretrained("org/tiny-clip", cache_dir=tmp_path / "fresh").eval()(images),
            "timm": timm.create_model("hf-hub:org/tiny-clip", pretrained=True).eval()(images),
        }
    from_hub["transformers"] = from_hub["transformers"].image_embeds
    from_hub["remote code"] = remote_code_embeddings("org/tiny-clip", images)
    for loader, embedding in from_hub.items():
        assert torch.equal(embedding, local), loader

    torch.manual_seed(1)
    retrained = timm.create_model("vit_zoo_tiny_patch8_test_32").eval()
    second = push_to_hub(retrained, "org/tiny-clip", token=WRITE_TOKEN, commit_message="retrained")
    assert second != first and hub_server.list_commits("org/tiny-clip")[0].title == "retrained"
    with torch.no_grad():
        old = AutoModel.from_pretrained("org/tiny-clip", revision=first).eval()(images).image_embeds
        new = AutoModel.from_pretrained("org/tiny-clip", revision=second).eval()(images).image_embeds
        assert torch.equal(old, local)
        assert torch.equal(new, retrained(images))


def test_cli_convert_then_load_everywhere(tmp_path):
    clip = openai_clip(GEOMETRY, seed=3)
    archive = write_torchscript_archive(clip, tmp_path / "ViT-T.pt")
    # heads are invisible in the weights; the zoo entry gives them
    result = run_cli("convert", archive, "--output", tmp_path / "out", "--dtype", "float32", "--name", TINY_NAME, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    images = torch.randn(2, 3, 32, 32)
    expected = reference_image_embedding(clip, images)
    for loader, embedding in all_loaders(tmp_path / "out", images).items():
        assert relative_error(embedding, expected) <= 1e-5, loader


@pytest.mark.hub
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_cli_convert_push_to_hub(hub_server, tmp_path):
    archive = write_torchscript_archive(openai_clip(GEOMETRY, seed=4), tmp_path / "ViT-T.pt")
    command = ["convert", archive, "--output", tmp_path / "out", "--name", TINY_NAME, "--push-to-hub", "org/converted"]
    result = run_cli(*command, "--token", WRITE_TOKEN, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    commit = hub_server.list_commits("org/converted")[0].id
    assert commit in result.stdout
    pushed = hub_server.files("org/converted")
    assert pushed["model.safetensors"] == (tmp_path / "out" / "model.safetensors").read_bytes()
    command[3] = tmp_path / "out2"
    refused = run_cli(*command, "--token", "hf_wrong")
    assert refused.returncode == 1 and "refused the token (401)" in refused.stderr
    assert (tmp_path / "out2").is_dir()  # the conversion stands; only the push failed, and said so
