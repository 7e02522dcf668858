"""``vit_zoo.readers``: checkpoints read safely. TorchScript archives as zips (memory-mapped, never run), pickles
only with weights_only, state-dict wrappers unwrapped; missing, empty, truncated, malicious and forged files
refused with one line; a TorchScript archive carrying code converts without that code running."""

import pickle
import sys
import types
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from checkpoints import (
    OPENAI_SCALARS,
    malicious_pickle,
    openai_clip,
    rewrite_archive,
    write_state_dict,
    write_torchscript_archive,
)
from helpers import TINY_NAME
from reference import OPENAI_GEOMETRIES, TINY
from safetensors.torch import load_file, save_file

from vit_zoo import CheckpointError, convert_checkpoint, load_checkpoint


def jit_state_dict(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path)).state_dict()


def assert_same_tensors(actual: dict, expected: dict, ordered: bool = True):
    assert list(actual) == list(expected) if ordered else sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key], tensor), key


@pytest.mark.parametrize("geometry", [TINY, OPENAI_GEOMETRIES["ViT-B/32"]], ids=["tiny", "B-32"])
def test_archive_reads_as_torch_jit_load_state_dict(geometry, tmp_path):
    archive = write_torchscript_archive(openai_clip(geometry), tmp_path / "model.pt")
    tensors = load_checkpoint(archive)
    assert_same_tensors(tensors, jit_state_dict(archive))
    assert {key: tensors[key].item() for key in OPENAI_SCALARS} == {
        "input_resolution": geometry["input_resolution"],
        "context_length": 8,
        "vocab_size": 64,
    }
    assert tensors["visual.conv1.weight"].dtype == torch.float16


def test_archive_top_folder_name_does_not_matter(tiny_archive, tmp_path):
    renamed = rewrite_archive(tiny_archive, tmp_path / "renamed.pt", lambda name, data: (name.replace("ViT-T-8/", "x/", 1), data))
    assert {n.split("/")[0] for n in zipfile.ZipFile(renamed).namelist()} == {"x"}
    assert_same_tensors(load_checkpoint(renamed), jit_state_dict(tiny_archive))


def mapped_files(address: int) -> list[str]:
    """Paths of the file mappings (``/proc/self/maps``) that contain ``address``."""
    paths = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end and len(fields) == 6:
            paths.append(fields[5])
    return paths


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_archive_tensors_are_memory_mapped_not_copied(tiny_archive):
    tensors = load_checkpoint(tiny_archive)
    for key in ("visual.conv1.weight", "token_embedding.weight"):
        assert mapped_files(tensors[key].data_ptr()) == [str(tiny_archive.resolve())], key


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd},
        lambda sd: {"model": sd},
        lambda sd: {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["plain", "state_dict", "model", "open_clip-ddp"],
)
def test_state_dict_files_and_wrappers(tiny_clip, wrap, tmp_path):
    expected = tiny_clip.state_dict()
    path = write_state_dict(expected, tmp_path / "clip.pt", wrap)
    assert_same_tensors(load_checkpoint(path), expected)


def test_legacy_torch_save_format(tiny_clip, tmp_path):
    expected = tiny_clip.state_dict()
    path = write_state_dict(expected, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    assert_same_tensors(load_checkpoint(path), expected)


def test_safetensors_file(tiny_clip, tmp_path):
    expected = {k: v.contiguous() for k, v in tiny_clip.state_dict().items() if k != "attn_mask"}
    save_file(expected, tmp_path / "clip.safetensors")
    assert_same_tensors(load_checkpoint(tmp_path / "clip.safetensors"), expected, ordered=False)  # sorted on disk


# --- what must be refused, with one clear line ------------------------------------------------------------------


def refused(path, *fragments):
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_empty_folder_and_random_files(tmp_path):
    refused(tmp_path / "nope.pt", "nope.pt is missing")
    (tmp_path / "empty.pt").write_bytes(b"")
    refused(tmp_path / "empty.pt", "is empty", "expected an OpenAI CLIP .pt archive")
    refused(tmp_path, "is a folder")
    (tmp_path / "random.pt").write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8).numpy().tobytes()
    )
    refused(tmp_path / "random.pt", "not a checkpoint")


