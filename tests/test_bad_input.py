"""The bad-input battery: every entry point given something wrong ends in one clear line that names the problem
and the fix, leaves nothing half-written behind and runs nothing from the input.

CLI cases call ``vit_zoo.cli.main`` in this process (the code path of the console script, minus the seconds a
fresh interpreter spends importing torch); ``test_debug_shows_the_traceback`` and the subprocess tests of
test_convert_cli.py, test_hub.py and test_embed.py cover the script itself.

Cases covered elsewhere (not repeated here): missing / empty / random / truncated files, malicious pickles and
archives referencing ``os.system`` (test_readers.py, test_convert_cli.py); ResNet CLIP, text-only,
unknown layouts, wrong shapes, missing and extra blocks, non-float and empty geometry tensors
(test_state_dicts.py); existing output folders, failures while writing (test_convert.py); bad geometry
arguments and pixel values for the core and the transformers models, config of another model type for
``VitZooConfig``/``VitZooModel`` (test_model.py, test_modeling.py); malformed zoo YAML (test_zoo.py,
test_vision_transformer.py); bad timm kwargs and checkpoints of another geometry (test_vision_transformer.py);
Hub 401 / 403 / 404 / 500, repo of another model type, server down and a dropped commit for
``push_folder``/``pull`` and the CLI (test_hub.py); interrupted, resumed and mismatching downloads
(test_download.py); bad
``vit-zoo embed`` options and unreadable images (test_embed.py).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from checkpoints import openai_clip, write_state_dict, write_torchscript_archive
from file_server import FileServer
from helpers import REPO_ROOT, TINY_NAME, assert_cli_error, call_main, run_cli
from hub_server import READ_TOKEN, WRITE_TOKEN
from limits import budget, twice_at_once
from PIL import Image
from reference import TINY
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForImageClassification, CLIPVisionConfig, CLIPVisionModel

from vit_zoo import (
    CheckpointError,
    VitZooConfig,
    VitZooModel,
    convert_checkpoint,
    get_entry,
    load_checkpoint,
    push_folder,
    save_model_folder,
)
from vit_zoo import folder as folder_module
from vit_zoo.download import ATTEMPTS

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model_folder(VitZooModel(VitZooConfig(**TINY)).eval(), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def copied_folder(model_folder, tmp_path) -> Path:
    return Path(shutil.copytree(model_folder, tmp_path / "copy"))


def visual_tower(clip) -> dict[str, torch.Tensor]:
    return {k: v.float().clone() for k, v in clip.state_dict().items() if k.startswith("visual.")}


# --- checkpoints given to convert -----------------------------------------------------------------------------


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


class Payload(torch.nn.Module):
    """A TorchScript submodule whose ``__setstate__`` creates a file when ``torch.jit.load`` restores it (a stand-in
    for anything harmful: TorchScript code has file and tensor ops at hand)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return self.path, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1] and torch.from_file(self.path, True, 1).numel() > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture
def trojan_archive(tmp_path) -> tuple[Path, Path, torch.nn.Module]:
    """An OpenAI-format archive of a whole CLIP plus a ``Payload`` that would create ``marker`` if run."""
    marker = tmp_path / "marker"
    clip = openai_clip(TINY, seed=2)
    clip.payload = Payload(str(marker))
    archive = write_torchscript_archive(clip, tmp_path / "trojan.pt")
    del clip.payload
    assert not marker.exists()
    return archive, marker, clip


def test_trojan_archive_runs_its_code_under_torch_jit_load(trojan_archive):
    """Control for the next test: the payload is live."""
    archive, marker, _ = trojan_archive
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(archive))
    assert marker.exists()


def test_trojan_archive_converts_without_running_its_code(trojan_archive, tmp_path):
    archive, marker, clip = trojan_archive
    folder = convert_checkpoint(archive, tmp_path / "out", name=TINY_NAME)
    weights = load_file(folder / "model.safetensors")
    expected = {k.removeprefix("visual."): v for k, v in clip.state_dict().items() if k.startswith("visual.")}
    assert sorted(weights) == sorted(expected)
    assert all(torch.equal(weights[k], v) for k, v in expected.items())
    assert not marker.exists()


def test_tensors_larger_than_their_storage_are_refused(tmp_path):
    """A zero-stride view claims 10^10 elements over one stored value: copying it would need 40 GB."""
    huge = torch.zeros(1).expand(100_000, 100_000)
    clip = openai_clip(TINY)
    clip.register_buffer("huge", huge)
    archive = write_torchscript_archive(clip, tmp_path / "huge-archive.pt")
    state_dict = write_state_dict({"visual.proj": huge}, tmp_path / "huge-state-dict.pt")
    for path, name in ((archive, "huge"), (state_dict, "visual.proj")):
        with pytest.raises(CheckpointError, match=f"tensor {name} of size \\[100000, 100000\\] claims more elements"):
            load_checkpoint(path)


def test_wrapper_holding_itself_is_refused_not_looped_over(tmp_path):
    wrapper: dict = {}
    wrapper["state_dict"] = wrapper
    path = write_state_dict(wrapper, tmp_path / "loop.pt")
    with pytest.raises(CheckpointError, match="holds no tensors"):
        load_checkpoint(path)


