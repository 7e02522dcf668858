"""What a tower is made of, in plain Python: its ``Geometry`` and the names its options take.

No torch here, so ``vit-zoo list``, ``--help`` and the zoo read it without importing torch. It travels flat
with ``model.py`` inside saved folders (remote code), so it imports nothing of vit_zoo.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

ACTIVATIONS = ("quick_gelu", "gelu")  # OpenAI's QuickGELU, or exact GELU (open_clip's non-QuickGELU models)
DTYPE_NAMES = ("float32", "float16", "bfloat16")  # the torch dtypes weights are stored or run in


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

    @property
    def num_params(self) -> int:
        """Parameter count."""
        width, hidden = self.width, self.hidden
        tokens = self.grid_size**2 + 1
        block = 4 * width * width + 4 * width + 2 * width * hidden + hidden + width + 4 * width
        return (
            self.in_channels * self.patch_size**2 * width  # conv1
            + width + tokens * width + 4 * width  # class/positional embedding, ln_pre, ln_post
            + self.layers * block
            + width * self.output_dim  # proj
        )  # fmt: skip

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
SHAPE_FIELDS = tuple(name for name in GEOMETRY_FIELDS if name not in ("heads", "activation", "layer_norm_eps"))
"""The fields that decide tensor shapes, so the ones a state dict shows."""


_BLOCK_INDEX = re.compile(r"(?:^|\.)transformer\.resblocks\.(\d+)\.")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on a header


def block_indices(tensor_names: Iterable[str]) -> set[int]:
    """The indices N of the residual blocks (``transformer.resblocks.N.*``, under any prefix) the names hold."""
    return {int(match.group(1)) for name in tensor_names if (match := _BLOCK_INDEX.search(name))}


def safetensors_names(path: str | os.PathLike) -> list[str] | None:
    """The tensor names of a ``.safetensors`` file (from its header) or of a ``.safetensors.index.json`` (its
    ``weight_map``), read without torch and without reading any tensor; ``None`` when the file is not that, so the
    loader that reads it next reports the damage."""
    try:
        with open(path, "rb") as file:
            if str(path).endswith(".json"):
                names = json.load(file).get("weight_map")
            else:
                size = int.from_bytes(file.read(8), "little")
                names = json.loads(file.read(size)) if 0 < size <= MAX_HEADER_BYTES else None
    except (OSError, ValueError, AttributeError):
        return None
    return [str(name) for name in names if name != "__metadata__"] if isinstance(names, dict) else None


def _is_positive_number(value: object) -> bool:
    """An int or float, not a bool, above 0 and finite (``inf`` would overflow ``int(width * mlp_ratio)``)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < math.inf
