"""The conversion pipeline: a CLIP checkpoint (a file, or an OpenAI name that is downloaded) -> a vit_zoo folder.

read (``vit_zoo.readers``) -> map and check (``vit_zoo.state_dicts``) -> write (``vit_zoo.folder``), atomically.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .card import Provenance
from .config import VitZooConfig
from .download import download_pretrained, pretrained_source, sha256_of
from .errors import CheckpointError, OutputExistsError, shown
from .folder import DEFAULT_MAX_SHARD_SIZE, save_folder
from .outputs import write_atomically
from .readers import load_checkpoint
from .spec import ACTIVATIONS, DTYPE_NAMES
from .state_dicts import (
    check_entry_geometry,
    check_state_dict,
    infer_geometry,
    refuse_non_finite,
    to_vit_zoo_state_dict,
)
from .zoo import PretrainedSource, ZooEntry, get_entry, list_entries, openai_names

__all__ = ["DTYPES", "convert_checkpoint"]

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
MAX_NOTE_CHARACTERS = 200


def convert_checkpoint(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    name: str | None = None,
    activation: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    note: str | None = None,
) -> Path:
    """Convert a CLIP checkpoint (a file, or an OpenAI name that is downloaded) into a vit_zoo folder.

    The image tower is extracted (text-tower tensors are never read), checked against the inferred
    geometry (and the zoo variant ``name`` when given, or implied by an OpenAI name / a file with the
    SHA-256 of an OpenAI release), loaded into a ``VisionTransformer`` with ``strict=True``, and written
    atomically: into a temporary folder beside ``output_dir``, then renamed. Nothing is left on failure.

    Args:
        source: checkpoint file (any format ``load_checkpoint`` reads) or OpenAI model name (``ViT-B/32``...).
        output_dir: folder to create; must not exist.
        dtype: ``float32``/``float16``/``bfloat16`` to convert to; default keeps the source dtype, except that
            float64 and float8 weights become float32 (float64 values beyond its range are refused).
        name: zoo variant the checkpoint must match (its heads, eps and activation are used).
        activation: ``quick_gelu`` (OpenAI) or ``gelu`` (open_clip non-QuickGELU models); weights cannot tell.
            Default: the zoo variant's, else ``quick_gelu``.
        cache_dir: download cache (see ``vit_zoo.download``).
        max_shard_size: size past which ``model.safetensors`` is split into shards with an index.
        note: one line every user of the folder must see (e.g. ``"random weights"``): it heads the model card and is
            kept in ``config.json`` as ``provenance_note``, where ``vit-zoo embed`` reads it.

    Returns:
        ``output_dir`` as a ``Path``.

    Raises:
        CheckpointError: bad source, geometry, dtype or activation; NaN or Inf weights (in the source, or made by
            converting to a narrower ``dtype``).
        OutputExistsError: ``output_dir`` exists.
        OutputError: ``output_dir`` cannot be written (read-only, disk full).
    """
    output = Path(output_dir)
    if output.exists() or output.is_symlink():
        raise OutputExistsError(f"output {output} already exists; choose a new folder or remove it")
    target_dtype = _parse_dtype(dtype)
    if note is not None and (not note.strip() or "\n" in note or len(note) > MAX_NOTE_CHARACTERS):
        raise ValueError(f"--note must be one line of at most {MAX_NOTE_CHARACTERS} characters, got {shown(note)}")
    if activation is not None and activation not in ACTIVATIONS:
        raise CheckpointError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    named_entry = get_entry(name) if name else None
    path, entry, release = _resolve_source(source, cache_dir)
    tower = to_vit_zoo_state_dict(load_checkpoint(path))  # first: it refuses pipes and devices, which hashing would not
    sha256 = release.sha256 if release and release.sha256 else sha256_of(path)
    if release is None:
        entry, release = _release_with_sha256(sha256)
    entry = named_entry or entry

    geometry = infer_geometry(tower)
    if entry is not None:
        check_entry_geometry(geometry, entry)
    overrides: dict[str, Any] = {} if activation is None else {"activation": activation}
    config = entry.config(**overrides) if entry else VitZooConfig(**geometry, **overrides)
    check_state_dict(tower, config.geometry)
    source_dtype = _dtype_name(tower)
    # float8 widens exactly (and torch has no isfinite for it); float64 has no place in a folder: float32 it is
    tower = {key: value.float() if value.dtype.itemsize == 1 else value for key, value in tower.items()}
    refuse_non_finite(
        tower.items(), "the checkpoint is damaged (a diverged training run or a corrupt file); convert an intact copy"
    )
    if target_dtype is None and any(value.dtype not in DTYPES.values() for value in tower.values()):
        target_dtype = torch.float32
    if target_dtype is not None:
        tower = {key: value.to(target_dtype) for key, value in tower.items()}
        advice = "convert to float32 or bfloat16" if target_dtype == torch.float16 else "no CLIP tower holds such values"
        refuse_non_finite(
            tower.items(), f"values beyond the range of {_dtype_name(tower)} became Inf in the conversion; {advice}"
        )
    provenance = Provenance(
        source=release.url if release and release.url else path.name,
        sha256=sha256,
        command=_command(source, output, dtype, name, activation, note),
        folder=output.name,
        source_dtype=source_dtype,
        dtype=_dtype_name(tower),
        entry=entry,
        release=release,
        note=note,
    )
    write_atomically(
        output,
        lambda staging: save_folder(tower, config, staging, entry=entry, provenance=provenance, max_shard_size=max_shard_size),
    )
    return output


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _releases() -> list[tuple[ZooEntry, PretrainedSource]]:
    """Every downloadable release of the zoo with its variant."""
    return [(e, s) for e in list_entries() for s in e.pretrained.values() if s.url and s.sha256]


def _resolve_source(source: str | os.PathLike, cache_dir) -> tuple[Path, ZooEntry | None, PretrainedSource | None]:
    """A local file as is; an OpenAI or zoo name downloaded, with its variant and release."""
    path = Path(source)
    if path.exists():
        return path, None, None
    names = {s.openai_name for _, s in _releases()} | {e.name for e, _ in _releases()}
    if source not in names:
        raise CheckpointError(
            f"{source}: no such file, and not a model name; give a checkpoint file or one of " + ", ".join(openai_names())
        )
    return download_pretrained(str(source), cache_dir), get_entry(str(source)), pretrained_source(str(source))


def _release_with_sha256(sha256: str) -> tuple[ZooEntry | None, PretrainedSource | None]:
    return next(((e, s) for e, s in _releases() if s.sha256 == sha256), (None, None))


def _dtype_name(tensors: Mapping[str, torch.Tensor]) -> str:
    names = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    return names[0] if len(names) == 1 else "mixed (" + ", ".join(names) + ")"


def _command(source, output: Path, dtype, name, activation, note) -> str:
    shown_source = str(source) if not Path(source).exists() else Path(source).name
    words = ["vit-zoo", "convert", shown_source, "--output", output.name]
    for flag, value in (("--dtype", dtype), ("--name", name), ("--activation", activation), ("--note", note)):
        if value is not None:
            words += [flag, str(value).removeprefix("torch.")]
    return shlex.join(words)
