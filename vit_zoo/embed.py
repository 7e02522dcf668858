"""``vit-zoo embed``: image embeddings to a file, and attention-map overlays people can look at."""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from filelock import FileLock
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from PIL import Image
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .convert import DTYPES, convert_checkpoint
from .download import default_cache_dir
from .errors import UnknownVariantError, first_line
from .folder_check import check_folder
from .hub import pull
from .image_processing import load_image_processor
from .model import VisionTransformer
from .modeling import VitZooModel
from .outputs import write_atomically
from .visualize import overlay, overlay_grid, select_attention
from .zoo import get_entry

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
OUTPUT_SUFFIXES = (".safetensors", ".npy")
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own warning threshold (a 3 x 8-bit image of ~256 MB), read from the header
MAX_RESIZED_PIXELS = 1 << 22  # after the shortest-edge resize: 48 MB as float32 RGB (a 224 px edge, aspect 83:1)


@dataclass
class EmbedResult:
    """What one run produced: the embedded files (in order), their embeddings and the skipped files."""

    files: list[Path] = field(default_factory=list)
    embeddings: list[torch.Tensor] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)
    overlays: list[Path] = field(default_factory=list)

    def stacked(self) -> torch.Tensor:
        """``[n_images, output_dim]`` in ``files`` order."""
        return torch.cat(self.embeddings) if self.embeddings else torch.empty(0)


def resolve_model_folder(model: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A vit_zoo folder for ``model``: a local folder as is; a zoo or OpenAI name downloaded and converted once
    into ``<cache>/converted/<name>``; otherwise a Hub repo id, pulled through the HF cache."""
    if Path(model).is_dir():
        return check_folder(model)
    try:
        entry = get_entry(model)
    except UnknownVariantError:
        if Path(model).exists():
            raise ValueError(f"{model} is a file, not a vit_zoo folder; give the --output folder of `vit-zoo convert`") from None
        if not _is_repo_id(model):
            raise ValueError(
                f"no such folder {model}, and not a zoo name or a Hub repo id (ORG/NAME); check the path, or see `vit-zoo list`"
            ) from None
        return pull(model)
    if not entry.pretrained:
        raise ValueError(f"zoo variant {entry.name} has no pretrained weights; convert or train some and give the folder")
    converted = Path(cache_dir or default_cache_dir()) / "converted" / entry.name
    converted.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(converted.with_name(f"{entry.name}.lock")):  # a second run waits, then uses the first one's folder
        if not converted.is_dir():
            convert_checkpoint(entry.name, converted, cache_dir=cache_dir)
    return check_folder(converted)


def _is_repo_id(model: str) -> bool:
    """``ORG/NAME`` as the Hub spells repo ids; ``./name``, ``a/b/c`` or ``~/x`` are paths."""
    if model.count("/") != 1 or model.startswith((".", "~")):
        return False
    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def load_model(folder: Path, device: str = "cpu", dtype: str = "float32"):
    """The folder's core ``VisionTransformer`` (eval, on ``device`` in ``dtype``) and its image processor (built
    by vit_zoo from ``preprocessor_config.json``: no ``auto_map`` is followed, no repo code offered or run)."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu")
    processor = load_image_processor(folder / "preprocessor_config.json")
    model = VitZooModel.from_pretrained(folder, dtype=DTYPES[dtype]).visual.to(device).eval()
    return model, processor