def test_zip_member_claiming_more_than_the_file_is_refused(tiny_archive, tmp_path):
    """The central directory says data.pkl holds 2 GB: reading it would allocate that before finding out."""
    data = bytearray(tiny_archive.read_bytes())
    with zipfile.ZipFile(tiny_archive) as archive:
        start = archive.start_dir
    entry = data.index(b"ViT-T-8/data.pkl", start) - 46  # the central directory record of data.pkl
    data[entry + 20 : entry + 28] = (2**31 - 1).to_bytes(4, "little") * 2  # compressed and uncompressed size
    (tmp_path / "forged.pt").write_bytes(data)
    with pytest.raises(CheckpointError, match="ViT-T-8/data.pkl claims 2147483647 bytes, more than the whole file holds"):
        load_checkpoint(tmp_path / "forged.pt")


@pytest.fixture(scope="module")
def corrupt_safetensors(model_folder, tmp_path_factory) -> dict[str, Path]:
    """``model.safetensors`` of the tiny folder damaged three ways."""
    folder = tmp_path_factory.mktemp("corrupt")
    data = (model_folder / "model.safetensors").read_bytes()
    damaged = {
        "garbage-header": data[:8] + b"{garbage" + data[16:],
        "header-past-the-end": (10**9).to_bytes(8, "little") + data[8:],
        "truncated": data[: len(data) // 2],
    }
    for name, content in damaged.items():
        (folder / f"{name}.safetensors").write_bytes(content)
    return {name: folder / f"{name}.safetensors" for name in damaged}


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


@pytest.mark.parametrize("damage", ["garbage-header", "header-past-the-end", "truncated"])
def test_corrupt_safetensors_in_a_folder(corrupt_safetensors, copied_folder, damage):
    shutil.copyfile(corrupt_safetensors[damage], copied_folder / "model.safetensors")
    for loader in (AutoModel, VitZooModel):
        with pytest.raises(ValueError) as error:
            loader.from_pretrained(copied_folder)
        assert str(error.value).startswith(f"{copied_folder / 'model.safetensors'}")
        assert str(error.value).endswith("convert or download the weights again") and "\n" not in str(error.value)
    with pytest.raises(CheckpointError, match=f"{copied_folder / 'model.safetensors'}.*convert or download the weights again"):
        timm.create_model(f"local-dir:{copied_folder}", pretrained=True)


def test_cli_embed_and_push_refuse_a_folder_with_corrupt_weights(
    corrupt_safetensors, copied_folder, hub_server, tmp_path, capsys
):
    shutil.copyfile(corrupt_safetensors["truncated"], copied_folder / "model.safetensors")
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    expected = f"{copied_folder / 'model.safetensors'}: tensor 'transformer.resblocks.1.attn.out_proj.weight' has a header entry"
    assert_cli_error(call_main(capsys, "embed", copied_folder, image, "--output", tmp_path / "e.npy"), "embed", expected)
    assert_cli_error(call_main(capsys, "push", copied_folder, "org/corrupt", "--token", WRITE_TOKEN), "push", expected)
    assert hub_server.requests == [] and not (tmp_path / "e.npy").exists()


@pytest.fixture(scope="module")
def clip_vision_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip-vision")
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    CLIPVisionModel(config).save_pretrained(folder)
    return folder


def test_folder_of_another_model_type_in_timm_and_embed(clip_vision_folder, tmp_path, capsys):
    with pytest.raises(KeyError, match="architecture"):  # timm's local-dir: reads config.json before any vit_zoo code
        timm.create_model(f"local-dir:{clip_vision_folder}", pretrained=True)
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    assert_cli_error(
        call_main(capsys, "embed", clip_vision_folder, image, "--output", tmp_path / "e.npy"),
        "embed",
        "describes a 'clip_vision_model' model, not a 'vit_zoo' one; use a repo written by vit-zoo",
    )


@pytest.mark.parametrize(
    "edit, message",  # the message of VitZooConfig.from_pretrained and AutoModel.from_pretrained alike
    [
        (dict(width="big"), "width must be a positive int, got 'big' (str)"),
        (dict(layers=0), "layers must be a positive int, got 0"),
        (dict(patch_size=8.5), "patch_size must be a positive int, got 8.5 (float)"),
        (dict(heads=5), "width (64) must be divisible by heads (5)"),
        (dict(mlp_ratio=float("inf")), "mlp_ratio must be a positive number (finite), got inf"),
        (dict(mlp_ratio="4"), "mlp_ratio must be a positive number (finite), got '4'"),
        (dict(activation="relu"), "activation must be one of ('quick_gelu', 'gelu'), got 'relu'"),
        (dict(layer_norm_eps=-1), "layer_norm_eps must be a positive number (finite), got -1"),
    ],
    ids=lambda value: str(value)[:24] if isinstance(value, (dict, list)) else None,
)
def test_config_json_with_wrong_values(copied_folder, edit, message):
    config_path = copied_folder / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, **edit} if isinstance(edit, dict) else edit))
    for loader in (VitZooConfig, AutoModel):
        with pytest.raises(ValueError) as error:
            loader.from_pretrained(copied_folder)
        assert message in str(error.value) and "\n" not in str(error.value), (loader, str(error.value))


def test_config_json_that_is_not_a_json_object(copied_folder):
    (copied_folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="a config must be a JSON object of fields, got a list; the config.json"):
        VitZooConfig.from_pretrained(copied_folder)
    with pytest.raises(ValueError, match="Should have a `model_type` key in its config.json"):  # transformers' message
        AutoModel.from_pretrained(copied_folder)
    (copied_folder / "config.json").write_text("{not json")
    for loader in (VitZooConfig, AutoModel):
        with pytest.raises(OSError, match="config.json' is not a valid JSON file"):  # transformers' message
            loader.from_pretrained(copied_folder)


