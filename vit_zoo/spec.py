"""What a tower is made of, in plain Python: its ``Geometry``, the tensors that geometry has, and the check of a
weights file's tensors against them, read from the file's header before anything is built.

No torch at import, so ``vit-zoo list``, ``--help`` and the zoo read it without importing torch. It travels flat
with ``model.py`` inside saved folders (remote code), so it imports nothing of vit_zoo but ``errors``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import CheckpointError, first_line
from .files import read_json_object, regular_file_size

ACTIVATIONS = ("quick_gelu", "gelu")  # OpenAI's QuickGELU, or exact GELU (open_clip's non-QuickGELU models)
DTYPE_NAMES = ("float32", "float16", "bfloat16")  # the torch dtypes weights are stored or run in


def _is_positive_number(value: object) -> bool:
    """An int or float, not a bool, above 0 and finite (``inf`` would overflow ``int(width * mlp_ratio)``)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < math.inf


@dataclass(frozen=True)
class Geometry(Mapping):
    """The shape of a tower: everything ``VisionTransformer`` is built from, validated on construction.

    Field names are the arguments of OpenAI CLIP's ``VisionTransformer``. A ``Mapping`` of those names as well, so
    ``VisionTransformer(**geometry)`` and ``dict(geometry)`` work. Invalid values raise ``ValueError`` naming
    the field and the fix.
    """

    input_resolution: int
    patch_size: int
    width: int
    layers: int
    heads: int
    output_dim: int
    in_channels: int = 3
    mlp_ratio: float = 4.0
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("input_resolution", "patch_size", "width", "layers", "heads", "output_dim", "in_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
            if value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value}")
        resolution, patch = self.input_resolution, self.patch_size
        if resolution % patch:
            raise ValueError(
                f"input_resolution ({resolution}) must be divisible by patch_size ({patch}); "
                f"use e.g. input_resolution={resolution // patch * patch or patch}"
            )
        if self.width % self.heads:
            raise ValueError(
                f"width ({self.width}) must be divisible by heads ({self.heads}); choose heads among the divisors of width"
            )
        if not _is_positive_number(self.mlp_ratio):
            raise ValueError(f"mlp_ratio must be a positive number (finite), got {self.mlp_ratio!r}")
        if self.hidden <= 0:
            raise ValueError(f"width * mlp_ratio must give at least one hidden unit, got {self.width} * {self.mlp_ratio}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not _is_positive_number(self.layer_norm_eps):
            raise ValueError(f"layer_norm_eps must be a positive number (finite), got {self.layer_norm_eps!r}")

    def __getitem__(self, name: str) -> Any:
        if name not in GEOMETRY_FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(GEOMETRY_FIELDS)

    def __len__(self) -> int:
        return len(GEOMETRY_FIELDS)

    @property
    def grid_size(self) -> int:
        return self.input_resolution // self.patch_size

    @property
    def hidden(self) -> int:
        """The MLP's hidden width."""
        return int(self.width * self.mlp_ratio)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of ``VisionTransformer(**geometry)`` by OpenAI's name (``visual.`` removed), with its shape."""
        width, hidden = self.width, self.hidden
        shapes: dict[str, tuple[int, ...]] = {  # in the order of VisionTransformer.state_dict()
            "class_embedding": (width,),
            "positional_embedding": (self.grid_size**2 + 1, width),
            "proj": (width, self.output_dim),
            "conv1.weight": (width, self.in_channels, self.patch_size, self.patch_size),
            "ln_pre.weight": (width,),
            "ln_pre.bias": (width,),
        }
        block = {
            "attn.in_proj_weight": (3 * width, width),
            "attn.in_proj_bias": (3 * width,),
            "attn.out_proj.weight": (width, width),
            "attn.out_proj.bias": (width,),
            "ln_1.weight": (width,),
            "ln_1.bias": (width,),
            "mlp.c_fc.weight": (hidden, width),
            "mlp.c_fc.bias": (hidden,),
            "mlp.c_proj.weight": (width, hidden),
            "mlp.c_proj.bias": (width,),
            "ln_2.weight": (width,),
            "ln_2.bias": (width,),
        }
        for index in range(self.layers):
            shapes.update({f"transformer.resblocks.{index}.{name}": shape for name, shape in block.items()})
        shapes.update({"ln_post.weight": (width,), "ln_post.bias": (width,)})
        return shapes

    @property
    def num_params(self) -> int:
        """Parameter count."""
        return sum(math.prod(shape) for shape in self.tensor_shapes().values())

    @property
    def gmacs(self) -> float:
        """Multiply-accumulates of one forward pass at ``input_resolution``, in billions (GFLOPs are twice this)."""
        width, hidden = self.width, self.hidden
        patches = self.grid_size**2
        tokens = patches + 1
        block = tokens * (4 * width * width + 2 * width * hidden) + 2 * tokens * tokens * width
        macs = patches * self.in_channels * self.patch_size**2 * width + self.layers * block + width * self.output_dim
        return macs / 1e9


GEOMETRY_FIELDS = tuple(field.name for field in fields(Geometry))
REQUIRED_GEOMETRY_FIELDS = tuple(field.name for field in fields(Geometry) if field.default is MISSING)
MODEL_TYPE = "vit_zoo"  # transformers' model_type of VitZooConfig
SHAPE_FIELDS = tuple(name for name in GEOMETRY_FIELDS if name not in ("heads", "activation", "layer_norm_eps"))
"""The fields that decide tensor shapes, so the ones a state dict shows."""


# --- weights files, read from their headers --------------------------------------------------------------------

_BLOCK_INDEX = re.compile(r"(?:^|\.)transformer\.resblocks\.(\d+)\.")
_TENSORS_PER_BLOCK = len(Geometry(1, 1, 1, 1, 1, 1).tensor_shapes()) - 8  # a one-block tower's, less the 8 outside it
MAX_HEADER_BYTES = 8 << 20  # a ViT-bigG tower's header is ~80 KB; safetensors itself allows 100 MB
_ELEMENT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2}
_ELEMENT_BYTES.update({"I8": 1, "U8": 1, "BOOL": 1})


