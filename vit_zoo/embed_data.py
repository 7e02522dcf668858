"""Inputs -> a ``DataLoader`` of preprocessed batches: decoding, the header checks and the preprocessing run in the
loader's worker processes; images that cannot be read are reported in the batch, not raised.

Batches never straddle output shards: a shard is ``shard_size`` consecutive images (``FileInputs``) or one tar
(``TarInputs``), cut into batches of ``batch_size`` consecutive inputs. One process, N ranks, a job array and a
resumed run therefore put every image in the same batch, so their embeddings agree bit for bit.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .embed_inputs import FileInputs, TarInputs, is_url
from .errors import first_line

MAX_IMAGE_PIXELS = 89_478_485  # PIL's own warning threshold (a 3 x 8-bit image of ~256 MB), read from the header
MAX_RESIZED_PIXELS = 1 << 22  # after the shortest-edge resize: 48 MB as float32 RGB (a 224 px edge, aspect 83:1)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
TAR_IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


class Preprocess:
    """OpenAI's preprocessing with a folder's processor settings, one image at a time: ``image`` -> ``[3, crop, crop]``.

    The geometry is OpenAI's (torchvision's ``Resize`` + ``CenterCrop``): the shortest edge resized to
    ``size.shortest_edge`` in the file's own mode (PIL uses NEAREST for palette and 1-bit images), a centred
    ``crop_size`` square with torchvision's rounding, then RGB. Rescaling and normalising are the processor's own
    (``processor.rescale``, ``processor.normalize``, elementwise), applied through a table of their results for
    the 256 values of each channel, so for RGB images the pixels equal ``processor(images=...)``'s bit for bit
    whenever its centre crop rounds as torchvision's does. Picklable, for loader workers.
    """

    def __init__(self, processor) -> None:
        self.processor = processor
        self.shortest_edge = int(processor.size["shortest_edge"])
        self.crop = int(processor.crop_size["height"])
        self.resample = int(processor.resample)
        levels = np.ascontiguousarray(np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 1, 256)))
        rescaled = processor.rescale(levels, processor.rescale_factor)
        self.table = processor.normalize(rescaled, processor.image_mean, processor.image_std)[:, 0]  # [3, 256] float32

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the shortest-edge resize, as transformers and torchvision compute it."""
        edge = self.shortest_edge
        if width <= height:
            return edge, int(edge * height / width) if width else 0
        return int(edge * width / height) if height else 0, edge

    def check_size(self, width: int, height: int) -> None:
        """Refuse, from the header alone, an image too large to decode or whose resize would be (a 400000x1 PNG)."""
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{width}x{height} pixels is more than {MAX_IMAGE_PIXELS} (a decompression bomb?)")
        size = self.resized_size(width, height)
        if size[0] * size[1] > MAX_RESIZED_PIXELS:
            raise ValueError(
                f"{width}x{height} pixels would become {size[0]}x{size[1]} at a {self.shortest_edge}-pixel shortest "
                f"edge, more than {MAX_RESIZED_PIXELS} pixels; crop it to a less extreme aspect ratio"
            )

    def crop_rgb(self, image: Image.Image) -> Image.Image:
        """The resized, centre-cropped RGB image the model sees (before rescaling and normalising)."""
        size = self.resized_size(*image.size)
        left, top = round((size[0] - self.crop) / 2), round((size[1] - self.crop) / 2)
        return image.resize(size, self.resample).crop((left, top, left + self.crop, top + self.crop)).convert("RGB")

    def normalize(self, rgb: Image.Image) -> torch.Tensor:
        """An RGB image -> ``[3, h, w]`` float32, rescaled and normalised as the processor does (its table)."""
        pixels = np.asarray(rgb)
        return torch.from_numpy(np.stack([self.table[channel][pixels[..., channel]] for channel in range(3)]))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """A decoded image -> ``pixel_values [3, crop, crop]``."""
        self.check_size(*image.size)
        return self.normalize(self.crop_rgb(image))


@dataclass(frozen=True)
class Record:
    """One input as the output names it: its ``key``, ``image_path`` and, from a webdataset sample, its JSON text;
    ``position`` is its index in the inputs (files) or in its tar (samples)."""

    key: str
    image_path: str
    json: str | None = None
    position: int = 0


@dataclass
class Batch:
    """Consecutive inputs of one shard: the readable ones as ``pixel_values [n, 3, crop, crop]`` with their records
    and (width, height), the others in ``skipped`` with the reason. ``final`` marks the shard's last batch;
    ``previews`` are bounded-size RGB copies for overlays when asked for."""

    shard: int
    final: bool
    records: list[Record] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    skipped: list[tuple[Record, str]] = field(default_factory=list)
    pixel_values: torch.Tensor | None = None
    previews: list[Image.Image] | None = None

    def pin_memory(self) -> Batch:
        """What ``DataLoader(pin_memory=True)`` calls: the pixels in page-locked memory, for fast copies to a GPU."""
        if self.pixel_values is not None:
            self.pixel_values = self.pixel_values.pin_memory()
        return self


def load_image(source, preprocess: Preprocess, preview_size: int | None = None):
    """``source`` (a path, URL or file object) -> (``pixel_values [3, crop, crop]``, (width, height), preview or
    None). The size is checked from the header before decoding; any failure raises (PIL raises anything)."""
    if isinstance(source, str) and is_url(source):
        import fsspec

        with fsspec.open(source, "rb") as remote:
            return load_image(io.BytesIO(remote.read()), preprocess, preview_size)
    with warnings.catch_warnings(), Image.open(source) as image:  # reads the header only
        warnings.simplefilter("ignore")  # PIL's notes on odd metadata: what counts is whether the pixels decode
        preprocess.check_size(*image.size)
        image.load()
        pixels = preprocess.normalize(preprocess.crop_rgb(image))
        preview = None
        if preview_size is not None:
            preview = image.convert("RGB")
            preview.thumbnail((preview_size, preview_size), Image.Resampling.BILINEAR)
        return pixels, image.size, preview