def check_outputs(
    output: str | os.PathLike, attention_dir: str | os.PathLike | None, model_folder: Path, files: Sequence[Path]
) -> None:
    """Refuse, before any work, outputs that would land inside the model folder or overwrite an input image, a bad
    ``--output`` suffix, and names a ``.npy`` output's ``files.txt`` (one name per line) cannot hold."""
    output = Path(output)
    if output.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--output must end in {' or '.join(OUTPUT_SUFFIXES)}, got {output.name}")
    model = model_folder.resolve()
    inputs = {file.resolve() for file in files}
    written = [output, output.with_name(output.name + ".files.txt")] if output.suffix == ".npy" else [output]
    if attention_dir is not None:
        written.append(Path(attention_dir))
        written += [Path(attention_dir) / name for names in overlay_names(files).values() for name in names]
    for path in written:
        resolved = path.resolve()
        if resolved == model or model in resolved.parents:
            raise ValueError(f"{path} is inside the model folder {model_folder}; write outputs elsewhere")
        if resolved in inputs:
            raise ValueError(f"{path} is one of the input images; choose an output that does not overwrite an input")
    if output.suffix == ".npy" and any("\n" in str(file) or "\r" in str(file) for file in files):
        raise ValueError(
            "an image's file name holds a line break, which the one-name-per-line .npy.files.txt cannot pair; "
            "use a .safetensors --output (names in its metadata)"
        )


def overlay_names(files: Sequence[Path]) -> dict[Path, tuple[str, str]]:
    """Each image's overlay file names (``<stem>.attention.png``, ``<stem>.layers.png``), unique: images sharing a
    stem are named by their path from the folder the inputs share (``a__x.png``), and any name still taken gets a
    number."""
    stems = Counter(file.stem for file in files)
    root = Path(os.path.commonpath([file.resolve().parent for file in files])) if files else Path()
    names, taken = {}, set()
    for file in files:
        name = file.stem if stems[file.stem] == 1 else "__".join(file.resolve().relative_to(root).parts)
        unique, number = name, 1
        while unique in taken:
            number += 1
            unique = f"{name}-{number}"
        taken.add(unique)
        names[file] = (f"{unique}.attention.png", f"{unique}.layers.png")
    return names


def collect_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named directly (whatever their suffix) plus image files found under named folders, sorted."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item} does not exist; give image files or folders of images")
    if not files:
        raise ValueError(f"no images found in {', '.join(map(str, inputs))} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def open_image(
    path: Path, shortest_edge: int, crop: int, resample: int, keep: bool = False
) -> tuple[Image.Image, Image.Image | None]:
    """``path`` as OpenAI's preprocessing sees it before normalisation: the shortest edge resized to
    ``shortest_edge`` in the file's own mode (PIL uses NEAREST for palette and 1-bit images), a centred
    ``crop``-square cut with torchvision's rounding, then RGB; with ``keep`` also the whole image as RGB (for overlays).

    The size is read from the header first: an image of more than ``MAX_IMAGE_PIXELS``, or whose resize would
    make more than ``MAX_RESIZED_PIXELS`` (a 400000x1 PNG of 1 KB), is refused before it is decoded.
    """
    with warnings.catch_warnings(), Image.open(path) as image:  # reads the header only
        warnings.simplefilter("ignore")  # PIL's notes on odd metadata: what counts is whether the pixels decode
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{width}x{height} pixels is more than {MAX_IMAGE_PIXELS} (a decompression bomb?)")
        size = _resized_size(width, height, shortest_edge)
        if size[0] * size[1] > MAX_RESIZED_PIXELS:
            raise ValueError(
                f"{width}x{height} pixels would become {size[0]}x{size[1]} at a {shortest_edge}-pixel shortest edge, "
                f"more than {MAX_RESIZED_PIXELS} pixels; crop it to a less extreme aspect ratio"
            )
        image.load()
        left, top = round((size[0] - crop) / 2), round((size[1] - crop) / 2)
        seen = image.resize(size, resample).crop((left, top, left + crop, top + crop)).convert("RGB")
        return seen, image.convert("RGB") if keep else None


def _resized_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """(width, height) after the shortest-edge resize, as transformers and torchvision compute it."""
    if width <= height:
        return shortest_edge, int(shortest_edge * height / width) if width else 0
    return int(shortest_edge * width / height) if height else 0, shortest_edge


def _batches(files: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(files), size):
        yield files[start : start + size]


