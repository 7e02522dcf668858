"""Fuzzing the image reader of ``vit-zoo embed``: seeded mutations of small PNG, GIF, BMP, TIFF, JPEG and WebP files
(byte flips, truncation, header sizes edited to extreme widths and heights, chunks of garbage).

``load_image`` must return the pixel values of the cropped square the model sees, or raise one exception whose message is one line
(``embed`` records it and skips the file); never take more than ``CASE_BUDGET_S`` seconds or allocate more than
``limits.MEMORY_HEADROOM`` (the address space is capped while a case runs), whatever the header claims.
"""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from hostile import png_chunk
from limits import ALLOCATION_FAILURE, Hang, budget, run_cases, unexpected
from PIL import Image

from vit_zoo import VitZooConfig
from vit_zoo.embed_data import Preprocess, load_image
from vit_zoo.image_processing import image_processor_for

SEED = 20261130
CASES = 240
CASE_BUDGET_S = 5
SIDE = 224
# OpenAI's preprocessing at a 224-pixel shortest edge and crop
PREPROCESS = Preprocess(
    image_processor_for(VitZooConfig(input_resolution=SIDE, patch_size=32, width=64, layers=1, heads=1, output_dim=8))
)
FORMATS = ("PNG", "GIF", "BMP", "TIFF", "JPEG", "WEBP")
SIZES = (0, 1, 2, 7, 65_535, 200_000, 400_000, 2**31 - 1, 2**32 - 1)


def sources() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8))
    encoded = {}
    for kind in FORMATS:
        buffer = io.BytesIO()
        (picture.convert("P") if kind == "GIF" else picture).save(buffer, kind)
        encoded[kind] = buffer.getvalue()
    return encoded


def flip_bytes(rng: random.Random, data: bytes) -> bytes:
    mutated = bytearray(data)
    end = min(len(data), rng.choice([64, 256, len(data)]))  # headers more often than pixels
    for _ in range(rng.randint(1, 6)):
        mutated[rng.randrange(end)] = rng.randrange(256)
    return bytes(mutated)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def resize_header(rng: random.Random, data: bytes) -> bytes:
    """Width and height fields set to extreme values, checksums kept valid where the format has them."""
    width, height = rng.choice(SIZES), rng.choice(SIZES)
    if data.startswith(b"\x89PNG"):
        header = struct.pack(">II", width, height) + data[24:29]
        return data[:8] + png_chunk(b"IHDR", header) + data[33:]
    if data.startswith(b"GIF"):
        return data[:6] + struct.pack("<HH", width % 65536, height % 65536) + data[10:]
    if data.startswith(b"BM"):
        return data[:18] + struct.pack("<ii", width % 2**31, height % 2**31 * rng.choice([1, -1])) + data[26:]
    mutated = bytearray(data)  # TIFF, JPEG, WebP: overwrite a random 4-byte field near the start
    at = rng.randrange(0, min(len(data), 200) - 4)
    mutated[at : at + 4] = struct.pack(">I" if rng.random() < 0.5 else "<I", max(width, height))
    return bytes(mutated)


def insert_garbage(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))) + data[at:]


MUTATIONS = [(flip_bytes, 3), (truncate, 1), (resize_header, 4), (insert_garbage, 1)]


def outcome(path: Path) -> str:
    """``read`` or ``refused``; anything else raises ``AssertionError`` saying what went wrong."""
    try:
        with budget(CASE_BUDGET_S):
            try:
                pixel_values, _, _ = load_image(path, PREPROCESS)
            except Hang:
                raise
            except Exception as error:  # noqa: BLE001 - embed skips the file with this message
                message = str(error).strip() or type(error).__name__
                assert "\n" not in message, f"not one line: {message!r}"
                assert not ALLOCATION_FAILURE.search(message), f"tried a huge allocation: {message}"
                return "refused"
            assert pixel_values.shape == (3, SIDE, SIDE), pixel_values.shape
            return "read"
    except (AssertionError, Hang):
        raise
    except BaseException as error:  # noqa: BLE001 - the finding itself (MemoryError under the cap, ...)
        raise unexpected(error) from error


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the memory cap reads /proc/self/status")
def test_mutated_images_are_read_or_refused_quickly(tmp_path):
    rng = random.Random(SEED)
    valid = sources()
    mutations, weights = zip(*MUTATIONS)
    for kind, data in valid.items():
        assert outcome(_write(tmp_path / f"valid.{kind.lower()}", data)) == "read"

    def write_case(case: int) -> tuple[Path, str]:
        kind = rng.choice(FORMATS)
        mutation = rng.choices(mutations, weights)[0]
        return _write(tmp_path / f"case-{case}.{kind.lower()}", mutation(rng, valid[kind])), f"{kind}, {mutation.__name__}"

    findings, tally = run_cases(CASES, write_case, outcome)
    assert not findings, f"{len(findings)} of {CASES} cases failed:\n" + "\n".join(findings[:20])
    assert tally["refused"] > CASES // 4, tally  # the mutations do reach the checks


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