def test_truncated_archive(tiny_archive, tmp_path):
    data = tiny_archive.read_bytes()
    for cut in (len(data) // 2, len(data) - 100):
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        refused(tmp_path / "cut.pt", "truncated or corrupt zip")


def test_archive_missing_a_storage(tiny_archive, tmp_path):
    path = rewrite_archive(
        tiny_archive, tmp_path / "holey.pt", lambda name, data: None if name.endswith("/data/3") else (name, data)
    )
    refused(path, "tensor storage ViT-T-8/data/3 is missing")


def test_archive_with_a_short_storage(tiny_archive, tmp_path):
    def shorten(name, data):
        return (name, data[:0]) if name.endswith("/data/0") else (name, data)

    refused(rewrite_archive(tiny_archive, tmp_path / "short.pt", shorten), "ViT-T-8/data/0 holds 0 bytes")


def test_archive_without_code_for_its_classes(tiny_archive, tmp_path):
    path = rewrite_archive(tiny_archive, tmp_path / "nocode.pt", lambda n, d: None if "/code/" in n else (n, d))
    # (the class may carry a ___torch_mangle_N segment when open_clip's CLIP was scripted before in this process)
    refused(path, "no code for class __torch__.open_clip.model.", "so its tensors cannot be named")


def test_pickled_payload_would_run_without_protection(tmp_path):
    """Control for the tests below: the payload is live, so 'marker not created' means it was not run."""
    marker = tmp_path / "marker"
    pickle.loads(malicious_pickle(marker))
    assert marker.exists()


def test_malicious_pickle_is_not_run(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "evil.pkl").write_bytes(malicious_pickle(marker))
    refused(tmp_path / "evil.pkl", "refused to unpickle", "never code")
    assert not marker.exists()


def test_malicious_torch_save_zip_is_not_run(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:  # what torch.save writes, with a hostile data.pkl
        archive.writestr("evil/data.pkl", malicious_pickle(marker))
        archive.writestr("evil/version", "3\n")
        archive.writestr("evil/byteorder", "little")
    refused(path, "refused to unpickle", "posix.system")
    assert not marker.exists()


def test_archive_referencing_os_system_is_refused(tiny_archive, tmp_path):
    marker = tmp_path / "marker"

    def poison(name, data):
        return (name, malicious_pickle(marker)) if name.endswith("/data.pkl") else (name, data)

    refused(
        rewrite_archive(tiny_archive, tmp_path / "evil.pt", poison),
        "references posix.system",
        "nothing from the file was run",
    )
    assert not marker.exists()


def test_state_dict_without_tensors(tmp_path):
    refused(write_state_dict({}, tmp_path / "nothing.pt", lambda sd: {"epoch": 1}), "holds no tensors")
    refused(write_state_dict({}, tmp_path / "list.pt", lambda sd: [torch.zeros(1)]), "holds a list, not a state dict")


def test_archive_whose_module_tree_loops_is_refused(tmp_path, monkeypatch):
    """A hand-made archive: module ``__torch__.Loop`` lists itself as its own submodule."""
    loop_class = type("Loop", (), {"__module__": "__torch__"})
    monkeypatch.setitem(sys.modules, "__torch__", types.SimpleNamespace(Loop=loop_class))
    loop = loop_class()
    loop.child = loop
    path = tmp_path / "loop.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("loop/data.pkl", pickle.dumps(loop, protocol=2))
        archive.writestr("loop/code/__torch__.py", "class Loop(Module):\n  __parameters__ = []\n  __buffers__ = []\n")
        archive.writestr("loop/constants.pkl", pickle.dumps((), protocol=2))
    refused(path, "module child appears twice in the module tree")


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


# --- TorchScript code inside an archive is never run ------------------------------------------------------------


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
