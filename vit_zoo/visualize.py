"""Attention-map pictures: CLS->patch attention upsampled onto the image and blended with a colormap."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

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
HEAD_REDUCTIONS = ("mean", "max")


def select_attention(attention_map: torch.Tensor, layer: int = -1, heads: str = "mean") -> torch.Tensor:
    """One image's ``[layers, heads, gh, gw]`` map -> ``[gh, gw]``.

    ``layer`` indexes the layers (negative counts from the last); ``heads`` is ``"mean"``, ``"max"`` or
    comma-separated head indices whose mean is taken.
    """
    layers, num_heads = attention_map.shape[:2]
    if not -layers <= layer < layers:
        raise ValueError(f"--layer {layer} is out of range: the model has {layers} layers (use 0..{layers - 1} or -1)")
    per_head = attention_map[layer].float()
    if heads == "mean":
        return per_head.mean(0)
    if heads == "max":
        return per_head.amax(0)
    try:
        indices = [int(index) for index in heads.split(",")]
    except ValueError:
        raise ValueError(f"--heads must be 'mean', 'max' or comma-separated head indices, got {heads!r}") from None
    if not all(-num_heads <= index < num_heads for index in indices):
        raise ValueError(f"--heads {heads} is out of range: the model has {num_heads} heads (0..{num_heads - 1})")
    return per_head[indices].mean(0)


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
