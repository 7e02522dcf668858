"""The vit_zoo folder: one folder that timm, transformers (installed or as remote code) and vit_zoo all load.

What it holds: ``model.safetensors`` with the bare tower names (``conv1.weight``...; sharded with an index
past ``max_shard_size``), one ``config.json`` holding both transformers' keys (``model_type``,
``architectures``, ``auto_map``, geometry) and timm's (``architecture``, ``num_classes``, ``num_features``,
``pretrained_cfg``, ``model_args``), ``preprocessor_config.json`` (for RGB models), the remote-code files
(``config.py``, ``model.py``, ``modeling.py``) and a model card (``README.md``).

``save_folder`` / ``save_model_folder`` write it, ``check_folder`` checks one, and ``write_atomically`` is how
every vit_zoo output appears: complete, or not at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from filelock import FileLock, Timeout
from huggingface_hub import save_torch_state_dict
from safetensors import SafetensorError, safe_open
from transformers.dynamic_module_utils import custom_object_save

from ._version import __version__
from .config import VitZooConfig
from .errors import FolderError, OutputError, first_line, os_reason, shown
from .image_processing import image_processor_for, load_image_processor, read_json_object
from .model import VisionTransformer
from .modeling import VitZooModel, VitZooPreTrainedModel, remote_auto_map
from .spec import block_indices
from .state_dicts import SHAPE_FIELDS, expected_shapes, state_dict_differences
from .vision_transformer import TimmVisionTransformer, openai_state_dict, timm_config_dict, timm_model_args
from .zoo import PretrainedSource, ZooEntry, list_entries

__all__ = [
    "Provenance",
    "check_folder",
    "folder_files",
    "model_card",
    "save_folder",
    "save_model_folder",
    "write_atomically",
]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_STAGING = re.compile(r"^(\..+\.[0-9a-f]{8}\.partial)(\.lock)?$")  # write_atomically's staging path, its lock
DEFAULT_MAX_SHARD_SIZE = "5GB"
REPO_ID_PLACEHOLDER = "YOUR-NAME/REPO"


@dataclass(frozen=True)
class Provenance:
    """What the model card says about where the weights come from and what was done to them."""

    source: str  # URL, or the file name of a local checkpoint
    sha256: str
    command: str
    folder: str
    source_dtype: str
    dtype: str
    entry: ZooEntry | None = None
    release: PretrainedSource | None = None

    @property
    def converted(self) -> bool:
        return self.source_dtype != self.dtype


def save_folder(
    state_dict: Mapping[str, torch.Tensor],
    config: VitZooConfig,
    folder: str | os.PathLike,
    *,
    entry: ZooEntry | None = None,
    provenance: Provenance | None = None,
    timm_keys: Mapping[str, Any] | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Write the one folder that timm, transformers (installed or remote code) and vit_zoo all load.

    Args:
        state_dict: the tower's tensors with bare names (``conv1.weight`` ... ``proj``),
            saved in their own dtype.
        config: the geometry; ``config.json`` also gets ``architectures``, ``auto_map``, ``dtype`` and timm's keys.
        folder: an empty or missing folder.
        entry: the zoo variant the weights belong to (preprocessing, license, timm pretrained cfg).
        provenance: what the model card says about the source (``Provenance``).
        timm_keys: timm's ``config.json`` keys (default: from ``entry``, else the closest zoo variant, with
            ``config``'s geometry as ``model_args``).
        max_shard_size: size past which ``model.safetensors`` is split into shards with an index.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise FolderError(f"{folder} is not empty; save into a new folder")
    save_torch_state_dict(dict(state_dict), folder, max_shard_size=max_shard_size, metadata={"format": "pt"})
    combined = VitZooConfig.from_dict(config.to_dict())
    combined.architectures = [VitZooModel.__name__]
    combined.auto_map = remote_auto_map()
    combined.dtype = _storage_dtype(state_dict)
    # timm's pretrained_cfg in config.json would otherwise make AutoImageProcessor ignore preprocessor_config.json
    combined.image_processor_type = "CLIPImageProcessor"
    for key, value in (timm_keys or _timm_keys(config, entry)).items():
        setattr(combined, key, value)
    combined.save_pretrained(folder)  # config.json, and config.py + model.py for remote code
    custom_object_save(VitZooModel, folder)  # modeling.py
    if config.in_channels == 3:  # CLIPImageProcessor prepares RGB images; other inputs bring their own pixel_values
        image_processor_for(entry if entry is not None else config).save_pretrained(folder)
    (folder / "README.md").write_text(model_card(config, entry, provenance), encoding="utf-8")
    return folder


def save_model_folder(
    model: VisionTransformer | VitZooPreTrainedModel,
    folder: str | os.PathLike,
    *,
    entry: ZooEntry | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """``save_folder`` for a model in memory: a timm model (``timm.create_model("vit_zoo_...")``), a
    ``VitZooModel`` or a core ``VisionTransformer``."""
    if isinstance(model, VitZooPreTrainedModel):
        config = cast(VitZooConfig, model.config)  # config_class guarantees it
        prefix = f"{model.base_model_prefix}."
        state_dict = {k.removeprefix(prefix): v for k, v in model.state_dict().items() if k.startswith(prefix)}
    elif isinstance(model, TimmVisionTransformer):
        config = _config_of(model)
        state_dict = openai_state_dict(model)
    elif isinstance(model, VisionTransformer):
        config = _config_of(model)
        state_dict = model.state_dict()
    else:
        raise TypeError(f"expected a vit_zoo model (timm, transformers or core), got {type(model).__name__}")
    timm_keys = timm_config_dict(model) if isinstance(model, TimmVisionTransformer) else None
    if entry is None and isinstance(model, TimmVisionTransformer):
        architecture = getattr(model, "pretrained_cfg", {}).get("architecture")
        entry = next((e for e in list_entries() if e.name == architecture), None)
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    return save_folder(tensors, config, folder, entry=entry, timm_keys=timm_keys, max_shard_size=max_shard_size)


def _config_of(model: VisionTransformer) -> VitZooConfig:
    return VitZooConfig(**model.geometry)


def _storage_dtype(state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    dtypes = {tensor.dtype for tensor in state_dict.values() if tensor.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _closest_entry(config: VitZooConfig) -> ZooEntry:
    """The zoo variant sharing most of ``config``'s geometry: timm's ``architecture`` for weights of unknown origin
    (``model_args`` then carry the exact geometry)."""
    geometry = config.geometry
    return max(list_entries(), key=lambda entry: sum(entry.geometry[k] == v for k, v in geometry.items()))


def _timm_keys(config: VitZooConfig, entry: ZooEntry | None) -> dict[str, Any]:
    base = entry if entry is not None else _closest_entry(config)
    keys = timm_config_dict(base, next(iter(base.pretrained), None) if entry is not None else None)
    model_args = timm_model_args(config.geometry)
    keys["model_args"] = dict(model_args, num_classes=config.output_dim)
    keys["num_classes"], keys["num_features"] = config.output_dim, config.width
    keys["pretrained_cfg"].update(
        num_classes=config.output_dim, input_size=(config.in_channels, config.input_resolution, config.input_resolution)
    )
    if entry is None:
        keys["pretrained_cfg"].pop("tag", None)
    return keys


def model_card(config: VitZooConfig, entry: ZooEntry | None = None, provenance: Provenance | None = None) -> str:
    """The ``README.md`` of a vit_zoo folder: Hub metadata, provenance, geometry and usage for every loader.

    Usage snippets name the repo ``YOUR-NAME/REPO``; ``push_folder`` puts the real repo id in.
    """
    release = provenance.release if provenance else _first_release(entry)
    title = entry.description if entry and entry.description else "CLIP ViT image encoder"
    metadata = [
        "---",
        f"license: {release.license if release and release.license else 'other'}",
        "library_name: transformers",
        "pipeline_tag: image-feature-extraction",
        "tags:",
        *(f"- {tag}" for tag in ("vit_zoo", "timm", "clip", "vision", "image-feature-extraction")),
        *([f"base_model: {release.hf_hub_id}"] if release and release.hf_hub_id else []),
        "---",
    ]
    return "\n".join(
        [
            *metadata,
            "",
            f"# {title}",
            "",
            _CARD_INTRO,
            "",
            *_provenance_lines(config, entry, provenance),
            "",
            _usage(config, entry),
            "",
        ]
    )


def _first_release(entry: ZooEntry | None) -> PretrainedSource | None:
    return next(iter(entry.pretrained.values()), None) if entry else None


_CARD_INTRO = (
    "OpenAI CLIP's image tower in [vit-zoo](https://pypi.org/project/vit-zoo/)'s layout (OpenAI's `visual` "
    "parameter names, as safetensors). One repo for timm, transformers (with or without vit-zoo installed) and "
    "vit-zoo itself. Besides the projected CLS embedding it gives every patch token and each layer's "
    "CLS-to-patch attention map `[layers, batch, heads, grid, grid]`."
)


def _provenance_lines(config: VitZooConfig, entry: ZooEntry | None, provenance: Provenance | None) -> list[str]:
    lines = ["## Provenance", ""]
    if provenance is not None:
        weights = (
            f"{provenance.dtype}, converted from the source's {provenance.source_dtype}"
            if provenance.converted
            else f"{provenance.dtype}, as in the source (not converted)"
        )
        lines += [
            f"- Source: {provenance.source}",
            f"- Source SHA-256: `{provenance.sha256}`",
            f"- Converted with: `{provenance.command}` (vit-zoo {__version__})",
            f"- Weights: {weights}",
        ]
    else:
        lines.append(f"- Saved from a model in memory with vit-zoo {__version__}")
    release = provenance.release if provenance else _first_release(entry)
    if entry is not None:
        lines.append(f"- Zoo variant: `{entry.name}`")
    if release is not None and release.paper:
        lines.append(f"- Paper: {release.paper}")
    lines += [f"- Activation: `{config.activation}`", "- Geometry: " + ", ".join(f"{k}={v}" for k, v in config.geometry.items())]
    return lines


def _usage(config: VitZooConfig, entry: ZooEntry | None) -> str:
    size = config.input_resolution
    repo = REPO_ID_PLACEHOLDER
    return f"""## Usage

