"""``vit_zoo.embed``: `vit-zoo embed` and `vit-zoo list`. Embeddings files, attention overlays, skipped files, bad
input; and (the section at the end) hostile images, folders, repos and outputs given to embed."""

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_cli_error, call_main, listing, run_cli
from hostile import CORRUPT_SAFETENSORS, HOSTILE_FOLDERS, hostile_images, make_evil
from hub_server import WRITE_TOKEN
from limits import twice_at_once
from PIL import Image
from reference import TINY
from safetensors import safe_open
from transformers import AutoImageProcessor

from vit_zoo import VitZooModel, convert_checkpoint, embed, list_entries
from vit_zoo.embed import open_image
from vit_zoo.image_processing import load_image_processor
from vit_zoo.visualize import crop_box, select_attention


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


# --- hostile images, folders, repos and outputs given to embed ---------------------------------------------------------
# (moved here from test_bad_input.py; they drive `vit-zoo embed` through vit_zoo.cli.main in this process)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(folder / "good.png")
    return folder


def test_embed_skips_bombs_and_broken_images(model_folder, image_folder, tmp_path, capsys):
    for name, content in hostile_images().items():
        (image_folder / name).write_bytes(content)
    code, out, err = call_main(capsys, "embed", model_folder, image_folder, "--output", tmp_path / "e.safetensors")
    assert code == 0 and out.startswith("embedded 1 image into") and "(5 skipped)" in out, (out, err)
    assert "Traceback" not in err and "DecompressionBomb" not in err
    skipped = [line.removeprefix("vit-zoo embed: skipped ") for line in err.splitlines() if "skipped" in line]
    reasons = dict(line.split(": ", 1) for line in skipped)
    assert reasons == {
        str(image_folder / "float-offsets.tif"): "'float' object cannot be interpreted as an integer",
        str(image_folder / "garbage-chunk.png"): "broken PNG file (chunk b'\\x00\\x01\\xff\\x7f')",
        str(image_folder / "header-only.png"): "Image size (200000000 pixels) exceeds limit of 178956970 pixels, could be "
        "decompression bomb DOS attack.",  # PIL's own refusal, raised by Image.open
        str(image_folder / "thin.png"): "1x200000 pixels would become 32x6400000 at a 32-pixel shortest edge, more "
        "than 4194304 pixels; crop it to a less extreme aspect ratio",
        str(image_folder / "wide.png"): "400000x1 pixels would become 12800000x32 at a 32-pixel shortest edge, more "
        "than 4194304 pixels; crop it to a less extreme aspect ratio",
    }


@pytest.mark.parametrize("mode", ["P", "1", "RGB"])  # RGB: transformers centre-crops with other rounding
def test_palette_and_1_bit_images_are_resized_before_rgb_as_openai_does(model_folder, mode, tmp_path):
    """OpenAI resizes in the file's own mode (PIL then uses NEAREST for P and 1) and converts to RGB after."""
    from open_clip.transform import image_transform

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)).convert(mode)
    image.save(tmp_path / "image.png")
    processor = load_image_processor(model_folder / "preprocessor_config.json")
    seen = open_image(tmp_path / "image.png", 32, 32, processor.resample)[0]
    ours = processor(images=[seen], return_tensors="pt")
    with Image.open(tmp_path / "image.png") as reloaded:
        assert reloaded.mode == mode
        openai = image_transform(32, is_train=False)(reloaded)
    assert (ours["pixel_values"][0] - openai).abs().max() < 1e-6


def test_overlays_of_images_sharing_a_stem_are_all_kept(model_folder, tmp_path, capsys):
    for relative in ("a/x.png", "b/x.png", "a/x.jpg", "a/y.png"):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((40, 40, 3), len(relative) * 20, np.uint8)).save(tmp_path / relative)
    code, out, _ = call_main(
        capsys,
        "embed",
        model_folder,
        tmp_path / "a",
        tmp_path / "b",
        "--output",
        tmp_path / "e.safetensors",
        "--attention-map",
        tmp_path / "maps",
    )
    assert code == 0 and "wrote 4 attention overlays" in out
    assert listing(tmp_path / "maps") == [
        "a__x.jpg.attention.png",
        "a__x.png.attention.png",
        "b__x.png.attention.png",
        "y.attention.png",
    ]


def test_outputs_never_land_in_the_model_folder_or_on_an_input(copied_folder, image_folder, tmp_path, capsys):
    """``--output M/model.safetensors`` replaced the weights; every later embed ran on random ones with exit 0."""
    before = listing(copied_folder), (copied_folder / "model.safetensors").read_bytes()
    image = image_folder / "good.png"
    for flags in (
        ["--output", copied_folder / "model.safetensors"],
        ["--output", tmp_path / "e.npy", "--attention-map", copied_folder / "maps"],
    ):
        assert_cli_error(call_main(capsys, "embed", copied_folder, image, *flags), "embed", "is inside the model folder")
    (tmp_path / "e.npy").write_bytes(b"an input")  # files named directly are embedded whatever their suffix
    assert_cli_error(
        call_main(capsys, "embed", copied_folder, tmp_path / "e.npy", "--output", tmp_path / "e.npy"),
        "embed",
        "e.npy is one of the input images; choose an output that does not overwrite an input",
    )
    assert (listing(copied_folder), (copied_folder / "model.safetensors").read_bytes()) == before