def test_timm_model_args_with_wrong_values(copied_folder):
    config_path = copied_folder / "config.json"
    config = json.loads(config_path.read_text())
    config["model_args"]["width"] = "big"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{TINY_NAME}: width must be a positive int, got 'big' \\(str\\)"):
        timm.create_model(f"local-dir:{copied_folder}", pretrained=True)


# --- images ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.randn(3, 32, 32), r"expected a 4D image batch \[batch, 3, 32, 32\], got a 3D tensor"),
        (torch.randn(2, 4, 32, 32), "expected 3 channels, got 4"),
        (torch.randn(2, 3, 48, 32), "expected images of 32x32, got 48x32; resize them"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "expected floating-point pixel values, got dtype torch.uint8"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.complex64), "expected floating-point pixel values"),
        (np.zeros((2, 3, 32, 32), dtype=np.float32), "expected a torch.Tensor of images"),
    ],
    ids=["3D", "4-channels", "48x32", "uint8", "complex", "numpy"],
)
def test_timm_model_refuses_bad_images(images, message):
    model = timm.create_model(TINY_NAME).eval()
    for method in (model, model.forward_features, model.forward_intermediates):
        with pytest.raises(ValueError, match=message):
            method(images)


def test_empty_batch_gives_empty_outputs():
    torch.manual_seed(0)
    model = VitZooModel(VitZooConfig(**TINY)).eval()
    empty = torch.zeros(0, 3, 32, 32)
    with torch.no_grad():
        outputs = model(empty, output_attention_map=True)
        timm_outputs = timm.create_model(TINY_NAME).eval()(empty)
    assert outputs.image_embeds.shape == (0, 32) and outputs.attention_map.shape == (TINY["layers"], 0, 4, 4, 4)
    assert timm_outputs.shape == (0, 32)


# --- output folders that cannot be written -------------------------------------------------------------------------


@contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[bool]:
    """Mount a tmpfs with ``options`` on ``folder`` if this process may (root with mount rights); yields whether it
    did."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield False
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


@pytest.fixture
def read_only_folder(tmp_path) -> Iterator[Path]:
    """A folder nobody may write into: a read-only tmpfs, or (for a non-root user) a folder without write mode."""
    folder = tmp_path / "read-only"
    with tmpfs(folder, "ro,size=64k") as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("root ignores file modes and may not mount here: no read-only folder to test with")
            folder.chmod(0o555)
        yield folder
        if not mounted:
            folder.chmod(0o755)


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


@pytest.mark.hub
def test_pull_into_a_read_only_or_full_output(model_folder, hub_server, read_only_folder, tmp_path, capsys):
    push_folder(model_folder, "org/tiny", token=WRITE_TOKEN)
    message = assert_cli_error(call_main(capsys, "pull", "org/tiny", "--output", read_only_folder / "out"), "pull")
    assert message.startswith(f"vit-zoo pull: error: cannot write {read_only_folder / 'out'} (")
    assert listing(read_only_folder) == []
    with tmpfs(tmp_path / "full", "size=64k") as mounted:
        if mounted:
            message = assert_cli_error(call_main(capsys, "pull", "org/tiny", "--output", tmp_path / "full" / "out"), "pull")
            assert "No space left on device" in message and listing(tmp_path / "full") == []


def test_embed_into_a_read_only_folder(model_folder, read_only_folder, tmp_path, capsys):
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    output = read_only_folder / "embeddings.safetensors"
    message = assert_cli_error(call_main(capsys, "embed", model_folder, image, "--output", output), "embed")
    assert message.endswith(f"--output {output}: {read_only_folder} is not writable; choose an output folder you can write to")
    assert listing(read_only_folder) == []


# --- the Hub failing ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_backoff(monkeypatch):
    """huggingface_hub retries a failed request after 1, 2, 4, 8 and 8 s: the retries still happen, the waits not."""
    import huggingface_hub.utils._http as http

    monkeypatch.setattr(http.time, "sleep", lambda seconds: None)


@pytest.mark.hub
@pytest.mark.parametrize(
    "fault, token, message",
    [
        (None, READ_TOKEN, "the token may not write to org/tiny (403); use a token with write access"),
        (("/preupload/", 404), WRITE_TOKEN, "the Hub answered 404 for org/tiny"),
        (("/commit/", 500), WRITE_TOKEN, "the Hub answered 500 for org/tiny: "),
        (("/lfs-upload/", 403), WRITE_TOKEN, "the token may not write to org/tiny (403)"),
    ],
    ids=["403-read-token", "404", "500-commit", "403-lfs-upload"],
)
def test_cli_push_refused_by_the_hub(model_folder, hub_server, fault, token, message, capsys):
    hub_server.create_repo("org/tiny")
    before = hub_server.list_commits("org/tiny")
    if fault is not None:
        hub_server.fail_next(*fault)
    assert_cli_error(call_main(capsys, "push", model_folder, "org/tiny", "--token", token), "push", message)
    assert hub_server.list_commits("org/tiny") == before


@pytest.mark.hub
@pytest.mark.parametrize(
    "fault, token, message",
    [
        (None, "hf_wrong", "the Hub refused the token (401) for org/tiny; log in again"),
        (("/resolve/main/config.json", 403), None, "access to org/tiny was refused (403): the repo is gated"),
        (("/model.safetensors", 500), None, "the Hub answered 500 for org/tiny: "),
        (("/tree/", 500), None, "the Hub answered 500 for org/tiny: "),
    ],
    ids=["401-wrong-token", "403-gated", "500-weights", "500-file-list"],
)
def test_cli_pull_refused_by_the_hub(model_folder, hub_server, no_backoff, fault, token, message, tmp_path, capsys):
    push_folder(model_folder, "org/tiny", token=WRITE_TOKEN)
    if fault is not None:  # on every try: a single 5xx is retried away by huggingface_hub
        hub_server.fail_next(*fault, count=10)
    token_args = ["--token", token] if token else []
    assert_cli_error(call_main(capsys, "pull", "org/tiny", "--output", tmp_path / "out", *token_args), "pull", message)
    assert not [path for path in tmp_path.iterdir() if "out" in path.name]  # no output, no staging folder


@pytest.mark.hub
def test_hub_that_refuses_connections(model_folder, hub_server, no_backoff, capsys):
    endpoint = hub_server.endpoint
    hub_server.stop()
    expected = f"cannot reach the Hub at {endpoint} for org/tiny ("
    assert_cli_error(call_main(capsys, "pull", "org/tiny"), "pull", expected, "check the network (or HF_ENDPOINT)")
    assert_cli_error(call_main(capsys, "push", model_folder, "org/tiny", "--token", WRITE_TOKEN), "push", expected)


def weights_upload(folder: Path) -> str:
    """The LFS upload path of the folder's ``model.safetensors`` on the test Hub."""
    return f"/lfs-upload/{hashlib.sha256((folder / 'model.safetensors').read_bytes()).hexdigest()}"


