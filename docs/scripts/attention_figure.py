"""Draw the Attention maps page's pictures with `vit-zoo embed --overlays DIR --all-layers`.

The model has random weights (the docs build offline, without downloading a checkpoint), so the pictures
show what the outputs are (grid, upsampling, blending), not what a trained CLIP looks at. The folder says so in
its ``provenance_note`` (as ``vit-zoo convert --note`` writes it), so ``vit-zoo embed`` puts it on a banner over
each picture, next to what it always draws: the colour scale and the layer of each tile. For a trained
model run the same command on a converted folder, e.g. ``vit-zoo embed ViT-B/16 scene.png --overlays DIR
--all-layers``.

Run from the repository root: ``python docs/scripts/attention_figure.py``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from vit_zoo import VitZooConfig, VitZooModel, cli, save_model_folder  # noqa: E402

ASSETS = ROOT / "docs" / "assets"
SIZE = 224
NOTE = "RANDOM WEIGHTS: the output format, not what a trained CLIP attends to"
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


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        scene().save(work / "scene.png")
        model = save_model_folder(VitZooModel(VitZooConfig(**GEOMETRY)), work / "random-vit")
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, "provenance_note": NOTE}, indent=2))
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
        shutil.copyfile(work / "maps" / "scene.attention.png", ASSETS / "attention-overlay.png")
        shutil.copyfile(work / "maps" / "scene.layers.png", ASSETS / "attention-map.png")
    print(f"wrote {ASSETS.relative_to(ROOT)}/attention-overlay.png and attention-map.png")


if __name__ == "__main__":
    main()
