"""What ``vit-zoo embed`` reads and where it writes, checked before any heavy import or work (no torch here).

Inputs are image files, folders of images (recursive), path lists (``.txt`` one path per line, or a column of a
``.csv`` / ``.parquet`` file) and webdataset / img2dataset tar shards (``.tar``: local paths, brace patterns such as
``shards/{00000..00099}.tar``, or any URL fsspec opens). They become ``FileInputs`` (one entry per image, in order)
or ``TarInputs`` (one entry per tar shard): a run reads one kind.
"""

from __future__ import annotations

import csv
import os
import re
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import UnknownVariantError, shown
from .files import file_kind

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
LIST_SUFFIXES = (".txt", ".csv", ".parquet")
OUTPUT_SUFFIXES = (".safetensors", ".npy")
HEAD_REDUCTIONS = ("mean", "max")
_DEVICE = re.compile(r"^(cpu|cuda)(:\d+)?$")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class FileInputs:
    """Image files in input order: ``paths[i]`` (a local path or an fsspec URL) is named ``keys[i]`` in the output."""

    paths: list[str]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class TarInputs:
    """Webdataset tar shards in input order (local paths or fsspec URLs); each becomes one output shard."""

    urls: list[str]

    def __len__(self) -> int:
        return len(self.urls)


def is_url(name: str) -> bool:
    """Whether ``name`` is a URL (``scheme://...``) rather than a local path."""
    return bool(_URL.match(name))


def collect_inputs(items: Iterable[str | os.PathLike], path_column: str = "image_path") -> FileInputs | TarInputs:
    """The images or tar shards ``items`` name, in order.

    A folder gives its image files (by suffix, recursively, sorted, keyed by their path inside the folder); a
    ``.txt`` / ``.csv`` / ``.parquet`` file gives the paths it lists (relative ones from the list's folder); a
    ``.tar`` name, a brace pattern or a URL ending in ``.tar`` gives tar shards; any other file is an image,
    whatever its suffix. Raises ``ValueError`` naming the first input that does not exist, is not a regular
    file (a FIFO, a device), or mixes images with tar shards.
    """
    paths: list[str] = []
    keys: list[str] = []
    urls: list[str] = []
    names = [os.fspath(item) for item in items]
    for name in names:
        expanded = _expand_braces(name)
        if any(candidate.endswith(".tar") for candidate in expanded):
            urls += [_checked_tar(candidate) for candidate in expanded]
        elif Path(name).is_dir():
            found = _scan_folder(Path(name))
            paths += [str(path) for path in found]
            keys += [path.relative_to(name).as_posix() for path in found]
        elif name.endswith(LIST_SUFFIXES) and _checked_file(name):
            listed = read_path_list(Path(name), path_column)
            paths += listed
            keys += listed
        else:
            if not is_url(name):
                _checked_file(name)
            paths.append(name)
            keys.append(name)
    if urls and paths:
        raise ValueError("give either images (files, folders, path lists) or webdataset .tar shards, not both in one run")
    if urls:
        return TarInputs(urls)
    if not paths:
        raise ValueError(f"no images found in {', '.join(names)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return FileInputs(paths, keys)


def _expand_braces(name: str) -> list[str]:
    """``a{0..2}.tar`` -> ``a0.tar a1.tar a2.tar`` (webdataset's brace expansion); other names as they are."""
    if "{" not in name:
        return [name]
    import braceexpand

    return list(braceexpand.braceexpand(name))


def _checked_tar(name: str) -> str:
    if not name.endswith(".tar"):
        raise ValueError(f"{name} is not a .tar shard; a brace pattern must expand to .tar names only")
    if not is_url(name):
        _checked_file(name)
    return name


def _checked_file(name: str) -> bool:
    """True for a regular file; ``ValueError`` saying what ``name`` is otherwise (missing, a FIFO, a device...)."""
    try:
        mode = os.stat(name).st_mode
    except FileNotFoundError:
        raise ValueError(f"{name} does not exist; give image files, folders of images, path lists or .tar shards") from None
    except OSError as error:
        raise ValueError(f"{name} cannot be read ({error.strerror}); check its permissions") from None
    if stat.S_ISREG(mode):
        return True
    raise ValueError(f"{name} is {file_kind(mode)}, not an image file; save the image to a file and give its path")


def _scan_folder(folder: Path) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return found


def read_path_list(path: Path, column: str = "image_path") -> list[str]:
    """The image paths a list file holds, relative ones joined to the list's folder: ``.txt`` one per line (blank lines
    ignored; bytes that are not UTF-8 kept as the file system's own), ``.csv`` / ``.parquet`` the column ``column``."""
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        entries = [line for line in lines if line.strip()]
    elif path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle)
            _check_column(path, column, reader.fieldnames or [])
            entries = [row[column] for row in reader]
    else:
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except Exception as error:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError...
            raise ValueError(f"{path} is not a readable parquet file ({shown(str(error), 120)})") from None
        _check_column(path, column, schema.names)
        entries = [str(value) for value in pq.read_table(path, columns=[column]).column(column).to_pylist()]
    return [entry if is_url(entry) else str(path.parent / entry) for entry in entries]


def _check_column(path: Path, column: str, columns: Sequence[str]) -> None:
    if column not in columns:
        raise ValueError(f"{path} has no column {column!r} (it has {', '.join(map(repr, columns))}); name it with --path-column")