@pytest.mark.hub
def test_lfs_upload_dropped_once_is_retried_and_the_commit_is_whole(model_folder, hub_server, no_backoff):
    hub_server.drop_connection_on(weights_upload(model_folder), method="PUT")
    push_folder(model_folder, "org/tiny", token=WRITE_TOKEN)
    assert sum(r.path == weights_upload(model_folder) for r in hub_server.requests) == 2
    pushed = hub_server.files("org/tiny")
    assert pushed["model.safetensors"] == (model_folder / "model.safetensors").read_bytes()
    assert {name for name in pushed if name != ".gitattributes"} == {p.name for p in model_folder.iterdir()}


@pytest.mark.hub
def test_lfs_upload_dropped_every_time_leaves_the_repo_as_it_was(model_folder, hub_server, no_backoff, capsys):
    hub_server.create_repo("org/tiny")
    before = hub_server.list_commits("org/tiny"), hub_server.files("org/tiny")
    hub_server.drop_connection_on(weights_upload(model_folder), method="PUT", count=100)
    assert_cli_error(
        call_main(capsys, "push", model_folder, "org/tiny", "--token", WRITE_TOKEN),
        "push",
        f"cannot reach the Hub at {hub_server.endpoint} for org/tiny (",
    )
    assert sum(r.path == weights_upload(model_folder) for r in hub_server.requests) == 6  # a try and five retries
    assert (hub_server.list_commits("org/tiny"), hub_server.files("org/tiny")) == before


# --- downloads by name ------------------------------------------------------------------------------------------


@pytest.fixture
def mirror(monkeypatch) -> Iterator[tuple[FileServer, str]]:
    """A local mirror of OpenAI's download folder serving a stand-in for ViT-B/32's file, and its URL path."""
    with FileServer() as server:
        path = f"/{get_entry('ViT-B/32').pretrained['openai'].sha256}/ViT-B-32.pt"
        server.files[path] = os.urandom(10_000)
        monkeypatch.setenv("VIT_ZOO_OPENAI_BASE_URL", server.url)
        yield server, path


def test_interrupted_download_by_name(mirror, tmp_path, capsys):
    server, path = mirror
    server.drops[path] = [1000] * ATTEMPTS
    assert_cli_error(
        call_main(capsys, "convert", "ViT-B/32", "--output", tmp_path / "out", "--cache-dir", tmp_path / "cache"),
        "convert",
        f"was interrupted {ATTEMPTS} times (connection closed after {1000 * ATTEMPTS} of 10000 bytes); run again to "
        f"resume from the {1000 * ATTEMPTS} bytes kept in",
    )
    assert listing(tmp_path) == [
        "cache",
        "cache/checkpoints",
        "cache/checkpoints/ViT-B-32.pt.lock",
        "cache/checkpoints/ViT-B-32.pt.part",
    ]
    assert [request[1] for request in server.requests] == [None, "bytes=1000-", "bytes=2000-"]


def test_download_by_name_from_a_mirror_that_is_down(mirror, tmp_path, capsys):
    server, _ = mirror
    server.shutdown()
    server.server_close()
    assert_cli_error(
        call_main(capsys, "convert", "ViT-B/32", "--output", tmp_path / "out", "--cache-dir", tmp_path / "cache"),
        "convert",
        "cannot reach ",
        "check the network or set $VIT_ZOO_OPENAI_BASE_URL to a mirror",
    )
    assert listing(tmp_path) == ["cache", "cache/checkpoints", "cache/checkpoints/ViT-B-32.pt.lock"]  # no data