class EmbedDataset(IterableDataset):
    """The batches of ``shards`` (indices into the inputs' shards), in order; with several loader workers, worker
    ``w`` builds work units ``w, w + n, ...`` (a batch of files, or a whole tar), so the loader, which takes from
    the workers in turn, yields the batches of files in input order."""

    def __init__(
        self,
        inputs: FileInputs | TarInputs,
        shards: Sequence[int],
        preprocess: Preprocess,
        *,
        batch_size: int,
        shard_size: int,
        preview_size: int | None = None,
    ) -> None:
        self.inputs = inputs
        self.shards = list(shards)
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.shard_size = shard_size
        self.preview_size = preview_size

    def units(self) -> list[tuple[int, int, int]]:
        """(shard, start, stop) per work unit: a batch's input range for files, ``(shard, 0, 0)`` for a tar."""
        if isinstance(self.inputs, TarInputs):
            return [(shard, 0, 0) for shard in self.shards]
        units = []
        for shard in self.shards:
            first, last = shard * self.shard_size, min((shard + 1) * self.shard_size, len(self.inputs))
            units += [(shard, start, min(start + self.batch_size, last)) for start in range(first, last, self.batch_size)]
        return units

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        units = self.units()
        if worker is not None:
            units = units[worker.id :: worker.num_workers]
        for shard, start, stop in units:
            if isinstance(self.inputs, TarInputs):
                yield from self._tar_batches(shard)
            else:
                last = min((shard + 1) * self.shard_size, len(self.inputs))
                records = [Record(self.inputs.keys[i], self.inputs.paths[i], position=i) for i in range(start, stop)]
                yield self._batch(shard, stop == last, [(record, record.image_path) for record in records])

    def _batch(self, shard: int, final: bool, sources: list[tuple[Record, object]]) -> Batch:
        batch = Batch(shard, final, previews=[] if self.preview_size else None)
        pixels = []
        for record, source in sources:
            try:
                if isinstance(source, Exception):
                    raise source
                pixel_values, size, preview = load_image(source, self.preprocess, self.preview_size)
            except Exception as error:  # noqa: BLE001 - PIL's decoders raise anything (SyntaxError, TypeError...)
                batch.skipped.append((record, first_line(error)))
                continue
            pixels.append(pixel_values)
            batch.records.append(record)
            batch.sizes.append(size)
            if batch.previews is not None:
                batch.previews.append(preview)
        if pixels:
            batch.pixel_values = torch.stack(pixels)
        return batch

    def _tar_batches(self, shard: int) -> Iterator[Batch]:
        """The tar's samples in batches; a sample without an image or with a corrupt one is skipped and recorded; a
        tar that breaks off is recorded as one skipped entry naming it, after the samples it held."""
        assert isinstance(self.inputs, TarInputs)
        url = self.inputs.urls[shard]
        errors: list[Exception] = []
        pending: list[tuple[Record, object]] = []
        for position, sample in enumerate(tar_samples(url, errors)):
            pending.append(_sample_source(sample, position))
            if len(pending) == self.batch_size:
                yield self._batch(shard, False, pending)
                pending = []
        if errors:
            broken = ValueError(f"the tar shard is broken: {first_line(errors[0])}")
            pending.append((Record(url, url, position=-1), broken))
        yield self._batch(shard, True, pending)


def _sample_source(sample: dict, position: int) -> tuple[Record, object]:
    """A webdataset sample -> its record and its image bytes (or the error that skips it)."""
    key = str(sample["__key__"])
    suffix = next((suffix for suffix in TAR_IMAGE_SUFFIXES if suffix in sample), None)
    json_text = sample["json"].decode("utf-8", "replace") if isinstance(sample.get("json"), bytes) else None
    record = Record(key, f"{key}.{suffix}" if suffix else key, json_text, position)
    if suffix is None:
        files = ", ".join(sorted(name for name in sample if not name.startswith("__")))
        return record, ValueError(f"the sample has no image file (it holds: {files or 'nothing'})")
    return record, io.BytesIO(sample[suffix])


def tar_samples(url: str, errors: list[Exception]) -> Iterator[dict]:
    """The samples of one webdataset tar (``__key__`` plus one entry per file suffix), read as a stream through
    fsspec and grouped by key as webdataset does. A tar that cannot be opened or breaks off ends the samples (the
    last complete one included) and its error is appended to ``errors``."""
    import fsspec
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    def members() -> Iterator[dict]:
        try:
            with fsspec.open(url, "rb") as stream:
                for member in tar_file_iterator(stream):
                    yield {**member, "__url__": url}
        except Exception as error:  # noqa: BLE001 - tarfile, fsspec and gzip raise many kinds
            errors.append(error)

    yield from group_by_keys(members())


def make_loader(dataset: EmbedDataset, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A ``DataLoader`` over ``dataset``'s batches: ``num_workers`` processes (0: in this one), two batches
    prefetched per worker, pinned memory for a GPU; the workers end with this process, also when it is killed."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=min(num_workers, len(dataset.units())),  # no idle worker processes for a small job
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers and dataset.units() else None,
        persistent_workers=False,
        worker_init_fn=_end_with_parent,
    )


def _end_with_parent(worker_id: int) -> None:
    """Have the kernel end this loader worker when its parent dies (Linux ``PR_SET_PDEATHSIG``): after a ``kill -9``
    of the run, workers blocked on a full pipe otherwise linger, holding the run's stdout open."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