def block_indices(tensor_names: Iterable[str]) -> set[int]:
    """The indices N of the residual blocks (``transformer.resblocks.N.*``, under any prefix) the names hold."""
    return {int(match.group(1)) for name in tensor_names if (match := _BLOCK_INDEX.search(name))}


def safetensors_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each tensor's safetensors dtype name and shape, from the file's header alone (no tensor is read).

    Raises:
        CheckpointError: as ``safetensors_layout``.
    """
    return {name: (dtype, shape) for name, (dtype, shape, _) in safetensors_layout(path).items()}


def safetensors_layout(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """Each tensor's safetensors dtype name, shape and the offset of its first byte in the file, from the header.

    Raises:
        CheckpointError: not a regular file, a header larger than ``MAX_HEADER_BYTES``, not a JSON object, or
            entries whose shape, dtype or byte range do not fit the file (a truncated or forged file).
    """
    path = Path(path)
    try:
        size = regular_file_size(path)
    except ValueError as error:
        raise CheckpointError(f"{first_line(error)}; give the weights file itself") from None
    with open(path, "rb") as file:
        header_bytes = int.from_bytes(file.read(8), "little")
        if not 0 < header_bytes <= min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{path} is not a safetensors file of a vision tower (a header of {header_bytes} bytes in a {size}-byte "
                f"file; at most {MAX_HEADER_BYTES}); convert or download the weights again"
            )
        try:
            header = json.loads(file.read(header_bytes))
        except (ValueError, RecursionError):
            header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object; convert or download the weights again")
    header.pop("__metadata__", None)
    data_start = 8 + header_bytes
    return {str(name): _checked_entry(path, name, entry, data_start, size) for name, entry in header.items()}


def _checked_entry(path: Path, name: str, entry: Any, data_start: int, size: int) -> tuple[str, tuple[int, ...], int]:
    dtype = entry.get("dtype") if isinstance(entry, dict) else None
    shape = entry.get("shape") if isinstance(entry, dict) else None
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if (
        dtype in _ELEMENT_BYTES
        and isinstance(shape, list)
        and all(type(side) is int and side >= 0 for side in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(offset) is int for offset in offsets)
        and 0 <= offsets[0] <= offsets[1] <= size - data_start
        and offsets[1] - offsets[0] == math.prod(shape) * _ELEMENT_BYTES[dtype]
    ):
        return dtype, tuple(shape), data_start + offsets[0]
    raise CheckpointError(
        f"{path}: tensor {name[:80]!r} has a header entry that does not fit the file ({str(entry)[:80]}); the file is "
        "truncated or damaged, convert or download the weights again"
    )


def read_weight_map(path: str | os.PathLike) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file) of a sharded checkpoint's index (``*.index.json``)."""
    try:
        weight_map = read_json_object(path).get("weight_map")
    except ValueError as error:
        raise CheckpointError(f"{first_line(error)}; convert or download the weights again") from None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{path}: weight_map must map tensor names to shard files; convert or download the weights again")
    return {str(name): shard for name, shard in weight_map.items()}


