"""Attention-map pictures: the overlay blend, and the frame `vit-zoo embed --overlays` puts around it (a colour scale,
`layer N` labels on the all-layers grid, and a banner when the model folder says its weights are random)."""

from __future__ import annotations

import json

import torch
from helpers import call_main
from PIL import Image
from reference import TINY

from vit_zoo import VitZooConfig, VitZooModel, save_model_folder
from vit_zoo.visualize import colorize, framed, overlay, write_overlays

RED_BANNER = (190, 20, 30)
NOTE = "random weights, not OpenAI's"


def write_directly(target, save):
    save(target)


def banner_rows(picture: Image.Image) -> int:
    """How many rows at the top are the note's banner (red in column 0)."""
    return next(row for row in range(picture.height) if picture.getpixel((0, row)) != RED_BANNER)


def test_overlays_carry_a_colour_scale_layer_labels_and_the_note(tmp_path):
    preview = Image.linear_gradient("L").convert("RGB").resize((64, 48))
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    single, grid = write_overlays(tmp_path, "cat", preview, maps, -1, 1.0, write_directly, NOTE)
    plain = overlay(preview, maps[-1])
    with Image.open(single) as picture:
        picture = picture.convert("RGB")
        top = banner_rows(picture)
        assert picture.width == preview.width and top >= 19  # the note, wrapped to the width
        assert picture.crop((0, top, 64, top + preview.height)).tobytes() == plain.tobytes()  # the overlay untouched
        left, right = picture.getpixel((0, top + preview.height + 2)), picture.getpixel((63, top + preview.height + 2))
        assert left == tuple(colorize(torch.tensor([[0.0, 1.0]]))[0, 0].tolist()) and sum(right) > 3 * 150  # the scale
    with Image.open(grid) as picture:
        picture = picture.convert("RGB")
        top = banner_rows(picture)
        assert picture.width == 3 * preview.width and top == 19  # three layers in one row: the note fits one line
        for column in range(3):
            assert picture.getpixel((column * preview.width + 1, top + 1)) == (0, 0, 0)  # each tile's label box


def test_without_a_note_there_is_no_banner():
    picture = Image.new("RGB", (40, 30), "gray")
    assert framed(picture).crop((0, 0, 40, 30)).tobytes() == picture.tobytes()


def test_embed_marks_overlays_of_a_folder_with_a_provenance_note(tmp_path, capsys):
    torch.manual_seed(0)
    folder = save_model_folder(VitZooModel(VitZooConfig(**TINY)), tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "provenance_note": NOTE}))
    Image.linear_gradient("L").convert("RGB").save(tmp_path / "cat.png")
    args = ["embed", folder, tmp_path / "cat.png", "-o", tmp_path / "e.npy", "--overlays", tmp_path / "maps", "--all-layers"]
    code, _, err = call_main(capsys, *args)
    assert code == 0, err
    for name in ("cat.attention.png", "cat.layers.png"):
        with Image.open(tmp_path / "maps" / name) as picture:
            assert picture.convert("RGB").getpixel((1, 1)) == RED_BANNER, name