# --- --debug --------------------------------------------------------------------------------------------------------


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    result = run_cli("--debug", "convert", "notes.txt", "--output", "out", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback (most recent call last):" in result.stderr
    assert result.stderr.rstrip().endswith(
        "notes.txt is not a checkpoint (unknown file type); expected an OpenAI CLIP "
        ".pt archive, a torch.save state dict or a .safetensors file"
    )
    assert "vit_zoo/readers.py" in result.stderr and not (tmp_path / "out").exists()


# --- hostile images, folders and outputs for embed ---------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def hostile_images() -> dict[str, bytes]:
    """Image files that once ended the run or asked for gigabytes, by name (each a few hundred bytes)."""
    good = png_bytes(Image.fromarray(np.zeros((8, 8, 3), np.uint8)))
    at = good.index(b"IDAT")
    length = struct.unpack(">I", good[at - 4 : at])[0]
    pixels = good[at + 4 : at + 4 + length]
    tiff = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tiff, "TIFF")
    tiff = bytearray(tiff.getvalue())
    directory = struct.unpack("<I", tiff[4:8])[0]
    for entry in range(struct.unpack("<H", tiff[directory : directory + 2])[0]):
        at_entry = directory + 2 + 12 * entry
        if struct.unpack("<H", tiff[at_entry : at_entry + 2])[0] == 273:  # StripOffsets, now typed FLOAT
            tiff[at_entry + 2 : at_entry + 4] = struct.pack("<H", 11)
    ihdr = struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0)
    return {
        "wide.png": png_bytes(Image.new("L", (400_000, 1))),  # 5 GB once resized to a 32 px shortest edge
        "thin.png": png_bytes(Image.new("1", (1, 200_000))),
        "header-only.png": b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""),
        "garbage-chunk.png": good[: at - 4]
        + _png_chunk(b"IDAT", pixels[:5])
        + _png_chunk(b"\x00\x01\xff\x7f", pixels[5:])
        + good[at + 8 + length :],
        "float-offsets.tif": bytes(tiff),
    }


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(folder / "good.png")
    return folder


def test_embed_skips_bombs_and_broken_images(model_folder, image_folder, tmp_path, capsys):
    for name, content in hostile_images().items():
        (image_folder / name).write_bytes(content)
    code, out, err = call_main(capsys, "embed", model_folder, image_folder, "--output", tmp_path / "e.safetensors")
    assert code == 0 and out.startswith("embedded 1 image into") and "(5 skipped)" in out, (out, err)
    assert "Traceback" not in err and "DecompressionBomb" not in err
    skipped = [line.removeprefix("vit-zoo embed: skipped ") for line in err.splitlines() if "skipped" in line]
    reasons = dict(line.split(": ", 1) for line in skipped)
    assert reasons == {
        str(image_folder / "float-offsets.tif"): "'float' object cannot be interpreted as an integer",
        str(image_folder / "garbage-chunk.png"): "broken PNG file (chunk b'\\x00\\x01\\xff\\x7f')",
        str(image_folder / "header-only.png"): "Image size (200000000 pixels) exceeds limit of 178956970 pixels, could be "
        "decompression bomb DOS attack.",  # PIL's own refusal, raised by Image.open
        str(image_folder / "thin.png"): "1x200000 pixels would become 32x6400000 at a 32-pixel shortest edge, more "
        "than 4194304 pixels; crop it to a less extreme aspect ratio",
        str(image_folder / "wide.png"): "400000x1 pixels would become 12800000x32 at a 32-pixel shortest edge, more "
        "than 4194304 pixels; crop it to a less extreme aspect ratio",
    }


def test_overlays_of_images_sharing_a_stem_are_all_kept(model_folder, tmp_path, capsys):
    for relative in ("a/x.png", "b/x.png", "a/x.jpg", "a/y.png"):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((40, 40, 3), len(relative) * 20, np.uint8)).save(tmp_path / relative)
    code, out, _ = call_main(
        capsys,
        "embed",
        model_folder,
        tmp_path / "a",
        tmp_path / "b",
        "--output",
        tmp_path / "e.safetensors",
        "--overlays",
        tmp_path / "maps",
    )
    assert code == 0 and "wrote 4 attention overlays" in out
    assert listing(tmp_path / "maps") == [
        "a__x.jpg.attention.png",
        "a__x.png.attention.png",
        "b__x.png.attention.png",
        "y.attention.png",
    ]


def test_outputs_never_land_in_the_model_folder_or_on_an_input(copied_folder, image_folder, tmp_path, capsys):
    """``--output M/model.safetensors`` replaced the weights; every later embed ran on random ones with exit 0."""
    before = listing(copied_folder), (copied_folder / "model.safetensors").read_bytes()
    image = image_folder / "good.png"
    for flags in (
        ["--output", copied_folder / "model.safetensors"],
        ["--output", tmp_path / "e.npy", "--overlays", copied_folder / "maps"],
    ):
        assert_cli_error(call_main(capsys, "embed", copied_folder, image, *flags), "embed", "is inside the model folder")
    (tmp_path / "e.npy").write_bytes(b"an input")  # files named directly are embedded whatever their suffix
    assert_cli_error(
        call_main(capsys, "embed", copied_folder, tmp_path / "e.npy", "--output", tmp_path / "e.npy"),
        "embed",
        "e.npy is one of the input images; choose an output that does not overwrite an input",
    )
    assert (listing(copied_folder), (copied_folder / "model.safetensors").read_bytes()) == before


def test_bad_output_suffix_and_unpairable_names_are_refused_before_any_work(model_folder, image_folder, tmp_path, capsys):
    maps = tmp_path / "maps"
    assert_cli_error(
        call_main(capsys, "embed", model_folder, image_folder, "--output", tmp_path / "e.txt", "--overlays", maps),
        "embed",
        "--output must end in .safetensors or .npy, got e.txt",
    )
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image_folder / "two\nlines.png")
    assert_cli_error(
        call_main(capsys, "embed", model_folder, image_folder, "--output", tmp_path / "e.npy", "--overlays", maps),
        "embed",
        "holds a line break, which the one-name-per-line .npy.files.txt cannot pair; use a .safetensors --output",
    )
    assert listing(tmp_path) == ["images", "images/good.png", "images/two\nlines.png"]


