"""Fuzzing the checkpoint reader: seeded mutations of a valid OpenAI-format TorchScript archive and of a
``torch.save`` state dict (byte flips in the zip structure, truncation, removed and duplicated members,
edited ``data.pkl`` opcodes with oversized sizes, offsets and shapes, hostile globals, shared-reference bombs and
code lines, blank lines that once made a regex quadratic).

Every case must end in a load whose tensors all lie inside the bytes the file holds, or in one clean
``CheckpointError`` line; never another exception, never more than ``CASE_BUDGET_S`` seconds, never an
allocation of more than ``MEMORY_HEADROOM`` (the address space is capped while a case runs), and never
the marker file that the injected payloads would create if anything from the file were run.
"""

from __future__ import annotations

import io
import pickletools
import random
import re
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from checkpoints import openai_clip, write_state_dict, write_torchscript_archive
from limits import ALLOCATION_FAILURE, Hang, budget, run_cases, unexpected
from reference import TINY

from vit_zoo import CheckpointError, load_checkpoint

SEED = 20261125
CASES = {"archive": 240, "state_dict": 140}
CASE_BUDGET_S = 5
INT_VALUES = (0, 1, -1, 7, 255, 2**16, 2**31 - 1, -(2**31), 2**32, 2**40, 2**62, 2**63 + 5, -(2**62), 10**30)
HOSTILE_GLOBALS = (
    ("posix", "system"),
    ("builtins", "eval"),
    ("builtins", "getattr"),
    ("torch", "load"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"),
    ("collections", "OrderedDict"),
    ("torch.jit._pickle", "build_tensorlist"),
    ("__torch__.x", "Y"),
)


# --- mutations: (rng, valid bytes, marker) -> mutated bytes ----------------------------------------------------


def _members(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info, archive.read(info)) for info in archive.infolist()]


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": wanted here
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for name, content in members:
                archive.writestr(name, content)
    return buffer.getvalue()


def _regions(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges worth hitting: each local header, the data.pkl and code members, the central directory."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        directory_start = archive.start_dir
    regions = [(0, len(data)), (directory_start, len(data))]
    for info in infos:
        name_length, extra_length = struct.unpack("<2H", data[info.header_offset + 26 : info.header_offset + 30])
        start = info.header_offset + 30 + name_length + extra_length
        regions.append((info.header_offset, start))
        if info.filename.endswith(("data.pkl", ".py")):
            regions.append((start, start + info.compress_size))
    return [(start, end) for start, end in regions if end > start]


def flip_bytes(rng: random.Random, data: bytes, marker: Path) -> bytes:
    mutated = bytearray(data)
    start, end = rng.choice(_regions(data))
    for _ in range(rng.randint(1, 8)):
        mutated[rng.randrange(start, end)] = rng.randrange(256)
    return bytes(mutated)


def truncate(rng: random.Random, data: bytes, marker: Path) -> bytes:
    return data[: rng.randrange(len(data))]


def drop_member(rng: random.Random, data: bytes, marker: Path) -> bytes:
    members = [(info.filename, content) for info, content in _members(data)]
    del members[rng.randrange(len(members))]
    return _zip(members)


def duplicate_member(rng: random.Random, data: bytes, marker: Path) -> bytes:
    members = [(info.filename, content) for info, content in _members(data)]
    name, content = rng.choice(members)
    copy = content[: rng.randrange(len(content) + 1)] if rng.random() < 0.5 else content
    members.insert(rng.randrange(len(members) + 1), (name, copy))
    return _zip(members)


def _encode_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + value.to_bytes(2, "little")
    if -(2**31) <= value < 2**31:
        return b"J" + value.to_bytes(4, "little", signed=True)
    encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(encoded)]) + encoded


def _encode_global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _payload(marker: Path) -> bytes:
    """Opcodes that call ``os.system("touch MARKER")`` and drop the result, if their global is ever resolved."""
    command = f"touch {marker}".encode()
    return _encode_global("posix", "system") + b"(X" + struct.pack("<I", len(command)) + command + b"tR0"


def _edit_opcode(rng: random.Random, pickled: bytes, marker: Path) -> bytes:
    """Splice one opcode of a pickle: pickles address their memo by index, not by position, so this stays parseable
    up to the edit."""
    try:
        operations = list(pickletools.genops(pickled))
    except ValueError:  # an earlier edit of this case broke the stream: it stays as it is
        return pickled
    ends = [position for _, _, position in operations[1:]] + [len(pickled)]
    ints = [i for i, (op, _, _) in enumerate(operations) if op.name in ("BININT", "BININT1", "BININT2", "LONG1")]
    strings = [i for i, (op, _, _) in enumerate(operations) if op.name in ("BINUNICODE", "SHORT_BINUNICODE")]
    globals_ = [i for i, (op, _, _) in enumerate(operations) if op.name in ("GLOBAL", "STACK_GLOBAL")]
    kind = rng.choice(["int", "int", "int", "string", "global", "delete", "duplicate", "opcode", "payload", "bomb"])
    index = rng.randrange(len(operations) - 1)  # never STOP itself
    if kind == "int" and ints:
        index = rng.choice(ints)
        replacement = _encode_int(rng.choice(INT_VALUES) if rng.random() < 0.8 else rng.randrange(-(2**20), 2**20))
    elif kind == "string" and strings:
        index = rng.choice(strings)
        text = rng.choice([b"", b"x", b"storage", b"0" * 300, bytes(rng.randrange(256) for _ in range(6))])
        length = rng.choice([len(text), len(text), 2**31 - 1, len(text) + 5])
        replacement = b"X" + struct.pack("<I", length) + text
    elif kind == "bomb" and strings:  # a name becomes a tuple nested (t, t) 40+ deep: a few bytes, 2**40 to hash
        index = rng.choice(strings)
        replacement = b")" + b"2\x86" * rng.randrange(40, 64)  # EMPTY_TUPLE, then DUP + TUPLE2 again and again
    elif kind == "global" and globals_:
        index = rng.choice(globals_)
        replacement = _encode_global(*rng.choice(HOSTILE_GLOBALS))
    elif kind == "delete":
        replacement = b""
    elif kind == "duplicate":
        replacement = pickled[operations[index][2] : ends[index]] * 2
    elif kind == "opcode":
        replacement = bytes([rng.randrange(256)]) + pickled[operations[index][2] + 1 : ends[index]]
    else:
        replacement = _payload(marker) + pickled[operations[index][2] : ends[index]]
    return pickled[: operations[index][2]] + replacement + pickled[ends[index] :]