def test_bad_output_suffix_and_unpairable_names_are_refused_before_any_work(model_folder, image_folder, tmp_path, capsys):
    maps = tmp_path / "maps"
    assert_cli_error(
        call_main(capsys, "embed", model_folder, image_folder, "--output", tmp_path / "e.txt", "--attention-map", maps),
        "embed",
        "--output must end in .safetensors or .npy, got e.txt",
    )
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image_folder / "two\nlines.png")
    assert_cli_error(
        call_main(capsys, "embed", model_folder, image_folder, "--output", tmp_path / "e.npy", "--attention-map", maps),
        "embed",
        "holds a line break, which the one-name-per-line .npy.files.txt cannot pair; use a .safetensors --output",
    )
    assert listing(tmp_path) == ["images", "images/good.png", "images/two\nlines.png"]


def test_failed_npy_write_leaves_no_files_list(model_folder, image_folder, tmp_path, capsys):
    (tmp_path / "e.npy").mkdir()  # the final rename fails: a folder is in the way
    assert_cli_error(
        call_main(capsys, "embed", model_folder, image_folder, "--output", tmp_path / "e.npy"), "embed", "cannot write"
    )
    assert listing(tmp_path) == ["e.npy", "images", "images/good.png"]


def test_embed_into_a_read_only_folder(model_folder, image_folder, read_only_folder, capsys):
    output = read_only_folder / "embeddings.safetensors"
    message = assert_cli_error(call_main(capsys, "embed", model_folder, image_folder, "--output", output), "embed")
    assert message.startswith(f"vit-zoo embed: error: cannot write {output} (")
    assert listing(read_only_folder) == []


def test_mistyped_folder_is_named_not_taken_for_a_repo_id(image_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for model in ("./vit-b-61", "models/vit-b/61", "~/vit-b-61"):
        assert_cli_error(call_main(capsys, "embed", model, image_folder), "embed", f"no such folder {model}, and not a zoo name")


def test_embed_never_offers_or_runs_repo_code(copied_folder, image_folder, tmp_path, capsys):
    make_evil(copied_folder)
    code, out, err = call_main(capsys, "embed", copied_folder, image_folder, "--output", tmp_path / "e.safetensors")
    assert code == 0 and "embedded 1 image into" in out, err
    assert not (copied_folder / "marker").exists() and "custom code" not in err


@pytest.mark.hub
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_embed_of_a_hub_repo_never_offers_or_runs_repo_code(copied_folder, image_folder, hub_server, tmp_path, capsys):
    from huggingface_hub import HfApi

    hub_server.create_repo("org/evil")
    HfApi(token=WRITE_TOKEN).upload_folder(repo_id="org/evil", folder_path=make_evil(copied_folder), repo_type="model")
    code, out, err = call_main(capsys, "embed", "org/evil", image_folder, "--output", tmp_path / "e.safetensors")
    assert code == 0 and "embedded 1 image into" in out, err
    assert "custom code" not in err and not list(Path(os.environ["HF_HOME"]).rglob("marker"))


@pytest.mark.parametrize("case", list(HOSTILE_FOLDERS))
def test_embed_refuses_folders_that_would_give_wrong_numbers(copied_folder, image_folder, tmp_path, case, capsys):
    """Each of these folders made transformers fill gaps with random values (or NaN) and embed exit 0."""
    edit, *fragments = HOSTILE_FOLDERS[case]
    edit(copied_folder)
    message = assert_cli_error(
        call_main(capsys, "embed", copied_folder, image_folder, "--output", tmp_path / "e.npy"), "embed", *fragments
    )
    assert len(message) < 400 and not (tmp_path / "e.npy").exists()


def test_embed_refuses_a_folder_with_corrupt_weights(corrupt_safetensors, copied_folder, image_folder, tmp_path, capsys):
    shutil.copyfile(corrupt_safetensors["truncated"], copied_folder / "model.safetensors")
    expected = f"{copied_folder / 'model.safetensors'}: {CORRUPT_SAFETENSORS['truncated']}"
    assert_cli_error(call_main(capsys, "embed", copied_folder, image_folder, "--output", tmp_path / "e.npy"), "embed", expected)
    assert not (tmp_path / "e.npy").exists()


def test_embed_refuses_a_folder_of_another_model_type(clip_vision_folder, image_folder, tmp_path, capsys):
    assert_cli_error(
        call_main(capsys, "embed", clip_vision_folder, image_folder, "--output", tmp_path / "e.npy"),
        "embed",
        "describes a 'clip_vision_model' model, not a 'vit_zoo' one; use a repo written by vit-zoo",
    )


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/model.safetensors"])
def test_shard_index_naming_paths_out_of_the_folder(sharded_folder, image_folder, tmp_path, shard, capsys):
    folder = Path(shutil.copytree(sharded_folder, tmp_path / "sharded"))
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    index_path.write_text(json.dumps(index))
    assert_cli_error(
        call_main(capsys, "embed", folder, image_folder, "--output", tmp_path / "e.npy"),
        "embed",
        f"model.safetensors.index.json names shard '{shard}', which is not a .safetensors file in the folder",
    )


def test_concurrent_embeds_of_one_zoo_name_convert_once(tiny_archive, tmp_path, monkeypatch):
    """The loser of two ``embed NAME`` runs failed with "appeared while converting" though a valid folder existed."""
    conversions = []

    def convert_slowly(name, output, cache_dir=None):
        conversions.append(name)
        time.sleep(1)  # both runs are in here at once without the lock
        return convert_checkpoint(tiny_archive, output)

    monkeypatch.setattr(embed, "convert_checkpoint", convert_slowly)
    results, errors = twice_at_once(lambda: embed.resolve_model_folder("ViT-B/32", tmp_path / "cache"))
    assert errors == [] and len(conversions) == 1
    assert results == [tmp_path / "cache" / "converted" / "vit_zoo_base_patch32_clip_224"] * 2
