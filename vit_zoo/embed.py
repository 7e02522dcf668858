"""``vit-zoo embed``: the model loop between the input pipeline (``embed_data``) and the writers (``shards``).

``Embedder`` turns batches of ``pixel_values`` (or images) into embeddings and reduced attention maps; it works on
a ``DataLoader`` of ``embed_data.Batch`` es, on any iterable of images, and as a Ray Data ``map_batches`` callable.
``embed_to_folder`` is the sharded, resumable run (one process, torchrun ranks, job arrays); ``embed_to_file`` the
single-file output for small jobs, built on the same parts.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .convert import DTYPES
from .embed_data import Batch, EmbedDataset, Preprocess, make_loader
from .embed_inputs import FileInputs, TarInputs, overlay_names
from .folder_check import check_folder, folder_files
from .image_processing import load_image_processor
from .model import VisionTransformer
from .modeling import VitZooModel
from .outputs import StagedFiles, write_atomically
from .shards import ShardResult, ShardWriter, collect_shards
from .visualize import reduce_attention, write_overlays

EMBEDDING_DTYPES = {"float32": np.float32, "float16": np.float16}


class NonFiniteEmbeddingError(ValueError):
    """The model gave a NaN or Inf embedding: the run stops, since every later one is suspect (an overflow of the
    compute dtype, or damaged weights), and nothing holding it is written."""


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


def model_digest(folder: Path) -> str:
    """SHA-256 over the files that decide the numbers (config, preprocessing, weights): the model's identity in a
    manifest, whichever path or Hub revision it was reached by."""
    digest = hashlib.sha256()
    for name in sorted(name for name in folder_files(folder) if name.endswith((".json", ".safetensors"))):
        digest.update(name.encode() + b"\0")
        with open(folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class AttentionChoice:
    """Which attention map to keep: ``layer`` (negative from the last) reduced over ``heads`` (``"mean"``, ``"max"``
    or head indices), or every layer with ``all_layers``."""

    layer: int = -1
    heads: str | tuple[int, ...] = "mean"
    all_layers: bool = False


class Embedder:
    """A model and its preprocessing, turning images into embeddings ``[n, output_dim]`` and, with ``attention``,
    reduced CLS->patch maps (float16 ``[n, grid, grid]``, or ``[n, layers, grid, grid]`` with ``all_layers``).

    ``model`` is the core tower, or a tower run elsewhere and called like it (``vit_zoo.exporter.OnnxRuntimeModel``,
    which also has ``geometry``, ``device`` and ``dtype``). ``normalize`` L2-normalises the embeddings (in float32,
    before the cast); ``embedding_dtype`` is ``"float32"`` or ``"float16"``. Only what is asked for is computed:
    without ``attention`` the forward is the plain one.
    """

    def __init__(
        self,
        model: VisionTransformer | Any,
        processor,
        *,
        normalize: bool = False,
        embedding_dtype: str = "float32",
        attention: AttentionChoice | None = None,
    ) -> None:
        self.model = model
        self.forward: Callable[..., tuple[torch.Tensor, ...]] = model
        self.preprocess = Preprocess(processor)
        self.normalize = normalize
        self.embedding_dtype = EMBEDDING_DTYPES[embedding_dtype]
        self.attention = attention
        if isinstance(model, torch.nn.Module):
            parameter = next(model.parameters())
            self.device, self.dtype = parameter.device, parameter.dtype
        else:  # a tower run elsewhere (vit_zoo.exporter.OnnxRuntimeModel) says where it takes its input
            self.device, self.dtype = model.device, model.dtype

    @classmethod
    def from_folder(
        cls,
        folder: str | os.PathLike,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        compile: bool = False,
        check: bool = True,
        **options,
    ) -> Embedder:
        """The ``Embedder`` of a vit_zoo folder, on ``device`` in ``dtype``; ``compile`` wraps the forward in
        ``torch.compile``; ``check=False`` skips ``check_folder`` for a folder just checked. ``options`` are
        ``Embedder``'s keyword arguments."""
        model, processor = load_model(check_folder(folder) if check else Path(folder), device, dtype)
        embedder = cls(model, processor, **options)
        if compile:
            embedder.forward = torch.compile(model)
        return embedder

    @torch.inference_mode()
    def embed(self, pixel_values: torch.Tensor, names: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray | None]:
        """``pixel_values [n, 3, H, W]`` -> embeddings ``[n, output_dim]`` and the reduced maps (or None).

        Raises ``NonFiniteEmbeddingError`` naming the first image (from ``names``) whose embedding is NaN or Inf.
        """
        pixel_values = pixel_values.to(self.device, self.dtype, non_blocking=True)
        outputs = self.forward(pixel_values, output_attention_map=self.attention is not None)
        embeddings = outputs[0].float()
        finite = torch.isfinite(embeddings).all(dim=1)
        if not bool(finite.all()):
            self._refuse(int((~finite).nonzero()[0]), names)
        if self.normalize:
            embeddings = embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        maps = None
        if self.attention is not None:
            choice = self.attention
            maps = reduce_attention(outputs[1], choice.layer, choice.heads, choice.all_layers).half().cpu().numpy()
        return embeddings.cpu().numpy().astype(self.embedding_dtype, copy=False), maps

    def _refuse(self, row: int, names: Sequence[str]) -> None:
        image = names[row] if row < len(names) else f"image {row} of the batch"
        if self.dtype != torch.float32:
            cause = f"the model overflows {str(self.dtype).removeprefix('torch.')}; use --dtype float32 (or bfloat16)"
        else:
            cause = "the weights give non-finite values; convert or pull the model again"
        raise NonFiniteEmbeddingError(f"the embedding of {image} is NaN or Inf: {cause}")

    def run(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, np.ndarray, np.ndarray | None]]:
        """Each ``Batch`` of a loader with its embeddings (``[0, output_dim]`` for a batch of skipped inputs only)."""
        for batch in batches:
            if batch.pixel_values is None:
                yield batch, np.zeros((0, self.model.geometry.output_dim), self.embedding_dtype), None
                continue
            embeddings, maps = self.embed(batch.pixel_values, [record.image_path for record in batch.records])
            yield batch, embeddings, maps

    def embed_images(self, images: Iterable[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Decoded images -> ``[n, output_dim]``, preprocessed as ``vit-zoo embed`` does, ``batch_size`` at a time."""
        arrays, pending = [], []
        for image in images:
            pending.append(self.preprocess(image))
            if len(pending) == batch_size:
                arrays.append(self.embed(torch.stack(pending))[0])
                pending = []
        if pending:
            arrays.append(self.embed(torch.stack(pending))[0])
        return np.concatenate(arrays) if arrays else np.zeros((0, self.model.geometry.output_dim), self.embedding_dtype)

    def __call__(self, batch: dict[str, Any], column: str = "image") -> dict[str, Any]:
        """A Ray Data ``map_batches`` / Spark-style batch: ``batch[column]`` holds encoded image bytes, decoded PIL
        images or ``[h, w, 3]`` uint8 arrays; returns the batch with ``"embedding"`` ``[n, output_dim]`` (and
        ``"attention"`` when asked for). A bad image raises (filter first, or use the DataLoader path, which skips)."""
        pictures = [_as_image(item) for item in batch[column]]
        pixel_values = torch.stack([self.preprocess(picture) for picture in pictures])
        embeddings, maps = self.embed(pixel_values)
        result = {**batch, "embedding": embeddings}
        if maps is not None:
            result["attention"] = maps
        return result


def _as_image(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(item)))
    return Image.fromarray(np.asarray(item, dtype=np.uint8))


@dataclass(frozen=True)
class RunOptions:
    """The settings of a run that decide its numbers (recorded in a manifest) and how it is carried out."""

    batch_size: int = 32
    shard_size: int = 10_000
    dtype: str = "float32"
    normalize: bool = False
    embedding_dtype: str = "float32"
    compile: bool = False
    engine: str = "torch"
    attention: AttentionChoice | None = None
    overlays: Path | None = None
    overlay_size: int = 512
    overlay_note: str | None = None  # the model folder's provenance note (random weights...), on every overlay
    num_workers: int = 0
    device: str = "cpu"

    def recorded(self) -> dict[str, Any]:
        """What a resumed run must share with the first: everything that changes a number or a file."""
        attention = asdict(self.attention) if self.attention is not None else None
        if attention is not None and isinstance(attention["heads"], tuple):
            attention["heads"] = list(attention["heads"])
        return {
            "batch_size": self.batch_size,
            "shard_size": self.shard_size,
            "dtype": self.dtype,
            "device_type": torch.device(self.device).type,
            "compile": self.compile,
            "engine": self.engine,
            "normalize": self.normalize,
            "embedding_dtype": self.embedding_dtype,
            "attention": attention,
        }


@dataclass
class RunSummary:
    """What one process did: images embedded and skipped, shards written and found complete, seconds spent."""

    embedded: int = 0
    skipped: int = 0
    shards_written: int = 0
    shards_complete: int = 0
    seconds: float = 0.0


def num_shards(inputs: FileInputs | TarInputs, shard_size: int) -> int:
    """How many output shards ``inputs`` make: one per ``shard_size`` images, or one per tar."""
    return len(inputs) if isinstance(inputs, TarInputs) else -(-len(inputs) // shard_size)


def process_shards(total: int, rank: int = 0, world_size: int = 1, shard_index: int = 0, num_jobs: int = 1) -> list[int]:
    """The shards one process writes: every ``num_jobs * world_size``-th, from ``shard_index * world_size + rank``
    (job arrays split first, then a job's torchrun ranks)."""
    return list(range(shard_index * world_size + rank, total, num_jobs * world_size))


def inputs_digest(inputs: FileInputs | TarInputs) -> str:
    """SHA-256 of the ordered input names: a resumed run must read the same inputs in the same order."""
    digest = hashlib.sha256()
    for name in inputs.urls if isinstance(inputs, TarInputs) else inputs.paths:
        digest.update(os.fsencode(name) + b"\0")
    return digest.hexdigest()


def manifest_for(folder: Path, model_name: str, processor, inputs: FileInputs | TarInputs, options: RunOptions) -> dict[str, Any]:
    """The manifest of an ``--output-dir``: model identity, preprocessing, the recorded options and the inputs."""
    preprocessing = {
        key: value.tolist() if hasattr(value, "tolist") else value
        for key, value in processor.to_dict().items()
        if key in ("size", "crop_size", "resample", "image_mean", "image_std", "rescale_factor")
    }
    return {
        "model": {"name": model_name, "sha256": model_digest(folder)},
        "preprocessing": preprocessing,
        "options": options.recorded(),
        "inputs": {
            "kind": "webdataset" if isinstance(inputs, TarInputs) else "files",
            "count": len(inputs),
            "sha256": inputs_digest(inputs),
        },
    }


def _loader(embedder: Embedder, inputs, shards: Sequence[int], options: RunOptions):
    dataset = EmbedDataset(
        inputs,
        shards,
        embedder.preprocess,
        batch_size=options.batch_size,
        shard_size=options.shard_size,
        preview_size=options.overlay_size if options.overlays is not None else None,
    )
    return make_loader(dataset, options.num_workers, pin_memory=embedder.device.type == "cuda")


class Progress:
    """images/s and skipped inputs on a terminal (tqdm, label ``embedding``); nothing when ``enabled`` is false."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="embedding", unit="img", disable=not enabled, dynamic_ncols=True)
        self.skipped = 0

    def update(self, batch: Batch) -> None:
        self.skipped += len(batch.skipped)
        self.bar.update(len(batch.records) + len(batch.skipped))
        if self.skipped:
            self.bar.set_postfix(skipped=self.skipped, refresh=False)

    def close(self) -> None:
        self.bar.close()


def _tracked(batches: Iterable[Batch], progress: Progress) -> Iterator[Batch]:
    for batch in batches:
        yield batch
        progress.update(batch)


def embed_to_folder(
    embedder: Embedder,
    inputs: FileInputs | TarInputs,
    writer: ShardWriter,
    shards: Sequence[int],
    options: RunOptions,
    progress: bool = False,
) -> RunSummary:
    """Embed the ``shards`` of ``inputs`` that ``writer`` does not hold yet, writing each shard as it completes."""
    start = time.perf_counter()
    complete = writer.prepare(shards)
    pending = [shard for shard in shards if shard not in complete]
    summary = RunSummary(shards_complete=len(complete))
    total = None if isinstance(inputs, TarInputs) else sum(_shard_length(inputs, s, options.shard_size) for s in pending)
    bar = Progress(total, progress)
    try:
        batches = _tracked(_loader(embedder, inputs, pending, options), bar) if pending else iter(())
        embedded = _with_overlays(embedder.run(batches), inputs, embedder, options, _overlay_writer, [])
        for result in collect_shards(embedded, embedder.model.geometry.output_dim):
            writer.write(result)
            summary.embedded += len(result.embeddings)
            summary.skipped += len(result.skipped)
            summary.shards_written += 1
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _shard_length(inputs: FileInputs, shard: int, shard_size: int) -> int:
    return min((shard + 1) * shard_size, len(inputs)) - shard * shard_size


def _overlay_names(inputs: FileInputs | TarInputs, options: RunOptions) -> list[str] | None:
    """The overlay base name of each file input, by position (tar samples are named by their key)."""
    if options.overlays is None or isinstance(inputs, TarInputs):
        return None
    return overlay_names(inputs.paths)


def _overlay_writer(target: Path, save: Callable[[Path], None]) -> None:
    write_atomically(target, save, replace=True)


def _with_overlays(embedded, inputs, embedder: Embedder, options: RunOptions, write, written: list[Path]):
    """The embedded batches, each batch's overlays drawn into ``options.overlays`` through ``write`` as it passes
    (appended to ``written``) and its previews dropped: memory stays bounded by a batch, not a shard."""
    if options.overlays is None or embedder.attention is None:
        yield from embedded
        return
    names = _overlay_names(inputs, options)
    crop_pct = embedder.preprocess.crop / embedder.preprocess.shortest_edge
    for batch, embeddings, maps in embedded:
        for record, preview, image_maps in zip(batch.records, batch.previews or [], maps if maps is not None else []):
            name = names[record.position] if names is not None else _safe_name(record.key)
            layers = torch.from_numpy(image_maps).float()
            written += write_overlays(
                options.overlays, name, preview, layers, embedder.attention.layer, crop_pct, write, options.overlay_note
            )
        batch.previews = None
        yield batch, embeddings, maps


def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key).lstrip(".") or "image"


def embed_to_file(
    embedder: Embedder,
    inputs: FileInputs,
    output: Path,
    model_name: str,
    options: RunOptions,
    progress: bool = False,
) -> tuple[RunSummary, ShardResult, list[Path]]:
    """Embed ``inputs`` into one ``.safetensors`` or ``.npy`` file (with the overlays, when asked for), every file
    put in place together at the end, or none. Returns the summary, the results and the overlays written."""
    start = time.perf_counter()
    single = RunOptions(**{**options.__dict__, "shard_size": max(len(inputs), 1)})
    bar = Progress(len(inputs), progress)
    overlays: list[Path] = []
    with StagedFiles() as staged:
        try:
            embedded = embedder.run(_tracked(_loader(embedder, inputs, [0], single), bar))
            drawn = _with_overlays(embedded, inputs, embedder, options, staged.stage, overlays)
            result = next(collect_shards(drawn, embedder.model.geometry.output_dim))
        finally:
            bar.close()
        if not len(result.embeddings):
            raise ValueError(f"none of the {len(inputs)} inputs could be read as an image")
        for target, write in _file_writers(output, result, model_name):
            staged.stage(target, write)
        staged.commit()
    return RunSummary(len(result.embeddings), len(result.skipped), 1, 0, time.perf_counter() - start), result, overlays


def _file_writers(output: Path, result: ShardResult, model_name: str) -> list[tuple[Path, Callable[[Path], object]]]:
    """``.safetensors``: tensor ``embeddings`` (and ``attention_map``), metadata ``files`` (JSON list) and ``model``.
    ``.npy``: the array, and the file names one per line in ``<output>.files.txt`` (the file system's own bytes)."""
    import json

    names = [record.image_path for record in result.records]
    if output.suffix == ".safetensors":
        from safetensors.numpy import save_file

        tensors = {"embeddings": np.ascontiguousarray(result.embeddings)}
        if result.attention is not None:
            tensors["attention_map"] = np.ascontiguousarray(result.attention)
        metadata = {"files": json.dumps(names), "model": model_name}
        return [(output, lambda staging: save_file(tensors, str(staging), metadata=metadata))]

    def write_array(staging: Path) -> None:
        with open(staging, "wb") as handle:
            np.save(handle, result.embeddings)

    listing = b"".join(os.fsencode(name) + b"\n" for name in names)
    return [(output, write_array), (output.with_name(output.name + ".files.txt"), lambda staging: staging.write_bytes(listing))]


def distributed_environment() -> tuple[int, int, int, int]:
    """(rank, world size, local rank, local world size) from what torchrun, ``accelerate launch`` and slurm
    launchers set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``); (0, 1, 0, 1) otherwise."""
    values = []
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1)):
        text = os.environ.get(name, str(default))
        if not text.isdigit():
            raise ValueError(f"the environment variable {name}={text!r} is not a number; check the launcher's settings")
        values.append(int(text))
    rank, world_size, local_rank, local_world_size = values
    if not 0 <= rank < max(world_size, 1):
        raise ValueError(f"RANK={rank} is not below WORLD_SIZE={world_size}; check the launcher's settings")
    return rank, max(world_size, 1), local_rank, max(local_world_size, 1)


def print_skipped(skipped: Iterable[tuple[Any, str]]) -> None:
    """One ``vit-zoo embed: skipped PATH: REASON`` line on stderr per input that could not be embedded."""
    for record, reason in skipped:
        print(f"vit-zoo embed: skipped {record.image_path}: {reason}", file=sys.stderr)
