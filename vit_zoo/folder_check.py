"""What a vit_zoo folder must hold, and the check that it does: ``check_folder`` (what ``push``, ``pull`` and ``embed``
run before they trust a folder), ``folder_files`` (what a push uploads and a pull copies) and ``read_config``."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .config import VitZooConfig
from .errors import CheckpointError, FolderError, first_line, shown
from .files import read_json_object
from .image_processing import load_image_processor
from .spec import DTYPE_NAMES, check_weights_fit, read_weight_map, safetensors_header
from .state_dicts import refuse_non_finite

__all__ = ["FORMAT_FILES", "REMOTE_CODE_FILES", "WEIGHT_FILES", "check_folder", "folder_files", "read_config", "weight_files"]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
# what transformers copies for trust_remote_code: modeling.py and the siblings it imports
REMOTE_CODE_FILES = ("config.py", "errors.py", "files.py", "model.py", "modeling.py", "spec.py")
FORMAT_FILES = ("config.json", "preprocessor_config.json", "README.md", *REMOTE_CODE_FILES)
_SHARD_NAME = re.compile(r"^[\w.-]+\.safetensors$")
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
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
    config = read_config(folder / "config.json")
    weights = weight_files(folder)
    for path in [folder / name for name in FORMAT_FILES] + weights:
        _check_inside(path, folder)
    headers = _headers(weights)
    # bare names as vit-zoo writes them, or under `visual.` as transformers' save_pretrained does; a classifier beside
    tower = {name.removeprefix("visual."): shape for name, (_, _, shape) in headers.items() if not name.startswith(HEADS)}
    odd = [f"{name} ({dtype})" for name, (_, dtype, _) in headers.items() if dtype not in _FLOAT_DTYPES]
    try:
        check_weights_fit(config.geometry, tower, f"the weights in {folder}")
        if odd:
            raise CheckpointError(f"{folder}: tensors that are not floating point: {', '.join(odd[:4])}")
        refuse_non_finite(_floating_tensors(headers), f"the weights in {folder} are damaged, convert or pull the model again")
    except CheckpointError as error:
        raise FolderError(first_line(error)) from None
    if config.in_channels == 3:
        _check_preprocessing(folder / "preprocessor_config.json", config)
    return folder


def folder_files(folder: str | os.PathLike) -> list[str]:
    """The files of a vit_zoo folder (checked by ``check_folder``) that belong to the format: what a push uploads and
    a pull copies. Dotfiles, notes and anything else in the folder are not among them."""
    folder = Path(folder)
    names = [name for name in FORMAT_FILES if (folder / name).is_file()]
    if (folder / WEIGHT_FILES[1]).is_file():
        names.append(WEIGHT_FILES[1])
    return names + [path.name for path in weight_files(folder)]


def read_config(path: Path) -> VitZooConfig:
    """The ``VitZooConfig`` of a folder's ``config.json``; ``FolderError`` naming the file and the field."""
    settings = check_model_type(path)
    dtype = settings.get("dtype", DTYPE_NAMES[0])
    if dtype not in DTYPE_NAMES:
        raise FolderError(f"{path}: dtype {shown(dtype)} is not one of {', '.join(DTYPE_NAMES)}")
    try:
        return VitZooConfig.from_dict(settings)
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
    if model_type != VitZooConfig.model_type:
        raise FolderError(
            f"{config_path} describes a {shown(model_type)} model, not a {VitZooConfig.model_type!r} one; "
            "use a repo written by vit-zoo"
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


def _headers(weights: list[Path]) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    """Each tensor's file, safetensors dtype name and shape, from the headers alone."""
    headers = {}
    for path in weights:
        try:
            headers.update({name: (path, dtype, shape) for name, (dtype, shape) in safetensors_header(path).items()})
        except CheckpointError as error:
            raise FolderError(first_line(error)) from None
    return headers


def _floating_tensors(headers: Mapping[str, tuple[Path, str, tuple[int, ...]]]) -> Iterator[tuple[str, torch.Tensor]]:
    """The floating tensors of the headers with their names, each read from its file when reached."""
    for name, (path, dtype, _) in headers.items():
        if dtype in _FLOAT_DTYPES:
            try:
                with safe_open(path, "pt") as file:
                    yield name, file.get_tensor(name)
            except (SafetensorError, OSError) as error:
                raise FolderError(
                    f"{path} is not a readable safetensors file ({first_line(error)}); pull the model again"
                ) from None


def _check_preprocessing(path: Path, config: VitZooConfig) -> None:
    try:
        processor = load_image_processor(path)
    except ValueError as error:
        raise FolderError(f"{first_line(error)}; convert or pull the model again") from None
    if processor.crop_size["height"] != config.input_resolution:
        raise FolderError(
            f"{path}: crop_size {processor.crop_size['height']} differs from config.json's input_resolution "
            f"{config.input_resolution}; convert or pull the model again"
        )