def parse_heads(heads: str) -> str | tuple[int, ...]:
    """``--heads``: ``"mean"``, ``"max"`` or comma-separated head indices (their mean is taken)."""
    if heads in HEAD_REDUCTIONS:
        return heads
    try:
        return tuple(int(index) for index in heads.split(","))
    except ValueError:
        raise ValueError(f"--heads must be 'mean', 'max' or comma-separated head indices, got {shown(heads)}") from None


def check_head_and_layer(layer: int, heads: str | tuple[int, ...], layers: int, num_heads: int) -> None:
    """``--layer`` and ``--heads`` against the model's ``layers`` and ``num_heads``; ``ValueError`` naming the option."""
    if not -layers <= layer < layers:
        raise ValueError(f"--layer {layer} is out of range: the model has {layers} layers (use 0..{layers - 1} or -1)")
    if isinstance(heads, tuple) and not all(-num_heads <= index < num_heads for index in heads):
        shown_heads = ",".join(map(str, heads))
        raise ValueError(f"--heads {shown_heads} is out of range: the model has {num_heads} heads (0..{num_heads - 1})")


def check_device(device: str) -> str:
    """``--device`` is ``cpu``, ``cuda`` or ``cuda:N``."""
    if not _DEVICE.match(device):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {shown(device)}")
    return device


def check_output_location(path: Path, option: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be created: a folder or file in the way, a parent that is a
    file, or a nearest existing parent that is not writable. ``folder`` outputs may exist as folders."""
    if path.is_dir() and not folder:
        raise ValueError(f"{option} {path} is a folder; give a file name")
    if path.exists() and folder and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder; give a folder (new or made by vit-zoo embed)")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: {parent} is a file, not a folder; choose another location")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: {parent} is not writable; choose an output folder you can write to")


def check_not_inside(outputs: Iterable[tuple[str, Path]], model_folder: Path, inputs: FileInputs | None) -> None:
    """No output inside the model folder, and none on an input image (``inputs``; tar shards are never written)."""
    model = model_folder.resolve()
    images = {Path(path).resolve() for path in inputs.paths if not is_url(path)} if inputs is not None else set()
    for option, path in outputs:
        resolved = path.resolve()
        if resolved == model or model in resolved.parents:
            raise ValueError(f"{option} {path} is inside the model folder {model_folder}; write outputs elsewhere")
        if resolved in images:
            raise ValueError(f"{option} {path} is one of the input images; choose an output that does not overwrite an input")


def overlay_names(paths: Sequence[str]) -> list[str]:
    """One overlay base name per image (``<name>.attention.png``, ``<name>.layers.png``), unique, in linear time: the
    file stem; for stems shared by several images, the path from the folder the images share joined with ``__``
    (``a__x.png``); then ``-2``, ``-3``... for what still collides (20 000 copies of one path)."""
    stems = [Path(path).stem or "image" for path in paths]
    counts = Counter(stem for stem, _ in {(stem, os.path.abspath(path)) for stem, path in zip(stems, paths)})
    local = [str(Path(path).resolve()) for path in paths if not is_url(path)]
    root = os.path.commonpath([os.path.dirname(path) for path in local]) if local else ""
    names: list[str] = []
    used: set[str] = set()
    next_number: dict[str, int] = {}
    for path, stem in zip(paths, stems):
        name = stem
        if counts[stem] > 1:
            relative = os.path.relpath(Path(path).resolve(), root) if root and not is_url(path) else path
            name = "__".join(part for part in Path(relative).parts if part not in ("/", "..", ".", ":"))
        unique = name
        while unique in used:
            next_number[name] = next_number.get(name, 1) + 1
            unique = f"{name}-{next_number[name]}"
        used.add(unique)
        names.append(unique)
    return names


def resolve_model_folder(model: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A vit_zoo folder for ``model``: a local folder as is; a zoo or OpenAI name downloaded and converted once
    into ``<cache>/converted/<name>``; otherwise a Hub repo id, pulled through the HF cache."""
    from .folder_check import check_folder
    from .zoo import get_entry

    if Path(model).is_dir():
        return check_folder(model)
    try:
        entry = get_entry(model)
    except UnknownVariantError:
        if Path(model).exists():
            raise ValueError(f"{model} is a file, not a vit_zoo folder; give the --output folder of `vit-zoo convert`") from None
        if not _is_repo_id(model):
            raise ValueError(
                f"no such folder {model}, and not a zoo name or a Hub repo id (ORG/NAME); check the path, or see `vit-zoo list`"
            ) from None
        from .hub import pull  # huggingface_hub: not at the command's start

        return pull(model)
    if not entry.pretrained:
        raise ValueError(f"zoo variant {entry.name} has no pretrained weights; convert or train some and give the folder")
    from filelock import FileLock

    from .convert import convert_checkpoint  # torch
    from .download import default_cache_dir

    converted = Path(cache_dir or default_cache_dir()) / "converted" / entry.name
    converted.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(converted.with_name(f"{entry.name}.lock")):  # a second run waits, then uses the first one's folder
        if not converted.is_dir():
            convert_checkpoint(entry.name, converted, cache_dir=cache_dir)
    return check_folder(converted)


def _is_repo_id(model: str) -> bool:
    """``ORG/NAME`` as the Hub spells repo ids; ``./name``, ``a/b/c`` or ``~/x`` are paths."""
    if model.count("/") != 1 or model.startswith((".", "~")):
        return False
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True
