"""``vit_zoo.embed``: `vit-zoo embed` into one file, the preprocessing, the Python API and the refusals (the sharded
output: test_embed_sharded.py); `vit-zoo list`; and (the section at the end) hostile images, folders, repos and
outputs given to embed. ``StagedFiles``, which replaces the outputs together, is tested in test_outputs.py."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, assert_cli_error, call_main, listing, run_cli
from hostile import CORRUPT_SAFETENSORS, HOSTILE_FOLDERS, edit_json, edit_weights, hostile_images, make_evil
from hub_server import WRITE_TOKEN
from limits import twice_at_once
from PIL import Image
from reference import TINY
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision import transforms
from transformers import AutoImageProcessor

import vit_zoo.convert
from vit_zoo import VitZooModel, convert_checkpoint, embed_inputs, list_entries
from vit_zoo.embed import Embedder
from vit_zoo.embed_data import Preprocess, load_image
from vit_zoo.embed_inputs import overlay_names
from vit_zoo.image_processing import load_image_processor
from vit_zoo.visualize import crop_box, framed, reduce_attention, select_attention


@pytest.fixture(scope="module")
def cropping_folder(model_folder, tmp_path_factory):
    """The tiny model with crop_pct 32/36 < 1: shortest edge resized to 36, then a 32-pixel centre crop."""
    folder = Path(shutil.copytree(model_folder, tmp_path_factory.mktemp("cropping") / "tiny"))
    edit_json("preprocessor_config.json", size={"shortest_edge": 36})(folder)
    return folder


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


def direct_outputs(model_folder, paths, batch_size=64):
    """Embeddings and attention maps from transformers' own classes: AutoImageProcessor (PIL) + VitZooModel, in
    batches of ``batch_size`` as the run made them (a CPU's kernels may round a batch of 1 and one of 3 apart)."""
    model = VitZooModel.from_pretrained(model_folder).eval()
    processor = AutoImageProcessor.from_pretrained(model_folder, backend="pil")
    outputs = []
    for start in range(0, len(paths), batch_size):
        pictures = [Image.open(path).convert("RGB") for path in paths[start : start + batch_size]]
        with torch.no_grad():
            outputs.append(model(**processor(images=pictures, return_tensors="pt"), output_attention_map=True))
    return torch.cat([out.image_embeds for out in outputs]), torch.cat([out.attention_map for out in outputs], dim=1)


def test_embed_writes_embeddings_attention_maps_and_bounded_overlays(model_folder, images, tmp_path):
    result = run_cli(
        "embed",
        model_folder,
        images,
        "--output",
        tmp_path / "emb.safetensors",
        "--attention-map",
        "--all-layers",
        "--overlays",
        tmp_path / "maps",
        "--overlay-size",
        40,
        "--batch-size",
        2,
    )
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "d_corrupt.png" in result.stderr
    summary = f"embedded 3 images into {tmp_path / 'emb.safetensors'} (1 skipped); wrote 6 attention overlays into "
    assert result.stdout == summary + f"{tmp_path / 'maps'}\n"

    with safe_open(tmp_path / "emb.safetensors", "pt") as file:
        embeddings, maps = file.get_tensor("embeddings"), file.get_tensor("attention_map")
        names = json.loads(file.metadata()["files"])
    expected_paths = [images / "a_noise.png", images / "b_gradient.jpg", images / "nested" / "c_gray.bmp"]
    assert names == [str(p) for p in expected_paths]
    expected, attention_map = direct_outputs(model_folder, expected_paths, batch_size=2)
    torch.testing.assert_close(embeddings, expected, rtol=0, atol=0)
    assert maps.dtype == torch.float16 and maps.shape == (3, TINY["layers"], 4, 4)
    torch.testing.assert_close(maps, reduce_attention(attention_map, all_layers=True).half(), rtol=0, atol=1e-3)

    for path in expected_paths:
        overlay = unframed(Image.open(tmp_path / "maps" / f"{path.stem}.attention.png"))
        assert (
            max(overlay.size) == 40
            and abs(overlay.size[0] / overlay.size[1] - Image.open(path).size[0] / Image.open(path).size[1]) < 0.1
        )
        grid = unframed(Image.open(tmp_path / "maps" / f"{path.stem}.layers.png"))
        assert grid.size == (overlay.size[0] * TINY["layers"], overlay.size[1])

    # The overlay's brightest region is where the mean last-layer attention is highest.
    heat = unframed(Image.open(tmp_path / "maps" / "b_gradient.attention.png")).convert("L")
    left, top, right, bottom = crop_box(heat.size)
    grid = select_attention(attention_map[:, 1]).numpy()
    row, col = np.unravel_index(grid.argmax(), grid.shape)
    cell = (right - left) // grid.shape[1]
    patch = np.asarray(heat)[top + row * cell : top + (row + 1) * cell, left + col * cell : left + (col + 1) * cell]
    assert patch.mean() >= np.asarray(heat)[top:bottom, left:right].mean()


def unframed(picture: Image.Image) -> Image.Image:
    """The overlay inside what ``vit_zoo.visualize.framed`` adds below it (the colour scale; no note here)."""
    scale = framed(Image.new("RGB", (picture.width, 1))).height - 1
    return picture.crop((0, 0, picture.width, picture.height - scale))


def test_preprocessing_with_crop_pct_below_one_is_the_folders_processor_exactly(cropping_folder, tmp_path, capsys):
    """The old reader resized and cropped, then the processor resized and cropped again: with crop_pct < 1 the
    pixels were off by up to 3.7 normalised units. One path now: OpenAI's geometry, the processor's numbers."""
    processor = load_image_processor(cropping_folder / "preprocessor_config.json")
    assert processor.size["shortest_edge"] == 36 and processor.crop_size["height"] == 32
    rng = np.random.default_rng(1)
    paths = []
    for index, (height, width) in enumerate([(36, 36), (48, 64), (72, 40), (45, 61)]):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1])
    preprocess = Preprocess(processor)
    openai = transforms.Compose(
        [
            transforms.Resize(36, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize(processor.image_mean, processor.image_std),
        ]
    )
    for path in paths:
        ours = load_image(path, preprocess)[0]
        with Image.open(path) as image:
            assert (ours - openai(image)).abs().max() < 1e-6  # OpenAI's (timm's crop_pct) eval transform
            theirs = processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]
        if path.name != "3.png":  # 45x61 -> 36x48: transformers floors the 6-pixel margin's half where torchvision rounds
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)

    code, out, err = call_main(capsys, "embed", cropping_folder, *paths[:3], "--output", tmp_path / "e.safetensors")
    assert code == 0, err
    model = VitZooModel.from_pretrained(cropping_folder).eval()
    with Image.open(paths[0]) as a, Image.open(paths[1]) as b, Image.open(paths[2]) as c, torch.no_grad():
        expected = model(**processor(images=[a, b, c], return_tensors="pt")).image_embeds
    torch.testing.assert_close(load_file(tmp_path / "e.safetensors")["embeddings"], expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["P", "1", "RGB"])  # RGB: transformers centre-crops with other rounding
