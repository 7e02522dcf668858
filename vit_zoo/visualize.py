"""Attention-map pictures: CLS->patch attention upsampled onto the image and blended with a colormap."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .embed_inputs import check_head_and_layer, parse_heads

# Anchor colours of matplotlib's "inferno" colormap (dark purple -> yellow), interpolated linearly.
_INFERNO = torch.tensor(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=torch.float32,
)


def reduce_attention(
    attention_map: torch.Tensor, layer: int = -1, heads: str | Sequence[int] = "mean", all_layers: bool = False
) -> torch.Tensor:
    """The seed's ``[layers, b, heads, gh, gw]`` maps -> ``[b, gh, gw]`` for ``layer`` (negative counts from the
    last), or ``[b, layers, gh, gw]`` with ``all_layers``; in float32.

    ``heads`` is ``"mean"``, ``"max"`` or head indices whose mean is taken. Ranges are checked by
    ``vit_zoo.embed_inputs.check_head_and_layer`` (``IndexError`` here).
    """
    chosen = attention_map.float() if all_layers else attention_map[layer : layer + 1 or None].float()
    if heads == "mean":
        reduced = chosen.mean(2)
    elif heads == "max":
        reduced = chosen.amax(2)
    else:
        reduced = chosen[:, :, list(heads)].mean(2)
    return reduced.transpose(0, 1) if all_layers else reduced[0]


def select_attention(attention_map: torch.Tensor, layer: int = -1, heads: str = "mean") -> torch.Tensor:
    """One image's ``[layers, heads, gh, gw]`` map -> ``[gh, gw]`` (``--layer``, ``--heads`` as in ``vit-zoo embed``)."""
    parsed = parse_heads(heads)
    check_head_and_layer(layer, parsed, *attention_map.shape[:2])
    return reduce_attention(attention_map[:, None], layer, parsed)[0]


def colorize(values: torch.Tensor) -> torch.Tensor:
    """``[h, w]`` values -> ``[h, w, 3]`` uint8 RGB through the inferno colormap, min-max normalised."""
    low, high = values.min(), values.max()
    scaled = (values - low) / (high - low) if high > low else torch.zeros_like(values)
    position = scaled * (len(_INFERNO) - 1)
    lower = position.floor().long().clamp(max=len(_INFERNO) - 2)
    weight = (position - lower).unsqueeze(-1)
    rgb = _INFERNO[lower] * (1 - weight) + _INFERNO[lower + 1] * weight
    return rgb.round().to(torch.uint8)


def crop_box(size: tuple[int, int], crop_pct: float = 1.0) -> tuple[int, int, int, int]:
    """The region of an image of ``size`` (w, h) that a shortest-edge resize + center crop keeps."""
    width, height = size
    side = min(width, height) * crop_pct
    left, top = (width - side) / 2, (height - side) / 2
    return round(left), round(top), round(left + side), round(top + side)


def overlay(image: Image.Image, attention: torch.Tensor, crop_pct: float = 1.0, alpha: float = 0.55) -> Image.Image:
    """Blend ``attention [gh, gw]`` over the part of ``image`` the model saw; the rest is dimmed.

    The result has the image's size.
    """
    image = image.convert("RGB")
    left, top, right, bottom = crop_box(image.size, crop_pct)
    upsampled = F.interpolate(attention[None, None].float(), size=(bottom - top, right - left), mode="bilinear")[0, 0]
    heat = Image.fromarray(colorize(upsampled).numpy(), mode="RGB")
    picture = Image.eval(image, lambda value: value // 3)  # outside the crop the model saw nothing
    picture.paste(Image.blend(image.crop((left, top, right, bottom)), heat, alpha), (left, top))
    return picture


def overlay_grid(image: Image.Image, attention_maps: torch.Tensor, crop_pct: float = 1.0, columns: int = 4) -> Image.Image:
    """One overlay per layer of ``attention_maps [layers, gh, gw]``, tiled row-major into one picture."""
    tiles = [overlay(image, layer_map, crop_pct) for layer_map in attention_maps]
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    width, height = tiles[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, tile in enumerate(tiles):
        grid.paste(tile, ((index % columns) * width, (index // columns) * height))
    return grid


def write_overlays(
    folder: Path, name: str, preview: Image.Image, maps: torch.Tensor, layer: int, crop_pct: float, write
) -> list[Path]:
    """``<name>.attention.png`` (the ``layer`` map over ``preview``) and, for ``maps [layers, gh, gw]``, also
    ``<name>.layers.png``; ``maps [gh, gw]`` is one layer. ``write(target, save)`` puts each file in place
    (atomically). Returns the targets."""
    per_layer = maps.dim() == 3
    targets = [folder / f"{name}.attention.png"]
    write(targets[0], lambda path: overlay(preview, maps[layer] if per_layer else maps, crop_pct).save(path, "PNG"))
    if per_layer:
        targets.append(folder / f"{name}.layers.png")
        write(targets[1], lambda path: overlay_grid(preview, maps, crop_pct).save(path, "PNG"))
    return targets
