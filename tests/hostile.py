"""Hostile inputs that several test files feed to vit_zoo, in one place: each table says what the one-line error
must hold, each builder makes the damaged file or folder.

- ``BAD_IMAGES``: image batches every model refuses with the same ``ValueError`` (the core, timm's and transformers'
  models: test_model.py, test_vision_transformer.py, test_modeling.py).
- ``HOSTILE_FOLDERS``: edits of a saved vit_zoo folder (``edit_json``, ``edit_weights``) that once gave wrong numbers
  with exit 0; ``check_folder``, ``vit-zoo embed``, push and pull refuse each (test_folder_check.py, test_embed.py,
  test_hub.py, test_modeling.py).
- ``CORRUPT_SAFETENSORS``: a weights file damaged three ways (``damaged_safetensors``; the ``corrupt_safetensors``
  fixture writes them) and what the check of its header says.
- ``hostile_images``: image files that once ended an embed run or asked for gigabytes; ``png_chunk`` builds them.
- ``make_evil``: a folder whose ``auto_map`` points at repo code that leaves a marker if it is ever run.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from reference import TINY
from safetensors.torch import load_file, save_file

# --- images given to a model of the tiny geometry (3 channels, 32x32) --------------------------------------------

BAD_IMAGES = {  # case -> (images, what the one-line ValueError says)
    "3D": (torch.zeros(3, 32, 32), "expected a 4D image batch [batch, 3, 32, 32], got a 3D tensor of shape (3, 32, 32)"),
    "1-channel": (torch.zeros(2, 1, 32, 32), "expected 3 channels, got 1"),
    "4-channels": (torch.zeros(2, 4, 32, 32), "expected 3 channels, got 4"),
    "48x32": (torch.zeros(2, 3, 48, 32), "expected images of 32x32, got 48x32; resize them"),
    "32x40": (torch.zeros(2, 3, 32, 40), "expected images of 32x32, got 32x40; resize them"),
    "64x64": (torch.zeros(1, 3, 64, 64), "expected images of 32x32, got 64x64; resize them"),
    "uint8": (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "expected floating-point pixel values, got dtype torch.uint8"),
    "complex": (
        torch.zeros(2, 3, 32, 32, dtype=torch.complex64),
        "expected floating-point pixel values, got dtype torch.complex64",
    ),
    "numpy": (np.zeros((2, 3, 32, 32), dtype=np.float32), "expected a torch.Tensor of images [batch, 3, H, W], got ndarray"),
    "list": ([[1.0]], "expected a torch.Tensor of images [batch, 3, H, W], got list"),
    "None": (None, "expected a torch.Tensor of images [batch, 3, H, W], got NoneType"),
}


# --- saved folders edited after the fact ---------------------------------------------------------------------------

FolderEdit = Callable[[Path], None]


def edit_json(name: str, **changes) -> FolderEdit:
    """An edit setting ``changes`` in the folder's JSON file ``name`` (``config.json``, ``preprocessor_config.json``)."""

    def edit(folder: Path) -> None:
        settings = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**settings, **changes}))

    return edit


def edit_weights(change: Callable[[dict[str, torch.Tensor]], object]) -> FolderEdit:
    """An edit applying ``change`` to the tensors of the folder's ``model.safetensors`` (a dict, changed in place)."""

    def edit(folder: Path) -> None:
        weights = load_file(folder / "model.safetensors")
        change(weights)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    return edit


HOSTILE_FOLDERS: dict[str, tuple] = {  # case -> (edit, what the one-line error must say, ...)
    "missing-proj": (edit_weights(lambda w: w.pop("proj")), "weights do not fit a tower of", "missing: proj"),
    "missing-ln_post": (edit_weights(lambda w: w.pop("ln_post.weight")), "missing: ln_post.weight"),
    "nan-weight": (
        edit_weights(lambda w: w["ln_pre.weight"].__setitem__(0, float("nan"))),
        "NaN or Inf values in ln_pre.weight",
    ),
    "layers-20000": (
        edit_json("config.json", layers=20000),
        f"asks for layers=20000 but the weights hold {TINY['layers']} blocks",
    ),
    "layers-1": (edit_json("config.json", layers=1), "unexpected: transformer.resblocks.1-2.* (24 tensors)"),
    "output_dim": (edit_json("config.json", output_dim=64), "wrong shape: proj [64, 32] (expected [64, 64])"),
    "width-big": (edit_json("config.json", width="big"), "config.json: width must be a positive int, got 'big'"),
    "dtype-bogus": (
        edit_json("config.json", dtype="bogus"),
        "config.json: dtype 'bogus' is not one of float32, float16, bfloat16",
    ),
    "std-zero": (
        edit_json("preprocessor_config.json", image_std=[0, 0, 0]),
        "preprocessor_config.json: image_std [0, 0, 0] must be positive",
    ),
    "mean-missing": (
        edit_json("preprocessor_config.json", image_mean=None),
        "preprocessor_config.json: image_mean must be 3 finite numbers",
    ),
    "rescale-1e300": (
        edit_json("preprocessor_config.json", rescale_factor=1e300),
        "preprocessor_config.json: rescale_factor, image_mean and image_std map 8-bit pixels as far as ",
    ),
    "mean-1e308": (edit_json("preprocessor_config.json", image_mean=[1e308, 0, 0]), "image_std map 8-bit pixels as far as "),
    "std-subnormal": (edit_json("preprocessor_config.json", image_std=[1e-320, 1, 1]), "as far as inf from 0"),
    "shortest-edge-huge": (
        edit_json("preprocessor_config.json", size={"shortest_edge": 10**9}),
        "size.shortest_edge 1000000000 must lie between crop_size (32) and 4x it",
    ),
    "crop-mismatch": (
        edit_json("preprocessor_config.json", crop_size={"height": 16, "width": 16}, size={"shortest_edge": 16}),
        "crop_size 16 differs from config.json's input_resolution 32",
    ),
    "processor-5kb": (edit_json("preprocessor_config.json", image_processor_type="X" * 5000), "image_processor_type 'XXXXXXX"),
    "processor-missing": (lambda folder: (folder / "preprocessor_config.json").unlink(), "preprocessor_config.json is missing"),
    "config-not-utf8": (lambda folder: (folder / "config.json").write_bytes(b"\xff\xfe{}"), "config.json is not UTF-8 text"),
}


CORRUPT_SAFETENSORS = {  # damage -> what the header check of a folder's weights says (folder check and loaders alike)
    "garbage-header": "the safetensors header is not a JSON object",
    "header-past-the-end": "is not a safetensors file of a vision tower (a header of 1000000000 bytes",
    "truncated": "tensor 'transformer.resblocks.1.attn.out_proj.weight' has a header entry that does not fit the file",
}


def damaged_safetensors(weights: bytes) -> dict[str, bytes]:
    """The bytes of a ``model.safetensors`` damaged each way ``CORRUPT_SAFETENSORS`` lists, by damage."""
    return {
        "garbage-header": weights[:8] + b"{garbage" + weights[16:],
        "header-past-the-end": (10**9).to_bytes(8, "little") + weights[8:],
        "truncated": weights[: len(weights) // 2],
    }


# --- image files -----------------------------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and a valid CRC."""
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
        "header-only.png": b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b""),
        "garbage-chunk.png": good[: at - 4]
        + png_chunk(b"IDAT", pixels[:5])
        + png_chunk(b"\x00\x01\xff\x7f", pixels[5:])
        + good[at + 8 + length :],
        "float-offsets.tif": bytes(tiff),
    }


# --- repo code ---------------------------------------------------------------------------------------------------------

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
