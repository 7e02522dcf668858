"""`vit-zoo embed` and `vit-zoo list`: embeddings files, attention overlays, skipped files, bad input."""

import json

import numpy as np
import pytest
import torch
from helpers import assert_cli_error, call_main, run_cli
from PIL import Image
from reference import TINY
from safetensors import safe_open
from transformers import AutoImageProcessor

from vit_zoo import VitZooConfig, VitZooModel, list_entries, save_model_folder
from vit_zoo.visualize import crop_box, select_attention


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    torch.manual_seed(0)
    return save_model_folder(VitZooModel(VitZooConfig(**TINY)).eval(), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / "a_noise.png")
    gradient = np.linspace(0, 255, 40 * 40 * 3).reshape(40, 40, 3).astype(np.uint8)
    Image.fromarray(gradient).save(folder / "b_gradient.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 50), dtype=np.uint8), mode="L").save(folder / "nested" / "c_gray.bmp")
    (folder / "d_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "notes.txt").write_text("not an image, not picked from a folder")
    return folder


def direct_embeddings(model_folder, paths):
    model = VitZooModel.from_pretrained(model_folder).eval()
    processor = AutoImageProcessor.from_pretrained(model_folder, backend="pil")
    pictures = [Image.open(path).convert("RGB") for path in paths]
    with torch.no_grad():
        out = model(**processor(images=pictures, return_tensors="pt"), output_attention_map=True)
    return out.image_embeds, out.attention_map


def test_embed_writes_embeddings_and_overlays(model_folder, images, tmp_path):
    result = run_cli(
        "embed",
        model_folder,
        images,
        "--output",
        tmp_path / "emb.safetensors",
        "--attention-map",
        tmp_path / "maps",
        "--all-layers",
        "--batch-size",
        2,
    )
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "d_corrupt.png" in result.stderr
    assert "embedded 3 images" in result.stdout

    with safe_open(tmp_path / "emb.safetensors", "pt") as file:
        embeddings = file.get_tensor("embeddings")
        names = json.loads(file.metadata()["files"])
    expected_paths = [images / "a_noise.png", images / "b_gradient.jpg", images / "nested" / "c_gray.bmp"]
    assert names == [str(p) for p in expected_paths]
    expected, attention_map = direct_embeddings(model_folder, expected_paths)
    torch.testing.assert_close(embeddings, expected, rtol=0, atol=0)

    overlays = {}
    for path in expected_paths:
        overlay = Image.open(tmp_path / "maps" / f"{path.stem}.attention.png")
        assert overlay.size == Image.open(path).size
        overlays[path.stem] = np.asarray(overlay)
        grid = Image.open(tmp_path / "maps" / f"{path.stem}.layers.png")
        assert grid.size == (overlay.size[0] * TINY["layers"], overlay.size[1])
    assert not np.array_equal(overlays["a_noise"][:40, :40], overlays["b_gradient"])

    # The overlay's brightest region is where the mean last-layer attention is highest.
    noise = Image.open(expected_paths[0])
    left, top, right, bottom = crop_box(noise.size)
    grid = select_attention(attention_map[:, 0]).numpy()
    row, col = np.unravel_index(grid.argmax(), grid.shape)
    cell = (right - left) // grid.shape[1]
    heat = Image.open(tmp_path / "maps" / "a_noise.attention.png").convert("L")
    patch = np.asarray(heat)[top + row * cell : top + (row + 1) * cell, left + col * cell : left + (col + 1) * cell]
    assert patch.mean() >= np.asarray(heat)[top:bottom, left:right].mean()


def test_embed_npy_output_and_single_file(model_folder, images, tmp_path):
    result = run_cli("embed", model_folder, images / "b_gradient.jpg", images / "notes.txt", "--output", tmp_path / "e.npy")
    assert result.returncode == 0, result.stderr
    assert "notes.txt" in result.stderr
    array = np.load(tmp_path / "e.npy")
    assert array.shape == (1, TINY["output_dim"])
    assert (tmp_path / "e.npy.files.txt").read_text().splitlines() == [str(images / "b_gradient.jpg")]
    expected, _ = direct_embeddings(model_folder, [images / "b_gradient.jpg"])
    np.testing.assert_array_equal(array, expected.numpy())


@pytest.mark.parametrize(
    "args, message",
    [
        (["{model}", "{images}/missing.png"], "does not exist"),
        (["{model}", "{images}", "--layer", "7"], "--layer 7 is out of range: the model has 3 layers"),
        (["{model}", "{images}", "--heads", "9"], "--heads 9 is out of range"),
        (["{model}", "{images}", "--heads", "first"], "--heads must be 'mean', 'max'"),
        (["{model}", "{images}", "--output", "{tmp}/e.txt"], "--output must end in .safetensors or .npy"),
        (["{model}", "{images}", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["not-a-model", "{images}"], "no such folder not-a-model, and not a zoo name or a Hub repo id"),
        (["./vit-b-61", "{images}"], "no such folder ./vit-b-61, and not a zoo name or a Hub repo id (ORG/NAME)"),
        (["vit_zoo_tiny_patch8_test_32", "{images}"], "has no pretrained weights"),
        (["{model}", "{images}/d_corrupt.png"], "none of the 1 files could be read as an image"),
    ],
)
def test_embed_bad_input(model_folder, images, tmp_path, args, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    filled = [a.format(model=model_folder, images=images, tmp=tmp_path) for a in args]
    assert_cli_error(call_main(capsys, "embed", *filled, "--attention-map", tmp_path / "maps"), "embed", message)
    assert not (tmp_path / "embeddings.safetensors").exists() and not (tmp_path / "e.txt").exists()


def test_list_shows_every_zoo_entry():
    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    for entry in list_entries():
        row = next(line for line in result.stdout.splitlines() if line.startswith(entry.name + " "))
        assert f"{entry.num_params / 1e6:.1f}" in row and f"{2 * entry.gmacs:.1f}" in row
    assert "openai (ViT-L/14@336px)" in result.stdout
    names = run_cli("list", "--names-only").stdout.split()
    assert names == [entry.name for entry in list_entries()]