def check_weights_fit(
    geometry: Geometry,
    shapes: Mapping[str, Sequence[int]],
    source: object,
    *,
    partial: bool = False,
    adapted: Iterable[str] = (),
) -> None:
    """Raise ``CheckpointError`` unless tensors of ``shapes`` (OpenAI names, no prefix) load into a tower of
    ``geometry``: compared from headers, before anything is built, so a config asking for 20 000 layers or a
    4096x MLP costs nothing to refuse.

    ``partial`` is transformers' loading contract: tensors may be missing (they are initialised and reported) and
    blocks past ``layers`` are dropped; a config asking for more blocks than the weights hold (unless they hold
    none: a model initialised from nothing) and a tensor of another shape are refused all the same. ``adapted``
    names tensors the loader fits or supplies itself (timm resamples the patch kernel and positional embedding, and
    takes the projection from its head): their shapes are not compared, their absence not reported.
    """
    blocks = len(block_indices(shapes))
    if geometry.layers > blocks and (blocks or not partial):
        raise CheckpointError(
            f"{source}: the config asks for layers={geometry.layers} but the weights hold {blocks} blocks; "
            "download or convert the model again"
        )
    expected = geometry.tensor_shapes()
    compared = [name for name in shapes if name in expected and name not in adapted]
    problems = {
        "missing": [] if partial else [name for name in expected if name not in shapes and name not in adapted],
        "unexpected": [] if partial else [name for name in shapes if name not in expected],
        "wrong shape": [
            f"{name} {list(shapes[name])} (expected {list(expected[name])})"
            for name in compared
            if tuple(shapes[name]) != expected[name]
        ],
    }
    found = [
        f"{label}: {listed(_by_block(items) if label != 'wrong shape' else items)}" for label, items in problems.items() if items
    ]
    if found:
        described = ", ".join(f"{name}={geometry[name]}" for name in SHAPE_FIELDS)
        raise CheckpointError(f"{source}: the weights do not fit a tower of {described} ({'; '.join(found)})")


def _by_block(names: list[str]) -> list[str]:
    """``names`` with whole blocks (every tensor of ``transformer.resblocks.N``) given once, as
    ``transformer.resblocks.1-2.* (24 tensors)``: what a config of another depth makes of a message."""
    per_block: dict[int, list[str]] = {}
    for name in names:
        if (match := _BLOCK_INDEX.search(name)) is not None:
            per_block.setdefault(int(match.group(1)), []).append(name)
    whole = {index for index, members in per_block.items() if len(members) >= _TENSORS_PER_BLOCK}
    if not whole:
        return names
    grouped = {name for index in whole for name in per_block[index]}
    return [f"transformer.resblocks.{ranges(whole)}.* ({len(grouped)} tensors)"] + [n for n in names if n not in grouped]


def ranges(numbers: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    spans: list[list[int]] = []
    for number in sorted(numbers):
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in spans)


def listed(items: Sequence[str], shown: int = 4) -> str:
    """``a, b, c, d and 3 more``."""
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")