def test_palette_and_1_bit_images_are_resized_before_rgb_as_openai_does(model_folder, mode, tmp_path):
    """OpenAI resizes in the file's own mode (PIL then uses NEAREST for P and 1) and converts to RGB after."""
    from open_clip.transform import image_transform

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)).convert(mode)
    image.save(tmp_path / "image.png")
    ours = load_image(tmp_path / "image.png", Preprocess(load_image_processor(model_folder / "preprocessor_config.json")))[0]
    with Image.open(tmp_path / "image.png") as reloaded:
        assert reloaded.mode == mode
        openai = image_transform(32, is_train=False)(reloaded)
    assert (ours - openai).abs().max() < 1e-6


def test_npy_output_keeps_names_that_are_not_utf8_and_a_failed_run_changes_nothing(model_folder, images, tmp_path, capsys):
    """A second run with ``caf\\xe9.png`` (bytes on disk) exited 1 with "'utf-8' codec can't encode", deleted the
    earlier e.npy and orphaned e.npy.files.txt."""
    output = tmp_path / "e.npy"
    code, _, err = call_main(capsys, "embed", model_folder, images / "b_gradient.jpg", "--output", output)
    assert code == 0, err
    odd = os.fsdecode(os.fsencode(str(images)) + b"/caf\xe9.png")
    Image.open(images / "a_noise.png").save(odd, "PNG")
    code, out, err = call_main(capsys, "embed", model_folder, images / "b_gradient.jpg", odd, "--output", output)
    assert code == 0 and out.startswith("embedded 2 images into"), err
    assert (
        output.with_name("e.npy.files.txt").read_bytes()
        == os.fsencode(str(images / "b_gradient.jpg")) + b"\n" + os.fsencode(odd) + b"\n"
    )
    expected, _ = direct_outputs(model_folder, [images / "b_gradient.jpg", odd])
    np.testing.assert_array_equal(np.load(output), expected.numpy())

    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    assert_cli_error(
        call_main(capsys, "embed", model_folder, images / "d_corrupt.png", "--output", output),
        "embed",
        "none of the 1 inputs could be read as an image",
    )
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before


