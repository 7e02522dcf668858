"""``vit_zoo.convert``: OpenAI-format checkpoints into vit_zoo folders. Parity with OpenAI's encode_image, dtypes,
the model card; bad checkpoints (empty tensors, NaN/Inf, values beyond float16, corrupt safetensors) refused; an
output that cannot be written (read-only, full disk, a run killed mid-write) leaves nothing behind."""

import errno
import importlib.util
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from checkpoints import openai_clip, reference_image_embedding, write_state_dict, write_torchscript_archive
from helpers import REPO_ROOT, TINY_NAME, assert_cli_error, call_main, listing, tmpfs
from reference import OPENAI_GEOMETRIES, TINY, relative_error
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionModelWithProjection

from vit_zoo import (
    CheckpointError,
    OutputError,
    OutputExistsError,
    VisionTransformer,
    VitZooConfig,
    check_folder,
    convert_checkpoint,
)
from vit_zoo import convert as convert_module
from vit_zoo import folder as folder_module


class Checkpoints:
    """OpenAI-format files of one geometry, built once per module: the fp16 CLIP, its archive, its state dict."""

    def __init__(self, folder):
        self.folder, self.built, self.references = folder, {}, {}

    def __call__(self, name: str):
        if name not in self.built:
            geometry = TINY if name == "tiny" else OPENAI_GEOMETRIES[name]
            model = openai_clip(geometry)
            stem = name.replace("/", "-").replace("@", "-")
            self.built[name] = (
                model,
                write_torchscript_archive(model, self.folder / f"{stem}.pt"),
                write_state_dict(model.state_dict(), self.folder / f"{stem}-state-dict.pt"),
            )
        return self.built[name]

    def reference(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and OpenAI's ``encode_image`` of them (fp32 compute from the fp16 weights), computed once."""
        if name not in self.references:
            model, resolution = self(name)[0], self(name)[0].visual.image_size[0]
            images = torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
            self.references[name] = images, reference_image_embedding(model, images)
        return self.references[name]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return Checkpoints(tmp_path_factory.mktemp("checkpoints"))


def load_folder(folder) -> tuple[VitZooConfig, dict]:
    return VitZooConfig.from_pretrained(folder), load_file(folder / "model.safetensors")


def embed(config: VitZooConfig, weights: dict, images: torch.Tensor) -> torch.Tensor:
    model = VisionTransformer(**config.geometry).eval()
    model.load_state_dict(weights, strict=True)  # fp16 weights into the fp32 model
    with torch.no_grad():
        return model(images)[0]


@pytest.mark.parametrize("kind", ["archive", "state_dict"])
@pytest.mark.parametrize("name", list(OPENAI_GEOMETRIES))
def test_converted_folder_matches_openai_encode_image(checkpoints, name, kind, tmp_path):
    _, archive, state_dict_file = checkpoints(name)
    output = convert_checkpoint(archive if kind == "archive" else state_dict_file, tmp_path / "converted")
    config, weights = load_folder(output)
    assert {k: getattr(config, k) for k in OPENAI_GEOMETRIES[name]} == OPENAI_GEOMETRIES[name]
    assert config.dtype == torch.float16 and all(w.dtype == torch.float16 for w in weights.values())
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in output.iterdir()}
    images, expected = checkpoints.reference(name)
    assert relative_error(embed(config, weights, images), expected) <= 1e-5


def test_default_keeps_the_source_dtype_and_says_so(checkpoints, tmp_path):
    model, archive, _ = checkpoints("tiny")
    output = convert_checkpoint(archive, tmp_path / "out", name="vit_zoo_tiny_patch8_test_32")
    card = (output / "README.md").read_text()
    assert "Weights: float16, as in the source (not converted)" in card
    _, weights = load_folder(output)
    expected = {k.removeprefix("visual."): v for k, v in model.state_dict().items() if k.startswith("visual.")}
    assert all(torch.equal(weights[k], v) for k, v in expected.items())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dtype_converts_on_request_and_says_so(checkpoints, dtype, tmp_path):
    model, archive, _ = checkpoints("tiny")
    output = convert_checkpoint(archive, tmp_path / "out", dtype=dtype, name="vit_zoo_tiny_patch8_test_32")
    config, weights = load_folder(output)
    target = getattr(torch, dtype)
    assert config.dtype == target
    assert torch.equal(weights["conv1.weight"], model.visual.conv1.weight.detach().to(target))
    card = (output / "README.md").read_text()
    assert f"Weights: {dtype}, converted from the source's float16" in card
    assert f"--dtype {dtype}" in card


