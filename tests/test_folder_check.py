"""``vit_zoo.folder_check``: ``check_folder``, what push, pull and embed run before they trust a folder.

A sound folder (single file or sharded, RGB or not, a Hub cache snapshot linking into its blobs) passes; every folder
of ``hostile.HOSTILE_FOLDERS``, corrupt weights, shard paths leading out of the folder, symlinks leading out of it,
integer tensors and a config of another model type are refused with one ``FolderError`` line naming the file.
``folder_files`` lists what belongs to the format, and nothing else.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hostile import CORRUPT_SAFETENSORS, HOSTILE_FOLDERS, edit_weights
from reference import TINY

from vit_zoo import FolderError, VisionTransformer, save_model_folder
from vit_zoo.folder_check import FORMAT_FILES, check_folder, folder_files


def refused(folder: Path, *fragments: str) -> str:
    with pytest.raises(FolderError) as error:
        check_folder(folder)
    message = str(error.value)
    assert "\n" not in message and len(message) < 400, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_sound_folders_pass(model_folder, sharded_folder, tmp_path):
    assert check_folder(model_folder) == model_folder and check_folder(str(sharded_folder)) == sharded_folder
    torch.manual_seed(0)
    half = save_model_folder(VisionTransformer(**TINY).half(), tmp_path / "half")
    gray = save_model_folder(VisionTransformer(**dict(TINY, in_channels=1)), tmp_path / "gray")
    assert not (gray / "preprocessor_config.json").exists()  # no RGB image processor for a 1-channel tower
    assert check_folder(half) == half and check_folder(gray) == gray


@pytest.mark.parametrize("case", list(HOSTILE_FOLDERS))
def test_folders_that_would_give_wrong_numbers_are_refused(copied_folder, case):
    edit, *fragments = HOSTILE_FOLDERS[case]
    edit(copied_folder)
    refused(copied_folder, *fragments)


@pytest.mark.parametrize("damage", list(CORRUPT_SAFETENSORS))
def test_corrupt_weights_are_refused_naming_the_file(corrupt_safetensors, copied_folder, damage):
    shutil.copyfile(corrupt_safetensors[damage], copied_folder / "model.safetensors")
    message = refused(copied_folder, CORRUPT_SAFETENSORS[damage])
    assert message.startswith(str(copied_folder / "model.safetensors"))


def test_a_config_must_state_the_geometry_and_may_leave_out_what_has_a_default(copied_folder):
    """The check reads config.json without transformers: a field VitZooConfig would fill with ViT-B/32's value is
    not guessed; the ones Geometry has defaults for (OpenAI's MLP, activation and eps, RGB) may be left out."""
    config_path = copied_folder / "config.json"
    settings = json.loads(config_path.read_text())
    optional = {name: settings.pop(name) for name in ("in_channels", "mlp_ratio", "activation", "layer_norm_eps")}
    assert optional == {"in_channels": 3, "mlp_ratio": 4.0, "activation": "quick_gelu", "layer_norm_eps": 1e-5}
    config_path.write_text(json.dumps(settings))
    assert check_folder(copied_folder) == copied_folder
    del settings["layers"], settings["heads"]
    config_path.write_text(json.dumps(settings))
    refused(copied_folder, f"{config_path} does not state layers, heads; convert or pull the model again")


def test_integer_tensors_are_refused(copied_folder):
    edit_weights(lambda w: w.__setitem__("ln_pre.bias", w["ln_pre.bias"].int()))(copied_folder)
    refused(copied_folder, f"{copied_folder}: tensors that are not floating point: ln_pre.bias (I32)")


@pytest.mark.parametrize(
    "shard", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/model.safetensors", ".x.safetensors", "evil.py"]
)
def test_shard_index_naming_paths_out_of_the_folder(sharded_folder, tmp_path, shard):
    folder = Path(shutil.copytree(sharded_folder, tmp_path / "sharded"))
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"][next(iter(index["weight_map"]))] = shard
    index_path.write_text(json.dumps(index))
    refused(folder, f"model.safetensors.index.json names shard '{shard}', which is not a .safetensors file in the folder")


def test_symlinks_leading_out_of_the_folder_are_refused(copied_folder, tmp_path):
    (tmp_path / "secret.txt").write_text("password")
    (copied_folder / "README.md").unlink()
    (copied_folder / "README.md").symlink_to(tmp_path / "secret.txt")
    refused(copied_folder, f"{copied_folder / 'README.md'} is a symlink to {tmp_path / 'secret.txt'}, outside the folder")
    (copied_folder / "README.md").unlink()
    (copied_folder / "README.md").symlink_to("config.json")  # inside the folder: fine
    check_folder(copied_folder)


def test_a_hub_cache_snapshot_may_link_into_its_blobs_only(model_folder, tmp_path):
    blobs, snapshot = tmp_path / "repo" / "blobs", tmp_path / "repo" / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, path in enumerate(sorted(model_folder.iterdir())):
        shutil.copyfile(path, blobs / f"blob{index}")
        (snapshot / path.name).symlink_to(blobs / f"blob{index}")
    assert check_folder(snapshot) == snapshot
    (snapshot / "config.json").unlink()
    shutil.copyfile(model_folder / "config.json", tmp_path / "elsewhere.json")
    (snapshot / "config.json").symlink_to(tmp_path / "elsewhere.json")
    refused(snapshot, "config.json is a symlink to", "outside the folder")


def test_what_is_not_a_vit_zoo_folder_is_named(clip_vision_folder, copied_folder, tmp_path):
    refused(tmp_path / "missing", f"{tmp_path / 'missing'} is not a folder; give the --output folder of `vit-zoo convert`")
    refused(clip_vision_folder, "describes a 'clip_vision_model' model, not a 'vit_zoo' one; use a repo written by vit-zoo")
    (copied_folder / "model.safetensors").unlink()
    refused(copied_folder, f"{copied_folder} has no model.safetensors; convert a checkpoint into it first")
    (copied_folder / "config.json").unlink()
    refused(copied_folder, f"{copied_folder / 'config.json'} is missing; convert or pull the model again")


def test_folder_files_are_the_format_and_nothing_else(copied_folder, sharded_folder):
    (copied_folder / ".env").write_text("HF_TOKEN=hf_secret")
    (copied_folder / "notes.txt").write_text("private notes")
    (copied_folder / "extra.safetensors").write_bytes(b"not listed by any index")
    assert sorted(folder_files(copied_folder)) == sorted([*FORMAT_FILES, "model.safetensors"])
    shards = sorted(path.name for path in sharded_folder.glob("model-*.safetensors"))
    assert len(shards) >= 2
    assert sorted(folder_files(sharded_folder)) == sorted([*FORMAT_FILES, "model.safetensors.index.json", *shards])
