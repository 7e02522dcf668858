"""Draw the Attention maps page's pictures with `vit-zoo embed --overlays DIR --all-layers`.

The model has random weights (the docs build offline, without downloading a checkpoint), so the pictures
show what the outputs are (grid, upsampling, blending), not what a trained CLIP looks at; each picture says
so in a banner, names its layers and carries the colour scale. For a trained
model run the same command on a converted folder, e.g. ``vit-zoo embed ViT-B/16 scene.png --overlays DIR
--all-layers``.

Run from the repository root: ``python docs/scripts/attention_figure.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from vit_zoo import VitZooConfig, VitZooModel, cli, save_model_folder  # noqa: E402
from vit_zoo.visualize import colorize  # noqa: E402

ASSETS = ROOT / "docs" / "assets"
SIZE = 224
GEOMETRY = dict(input_resolution=SIZE, patch_size=16, width=64, layers=4, heads=4, output_dim=32)


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


def annotate(picture: Image.Image, labels: list[str]) -> Image.Image:
    """``picture`` (one tile per label, side by side) under a RANDOM WEIGHTS banner, each tile labelled,
    above the colour scale."""
    banner, scale, margin = 64, 58, 8
    width, tile = picture.width, picture.width // len(labels)
    canvas = Image.new("RGB", (width, banner + picture.height + scale), "white")
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, width, banner], fill=(190, 20, 30))
    title = ImageFont.load_default(size=30)
    note = ImageFont.load_default(size=14)
    draw.text((width / 2, 22), "RANDOM WEIGHTS", font=title, fill="white", anchor="mm")
    draw.text(
        (width / 2, 50), "shows the output format, not what a trained CLIP attends to", font=note, fill="white", anchor="mm"
    )
    canvas.paste(picture, (0, banner))
    label_font = ImageFont.load_default(size=16)
    for index, label in enumerate(labels):
        box = draw.textbbox((index * tile + margin, banner + margin), label, font=label_font)
        draw.rectangle([box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3], fill=(0, 0, 0))
        draw.text((index * tile + margin, banner + margin), label, font=label_font, fill="white")
    bar_width = width - 2 * margin - 120
    bar = colorize(torch.linspace(0, 1, bar_width)[None].expand(14, bar_width))
    top = banner + picture.height + 10
    canvas.paste(Image.fromarray(bar.numpy(), mode="RGB"), (margin + 60, top))
    small = ImageFont.load_default(size=12)
    draw.text((margin, top + 7), "low", font=small, fill="black", anchor="lm")
    draw.text((width - margin, top + 7), "high", font=small, fill="black", anchor="rm")
    draw.text(
        (width / 2, top + 32),
        "CLS-to-patch attention, mean over heads, scaled to each picture's min..max",
        font=small,
        fill="black",
        anchor="mm",
    )
    return canvas


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        scene().save(work / "scene.png")
        model = save_model_folder(VitZooModel(VitZooConfig(**GEOMETRY)), work / "random-vit")
        command = [
            "embed",
            str(model),
            str(work / "scene.png"),
            "--output",
            str(work / "scene.safetensors"),
            "--overlays",
            str(work / "maps"),
            "--overlay-size",
            str(SIZE),
            "--all-layers",
        ]
        print("vit-zoo " + " ".join(command))
        if cli.main(command) != 0:
            raise SystemExit("vit-zoo embed failed")
        ASSETS.mkdir(parents=True, exist_ok=True)
        overlay = Image.open(work / "maps" / "scene.attention.png")
        overlay = overlay.resize((2 * SIZE, 2 * SIZE), Image.Resampling.LANCZOS)  # room for the banner's words
        annotate(overlay, ["last layer"]).save(ASSETS / "attention-overlay.png")
        layers = Image.open(work / "maps" / "scene.layers.png")
        annotate(layers, [f"layer {index + 1}" for index in range(GEOMETRY["layers"])]).save(ASSETS / "attention-map.png")
    print(f"wrote {ASSETS.relative_to(ROOT)}/attention-overlay.png and attention-map.png")


if __name__ == "__main__":
    main()