@pytest.mark.parametrize("source_dtype", [torch.float64, torch.float8_e4m3fn])
def test_float64_and_float8_sources_become_float32_folders_the_tools_read(checkpoints, source_dtype, tmp_path):
    """A float64 source gave a folder with dtype float64, which embed and push refuse; a float8 one failed in torch."""
    model, _, _ = checkpoints("tiny")
    source = {k: v.to(source_dtype) for k, v in model.state_dict().items() if k.startswith("visual.")}
    path = write_state_dict(source, tmp_path / "source.pt")
    output = convert_checkpoint(path, tmp_path / "out", name="vit_zoo_tiny_patch8_test_32")
    config, weights = load_folder(output)
    assert config.dtype == torch.float32
    assert all(torch.equal(weights[k.removeprefix("visual.")], v.float()) for k, v in source.items())
    assert f"converted from the source's {str(source_dtype).removeprefix('torch.')}" in (output / "README.md").read_text()
    check_folder(output)


def test_float64_values_beyond_float32_are_refused(checkpoints, tmp_path):
    model, _, _ = checkpoints("tiny")
    source = {k: v.double() for k, v in model.state_dict().items() if k.startswith("visual.")}
    source["visual.proj"][0, 0] = 1e300
    path = write_state_dict(source, tmp_path / "source.pt")
    with pytest.raises(CheckpointError, match=r"NaN or Inf values in proj: values beyond the range of float32"):
        convert_checkpoint(path, tmp_path / "out", name="vit_zoo_tiny_patch8_test_32")
    assert not (tmp_path / "out").exists()


def test_zoo_name_supplies_heads_and_activation(checkpoints, tmp_path):
    model, _, state_dict_file = checkpoints("tiny")
    output = convert_checkpoint(state_dict_file, tmp_path / "out", name="vit_zoo_tiny_patch8_test_32")
    config, weights = load_folder(output)
    assert config.heads == 4  # OpenAI's width // 64 rule would say 1: only the zoo entry knows
    images = torch.randn(2, 3, 32, 32)
    assert relative_error(embed(config, weights, images), reference_image_embedding(model, images)) <= 1e-5
    card = (output / "README.md").read_text()
    assert "--name vit_zoo_tiny_patch8_test_32" in card and "Tiny CLIP-style ViT" in card


def test_activation_is_recorded(checkpoints, tmp_path):
    _, archive, _ = checkpoints("tiny")
    output = convert_checkpoint(archive, tmp_path / "out", name="vit_zoo_tiny_patch8_test_32", activation="gelu")
    assert json.loads((output / "config.json").read_text())["activation"] == "gelu"
    assert "Activation: `gelu`" in (output / "README.md").read_text()