def test_overlays_count_what_is_written_and_name_copies_uniquely(model_folder, images, tmp_path, capsys):
    """``IMG IMG --attention-map M`` said "wrote 2 attention overlays" and wrote one; naming 20 000 copies of one
    path took 81 s (quadratic)."""
    image = images / "a_noise.png"
    code, out, err = call_main(
        capsys, "embed", model_folder, image, image, "--output", tmp_path / "e.safetensors", "--overlays", tmp_path / "maps"
    )
    assert code == 0 and out.endswith(f"; wrote 2 attention overlays into {tmp_path / 'maps'}\n"), err
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["a_noise-2.attention.png", "a_noise.attention.png"]
    names = overlay_names([str(image)] * 20_000)
    assert len(set(names)) == 20_000 and names[:2] == ["a_noise", "a_noise-2"] and names[-1] == "a_noise-20000"


def test_overlays_of_a_huge_image_are_drawn_at_a_bounded_size(model_folder, tmp_path, capsys):
    """A 9000x9000 PNG with --attention-map took 45 s and +5.6 GB: the overlay was drawn at full size."""
    Image.new("RGB", (4000, 3000), (40, 90, 160)).save(tmp_path / "big.png")
    code, _, err = call_main(
        capsys, "embed", model_folder, tmp_path / "big.png", "-o", tmp_path / "e.safetensors", "--overlays", tmp_path / "maps"
    )
    assert code == 0, err
    assert unframed(Image.open(tmp_path / "maps" / "big.attention.png")).size == (512, 384)


@pytest.fixture
def overflowing_folder(copied_folder):
    """Finite float32 weights whose embeddings overflow float16 (65504)."""
    edit_weights(lambda weights: weights["proj"].fill_(1e5))(copied_folder)
    return copied_folder


def test_non_finite_embeddings_end_the_run_naming_the_cause(overflowing_folder, images, tmp_path, capsys):
    """An fp32 weight of 1e5 with --dtype float16 wrote Inf embeddings with exit 0."""
    code, _, err = call_main(capsys, "embed", overflowing_folder, images / "a_noise.png", "-o", tmp_path / "f32.npy")
    assert code == 0, err  # float32 holds these values
    assert np.isfinite(np.load(tmp_path / "f32.npy")).all()
    for flags in (["-o", tmp_path / "e.npy"], ["--output-dir", tmp_path / "sharded"]):
        assert_cli_error(
            call_main(capsys, "embed", overflowing_folder, images / "a_noise.png", "--dtype", "float16", *flags),
            "embed",
            f"the embedding of {images / 'a_noise.png'} is NaN or Inf: the model overflows float16; use --dtype float32",
        )
    assert not (tmp_path / "e.npy").exists() and not list((tmp_path / "sharded").glob("img_emb/*"))