def edit_pickle(rng: random.Random, data: bytes, marker: Path) -> bytes:
    members = []
    for info, content in _members(data):
        if info.filename.endswith("/data.pkl"):
            for _ in range(rng.choice([1, 1, 2, 3])):
                content = _edit_opcode(rng, content, marker)
        members.append((info.filename, content))
    return _zip(members)


def edit_code(rng: random.Random, data: bytes, marker: Path) -> bytes:
    """Rewrite a ``__parameters__``/``__buffers__`` line of the archive's code, which the reader parses as text."""
    members = [(info.filename, content) for info, content in _members(data)]
    code = [i for i, (name, _) in enumerate(members) if "/code/" in name and name.endswith(".py")]
    index = rng.choice(code)
    name, content = members[index]
    value = rng.choice(
        [
            f"[__import__('os').system('touch {marker}')]",
            "[",
            "[" * 5000 + "]" * 5000,
            '["weight", 3]',
            "{'a': 1}",
            '["' + "w" * 10_000 + '"]',
            '["proj", "proj"]',
            "[]",
        ]
    )
    field = rng.choice(["__parameters__", "__buffers__"])
    edited = re.sub(rf"^(\s+){field} = .*$", lambda m: f"{m.group(1)}{field} = {value}", content.decode(), flags=re.M)
    if rng.random() < 0.2:
        edited = edited.encode()[: rng.randrange(len(edited))].decode(errors="ignore") + "\udcff"
    members[index] = (name, edited.encode(errors="surrogateescape"))
    return _zip(members)


def pad_code(rng: random.Random, data: bytes, marker: Path) -> bytes:
    """Blank lines before a ``__parameters__`` line (a regex whose ``\\s+`` spans lines took 29 s for 80 000)."""
    members = [(info.filename, content) for info, content in _members(data)]
    code = [i for i, (name, content) in enumerate(members) if b"__parameters__" in content]
    index = rng.choice(code)
    name, content = members[index]
    members[index] = (name, content.replace(b"    __parameters__", b"\n" * 40_000 + b"    __parameters__", 1))
    return _zip(members)


Mutation = Callable[[random.Random, bytes, Path], bytes]
MUTATIONS: dict[str, list[tuple[Mutation, int]]] = {  # (mutation, weight)
    "archive": [
        (flip_bytes, 3),
        (truncate, 1),
        (drop_member, 1),
        (duplicate_member, 1),
        (edit_pickle, 5),
        (edit_code, 2),
        (pad_code, 1),
    ],
    "state_dict": [(flip_bytes, 3), (truncate, 1), (drop_member, 1), (duplicate_member, 1), (edit_pickle, 5)],
}


# --- the run ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzz-sources")
    clip = openai_clip(dict(TINY, layers=1))
    return {
        "archive": write_torchscript_archive(clip, folder / "clip.pt").read_bytes(),
        "state_dict": write_state_dict(clip.state_dict(), folder / "state_dict.pt").read_bytes(),
    }


def outcome(path: Path) -> str:
    """``loaded`` or ``refused``; anything else raises ``AssertionError`` saying what went wrong."""
    size = path.stat().st_size
    try:
        with budget(CASE_BUDGET_S):
            try:
                tensors = load_checkpoint(path)
            except CheckpointError as error:
                message = str(error)
                assert "\n" not in message and message, f"not one line: {message!r}"
                assert not ALLOCATION_FAILURE.search(message), f"tried a huge allocation: {message}"
                return "refused"
            for key, tensor in tensors.items():
                assert isinstance(key, str) and isinstance(tensor, torch.Tensor), (key, type(tensor))
                assert tensor.numel() * tensor.element_size() <= size, f"{key} {list(tensor.shape)} exceeds the file"
                tensor.clone()  # every byte of it can be read
            return "loaded"
    except (AssertionError, Hang):
        raise
    except Exception as error:  # noqa: BLE001 - the finding itself
        raise unexpected(error) from error


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the memory cap reads /proc/self/status")
@pytest.mark.parametrize("source", list(CASES))
def test_mutated_checkpoints_load_or_give_one_clean_error(source, valid_files, tmp_path):
    marker = tmp_path / "marker"
    rng = random.Random(f"{SEED}-{source}")
    mutations, weights = zip(*MUTATIONS[source])
    assert outcome(_write(tmp_path / "valid.pt", valid_files[source])) == "loaded"

    def write_case(case: int) -> tuple[Path, str]:
        mutation = rng.choices(mutations, weights)[0]
        return _write(tmp_path / f"case-{case}.pt", mutation(rng, valid_files[source], marker)), mutation.__name__

    findings, tally = run_cases(CASES[source], write_case, outcome)
    assert not findings, f"{len(findings)} of {CASES[source]} cases failed:\n" + "\n".join(findings[:20])
    assert not marker.exists(), "a payload from a mutated file was run"
    assert tally["refused"] > CASES[source] // 3, tally  # the mutations do reach the reader's checks


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