With timm (`pip install vit-zoo`; importing it registers the `vit_zoo_*` models):

```python
import timm
import vit_zoo  # noqa: F401

model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()
config = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**config)
embedding = model(transform(image).unsqueeze(0))  # [1, {config.output_dim}], OpenAI's encode_image
```

With transformers and vit-zoo installed:

```python
import vit_zoo  # noqa: F401  (registers model_type "vit_zoo" with the Auto classes)
from transformers import AutoImageProcessor, AutoModel

processor = AutoImageProcessor.from_pretrained("{repo}")
model = AutoModel.from_pretrained("{repo}")
outputs = model(**processor(images=image, return_tensors="pt"), output_attention_map=True)
outputs.image_embeds  # [1, {config.output_dim}]
outputs.attention_map  # [{config.layers}, 1, {config.heads}, {size // config.patch_size}, {size // config.patch_size}]
```

With transformers alone (the repo carries its modeling code):

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)
```

From the command line: `vit-zoo pull {repo}` downloads it, `vit-zoo embed {repo} IMAGES...` embeds images.
"""


# what transformers copies for trust_remote_code: modeling.py and the siblings it imports
REMOTE_CODE_FILES = ("config.py", "model.py", "modeling.py", "spec.py")
FORMAT_FILES = ("config.json", "preprocessor_config.json", "README.md", *REMOTE_CODE_FILES)
DTYPE_NAMES = ("float32", "float16", "bfloat16")
_SHARD_NAME = re.compile(r"^[\w.-]+\.safetensors$")
_DTYPES = {  # safetensors' dtype names
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def check_folder(folder: str | os.PathLike) -> Path:
    """Raise ``FolderError`` (one line naming the file and the field) unless ``folder`` is a complete, sound vit_zoo
    folder: ``config.json`` valid, every tensor of its geometry present in the safetensors with its shape (read from
    the headers before anything is allocated) and free of NaN and Inf (read one at a time); ``preprocessor_config.json``
    (RGB models) valid for the config's resolution; shard paths plain names in the folder; no file a symlink
    leading out of it (a Hub cache snapshot may link into its own ``blobs``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FolderError(f"{folder} is not a folder; give the --output folder of `vit-zoo convert`")
    config = read_config(folder / "config.json")
    weights = _weight_files(folder)
    for path in [folder / name for name in FORMAT_FILES] + weights:
        _check_inside(path, folder)
    headers = _tensor_headers(weights)
    _check_tensors(headers, config, folder)
    _check_finite(headers)
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
    return names + [path.name for path in _weight_files(folder)]


def is_folder_file(name: str) -> bool:
    """Whether a repo path can belong to a vit_zoo folder (a format file, the weights or a shard)."""
    return name in FORMAT_FILES or name in WEIGHT_FILES or (bool(_SHARD_NAME.match(name)) and not name.startswith("."))


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


def _weight_files(folder: Path) -> list[Path]:
    """``model.safetensors``, or the shards its index names (plain file names in the folder, nothing else)."""
    index = folder / WEIGHT_FILES[1]
    if not index.is_file():
        if not (folder / WEIGHT_FILES[0]).is_file():
            raise FolderError(f"{folder} has no model.safetensors; convert a checkpoint into it first")
        return [folder / WEIGHT_FILES[0]]
    try:
        weight_map = read_json_object(index).get("weight_map")
    except ValueError as error:
        raise FolderError(first_line(error)) from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise FolderError(f"{index}: weight_map must map tensor names to shard files; convert or pull the model again")
    shards = sorted({str(shard) for shard in weight_map.values()})
    unsafe = next((shard for shard in shards if not is_folder_file(shard)), None)
    if unsafe is not None:
        raise FolderError(
            f"{index} names shard {shown(unsafe)}, which is not a .safetensors file in the folder (a path out of "
            "it?); convert or pull the model again"
        )
    return [folder / shard for shard in shards]


def _tensor_headers(weights: list[Path]) -> dict[str, tuple[Path, torch.Tensor]]:
    """Each tensor's file and a meta tensor of its shape and dtype, from the safetensors headers alone."""
    headers = {}
    for path in weights:
        try:
            with safe_open(path, "pt") as file:
                for name in file.keys():
                    piece = file.get_slice(name)
                    headers[name] = path, torch.empty(piece.get_shape(), dtype=_DTYPES[piece.get_dtype()], device="meta")
        except (SafetensorError, OSError, KeyError) as error:
            raise FolderError(
                f"{path} is not a readable safetensors file ({first_line(error)}); convert or pull the model again"
            ) from None
    return headers


def _check_tensors(headers: Mapping[str, tuple[Path, torch.Tensor]], config: VitZooConfig, folder: Path) -> None:
    """The weights hold exactly the tensors of the config's geometry (a timm classifier may add ``head.*``). The
    block count is compared first: a config claiming 20 000 layers must not make anything build them."""
    blocks = len(block_indices(headers))
    if blocks != config.layers:
        raise FolderError(
            f"{folder / 'config.json'}: layers is {config.layers} but the weights hold {blocks} blocks; convert or "
            "pull the model again"
        )
    tower = {name: tensor for name, (_, tensor) in headers.items() if not name.startswith("head.")}
    problems = state_dict_differences(tower, expected_shapes(config.geometry))
    if problems:
        raise FolderError(
            f"the weights in {folder} do not fit its config.json ("
            + ", ".join(f"{k}={getattr(config, k)}" for k in SHAPE_FIELDS)
            + "): "
            + "; ".join(problems)
        )


def _check_finite(headers: Mapping[str, tuple[Path, torch.Tensor]]) -> None:
    """No NaN or Inf in any floating tensor (one NaN weight makes every embedding NaN); read one tensor at a time."""
    by_file: dict[Path, list[str]] = {}
    for name, (path, tensor) in headers.items():
        if tensor.is_floating_point():
            by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        with safe_open(path, "pt") as file:
            bad = [name for name in names if not torch.isfinite(file.get_tensor(name)).all()]
        if bad:
            raise FolderError(
                f"{path}: NaN or Inf values in {', '.join(bad[:4])}; the weights are damaged, convert or pull the model again"
            )


def _check_preprocessing(path: Path, config: VitZooConfig) -> None:
    try:
        processor = load_image_processor(path)
    except ValueError as error:
        raise FolderError(first_line(error)) from None
    if processor.crop_size["height"] != config.input_resolution:
        raise FolderError(
            f"{path}: crop_size {processor.crop_size['height']} differs from config.json's input_resolution "
            f"{config.input_resolution}; convert or pull the model again"
        )


def check_model_type(config_path: Path) -> dict[str, Any]:
    """The settings of a ``config.json`` that describes a vit_zoo model; ``FolderError`` naming the file otherwise."""
    try:
        settings = read_json_object(config_path)
    except ValueError as error:
        raise FolderError(first_line(error)) from None
    model_type = settings.get("model_type")
    if model_type != VitZooConfig.model_type:
        raise FolderError(
            f"{config_path} describes a {shown(model_type)} model, not a {VitZooConfig.model_type!r} one; "
            "use a repo written by vit-zoo"
        )
    return settings


def write_atomically(target: str | os.PathLike, write: Callable[[Path], Any], *, replace: bool = False) -> Path:
    """Make ``target`` (a file or a folder) appear complete or not at all.

    ``write(staging)`` creates the file or folder at ``staging``, a hidden path beside ``target``, which is then
    renamed to ``target`` (replacing an existing file if ``replace``). What is written gets the permissions the
    user's umask gives new files (safetensors writes its files ``0600``). On any failure the staging path and the
    parent folders made for it are removed; a disk error becomes one ``OutputError`` line. A lock file beside
    the staging path is held while it exists: what a killed run (SIGKILL, a power cut) left behind is unlocked,
    and the next write into the same folder removes it.
    """
    target = Path(target)
    new_parents = [folder for folder in target.parents if not folder.exists()]
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_staging(target.parent)
        with _staging_lock(staging):
            try:
                write(staging)
                _apply_umask(staging)
                if not replace and (target.exists() or target.is_symlink()):
                    raise OutputError(f"output {target} appeared while writing it; nothing was written")
                os.replace(staging, target)
            except BaseException:
                _remove(staging)
                raise
    except BaseException as error:
        for folder in new_parents:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(error, (OSError, SafetensorError)) and not isinstance(error, OutputError):
            reason = os_reason(error) if isinstance(error, OSError) else first_line(error)
            raise OutputError(
                f"cannot write {target} ({reason}); choose an output folder on a writable disk with free space"
            ) from error
        raise
    return target


@contextlib.contextmanager
def _staging_lock(staging: Path) -> Iterator[None]:
    """Hold ``<staging>.lock`` while ``staging`` may exist; the lock file goes once it is released."""
    lock_path = staging.with_name(staging.name + ".lock")
    try:
        with FileLock(lock_path):
            yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink(missing_ok=True)


def sweep_stale_staging(folder: Path) -> None:
    """Remove the staging files and folders (and lock files) that killed runs left in ``folder``: those whose lock
    no live process holds. A run still writing holds its lock, so its staging path stays."""
    for path in folder.glob(".*.partial*"):
        match = _STAGING.match(path.name)
        if match is None:
            continue
        staging = folder / match.group(1)
        lock = FileLock(staging.with_name(staging.name + ".lock"), timeout=0)
        try:
            lock.acquire()
        except (Timeout, OSError):  # still being written (or not ours to remove)
            continue
        try:
            _remove(staging)
        finally:
            lock.release()
            with contextlib.suppress(OSError):
                staging.with_name(staging.name + ".lock").unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):  # on a read-only disk even removing a missing file fails
            path.unlink(missing_ok=True)


def _apply_umask(path: Path) -> None:
    """Give ``path`` (and what a folder holds) the modes ``open``/``mkdir`` would have given under the umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)
