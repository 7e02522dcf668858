"""Attention-map pictures: CLS->patch attention upsampled onto the image and blended with a colormap.

What ``vit-zoo embed --overlays`` writes is framed: a colour scale under the picture (each map is min-max
normalised, so the scale reads "low" to "high", not absolute values), ``layer N`` on each tile of the all-layers
grid, and, when the model folder carries a provenance note (``random weights, not OpenAI's``), a banner saying it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

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
    """One overlay per layer of ``attention_maps [layers, gh, gw]``, each labelled ``layer N``, tiled row-major."""
    tiles = [_labelled(overlay(image, layer_map, crop_pct), f"layer {index}") for index, layer_map in enumerate(attention_maps)]
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    width, height = tiles[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, tile in enumerate(tiles):
        grid.paste(tile, ((index % columns) * width, (index // columns) * height))
    return grid


def framed(picture: Image.Image, note: str | None = None) -> Image.Image:
    """``picture`` with the colour scale under it and, given a ``note``, a banner above it saying so."""
    parts = ([_banner(note, picture.width)] if note else []) + [picture, _colour_scale(picture.width)]
    result = Image.new("RGB", (picture.width, sum(part.height for part in parts)), "white")
    top = 0
    for part in parts:
        result.paste(part, (0, top))
        top += part.height
    return result


_TEXT_PX = 11


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=_TEXT_PX)


def _labelled(tile: Image.Image, label: str) -> Image.Image:
    draw = ImageDraw.Draw(tile)
    box = draw.textbbox((3, 2), label, font=_font())
    draw.rectangle((0, 0, box[2] + 3, box[3] + 2), fill="black")
    draw.text((3, 2), label, fill="white", font=_font())
    return tile


def _colour_scale(width: int) -> Image.Image:
    """The colormap from low to high (each map min-max normalised), with its labels: a strip ``width`` wide."""
    ramp = colorize(torch.linspace(0, 1, width)[None].expand(8, width))
    strip = Image.new("RGB", (width, 8 + _TEXT_PX + 4), "white")
    strip.paste(Image.fromarray(ramp.numpy(), mode="RGB"), (0, 0))
    draw = ImageDraw.Draw(strip)
    draw.text((2, 9), "low", fill="black", font=_font())
    draw.text((width - 2, 9), "high", fill="black", font=_font(), anchor="ra")
    draw.text((width // 2, 9), "CLS attention", fill="black", font=_font(), anchor="ma")
    return strip


def _banner(note: str, width: int) -> Image.Image:
    """``note`` in white on red, wrapped at words to ``width``."""
    lines = _wrapped(note, width - 8)
    banner = Image.new("RGB", (width, len(lines) * (_TEXT_PX + 3) + 5), (190, 20, 30))
    draw = ImageDraw.Draw(banner)
    for index, line in enumerate(lines):
        draw.text((4, 4 + index * (_TEXT_PX + 3)), line, fill="white", font=_font())
    return banner


def _wrapped(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and _font().getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def write_overlays(
    folder: Path,
    name: str,
    preview: Image.Image,
    maps: torch.Tensor,
    layer: int,
    crop_pct: float,
    write,
    note: str | None = None,
) -> list[Path]:
    """``<name>.attention.png`` (the ``layer`` map over ``preview``) and, for ``maps [layers, gh, gw]``, also
    ``<name>.layers.png``; ``maps [gh, gw]`` is one layer. Each is ``framed`` (colour scale; ``note`` as a banner).
    ``write(target, save)`` puts each file in place (atomically). Returns the targets."""
    per_layer = maps.dim() == 3
    targets = [folder / f"{name}.attention.png"]
    single = overlay(preview, maps[layer] if per_layer else maps, crop_pct)
    write(targets[0], lambda path: framed(single, note).save(path, "PNG"))
    if per_layer:
        targets.append(folder / f"{name}.layers.png")
        write(targets[1], lambda path: framed(overlay_grid(preview, maps, crop_pct), note).save(path, "PNG"))
    return targets