def test_failed_npy_write_leaves_no_files_list(model_folder, image_folder, tmp_path, capsys):
    (tmp_path / "e.npy").mkdir()  # the final rename would fail: a folder is in the way, refused before any work
    assert_cli_error(
        call_main(capsys, "embed", model_folder, image_folder, "--output", tmp_path / "e.npy"), "embed", "is a folder"
    )
    assert listing(tmp_path) == ["e.npy", "images", "images/good.png"]


def test_mistyped_folder_is_named_not_taken_for_a_repo_id(image_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for model in ("./vit-b-61", "models/vit-b/61", "~/vit-b-61"):
        assert_cli_error(call_main(capsys, "embed", model, image_folder), "embed", f"no such folder {model}, and not a zoo name")


# --- hostile folders and repos: embed, push and pull load only sound vit_zoo folders ---------------------------------

EVIL_CODE = """import pathlib
pathlib.Path(__file__).with_name("marker").write_text("repo code ran")
from transformers import CLIPImageProcessor
class EvilProcessor(CLIPImageProcessor):
    pass
"""


def make_evil(folder: Path) -> Path:
    """The folder with an image processor ``auto_map`` pointing at ``evil.py``, which leaves ``marker`` if run."""
    (folder / "evil.py").write_text(EVIL_CODE)
    for name in ("config.json", "preprocessor_config.json"):
        settings = json.loads((folder / name).read_text())
        settings["auto_map"] = {**settings.get("auto_map", {}), "AutoImageProcessor": "evil.EvilProcessor"}
        (folder / name).write_text(json.dumps(settings))
    return folder


def test_embed_never_offers_or_runs_repo_code(copied_folder, image_folder, tmp_path, capsys):
    make_evil(copied_folder)
    code, out, err = call_main(capsys, "embed", copied_folder, image_folder, "--output", tmp_path / "e.safetensors")
    assert code == 0 and "embedded 1 image into" in out, err
    assert not (copied_folder / "marker").exists() and "custom code" not in err


@pytest.mark.hub
def test_embed_of_a_hub_repo_never_offers_or_runs_repo_code(copied_folder, image_folder, hub_server, tmp_path, capsys):
    from huggingface_hub import HfApi

    hub_server.create_repo("org/evil")
    HfApi(token=WRITE_TOKEN).upload_folder(repo_id="org/evil", folder_path=make_evil(copied_folder), repo_type="model")
    code, out, err = call_main(capsys, "embed", "org/evil", image_folder, "--output", tmp_path / "e.safetensors")
    assert code == 0 and "embedded 1 image into" in out, err
    assert "custom code" not in err and not list(Path(os.environ["HF_HOME"]).rglob("marker"))


@pytest.mark.hub
def test_push_uploads_exactly_the_folder_format(copied_folder, hub_server, tmp_path, capsys):
    """Dotfiles, stray files and symlinks leaving the folder went up to a repo that is public by default."""
    (tmp_path / "secret.txt").write_text("password")
    (copied_folder / ".env").write_text("HF_TOKEN=hf_secret")
    (copied_folder / "notes.txt").write_text("private notes")
    (copied_folder / "linked.txt").symlink_to(tmp_path / "secret.txt")
    expected = sorted(path.name for path in copied_folder.iterdir() if path.name not in (".env", "notes.txt", "linked.txt"))
    code, out, err = call_main(capsys, "push", copied_folder, "org/tiny", "--token", WRITE_TOKEN)
    assert code == 0, err
    assert sorted(name for name in hub_server.files("org/tiny") if name != ".gitattributes") == expected
    (copied_folder / "README.md").unlink()
    (copied_folder / "README.md").symlink_to(tmp_path / "secret.txt")
    assert_cli_error(
        call_main(capsys, "push", copied_folder, "org/tiny", "--token", WRITE_TOKEN),
        "push",
        f"README.md is a symlink to {tmp_path / 'secret.txt'}, outside the folder; copy the file into the folder",
    )


@pytest.mark.hub
def test_push_private_onto_an_existing_public_repo_is_refused(model_folder, hub_server, capsys):
    hub_server.create_repo("org/public")
    before = hub_server.list_commits("org/public")
    assert_cli_error(
        call_main(capsys, "push", model_folder, "org/public", "--private", "--token", WRITE_TOKEN),
        "push",
        "org/public exists and is public; --private only makes a new repo private",
    )
    assert hub_server.list_commits("org/public") == before


@pytest.mark.hub
def test_push_of_a_readme_that_is_not_utf8_names_it(copied_folder, hub_server, capsys):
    (copied_folder / "README.md").write_bytes(b"# caf\xe9\n")
    assert_cli_error(
        call_main(capsys, "push", copied_folder, "org/tiny", "--token", WRITE_TOKEN),
        "push",
        f"{copied_folder / 'README.md'} is not UTF-8 text",
    )


@pytest.fixture
def sharded_folder(tmp_path) -> Path:
    torch.manual_seed(0)
    model = VitZooModel(VitZooConfig(**TINY)).eval()
    return save_model_folder(model, tmp_path / "sharded", max_shard_size=100_000)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/model.safetensors"])
def test_shard_index_naming_paths_out_of_the_folder(sharded_folder, image_folder, tmp_path, shard, capsys):
    index_path = sharded_folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    index_path.write_text(json.dumps(index))
    assert_cli_error(
        call_main(capsys, "embed", sharded_folder, image_folder, "--output", tmp_path / "e.npy"),
        "embed",
        f"model.safetensors.index.json names shard '{shard}', which is not a .safetensors file in the folder",
    )


def _edit_json(name: str, **changes):
    def edit(folder: Path) -> None:
        settings = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**settings, **changes}))

    return edit


