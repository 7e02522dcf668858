"""``vit-zoo embed``: image embeddings to a file, and attention-map overlays people can look at."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .convert import DTYPES, convert_checkpoint
from .download import default_cache_dir
from .errors import UnknownVariantError, first_line
from .folder import check_folder, write_atomically
from .hub import pull
from .model import VisionTransformer
from .modeling import VitZooModel
from .visualize import overlay, overlay_grid, select_attention
from .zoo import get_entry

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
OUTPUT_SUFFIXES = (".safetensors", ".npy")


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
        if "/" not in model or Path(model).exists():
            raise ValueError(
                f"{model} is not a vit_zoo folder, a zoo name or a Hub repo id (ORG/NAME); see `vit-zoo list`"
            ) from None
        return pull(model)
    if not entry.pretrained:
        raise ValueError(f"zoo variant {entry.name} has no pretrained weights; convert or train some and give the folder")
    converted = Path(cache_dir or default_cache_dir()) / "converted" / entry.name
    if not converted.is_dir():
        convert_checkpoint(entry.name, converted, cache_dir=cache_dir)
    return converted


def load_model(folder: Path, device: str = "cpu", dtype: str = "float32"):
    """The folder's core ``VisionTransformer`` (eval, on ``device`` in ``dtype``) and its image processor."""
    from transformers import AutoImageProcessor

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu")
    model = VitZooModel.from_pretrained(folder, dtype=DTYPES[dtype]).visual.to(device).eval()
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    return model, processor


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


def _open_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


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
        select_attention(torch.zeros(model.transformer.layers, model.transformer.resblocks[0].attn.heads, 1, 1), layer, heads)
    result = EmbedResult()
    parameter = next(model.parameters())
    for batch in tqdm(list(_batches(files, batch_size)), desc="embedding", unit="batch", disable=not progress):
        images, names = [], []
        for path in batch:
            try:
                images.append(_open_image(path))
                names.append(path)
            except (UnidentifiedImageError, OSError, ValueError) as error:
                result.skipped[path] = first_line(error)
        if not images:
            continue
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        outputs = model(pixel_values, output_attention_map=attention_dir is not None)
        result.files.extend(names)
        result.embeddings.append(outputs[0].float().cpu())
        if attention_dir is not None:
            result.overlays.extend(
                _write_overlays(attention_dir, names, images, outputs[1].float().cpu(), layer, heads, all_layers, crop_pct)
            )
    return result


def _write_overlays(folder, names, images, attention_map, layer, heads, all_layers, crop_pct) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (path, image) in enumerate(zip(names, images)):
        per_image = attention_map[:, index]  # [layers, heads, gh, gw]
        target = folder / f"{path.stem}.attention.png"
        overlay(image, select_attention(per_image, layer, heads), crop_pct).save(target)
        written.append(target)
        if all_layers:
            reduced = torch.stack([select_attention(per_image, i, heads) for i in range(per_image.shape[0])])
            grid_target = folder / f"{path.stem}.layers.png"
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

    def write(staging: Path) -> None:
        if path.suffix == ".safetensors":
            save_file({"embeddings": embeddings}, staging, metadata={"files": json.dumps(names), "model": model_name})
        else:
            import numpy as np

            with open(staging, "wb") as handle:
                np.save(handle, embeddings.numpy())
            path.with_name(path.name + ".files.txt").write_text("".join(f"{name}\n" for name in names), encoding="utf-8")

    write_atomically(path, write, replace=True)
    return path