def test_embedder_api_matches_the_command(model_folder, images, tmp_path, capsys):
    paths = [images / "a_noise.png", images / "b_gradient.jpg"]
    code, _, err = call_main(capsys, "embed", model_folder, *paths, "-o", tmp_path / "e.npy", "--normalize")
    assert code == 0, err
    written = np.load(tmp_path / "e.npy")
    np.testing.assert_allclose(np.linalg.norm(written, axis=1), 1, rtol=1e-6)
    embedder = Embedder.from_folder(model_folder, normalize=True)
    pictures = [Image.open(path) for path in paths]
    np.testing.assert_array_equal(embedder.embed_images(pictures, batch_size=2), written)
    # a Ray Data map_batches callable: encoded bytes, arrays or PIL images in, the batch plus "embedding" out
    batch = {"image": [path.read_bytes() for path in paths], "id": [1, 2]}
    np.testing.assert_array_equal(embedder(batch)["embedding"], written)
    assert embedder(batch)["id"] == [1, 2]
    half = Embedder.from_folder(model_folder, embedding_dtype="float16", attention=None)
    assert half.embed_images(pictures).dtype == np.float16


@pytest.mark.parametrize(
    "args, message",
    [
        (["{model}", "{images}/missing.png"], "{images}/missing.png does not exist"),
        (["{model}", "{images}", "--attention-map", "--layer", "7"], "--layer 7 is out of range: the model has 3 layers"),
        (["{model}", "{images}", "--attention-map", "--heads", "9"], "--heads 9 is out of range"),
        (["{model}", "{images}", "--attention-map", "--heads", "first"], "--heads must be 'mean', 'max'"),
        (["{model}", "{images}", "--layer", "99"], "--layer chooses an attention map, but none is asked for"),
        (["{model}", "{images}", "--heads", "garbage"], "--heads chooses an attention map, but none is asked for"),
        (["{model}", "{images}", "--all-layers"], "--all-layers chooses an attention map"),
        (
            ["{model}", "{images}", "-o", "{tmp}/e.txt", "--overlays", "{tmp}/maps"],
            "--output must end in .safetensors or .npy, got e.txt",
        ),
        (["{model}", "{images}", "--output", "{tmp}/e.npy", "--attention-map"], "--attention-map needs a .safetensors"),
        (["{model}", "{images}", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["{model}", "{images}", "--num-workers", "-1"], "--num-workers must be at least 0"),
        (["{model}", "{images}", "--shard-index", "0"], "--shard-index and --num-shards go together"),
        (["{model}", "{images}", "--shard-index", "2", "--num-shards", "2", "--output-dir", "{tmp}/d"], "must be below"),
        (["{model}", "{images}", "--shard-size", "5"], "--shard-size need --output-dir"),
        (["{model}", "{images}", "--device", "meta"], "--device must be cpu, cuda or cuda:N, got 'meta'"),
        (["{model}", "{images}", "--device", "xpu"], "--device must be cpu, cuda or cuda:N, got 'xpu'"),
        (["{model}", "{images}", "-o", "{tmp}/afile/e.safetensors"], "afile is a file, not a folder"),
        (["{model}", "{images}", "-o", "{tmp}/adir.npy"], "--output {tmp}/adir.npy is a folder; give a file name"),
        (["{model}", "{images}", "--overlays", "{tmp}/afile/x"], "afile is a file, not a folder"),
        (["{model}", "{images}", "--overlays", "{tmp}/existing.png"], "--overlays {tmp}/existing.png is a file, not a folder"),
        (["not-a-model", "{images}"], "no such folder not-a-model, and not a zoo name or a Hub repo id"),
        (["./vit-b-61", "{images}"], "no such folder ./vit-b-61, and not a zoo name or a Hub repo id (ORG/NAME)"),
        (["models/vit-b/61", "{images}"], "no such folder models/vit-b/61, and not a zoo name or a Hub repo id"),
        (["~/vit-b-61", "{images}"], "no such folder ~/vit-b-61, and not a zoo name or a Hub repo id"),
        (["vit_zoo_tiny_patch8_test_32", "{images}"], "has no pretrained weights"),
        (["{model}", "{images}/d_corrupt.png"], "none of the 1 inputs could be read as an image"),
        (["{model}", "{images}/a_noise.png", "{tmp}/data.tar"], "give either images (files, folders, path lists) or webdataset"),
        (["{model}", "{tmp}/data.tar"], "webdataset .tar inputs are written shard by shard: give --output-dir"),
    ],
)
def test_embed_bad_input(model_folder, images, tmp_path, args, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "adir.npy").mkdir()
    (tmp_path / "existing.png").write_bytes(b"")
    (tmp_path / "data.tar").write_bytes(b"")
    before = sorted(tmp_path.rglob("*"))
    filled = [a.format(model=model_folder, images=images, tmp=tmp_path) for a in args]
    assert_cli_error(call_main(capsys, "embed", *filled), "embed", message.format(images=images, tmp=tmp_path))
    assert sorted(tmp_path.rglob("*")) == before


def test_a_fifo_is_named_for_what_it_is(model_folder, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.png")
    assert_cli_error(
        call_main(capsys, "embed", model_folder, tmp_path / "pipe.png"),
        "embed",
        f"{tmp_path / 'pipe.png'} is a FIFO (named pipe), not an image file",
    )


# Runs main() on several refusals in one fresh interpreter and reports which heavy libraries got imported.
REFUSALS_WITHOUT_TORCH = """
import json, sys
from vit_zoo.cli import main
codes = [main(json.loads(args)) for args in sys.argv[1:]]
heavy = sorted({"torch", "transformers", "timm", "huggingface_hub"} & set(sys.modules))
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_refusals_come_before_importing_torch(model_folder, images, tmp_path):
    """``embed MODEL /nonexistent.png`` took 10.7 s and 993 MB (the torch import); --batch-size 0 loaded the model."""
    cases = [
        [str(model_folder), "/nonexistent.png"],
        [str(model_folder), str(images), "--batch-size", "0"],
        [str(model_folder), str(images), "--layer", "99"],
        [str(model_folder), str(images), "--device", "foo"],
        [str(model_folder), str(images), "-o", str(images / "a_noise.png" / "e.npy")],
    ]
    result = subprocess.run(
        [sys.executable, "-c", REFUSALS_WITHOUT_TORCH, *(json.dumps(["embed", *case]) for case in cases)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=300,
    )
    assert json.loads(result.stdout) == {"codes": [1] * len(cases), "heavy": []}, result.stderr
    assert len(result.stderr.strip().splitlines()) == len(cases), result.stderr


def _hostile_folders(model_folder: Path, corrupt_safetensors: dict[str, Path], root: Path) -> dict[str, tuple[Path, str]]:
    """Copies of ``model_folder`` damaged each way the tables of ``hostile`` list, plus files that block or never
    end where a JSON file should be, with a fragment of what the refusal says."""
    folders = {}
    for case, (edit, fragment, *_) in HOSTILE_FOLDERS.items():
        edit(folder := Path(shutil.copytree(model_folder, root / case)))
        folders[case] = (folder, fragment)
    for damage, path in corrupt_safetensors.items():
        shutil.copyfile(path, (folder := Path(shutil.copytree(model_folder, root / damage))) / "model.safetensors")
        folders[damage] = (folder, CORRUPT_SAFETENSORS[damage])
    fifo = Path(shutil.copytree(model_folder, root / "config-fifo"))
    (fifo / "config.json").unlink()
    os.mkfifo(fifo / "config.json")
    folders["config-fifo"] = (fifo, "config.json is a FIFO (named pipe), not a regular file")
    endless = Path(shutil.copytree(model_folder, root / "processor-dev-zero"))
    (endless / "preprocessor_config.json").unlink()
    (endless / "preprocessor_config.json").symlink_to("/dev/zero")
    folders["processor-dev-zero"] = (endless, "preprocessor_config.json is a symlink to /dev/zero, outside the folder")
    nested = Path(shutil.copytree(model_folder, root / "config-nesting-bomb"))
    (nested / "config.json").write_text("[" * 100_000)
    folders["config-nesting-bomb"] = (nested, "config.json is not valid JSON (nested too deeply)")
    return folders


def test_hostile_folders_are_refused_before_importing_torch(model_folder, corrupt_safetensors, images, tmp_path):
    """A hostile folder cost the torch import to refuse (~850 MB, seconds): embed, export and push now read every
    file of it first, with neither torch, transformers nor huggingface_hub imported."""
    folders = _hostile_folders(model_folder, corrupt_safetensors, tmp_path / "hostile")
    commands = {
        "embed": lambda folder: ["embed", str(folder), str(images), "-o", str(tmp_path / "e.npy")],
        "export": lambda folder: ["export", str(folder), "--format", "pt2", "-o", str(tmp_path / "m.pt2")],
        "push": lambda folder: ["push", str(folder), "org/never-created"],
    }
    for command, arguments in commands.items():
        cases = [arguments(folder) for folder, _ in folders.values()]
        result = subprocess.run(
            [sys.executable, "-c", REFUSALS_WITHOUT_TORCH, *map(json.dumps, cases)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_ENDPOINT": "http://127.0.0.1:9"},
            timeout=300,
        )
        assert json.loads(result.stdout) == {"codes": [1] * len(cases), "heavy": []}, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == len(folders), result.stderr
        for line, (case, (_, fragment)) in zip(lines, folders.items()):
            assert line.startswith(f"vit-zoo {command}: error: ") and fragment in line, (case, line)
    assert not list(tmp_path.glob("[em].*"))


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
        "--overlays",
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
        ["--output", tmp_path / "e.npy", "--overlays", copied_folder / "maps"],
    ):
        assert_cli_error(call_main(capsys, "embed", copied_folder, image, *flags), "embed", "is inside the model folder")
    (tmp_path / "e.npy").write_bytes(b"an input")  # files named directly are embedded whatever their suffix
    assert_cli_error(
        call_main(capsys, "embed", copied_folder, tmp_path / "e.npy", "--output", tmp_path / "e.npy"),
        "embed",
        "e.npy is one of the input images; choose an output that does not overwrite an input",
    )
    assert (listing(copied_folder), (copied_folder / "model.safetensors").read_bytes()) == before


def test_names_a_npy_files_list_cannot_pair_are_refused_before_any_work(model_folder, image_folder, tmp_path, capsys):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image_folder / "two\nlines.png")
    assert_cli_error(
        call_main(capsys, "embed", model_folder, image_folder, "--output", tmp_path / "e.npy", "--overlays", tmp_path / "maps"),
        "embed",
        "holds a line break, which the one-name-per-line .npy.files.txt cannot pair; use a .safetensors --output",
    )
    assert listing(tmp_path) == ["images", "images/good.png", "images/two\nlines.png"]


def test_embed_into_a_read_only_folder(model_folder, image_folder, read_only_folder, capsys):
    output = read_only_folder / "embeddings.safetensors"
    message = assert_cli_error(call_main(capsys, "embed", model_folder, image_folder, "--output", output), "embed")
    assert message.endswith(f"--output {output}: {read_only_folder} is not writable; choose an output folder you can write to")
    assert listing(read_only_folder) == []


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

    monkeypatch.setattr(vit_zoo.convert, "convert_checkpoint", convert_slowly)
    results, errors = twice_at_once(lambda: embed_inputs.resolve_model_folder("ViT-B/32", tmp_path / "cache"))
    assert errors == [] and len(conversions) == 1
    assert results == [tmp_path / "cache" / "converted" / "vit_zoo_base_patch32_clip_224"] * 2
