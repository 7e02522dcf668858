"""What a vit_zoo folder must hold, and the check that it does: ``check_folder`` (what ``push``, ``pull``, ``embed`` and
``export`` run before they trust a folder), ``folder_files`` (what a push uploads and a pull copies) and
``read_geometry``.

It reads the files alone, with NumPy and without torch or transformers, so that the command line refuses a hostile
folder in milliseconds, before the seconds and most of a gigabyte those imports cost.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError, FolderError, first_line, os_reason, shown
from .files import read_json_object
from .image_processing import read_preprocessor_config
from .spec import (
    DTYPE_NAMES,
    GEOMETRY_FIELDS,
    MODEL_TYPE,
    REQUIRED_GEOMETRY_FIELDS,
    Geometry,
    check_weights_fit,
    listed,
    read_weight_map,
    safetensors_layout,
)

__all__ = ["FORMAT_FILES", "REMOTE_CODE_FILES", "WEIGHT_FILES", "check_folder", "folder_files", "read_geometry", "weight_files"]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
# what transformers copies for trust_remote_code: modeling.py and the siblings it imports
REMOTE_CODE_FILES = ("config.py", "errors.py", "files.py", "model.py", "modeling.py", "spec.py")
FORMAT_FILES = ("config.json", "preprocessor_config.json", "README.md", *REMOTE_CODE_FILES)
_SHARD_NAME = re.compile(r"^[\w.-]+\.safetensors$")
# a float is NaN or Inf when its exponent bits are all set: (little-endian integer type, exponent mask) per dtype
_EXPONENT_BITS = {
    "F64": ("<u8", 0x7FF0_0000_0000_0000),
    "F32": ("<u4", 0x7F80_0000),
    "F16": ("<u2", 0x7C00),
    "BF16": ("<u2", 0x7F80),
}
_CHUNK_ELEMENTS = 1 << 22  # a NaN check holds at most this many elements' temporaries (32 MB of float64)
HEADS = ("head.", "classifier.")  # timm's and transformers' classifiers, beside the tower


def check_folder(folder: str | os.PathLike) -> Path:
    """Raise ``FolderError`` (one line naming the file and the field) unless ``folder`` is a complete, sound vit_zoo
    folder: ``config.json`` valid, every tensor of its geometry present in the safetensors with its shape (read from
    the headers before anything is allocated) and free of NaN and Inf (read one at a time); ``preprocessor_config.json``
    (RGB models) valid for the config's resolution; shard paths plain names in the folder; no file a symlink
    leading out of it (a Hub cache snapshot may link into its own ``blobs``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FolderError.not_a_folder(folder)
    geometry = read_geometry(folder / "config.json")
    weights = weight_files(folder)
    for path in [folder / name for name in FORMAT_FILES] + weights:
        _check_inside(path, folder)
    layouts = _layouts(weights)
    # bare names as vit-zoo writes them, or under `visual.` as transformers' save_pretrained does; a classifier beside
    tower = {name.removeprefix("visual."): shape for name, (_, _, shape, _) in layouts.items() if not name.startswith(HEADS)}
    odd = [f"{name} ({dtype})" for name, (_, dtype, _, _) in layouts.items() if dtype not in _EXPONENT_BITS]
    try:
        check_weights_fit(geometry, tower, f"the weights in {folder}")
    except CheckpointError as error:
        raise FolderError(first_line(error)) from None
    if odd:
        raise FolderError(f"{folder}: tensors that are not floating point: {', '.join(odd[:4])}")
    files = {path: _memory_map(path) for path in weights}  # one map per file: a header may list 80 000 tensors
    non_finite = [
        name for name, (path, dtype, shape, offset) in layouts.items() if _has_non_finite(files[path], dtype, shape, offset)
    ]
    if non_finite:
        raise FolderError(
            f"NaN or Inf values in {listed(non_finite)}: the weights in {folder} are damaged, convert or pull the model again"
        )
    if geometry.in_channels == 3:
        _check_preprocessing(folder / "preprocessor_config.json", geometry)
    return folder


def folder_files(folder: str | os.PathLike) -> list[str]:
    """The files of a vit_zoo folder (checked by ``check_folder``) that belong to the format: what a push uploads and
    a pull copies. Dotfiles, notes and anything else in the folder are not among them."""
    folder = Path(folder)
    names = [name for name in FORMAT_FILES if (folder / name).is_file()]
    if (folder / WEIGHT_FILES[1]).is_file():
        names.append(WEIGHT_FILES[1])
    return names + [path.name for path in weight_files(folder)]


def read_geometry(path: Path) -> Geometry:
    """The ``Geometry`` a folder's ``config.json`` describes (every field ``save_pretrained`` writes; the ones
    ``Geometry`` has defaults for may be left out); ``FolderError`` naming the file and the field."""
    settings = check_model_type(path)
    dtype = settings.get("dtype", DTYPE_NAMES[0])
    if dtype not in DTYPE_NAMES:
        raise FolderError(f"{path}: dtype {shown(dtype)} is not one of {', '.join(DTYPE_NAMES)}")
    missing = [name for name in REQUIRED_GEOMETRY_FIELDS if name not in settings]
    if missing:
        raise FolderError(f"{path} does not state {', '.join(missing)}; convert or pull the model again")
    try:
        return Geometry(**{name: settings[name] for name in GEOMETRY_FIELDS if name in settings})
    except ValueError as error:
        raise FolderError(f"{path}: {first_line(error)}") from None


def check_model_type(config_path: Path) -> dict[str, Any]:
    """The settings of a ``config.json`` that describes a vit_zoo model; ``FolderError`` naming the file otherwise."""
    try:
        settings = read_json_object(config_path)
    except ValueError as error:
        raise FolderError(f"{first_line(error)}; convert or pull the model again") from None
    model_type = settings.get("model_type")
    architecture = settings.get("architecture")
    if model_type is None and isinstance(architecture, str) and architecture.startswith("vit_zoo_"):
        folder = config_path.parent
        raise FolderError(
            f"{config_path} is timm's (save_for_hf / push_to_hf_hub of {shown(architecture)}): timm loads it with "
            f"create_model('local-dir:{folder}'); for transformers and vit-zoo convert its weights: "
            f"vit-zoo convert {folder / 'model.safetensors'} --name {architecture.partition('.')[0]} --output NEW_FOLDER"
        )
    if model_type != MODEL_TYPE:
        raise FolderError(
            f"{config_path} describes a {shown(model_type)} model, not a {MODEL_TYPE!r} one; use a repo written by vit-zoo"
        )
    return settings


def _check_inside(path: Path, folder: Path) -> None:
    """A file of the folder must not be a symlink leading out of it (``push`` would upload what it points at)."""
    if not path.is_symlink():
        return
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":  # the Hub cache links a snapshot's files to the repo's blobs
        roots.append(folder.parent.parent.resolve() / "blobs")
    target = path.resolve()
    if not any(root in target.parents for root in roots):
        raise FolderError(f"{path} is a symlink to {target}, outside the folder; copy the file into the folder")


def weight_files(folder: Path) -> list[Path]:
    """``model.safetensors``, or the shards its index names (plain file names in the folder, nothing else)."""
    index = folder / WEIGHT_FILES[1]
    if not index.is_file():
        if not (folder / WEIGHT_FILES[0]).is_file():
            raise FolderError(f"{folder} has no model.safetensors; convert a checkpoint into it first")
        return [folder / WEIGHT_FILES[0]]
    try:
        shards = sorted(set(read_weight_map(index).values()))
    except CheckpointError as error:
        raise FolderError(first_line(error)) from None
    unsafe = next((shard for shard in shards if not _SHARD_NAME.match(shard) or shard.startswith(".")), None)
    if unsafe is not None:
        raise FolderError(
            f"{index} names shard {shown(unsafe)}, which is not a .safetensors file in the folder (a path out of "
            "it?); convert or pull the model again"
        )
    return [folder / shard for shard in shards]


def _layouts(weights: list[Path]) -> dict[str, tuple[Path, str, tuple[int, ...], int]]:
    """Each tensor's file, safetensors dtype name, shape and data offset, from the headers alone."""
    layouts = {}
    for path in weights:
        try:
            layouts.update({name: (path, *layout) for name, layout in safetensors_layout(path).items()})
        except CheckpointError as error:
            raise FolderError(first_line(error)) from None
    return layouts


def _memory_map(path: Path) -> np.memmap:
    """The bytes of ``path``, mapped (read only as they are reached)."""
    try:
        return np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as error:
        raise FolderError(f"{path} cannot be read ({os_reason(error)}); pull the model again") from None


def _has_non_finite(data: np.memmap, dtype: str, shape: tuple[int, ...], offset: int) -> bool:
    """Whether the tensor at byte ``offset`` of the mapped file ``data`` holds a NaN or Inf, a chunk at a time."""
    count = math.prod(shape)
    kind, exponent = _EXPONENT_BITS[dtype]
    bits = data[offset : offset + count * np.dtype(kind).itemsize].view(kind)
    return any(
        np.any(np.bitwise_and(bits[start : start + _CHUNK_ELEMENTS], exponent) == exponent)
        for start in range(0, count, _CHUNK_ELEMENTS)
    )


def _check_preprocessing(path: Path, geometry: Geometry) -> None:
    try:
        settings = read_preprocessor_config(path)
    except ValueError as error:
        raise FolderError(f"{first_line(error)}; convert or pull the model again") from None
    if settings["crop_size"]["height"] != geometry.input_resolution:
        raise FolderError(
            f"{path}: crop_size {settings['crop_size']['height']} differs from config.json's input_resolution "
            f"{geometry.input_resolution}; convert or pull the model again"
        )