def test_large_towers_are_sharded_with_an_index(checkpoints, tmp_path):
    _, archive, _ = checkpoints("tiny")
    output = convert_checkpoint(archive, tmp_path / "out", name="vit_zoo_tiny_patch8_test_32", max_shard_size=100_000)
    index = json.loads((output / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and not (output / "model.safetensors").exists()
    merged = {k: v for shard in shards for k, v in load_file(output / shard).items()}
    single = load_folder(convert_checkpoint(archive, tmp_path / "single", name="vit_zoo_tiny_patch8_test_32"))[1]
    assert sorted(merged) == sorted(single) and all(torch.equal(merged[k], single[k]) for k in single)


def test_model_card_records_provenance(checkpoints, tmp_path):
    _, archive, _ = checkpoints("tiny")
    output = convert_checkpoint(archive, tmp_path / "out", name="vit_zoo_tiny_patch8_test_32")
    card = (output / "README.md").read_text()
    from vit_zoo.download import sha256_of

    assert card.startswith("---\nlicense: other\n")  # a local file of unknown origin: no license is claimed
    assert f"Source SHA-256: `{sha256_of(archive)}`" in card
    assert "Converted with: `vit-zoo convert tiny.pt --output out --name vit_zoo_tiny_patch8_test_32`" in card
    assert 'timm.create_model("hf-hub:YOUR-NAME/REPO", pretrained=True)' in card  # push puts the repo id in
    assert 'AutoModel.from_pretrained("YOUR-NAME/REPO", trust_remote_code=True)' in card


def test_geometry_must_match_the_named_zoo_variant(checkpoints, tmp_path):
    _, archive, _ = checkpoints("ViT-B/32")
    with pytest.raises(CheckpointError, match="not a vit_zoo_base_patch32_clip_224: layers is 2 in the checkpoint but 12"):
        convert_checkpoint(archive, tmp_path / "out", name="ViT-B/32")
    with pytest.raises(CheckpointError, match="patch_size is 32 in the checkpoint but 16 in the zoo"):
        convert_checkpoint(archive, tmp_path / "out", name="vit_zoo_base_patch16_clip_224")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_and_untouched(checkpoints, tmp_path):
    _, archive, _ = checkpoints("tiny")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="already exists"):
        convert_checkpoint(archive, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_failure_while_writing_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    _, archive, _ = checkpoints("tiny")

    def write_then_fail(tower, config, folder, **options):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(convert_module, "save_folder", write_then_fail)
    with pytest.raises(OutputError, match="cannot write .*out \\(disk full\\); choose an output folder"):
        convert_checkpoint(archive, tmp_path / "out", name="vit_zoo_tiny_patch8_test_32")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(checkpoints, tmp_path):
    _, archive, _ = checkpoints("tiny")
    with pytest.raises(CheckpointError, match="dtype must be one of"):
        convert_checkpoint(archive, tmp_path / "out", dtype="float8")
    with pytest.raises(CheckpointError, match="activation must be one of"):
        convert_checkpoint(archive, tmp_path / "out", activation="relu")
    with pytest.raises(CheckpointError, match="no such file, and not a model name; give a checkpoint file or one of ViT"):
        convert_checkpoint(tmp_path / "missing.pt", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def load_script(name: str):
    path = Path(__file__).resolve().parent.parent / "conversion" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_to_transformers_clip_and_back(checkpoints, tmp_path):
    model, archive, _ = checkpoints("tiny")
    folder = convert_checkpoint(archive, tmp_path / "vit_zoo", name="vit_zoo_tiny_patch8_test_32")
    load_script("export_hf_clip").export(folder, tmp_path / "hf")
    hf_model = CLIPVisionModelWithProjection.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    images, expected = checkpoints.reference("tiny")
    with torch.no_grad():
        assert relative_error(hf_model(pixel_values=images).image_embeds, expected) <= 1e-5
    back = convert_checkpoint(tmp_path / "hf" / "model.safetensors", tmp_path / "back", name="vit_zoo_tiny_patch8_test_32")
    original, round_trip = load_file(folder / "model.safetensors"), load_file(back / "model.safetensors")
    assert sorted(original) == sorted(round_trip)
    assert all(round_trip[k].dtype == v.dtype and torch.equal(round_trip[k], v) for k, v in original.items())


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_folder_honours_the_umask(checkpoints, tmp_path, umask):
    """safetensors writes its files 0600; a converted folder is shared like any other file the user makes."""
    _, archive, _ = checkpoints("tiny")
    previous = os.umask(umask)
    try:
        folder = convert_checkpoint(archive, tmp_path / "out", name="vit_zoo_tiny_patch8_test_32")
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in [folder, *folder.iterdir()]}
    assert modes.pop("out") == 0o777 & ~umask
    assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~umask}, modes


# --- checkpoints that must not become a folder ---------------------------------------------------------------------


def visual_tower(clip) -> dict[str, torch.Tensor]:
    return {k: v.float().clone() for k, v in clip.state_dict().items() if k.startswith("visual.")}


def test_zero_length_tensors_are_refused(tiny_clip, tmp_path):
    empty = {k: torch.zeros(0, dtype=v.dtype) for k, v in visual_tower(tiny_clip).items()}
    save_file(empty, tmp_path / "empty-tensors.safetensors")
    with pytest.raises(CheckpointError, match="do not have the shapes of a ViT"):
        convert_checkpoint(tmp_path / "empty-tensors.safetensors", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_weights_are_refused(tiny_clip, value, tmp_path):
    tower = visual_tower(tiny_clip)
    tower["visual.transformer.resblocks.0.mlp.c_fc.weight"][3, 5] = value
    path = write_state_dict(tower, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError) as error:
        convert_checkpoint(path, tmp_path / "out")
    assert str(error.value) == (
        "NaN or Inf values in transformer.resblocks.0.mlp.c_fc.weight: the checkpoint is damaged (a diverged "
        "training run or a corrupt file); convert an intact copy"
    )
    assert listing(tmp_path) == ["damaged.pt"]


def test_values_beyond_float16_are_refused_only_when_converting_to_float16(tiny_clip, tmp_path):
    tower = visual_tower(tiny_clip)
    tower["visual.proj"][0, 0] = 2.0**20  # exact in float32 and bfloat16, Inf in float16
    path = write_state_dict(tower, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match="NaN or Inf values in proj: values beyond the range of float16 became"):
        convert_checkpoint(path, tmp_path / "fp16", dtype="float16", name=TINY_NAME)
    assert not (tmp_path / "fp16").exists()
    for dtype in ("float32", "bfloat16"):
        folder = convert_checkpoint(path, tmp_path / dtype, dtype=dtype, name=TINY_NAME)
        assert load_file(folder / "model.safetensors")["proj"][0, 0].item() == 2.0**20


@pytest.mark.parametrize("damage", ["garbage-header", "header-past-the-end", "truncated"])
def test_corrupt_safetensors_file_as_convert_source(corrupt_safetensors, damage, tmp_path, capsys):
    message = assert_cli_error(
        call_main(capsys, "convert", corrupt_safetensors[damage], "--output", tmp_path / "out"),
        "convert",
        f"{damage}.safetensors is a",
        "corrupt safetensors file",
    )
    assert "expected an OpenAI CLIP .pt archive" in message
    assert listing(tmp_path) == []


# --- outputs that cannot be written ------------------------------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path, monkeypatch) -> Iterator[Path]:
    """A folder on a 64 KiB tmpfs (the tiny model's weights take 400 KiB); where mounting is not allowed, the
    weights writer is made to fail as a full disk does, after writing part of its file."""
    folder = tmp_path / "full"
    with tmpfs(folder, "size=64k") as mounted:
        if not mounted:
            real_save = folder_module.save_torch_state_dict

            def save_until_full(state_dict, save_directory, **kwargs):
                real_save(state_dict, save_directory, **kwargs)
                weights = Path(save_directory) / "model.safetensors"
                weights.write_bytes(weights.read_bytes()[:65536])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(folder_module, "save_torch_state_dict", save_until_full)
        yield folder


def test_convert_into_a_read_only_folder(tiny_archive, read_only_folder, capsys):
    message = assert_cli_error(
        call_main(capsys, "convert", tiny_archive, "--output", read_only_folder / "sub" / "out"), "convert"
    )
    assert message.startswith(f"vit-zoo convert: error: cannot write {read_only_folder / 'sub' / 'out'} (")
    assert "(Read-only file system)" in message or "(Permission denied)" in message
    assert message.endswith("choose an output folder on a writable disk with free space")
    assert listing(read_only_folder) == []


def test_convert_onto_a_full_disk(tiny_archive, full_disk, capsys):
    message = assert_cli_error(call_main(capsys, "convert", tiny_archive, "--output", full_disk / "nested" / "out"), "convert")
    assert message.startswith(f"vit-zoo convert: error: cannot write {full_disk / 'nested' / 'out'} (")
    assert "No space left on device" in message
    assert listing(full_disk) == []  # neither the staging folder nor the parent made for it


SLOW_CONVERT = """
import sys, time
import vit_zoo.folder as folder
real = folder.save_torch_state_dict
def slow(*args, **kwargs):
    real(*args, **kwargs)
    print("staged", flush=True)
    time.sleep(300)
folder.save_torch_state_dict = slow
from vit_zoo.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_convert_leaves_nothing_once_the_next_run_starts(tiny_archive, tmp_path, signal_number, capsys):
    """SIGTERM left ``.out.*.partial`` (SIGINT was handled); after SIGKILL the next run sweeps it."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-c", SLOW_CONVERT, "convert", tiny_archive, "--output", tmp_path / "out"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout.readline() == "staged\n", process.stderr.read()
        assert any(name.endswith(".partial") for name in listing(tmp_path))
        process.send_signal(signal_number)
        process.wait(timeout=120)
    finally:
        process.kill()
        process.communicate()
    if signal_number == signal.SIGTERM:
        assert process.returncode == 143 and listing(tmp_path) == []
    code, _, err = call_main(capsys, "convert", tiny_archive, "--output", tmp_path / "next")
    assert code == 0, err
    assert [name for name in listing(tmp_path) if "/" not in name] == ["next"]
