"""The sharded writer of ``vit-zoo embed --output-dir``: clip-retrieval's layout, written shard by shard, resumable.

``DIR/img_emb/img_emb_{N}.npy`` (``[n, output_dim]``), ``DIR/metadata/metadata_{N}.parquet`` (one row per
embedding, in the same order: ``key``, ``image_path``, ``width``, ``height``, and ``json`` for webdataset samples),
``DIR/attention/attention_{N}.npy`` with ``--attention-map`` (float16 ``[n, grid, grid]``, or ``[n, layers, grid,
grid]``), ``DIR/skipped/skipped_{N}.parquet`` (``key``, ``image_path``, ``skip_reason``) for inputs that could not
be embedded, and ``DIR/done/done_{N}.json``, written last: a shard is complete once its ``done`` file is there.
``N`` is zero-padded to the width of the last shard's number, so sorted file names are in input order (what
embedding-reader reads). A shard whose every input was skipped has no ``img_emb``/``metadata`` files (a 0-row
``.npy`` would shift embedding-reader's pairing of arrays and tables). ``DIR/manifest.json`` records the model,
preprocessing, options and inputs; a run with other settings is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .embed_data import Batch, Record
from .errors import OutputError, first_line, shown
from .outputs import write_atomically

MANIFEST = "manifest.json"
FORMAT = "vit-zoo-embed/1"


@dataclass
class ShardResult:
    """One shard's outputs: ``embeddings [n, output_dim]`` with their ``records`` and (width, height) ``sizes``, the
    ``skipped`` inputs with their reasons, the reduced ``attention`` maps ``[n, ...]`` (or None)."""

    index: int
    embeddings: np.ndarray
    records: list[Record] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    skipped: list[tuple[Record, str]] = field(default_factory=list)
    attention: np.ndarray | None = None


def collect_shards(embedded: Iterable[tuple[Batch, np.ndarray, np.ndarray | None]], output_dim: int) -> Iterator[ShardResult]:
    """Gather embedded batches into shards, yielding each shard when its final batch has come (batches of several
    shards may interleave, as tar shards do across loader workers)."""
    parts: dict[int, list[tuple[Batch, np.ndarray, np.ndarray | None]]] = {}
    for batch, embeddings, attention in embedded:
        parts.setdefault(batch.shard, []).append((batch, embeddings, attention))
        if batch.final:
            yield _merge(batch.shard, parts.pop(batch.shard), output_dim)


def _merge(index: int, parts: list[tuple[Batch, np.ndarray, np.ndarray | None]], output_dim: int) -> ShardResult:
    arrays = [embeddings for _, embeddings, _ in parts if len(embeddings)]
    maps = [attention for _, embeddings, attention in parts if attention is not None and len(embeddings)]
    return ShardResult(
        index,
        np.concatenate(arrays) if arrays else np.zeros((0, output_dim), np.float32),
        [record for batch, _, _ in parts for record in batch.records],
        [size for batch, _, _ in parts for size in batch.sizes],
        [item for batch, _, _ in parts for item in batch.skipped],
        np.concatenate(maps) if maps else None,
    )


def _leaves(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"options": {"batch_size": 32}}`` -> ``{"options.batch_size": 32}``: what a refusal names."""
    leaves = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def utf8(text: str) -> str:
    """``text`` as valid UTF-8 for parquet: a file name's undecodable bytes (Python's surrogate escapes) as ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class ShardWriter:
    """Writes shards into ``folder`` in clip-retrieval's layout; each file atomically, the ``done`` file last.

    ``prepare()`` writes ``manifest.json`` (or refuses a folder made with another one) and returns the complete
    shards; ``write(result)`` writes one shard. Several processes may write disjoint shards of one folder.
    """

    def __init__(self, folder: str | os.PathLike, manifest: dict[str, Any], num_shards: int) -> None:
        self.folder = Path(folder)
        # as JSON gives it back (lists, not tuples), so that a rerun compares equal
        self.manifest = json.loads(json.dumps({"format": FORMAT, **manifest, "num_shards": num_shards}))
        self.width = len(str(max(num_shards - 1, 0)))
        self.json_column = manifest.get("inputs", {}).get("kind") == "webdataset"  # every shard's table, one schema

    def name(self, kind: str, index: int, suffix: str) -> Path:
        """``DIR/<kind>/<kind>_<N>.<suffix>``, ``N`` zero-padded."""
        return self.folder / kind / f"{kind}_{index:0{self.width}d}.{suffix}"

    def prepare(self, shards: Sequence[int]) -> set[int]:
        """Write or check ``manifest.json``; the complete shards among ``shards`` (``ValueError`` naming a shard whose
        files were damaged or removed after it completed)."""
        path = self.folder / MANIFEST
        if not path.exists():
            text = json.dumps(self.manifest, indent=1, sort_keys=True) + "\n"
            try:
                write_atomically(path, lambda staging: staging.write_text(text, encoding="utf-8"))
            except OutputError:
                if not path.exists():  # else another rank wrote it first: compare below
                    raise
        self._check_manifest(path)
        return {index for index in shards if self._complete(index)}

    def _check_manifest(self, path: Path) -> None:
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path} cannot be read ({first_line(error)}); use a new --output-dir") from None
        if not isinstance(recorded, dict) or recorded.get("format") != FORMAT:
            raise ValueError(f"{self.folder} was not made by vit-zoo embed ({path} is not its manifest); use a new --output-dir")
        there, now = _leaves(recorded), _leaves(self.manifest)
        differences = [
            f"{key} {shown(there.get(key), 40)} there, {shown(value, 40)} now"
            for key, value in now.items()
            if there.get(key) != value
        ]
        if differences:
            raise ValueError(
                f"{self.folder} was made with other settings ({'; '.join(differences)}); rerun with its settings to "
                "resume, or use a new --output-dir"
            )

    def _complete(self, index: int) -> bool:
        done = self.name("done", index, "json")
        if not done.exists():
            return False
        try:
            files = json.loads(done.read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{done} is damaged ({first_line(error)}); delete it to compute shard {index} again") from None
        for name, size in files.items():
            path = self.folder / name
            if not path.is_file() or path.stat().st_size != size:
                raise ValueError(
                    f"shard {index} is broken: {path} is missing or not the {size} bytes written; delete {done} to "
                    "compute the shard again"
                )
        return True

    def write(self, result: ShardResult) -> None:
        """Write one shard: attention maps, embeddings, metadata, skipped inputs, then its ``done`` file."""
        files: dict[str, int] = {}

        def put(path: Path, write: Callable[[Path], Any]) -> None:
            write_atomically(path, write, replace=True)
            files[path.relative_to(self.folder).as_posix()] = path.stat().st_size

        if len(result.embeddings):
            if result.attention is not None:
                put(self.name("attention", result.index, "npy"), _npy_writer(result.attention))
            put(self.name("img_emb", result.index, "npy"), _npy_writer(result.embeddings))
            put(self.name("metadata", result.index, "parquet"), _parquet_writer(metadata_columns(result, self.json_column)))
        if result.skipped:
            put(self.name("skipped", result.index, "parquet"), _parquet_writer(skipped_columns(result.skipped)))
        summary = {"shard": result.index, "embedded": len(result.embeddings), "skipped": len(result.skipped), "files": files}
        text = json.dumps(summary, sort_keys=True) + "\n"
        write_atomically(self.name("done", result.index, "json"), lambda staging: staging.write_text(text), replace=True)


def metadata_columns(result: ShardResult, json_column: bool = False) -> dict[str, list]:
    """The metadata table of a shard, one row per embedding: ``key``, ``image_path``, ``width``, ``height`` and, with
    ``json_column`` (webdataset inputs), ``json``: each sample's JSON text, or null."""
    columns: dict[str, list] = {
        "key": [utf8(record.key) for record in result.records],
        "image_path": [utf8(record.image_path) for record in result.records],
        "width": [width for width, _ in result.sizes],
        "height": [height for _, height in result.sizes],
    }
    if json_column:
        columns["json"] = [record.json for record in result.records]
    return columns


def skipped_columns(skipped: Sequence[tuple[Record, str]]) -> dict[str, list]:
    """``key``, ``image_path`` and ``skip_reason`` of the inputs that could not be embedded."""
    return {
        "key": [utf8(record.key) for record, _ in skipped],
        "image_path": [utf8(record.image_path) for record, _ in skipped],
        "skip_reason": [utf8(reason) for _, reason in skipped],
    }


def _npy_writer(array: np.ndarray) -> Callable[[Path], None]:
    def write(staging: Path) -> None:
        with open(staging, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array))

    return write


def _parquet_writer(columns: dict[str, list]) -> Callable[[Path], None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"width": pa.int32(), "height": pa.int32()}
    table = pa.table({name: pa.array(values, type=types.get(name, pa.string())) for name, values in columns.items()})

    def write(staging: Path) -> None:
        pq.write_table(table, staging)

    return write
