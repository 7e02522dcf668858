"""Draw docs/assets/attention-map.png: a synthetic scene with the CLS->patch attention of every layer and head.

The model has random weights (the docs build offline, without downloading a checkpoint), so the picture
shows what the outputs are (shapes, grid, upsampling, blending), not what a trained CLIP looks at.
Once ``vit-zoo embed --attention-map`` exists, regenerate the picture with that command on a converted
model and delete this script.

Run from the repository root: ``python docs/scripts/attention_figure.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from vit_zoo import VisionTransformer  # noqa: E402
from vit_zoo.zoo import OPENAI_MEAN, OPENAI_STD  # noqa: E402

OUTPUT = ROOT / "docs" / "assets" / "attention-map.png"
SIZE, PATCH = 224, 16
GEOMETRY = dict(input_resolution=SIZE, patch_size=PATCH, width=64, layers=4, heads=4, output_dim=32)
# Anchor colours of a dark-to-bright colormap (black, purple, orange, pale yellow).
COLORMAP = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], dtype=np.float32)


def scene() -> Image.Image:
    """A 224 x 224 picture with a sky, a sun, a house and a meadow."""
    image = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    for y in range(SIZE):
        draw.line([(0, y), (SIZE, y)], fill=(90 + y // 3, 150 + y // 5, 235))
    draw.ellipse([160, 20, 205, 65], fill=(255, 215, 60))
    draw.rectangle([0, 150, SIZE, SIZE], fill=(70, 150, 60))
    draw.rectangle([50, 105, 130, 175], fill=(190, 70, 50))
    draw.polygon([(40, 108), (90, 65), (140, 108)], fill=(110, 40, 40))
    draw.rectangle([80, 140, 100, 175], fill=(70, 45, 30))
    return image


def to_pixels(image: Image.Image) -> torch.Tensor:
    """PIL image -> normalised ``[1, 3, H, W]`` with OpenAI's mean and std."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(OPENAI_MEAN)[:, None, None], torch.tensor(OPENAI_STD)[:, None, None]
    return ((pixels - mean) / std)[None]


def colorize(heat: torch.Tensor) -> np.ndarray:
    """``[H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8 through the colormap."""
    position = heat.numpy() * (len(COLORMAP) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(COLORMAP) - 2)
    fraction = (position - low)[..., None]
    return ((1 - fraction) * COLORMAP[low] + fraction * COLORMAP[low + 1]).astype(np.uint8)


def overlay(image: Image.Image, grid_map: torch.Tensor, alpha: float = 0.55) -> Image.Image:
    """Upsample a ``[grid, grid]`` map to the image, normalise it to [0, 1] and blend it over the image."""
    heat = F.interpolate(grid_map[None, None], size=image.size[::-1], mode="bilinear", align_corners=False)[0, 0]
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
    return Image.blend(image, Image.fromarray(colorize(heat)), alpha)


def figure(image: Image.Image, attention_map: torch.Tensor) -> Image.Image:
    """Top row: the image, then each layer's map (mean over heads). Bottom row: the last layer's heads."""
    layers, _, heads = attention_map.shape[:3]
    rows = [
        [("input", image)] + [(f"layer {i}, mean of heads", overlay(image, attention_map[i, 0].mean(0))) for i in range(layers)],
        [(None, None)] + [(f"layer {layers - 1}, head {h}", overlay(image, attention_map[-1, 0, h])) for h in range(heads)],
    ]
    font = ImageFont.load_default(size=14)
    margin, caption = 8, 22
    columns = max(len(row) for row in rows)
    canvas = Image.new("RGB", (columns * (SIZE + margin) + margin, len(rows) * (SIZE + caption + margin) + margin), "white")
    draw = ImageDraw.Draw(canvas)
    for row_index, row in enumerate(rows):
        top = margin + row_index * (SIZE + caption + margin)
        for column, (title, panel) in enumerate(row):
            if panel is None:
                continue
            left = margin + column * (SIZE + margin)
            canvas.paste(panel, (left, top + caption))
            draw.text((left, top), title, fill="black", font=font)
    return canvas


def main() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(**GEOMETRY).eval()
    image = scene()
    with torch.inference_mode():
        _, attention_map = model(to_pixels(image), output_attention_map=True)  # [layers, 1, heads, 14, 14]
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    figure(image, attention_map).save(OUTPUT, optimize=True)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