def _edit_weights(change):
    def edit(folder: Path) -> None:
        weights = load_file(folder / "model.safetensors")
        change(weights)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    return edit


HOSTILE_FOLDERS = {  # edit -> what the one line must say
    "missing-proj": (_edit_weights(lambda w: w.pop("proj")), "weights do not fit a tower of", "missing: proj"),
    "missing-ln_post": (_edit_weights(lambda w: w.pop("ln_post.weight")), "missing: ln_post.weight"),
    "nan-weight": (
        _edit_weights(lambda w: w["ln_pre.weight"].__setitem__(0, float("nan"))),
        "NaN or Inf values in ln_pre.weight",
    ),
    "layers-20000": (
        _edit_json("config.json", layers=20000),
        f"asks for layers=20000 but the weights hold {TINY['layers']} blocks",
    ),
    "layers-1": (_edit_json("config.json", layers=1), "unexpected: transformer.resblocks.1-2.* (24 tensors)"),
    "output_dim": (_edit_json("config.json", output_dim=64), "wrong shape: proj [64, 32] (expected [64, 64])"),
    "width-big": (_edit_json("config.json", width="big"), "config.json: width must be a positive int, got 'big'"),
    "dtype-bogus": (
        _edit_json("config.json", dtype="bogus"),
        "config.json: dtype 'bogus' is not one of float32, float16, bfloat16",
    ),
    "std-zero": (
        _edit_json("preprocessor_config.json", image_std=[0, 0, 0]),
        "preprocessor_config.json: image_std [0, 0, 0] must be positive",
    ),
    "mean-missing": (
        _edit_json("preprocessor_config.json", image_mean=None),
        "preprocessor_config.json: image_mean must be 3 finite numbers",
    ),
    "rescale-1e300": (
        _edit_json("preprocessor_config.json", rescale_factor=1e300),
        "preprocessor_config.json: rescale_factor, image_mean and image_std map 8-bit pixels as far as ",
    ),
    "mean-1e308": (_edit_json("preprocessor_config.json", image_mean=[1e308, 0, 0]), "image_std map 8-bit pixels as far as "),
    "std-subnormal": (_edit_json("preprocessor_config.json", image_std=[1e-320, 1, 1]), "as far as inf from 0"),
    "shortest-edge-huge": (
        _edit_json("preprocessor_config.json", size={"shortest_edge": 10**9}),
        "size.shortest_edge 1000000000 must lie between crop_size (32) and 4x it",
    ),
    "crop-mismatch": (
        _edit_json("preprocessor_config.json", crop_size={"height": 16, "width": 16}, size={"shortest_edge": 16}),
        "crop_size 16 differs from config.json's input_resolution 32",
    ),
    "processor-5kb": (_edit_json("preprocessor_config.json", image_processor_type="X" * 5000), "image_processor_type 'XXXXXXX"),
    "processor-missing": (lambda folder: (folder / "preprocessor_config.json").unlink(), "preprocessor_config.json is missing"),
    "config-not-utf8": (lambda folder: (folder / "config.json").write_bytes(b"\xff\xfe{}"), "config.json is not UTF-8 text"),
}


@pytest.mark.parametrize("case", list(HOSTILE_FOLDERS))
def test_embed_refuses_folders_that_would_give_wrong_numbers(copied_folder, image_folder, tmp_path, case, capsys):
    """Each of these folders made transformers fill gaps with random values (or NaN) and embed exit 0."""
    edit, *fragments = HOSTILE_FOLDERS[case]
    edit(copied_folder)
    message = assert_cli_error(
        call_main(capsys, "embed", copied_folder, image_folder, "--output", tmp_path / "e.npy"), "embed", *fragments
    )
    assert len(message) < 400 and not (tmp_path / "e.npy").exists()


def test_transformers_refuses_a_config_asking_for_more_blocks_than_the_weights_hold(copied_folder):
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


def test_transformers_truncates_to_fewer_layers_as_it_does_for_its_own_models(model_folder):
    """``layers=N`` below the weights' block count keeps the first N blocks (transformers' ``num_hidden_layers``
    idiom), reporting the rest as unexpected."""
    truncated, loading_info = AutoModel.from_pretrained(model_folder, layers=1, output_loading_info=True)
    assert len(truncated.visual.transformer.resblocks) == 1
    assert {name.split(".")[2] for name in loading_info["unexpected_keys"]} == {"1", "2"}


def test_transformers_reports_a_missing_tensor_as_it_does_for_its_own_models(copied_folder):
    """transformers' contract (its ``test_model_weights_reload_no_missing_tied_weights``): tensors missing from
    the weights are initialised and reported, not refused. ``vit-zoo embed`` refuses such a folder."""
    HOSTILE_FOLDERS["missing-proj"][0](copied_folder)
    _, loading_info = AutoModel.from_pretrained(copied_folder, output_loading_info=True)
    assert loading_info["missing_keys"] == {"visual.proj"}