@torch.inference_mode()
def embed_images(
    model: VisionTransformer,
    processor,
    files: Sequence[Path],
    *,
    batch_size: int = 32,
    attention_dir: Path | None = None,
    layer: int = -1,
    heads: str = "mean",
    all_layers: bool = False,
    crop_pct: float = 1.0,
    progress: bool = True,
) -> EmbedResult:
    """Embed ``files`` in batches; unreadable files are recorded in ``skipped`` and the rest go on.

    ``processor`` is the model's image processor (e.g. ``CLIPImageProcessor``) returning ``pixel_values``.
    With ``attention_dir``, writes ``<stem>.attention.png`` (the chosen layer and head reduction over the
    image) and, with ``all_layers``, ``<stem>.layers.png`` (one tile per layer) for each image.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if attention_dir is not None:  # refuse a bad --layer/--heads before any work
        select_attention(torch.zeros(model.geometry.layers, model.geometry.heads, 1, 1), layer, heads)
    result = EmbedResult()
    parameter = next(model.parameters())
    shortest_edge, crop, resample = processor.size["shortest_edge"], processor.crop_size["height"], processor.resample
    overlay_files = overlay_names(files)
    for batch in tqdm(list(_batches(files, batch_size)), desc="embedding", unit="batch", disable=not progress):
        resized, images, names = [], [], []
        for path in batch:
            try:
                model_input, whole = open_image(path, shortest_edge, crop, resample, keep=attention_dir is not None)
            except Exception as error:  # noqa: BLE001 - PIL's decoders raise anything (SyntaxError, TypeError...)
                result.skipped[path] = first_line(error)
                continue
            resized.append(model_input)
            images.append(whole)
            names.append(path)
        if not names:
            continue
        pixel_values = processor(images=resized, return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        outputs = model(pixel_values, output_attention_map=attention_dir is not None)
        result.files.extend(names)
        result.embeddings.append(outputs[0].float().cpu())
        if attention_dir is not None:
            targets = [overlay_files[path] for path in names]
            result.overlays.extend(
                _write_overlays(attention_dir, targets, images, outputs[1].float().cpu(), layer, heads, all_layers, crop_pct)
            )
    return result


def _write_overlays(folder, targets, images, attention_map, layer, heads, all_layers, crop_pct) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, ((attention_name, layers_name), image) in enumerate(zip(targets, images)):
        per_image = attention_map[:, index]  # [layers, heads, gh, gw]
        target = folder / attention_name
        overlay(image, select_attention(per_image, layer, heads), crop_pct).save(target)
        written.append(target)
        if all_layers:
            reduced = torch.stack([select_attention(per_image, i, heads) for i in range(per_image.shape[0])])
            grid_target = folder / layers_name
            overlay_grid(image, reduced, crop_pct).save(grid_target)
            written.append(grid_target)
    return written


def save_embeddings(path: str | os.PathLike, result: EmbedResult, model_name: str) -> Path:
    """Write ``[n, output_dim]`` embeddings with their file names.

    ``.safetensors``: tensor ``embeddings``, metadata ``files`` (JSON list) and ``model``. ``.npy``: the
    array, with the file names one per line in ``<path>.files.txt`` beside it.
    """
    path = Path(path)
    if path.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--output must end in {' or '.join(OUTPUT_SUFFIXES)}, got {path.name}")
    names = [str(file) for file in result.files]
    embeddings = result.stacked().contiguous()
    if path.suffix == ".safetensors":
        metadata = {"files": json.dumps(names), "model": model_name}
        return write_atomically(
            path, lambda staging: save_file({"embeddings": embeddings}, staging, metadata=metadata), replace=True
        )
    import numpy as np

    def write_array(staging: Path) -> None:
        with open(staging, "wb") as handle:
            np.save(handle, embeddings.numpy())

    write_atomically(path, write_array, replace=True)
    try:
        names_file = path.with_name(path.name + ".files.txt")
        write_atomically(
            names_file, lambda staging: staging.write_text("".join(f"{n}\n" for n in names), encoding="utf-8"), replace=True
        )
    except BaseException:
        path.unlink(missing_ok=True)  # an array without its names cannot be paired
        raise
    return path