def test_transformers_still_initialises_a_new_classifier_head(model_folder):
    classifier, loading_info = AutoModelForImageClassification.from_pretrained(
        model_folder, num_labels=3, output_loading_info=True
    )
    assert sorted(loading_info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert classifier(torch.randn(1, 3, 32, 32)).logits.shape == (1, 3)


@pytest.mark.hub
def test_transformers_refuses_a_hub_repo_claiming_more_layers_than_its_weights_hold(copied_folder, hub_server):
    from huggingface_hub import HfApi

    HOSTILE_FOLDERS["layers-20000"][0](copied_folder)
    hub_server.create_repo("org/layers-20000")
    HfApi(token=WRITE_TOKEN).upload_folder(repo_id="org/layers-20000", folder_path=copied_folder, repo_type="model")
    with budget(60), pytest.raises(ValueError, match="org/layers-20000 .model.safetensors.: the config asks for layers=20000"):
        AutoModel.from_pretrained("org/layers-20000")


def test_timm_local_dir_claiming_more_layers_than_its_weights_hold(copied_folder):
    config_path = copied_folder / "config.json"
    config = json.loads(config_path.read_text())
    config["model_args"]["layers"] = 20000
    config_path.write_text(json.dumps(config))
    message = f"the config asks for layers=20000 but the weights hold {TINY['layers']} blocks"
    with budget(60), pytest.raises(CheckpointError, match=message):
        timm.create_model(f"local-dir:{copied_folder}", pretrained=True)


@pytest.mark.hub
def test_timm_hf_hub_repo_claiming_more_layers_than_its_weights_hold(copied_folder, hub_server):
    from huggingface_hub import HfApi

    config_path = copied_folder / "config.json"
    config = json.loads(config_path.read_text())
    config["model_args"]["layers"] = 20000
    config_path.write_text(json.dumps(config))
    hub_server.create_repo("org/timm-bomb")
    HfApi(token=WRITE_TOKEN).upload_folder(repo_id="org/timm-bomb", folder_path=copied_folder, repo_type="model")
    with budget(60), pytest.raises(CheckpointError, match="the config asks for layers=20000 but the weights hold"):
        timm.create_model("hf-hub:org/timm-bomb", pretrained=True)


@pytest.mark.hub
def test_push_and_pull_refuse_unsound_folders(copied_folder, hub_server, tmp_path, capsys):
    """push and pull checked only model_type: they moved width: "big", missing tensors and NaN weights."""
    from huggingface_hub import HfApi

    for case in ("width-big", "missing-proj", "nan-weight"):
        folder = Path(shutil.copytree(copied_folder, tmp_path / case))
        edit, *fragments = HOSTILE_FOLDERS[case]
        edit(folder)
        assert_cli_error(call_main(capsys, "push", folder, f"org/{case}", "--token", WRITE_TOKEN), "push", *fragments)
        hub_server.create_repo(f"org/{case}")
        HfApi(token=WRITE_TOKEN).upload_folder(repo_id=f"org/{case}", folder_path=folder, repo_type="model")
        assert_cli_error(call_main(capsys, "pull", f"org/{case}", "--output", tmp_path / f"{case}-out"), "pull", *fragments)
        assert not (tmp_path / f"{case}-out").exists()


@pytest.mark.hub
@pytest.mark.parametrize(
    "body, message",
    [(b"<html>not json</html>", "is not a JSON list of files"), (b'{"path": "x"}', "is not a JSON list of files")],
    ids=["not-json", "object"],
)
def test_pull_of_a_malformed_file_listing(model_folder, hub_server, body, message, tmp_path, capsys):
    push_folder(model_folder, "org/tiny", token=WRITE_TOKEN)
    hub_server.answer_next("/tree/", body)
    assert_cli_error(call_main(capsys, "pull", "org/tiny", "--output", tmp_path / "out"), "pull", message)


@pytest.mark.hub
def test_offline_pull_after_an_interrupted_pull_is_refused(model_folder, hub_server, no_backoff, tmp_path, capsys, monkeypatch):
    """An offline pull exited 0 with no preprocessor_config.json in its output."""
    import huggingface_hub.constants as constants

    push_folder(model_folder, "org/tiny", token=WRITE_TOKEN)
    hub_server.fail_next("/preprocessor_config.json", 500, count=10)
    assert call_main(capsys, "pull", "org/tiny")[0] == 1
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert_cli_error(
        call_main(capsys, "pull", "org/tiny", "--output", tmp_path / "out"), "pull", "preprocessor_config.json is missing"
    )
    assert not (tmp_path / "out").exists()


# --- crash consistency and concurrency ---------------------------------------------------------------------------

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


def test_concurrent_embeds_of_one_zoo_name_convert_once(tiny_archive, tmp_path, monkeypatch):
    """The loser of two ``embed NAME`` runs failed with "appeared while converting" though a valid folder existed."""
    import time

    from vit_zoo import embed

    conversions = []

    def convert_slowly(name, output, cache_dir=None):
        conversions.append(name)
        time.sleep(1)  # both runs are in here at once without the lock
        return convert_checkpoint(tiny_archive, output)

    monkeypatch.setattr(embed, "convert_checkpoint", convert_slowly)
    results, errors = twice_at_once(lambda: embed.resolve_model_folder("ViT-B/32", tmp_path / "cache"))
    assert errors == [] and len(conversions) == 1
    assert results == [tmp_path / "cache" / "converted" / "vit_zoo_base_patch32_clip_224"] * 2
