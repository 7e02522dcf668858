"""``vit-zoo export``: a tower as a file that runs without vit_zoo, and ``OnnxRuntimeModel`` to run an ONNX one.

Three formats, each one file:

* ``onnx``: ``torch.onnx.export(..., dynamo=True)``, for onnxruntime and other ONNX runtimes; the geometry, the
  preprocessing and the provenance are in the model's ``metadata_props``.
* ``pt2``: ``torch.export.save`` of the ``ExportedProgram``, for ``torch.export.load`` (Python, any device); the
  metadata is its extra file ``vit_zoo.json``.
* ``aoti``: an AOTInductor package (``torch._inductor.aoti_compile_and_package``): the graph compiled into a shared
  library for this machine's CPU, loaded by ``torch._inductor.aoti_load_package`` (or libtorch's C++ loader); the
  metadata is what its ``get_metadata()`` returns.

Each takes ``pixel_values [batch, in_channels, R, R]`` (any batch; the resolution ``R`` is fixed in the graph) and
returns ``image_embeds [batch, output_dim]``, then ``patch_tokens [batch, grid*grid, width]`` and ``attention_map
[layers, batch, heads, grid, grid]`` when exported with them. Every file is run once before it is moved into place,
on a batch size the export did not trace, and compared with the eager tower; one that disagrees is not written.

torch and the exporters are imported when an export runs, so the command answers bad options at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import OutputExistsError, first_line
from .spec import Geometry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .model import VisionTransformer

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "aoti": ".pt2"}  # format -> the suffix its file must have
EXPORT_DTYPES = ("float32", "float16")
DEFAULT_OPSET = 20
INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("image_embeds", "patch_tokens", "attention_map")
TOLERANCES = {"float32": 1e-5, "float16": 1e-2}  # relative L2 error of each output against the eager tower
EXAMPLE_BATCH = 2  # traced with; batch 0 and 1 would be specialised into the graph
CHECK_BATCH = 3  # checked with: the graph must take a batch size it was not traced with
INSTALL_HINT = "pip install onnx onnxscript onnxruntime (the [export] extra)"
PT2_METADATA_FILE = "vit_zoo.json"  # the pt2 archive's extra file holding the metadata
ONNX_MAX_BYTES = 2**31  # protobuf's limit on one message: an ONNX file with its weights inside


def output_names(patch_tokens: bool = False, attention_map: bool = False) -> tuple[str, ...]:
    """The outputs of a file exported with these options, in order: ``image_embeds`` first."""
    return tuple(name for name, wanted in zip(OUTPUT_NAMES, (True, patch_tokens, attention_map)) if wanted)


def export(
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    format: str = "onnx",
    attention_map: bool = False,
    patch_tokens: bool = False,
    dtype: str = "float32",
    opset: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Export ``model`` to the file ``output`` in ``format``, with a dynamic batch size.

    Args:
        model: a vit_zoo folder, a zoo or OpenAI name (downloaded and converted once) or a Hub repo id, as for
            ``vit-zoo embed``.
        output: the file to create (``.onnx`` for ``onnx``, ``.pt2`` for ``pt2`` and ``aoti``); it must not exist.
        format: ``onnx``, ``pt2`` (``torch.export.save``) or ``aoti`` (an AOTInductor package for this CPU).
        attention_map: also output ``attention_map [layers, batch, heads, grid, grid]``.
        patch_tokens: also output ``patch_tokens [batch, grid*grid, width]``.
        dtype: ``float32`` or ``float16``: the weights', the input's and the outputs' dtype.
        opset: the ONNX opset (``onnx`` only; default 20), within what the installed exporter converts to.
        cache_dir: where zoo names are downloaded and converted.

    Returns:
        ``output`` as a ``Path``, written complete or not at all.

    Raises:
        ValueError: an unknown format, dtype or opset, a missing exporter package or C++ compiler, an output that
            exists, lies inside the model folder or has the wrong suffix (all checked before the model is loaded),
            or a model that is not a vit_zoo model.
        RuntimeError: the exported file disagrees with the eager tower; nothing was written.
    """
    output = Path(output)
    opset = _check_request(output, format, dtype, opset)
    from .embed_inputs import resolve_model_folder

    folder = resolve_model_folder(str(model), cache_dir)  # a local folder is checked before torch is imported
    if folder.resolve() in output.resolve().parents:
        raise ValueError(f"--output {output} is inside the model folder {folder}; write it elsewhere")
    if format == "onnx":
        _check_onnx_size(folder, dtype)
    from .embed import load_model

    tower, processor = load_model(folder, "cpu", dtype)
    names = output_names(patch_tokens, attention_map)
    metadata = artifact_metadata(str(model), folder, tower.geometry, processor, dtype, names)
    return WRITERS[format](_with_outputs(tower, names), output, metadata, opset)


def cached_onnx(folder: Path, attention_map: bool, cache_dir: str | os.PathLike | None = None) -> Path:
    """The float32 ONNX file of a checked vit_zoo ``folder`` (with ``attention_map`` if asked), exported once into
    ``<cache>/onnx/`` under the folder's content hash and reused; concurrent runs (torchrun ranks) take turns."""
    from filelock import FileLock

    from .download import default_cache_dir
    from .embed import model_digest

    cache = Path(cache_dir or default_cache_dir()) / "onnx"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{model_digest(folder)[:32]}-{'attention-map' if attention_map else 'embeds'}.onnx"
    with FileLock(cache / ".locks" / (path.name + ".lock")):
        if not path.is_file():
            export(folder, path, attention_map=attention_map)
    return path


def _check_request(output: Path, format: str, dtype: str, opset: int | None) -> int | None:
    """Refuse, before the model is loaded, what cannot be exported; return the opset to use (``None`` unless ONNX)."""
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(EXPORT_DTYPES)} for an export, got {dtype!r}")
    if output.suffix != FORMATS[format]:
        raise ValueError(f"--output must end in {FORMATS[format]} for --format {format}, got {output.name}")
    if output.exists() or output.is_symlink():
        raise OutputExistsError(f"--output {output} already exists; choose a new file or remove it")
    if any(parent.exists() and not parent.is_dir() for parent in output.parents):
        raise ValueError(f"--output {output}: a folder above it is a file; choose an output in a folder")
    if format != "onnx" and opset is not None:
        raise ValueError(f"--opset applies to --format onnx only, not {format}")
    if format == "aoti":
        _check_cpp_compiler()
    return _check_opset(DEFAULT_OPSET if opset is None else opset) if format == "onnx" else None


def _check_opset(opset: int) -> int:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ValueError(f"--format onnx needs {error.name}, which cannot be imported: {INSTALL_HINT}") from None
    # torch's exporter writes opset 18 and converts with onnxscript's converter, which knows this range; below it
    # torch falls back to onnx's converter and warns that the model may stay at 18, above it the checker fails
    from onnxscript.version_converter import _version_converter as converter

    low, high = converter.SUPPORTED_MIN_ONNX_OPSET, converter.SUPPORTED_MAX_ONNX_OPSET
    if type(opset) is not int or not low <= opset <= high:
        raise ValueError(f"--opset must be an int from {low} to {high} (what the installed exporter writes), got {opset!r}")
    return opset


def _check_onnx_size(folder: Path, dtype: str) -> None:
    """One ONNX file holds at most 2 GB (protobuf's limit); vit-zoo writes no side files of weights."""
    from .folder_check import read_geometry

    geometry = read_geometry(folder / "config.json")
    size = geometry.num_params * (2 if dtype == "float16" else 4)
    if size >= ONNX_MAX_BYTES:
        raise ValueError(
            f"{folder} has {size / 1e9:.1f} GB of {dtype} weights, more than one ONNX file holds (2 GB); "
            "export --dtype float16, or --format pt2"
        )


def _check_cpp_compiler() -> None:
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as error:  # noqa: BLE001 - inductor's InvalidCxxCompiler, or whatever a broken compiler raises
        raise ValueError(
            f"--format aoti compiles C++, but no working C++ compiler was found ({first_line(error)}); install g++ or set CXX"
        ) from None


def artifact_metadata(
    model: str, folder: Path, geometry: Geometry, processor: Any, dtype: str, outputs: Sequence[str]
) -> dict[str, str]:
    """What a runtime needs besides the graph, as strings (JSON for structures): ``geometry``, ``preprocessing``
    (resize of the shortest edge, centre crop, rescale, normalisation), ``dtype``, the ``inputs``' and ``outputs``'
    shapes, and the provenance: ``source`` (the model as given), ``revision`` (the commit, for a folder in the Hub
    cache), ``weights_sha256`` (of each weight file) and ``vit_zoo_version``."""
    from .download import sha256_of
    from .folder_check import folder_files

    grid = geometry.grid_size
    shapes = {
        "image_embeds": ["batch", geometry.output_dim],
        "patch_tokens": ["batch", grid * grid, geometry.width],
        "attention_map": [geometry.layers, "batch", geometry.heads, grid, grid],
    }
    weights = {name: sha256_of(folder / name) for name in folder_files(folder) if name.endswith(".safetensors")}
    metadata = {
        "geometry": json.dumps(dict(geometry)),
        "preprocessing": json.dumps(_preprocessing(processor)),
        "dtype": dtype,
        "inputs": json.dumps({INPUT_NAME: ["batch", geometry.in_channels, geometry.input_resolution, geometry.input_resolution]}),
        "outputs": json.dumps({name: shapes[name] for name in outputs}),
        "source": model,
        "weights_sha256": json.dumps(weights),
        "vit_zoo_version": __version__,
    }
    if folder.parent.name == "snapshots":  # the Hub cache's snapshots/<commit>/, where `vit-zoo pull` puts a repo
        metadata["revision"] = folder.name
    return metadata


def _preprocessing(processor: Any) -> dict[str, Any]:
    """OpenAI's steps with the folder's values: RGB, resize the shortest edge, centre-crop, rescale, normalise."""
    from PIL import Image

    return {
        "resize_shortest_edge": processor.size["shortest_edge"],
        "resample": Image.Resampling(processor.resample).name.lower(),
        "crop_size": processor.crop_size["height"],
        "rescale_factor": processor.rescale_factor,
        "image_mean": list(processor.image_mean),
        "image_std": list(processor.image_std),
    }


@dataclass(frozen=True)
class _Traced:
    """What every exporter traces: ``module.forward(pixel_values)`` returns the core's plain tuple of ``names``."""

    module: nn.Module
    names: tuple[str, ...]
    geometry: Geometry
    dtype: torch.dtype

    def example(self, batch: int, seed: int = 0) -> torch.Tensor:
        """Normal noise ``[batch, in_channels, R, R]`` in the tower's dtype, about what normalised pixels look like."""
        import torch

        geometry = self.geometry
        shape = (batch, geometry.in_channels, geometry.input_resolution, geometry.input_resolution)
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.dtype)


def _with_outputs(tower: VisionTransformer, names: tuple[str, ...]) -> _Traced:
    """The tower returning ``names`` (``image_embeds``, then ``patch_tokens`` / ``attention_map``), read from the
    ``TowerOutput`` of its ``encode``."""
    from torch import nn

    patch_tokens, attention_map = "patch_tokens" in names, "attention_map" in names

    class TowerOutputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = tower.eval().requires_grad_(False)

        def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.tower.encode(pixel_values, attention_map=attention_map)
            outputs = [out.image_embeds, *([out.last_hidden_state[:, 1:]] if patch_tokens else [])]
            return (*outputs, *([out.attention_map] if out.attention_map is not None else []))

    return _Traced(TowerOutputs().eval(), names, tower.geometry, tower.conv1.weight.dtype)


def _dynamic_batch() -> dict[str, dict[int, Any]]:
    import torch

    return {INPUT_NAME: {0: torch.export.Dim("batch")}}


def _write_onnx(traced: _Traced, output: Path, metadata: dict[str, str], opset: int | None) -> Path:
    import onnx
    import torch
    from onnxscript import ir

    from .outputs import write_atomically

    program = torch.onnx.export(
        traced.module,
        (traced.example(EXAMPLE_BATCH),),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=list(traced.names),
        dynamic_shapes=_dynamic_batch(),
        verbose=False,
    )
    assert program is not None  # dynamo=True without a file returns the program
    program.model.metadata_props.update(metadata)

    def write(staging: Path) -> None:
        ir.save(program.model, staging)  # one file (ONNXProgram.save would move weights past 2 GB to a side file)
        onnx.checker.check_model(str(staging), full_check=True)
        _check_agreement(OnnxRuntimeModel(staging), traced, output)

    return write_atomically(output, write)


def _exported_program(traced: _Traced) -> torch.export.ExportedProgram:
    import torch

    return torch.export.export(traced.module, (traced.example(EXAMPLE_BATCH),), dynamic_shapes=_dynamic_batch())


def _write_pt2(traced: _Traced, output: Path, metadata: dict[str, str], opset: int | None) -> Path:
    import torch

    from .outputs import write_atomically

    program = _exported_program(traced)

    def write(staging: Path) -> None:
        with open(staging, "w+b") as file:  # a file object: torch.export wants paths to end in .pt2, the staging's don't
            torch.export.save(program, file, extra_files={PT2_METADATA_FILE: json.dumps(metadata)})
            file.seek(0)
            loaded = torch.export.load(file)
        _check_agreement(_called_like_the_core(loaded.module(), traced.names), traced, output)

    return write_atomically(output, write)


def _write_aoti(traced: _Traced, output: Path, metadata: dict[str, str], opset: int | None) -> Path:
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    from .outputs import write_atomically

    program = _exported_program(traced)

    def write(staging: Path) -> None:
        with open(staging, "w+b") as file:
            aoti_compile_and_package(program, package_path=file, inductor_configs={"aot_inductor.metadata": metadata})
            compiled = aoti_load_package(file)
        _check_agreement(_called_like_the_core(compiled, traced.names), traced, output)

    return write_atomically(output, write)


WRITERS: dict[str, Callable[[_Traced, Path, dict[str, str], int | None], Path]] = {
    "onnx": _write_onnx,
    "pt2": _write_pt2,
    "aoti": _write_aoti,
}


def _called_like_the_core(run: Callable[[torch.Tensor], Sequence[torch.Tensor]], names: Sequence[str]) -> Callable:
    """A loaded graph returning ``names``, called as the core is (with the flags that ask for exactly those)."""

    def call(pixel_values: torch.Tensor, output_all_features: bool = False, output_attention_map: bool = False):
        assert tuple(names) == output_names(output_all_features, output_attention_map)
        return tuple(run(pixel_values))

    return call


def _check_agreement(artifact: Callable[..., Sequence[torch.Tensor]], traced: _Traced, output: Path) -> None:
    """Raise unless ``artifact`` gives each output of the eager tower, finite and within ``TOLERANCES``, on a batch
    of ``CHECK_BATCH`` images."""
    import torch

    names, pixel_values = traced.names, traced.example(CHECK_BATCH, seed=1)
    with torch.inference_mode():
        expected = traced.module(pixel_values)
        actual = artifact(pixel_values, "patch_tokens" in names, "attention_map" in names)
    dtype = str(traced.dtype).removeprefix("torch.")
    for name, got, wanted in zip(names, actual, expected):
        if not torch.isfinite(got).all():
            raise RuntimeError(
                f"the exported {output.name} gives NaN or Inf in {name} (beyond the range of {dtype}?); "
                "nothing was written - export in float32"
            )
        error = _relative_error(got, wanted)
        if not error <= TOLERANCES[dtype]:
            raise RuntimeError(
                f"the exported {output.name} disagrees with the eager tower: {name} relative error {error:.2e} "
                f"(allowed {TOLERANCES[dtype]:.0e} in {dtype}); nothing was written"
            )


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``‖actual − expected‖ / ‖expected‖`` in float64."""
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


class OnnxRuntimeModel:
    """An ONNX file written by ``vit-zoo export``, run by onnxruntime on the CPU and called like the core tower.

    ``model(pixel_values, output_all_features=False, output_attention_map=False)`` returns the core's tuple of
    torch tensors: ``(image_embeds [b, output_dim],)``, then ``patch_tokens [b, grid*grid, width]`` and
    ``attention_map [layers, b, heads, grid, grid]`` when asked. The file must have been exported with the outputs
    asked for; ``output_all_features`` / ``output_attention_map`` given here are checked at once.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime's intra-op threads (default: its own choice, one per physical core). Idle threads do
            not spin (``session.intra_op.allow_spinning=0``), so they leave their cores to data-loading workers.
        output_all_features: refuse a file without ``patch_tokens`` now rather than at the first call.
        output_attention_map: refuse a file without ``attention_map`` now rather than at the first call.

    Attributes:
        geometry: the tower's ``Geometry``, from the file's metadata.
        metadata: the file's ``metadata_props`` (see ``artifact_metadata``).
        outputs: the file's output names.
        dtype: the dtype the graph takes and returns; ``pixel_values`` are cast to it, as the core casts them.
        device: ``cpu``, where the outputs are.

    Raises:
        ValueError: onnxruntime is not installed, ``threads`` is not a positive int, the file is missing, is not ONNX,
            was not written by ``vit-zoo export``, or lacks an output asked for.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        output_all_features: bool = False,
        output_attention_map: bool = False,
    ) -> None:
        import torch

        self.path = Path(path)
        self.session = _inference_session(self.path, threads)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.geometry = Geometry(**json.loads(self.metadata["geometry"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{self.path} has no vit_zoo geometry in its metadata_props; give a file written by `vit-zoo export`"
            ) from None
        self.outputs = tuple(output.name for output in self.session.get_outputs())
        self.dtype = torch.float16 if self.session.get_inputs()[0].type == "tensor(float16)" else torch.float32
        self.device = torch.device("cpu")
        self._names(output_all_features, output_attention_map)

    def __call__(
        self, pixel_values: torch.Tensor, output_all_features: bool = False, output_attention_map: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Encode ``pixel_values [b, in_channels, R, R]`` (any device and float dtype; run on the CPU)."""
        import torch

        from .model import check_image_batch

        names = self._names(output_all_features, output_attention_map)
        geometry = self.geometry
        check_image_batch(pixel_values, geometry.in_channels, geometry.input_resolution, geometry.patch_size, False)
        feed = pixel_values.detach().to("cpu", self.dtype).contiguous().numpy()
        return tuple(torch.from_numpy(result) for result in self.session.run(list(names), {INPUT_NAME: feed}))

    def _names(self, output_all_features: bool, output_attention_map: bool) -> tuple[str, ...]:
        names = output_names(output_all_features, output_attention_map)
        missing = [name for name in names if name not in self.outputs]
        if missing:
            options = " ".join(f"--{name.replace('_', '-')}" for name in missing)
            raise ValueError(f"{self.path} has no {' or '.join(missing)} output; export it again with {options}")
        return names

    def image_processor(self) -> Any:
        """The ``CLIPImageProcessorPil`` of the file's preprocessing metadata: what the tower was exported for."""
        from PIL import Image
        from transformers import CLIPImageProcessorPil

        settings = json.loads(self.metadata["preprocessing"])
        return CLIPImageProcessorPil(
            size={"shortest_edge": settings["resize_shortest_edge"]},
            crop_size={"height": settings["crop_size"], "width": settings["crop_size"]},
            resample=int(Image.Resampling[settings["resample"].upper()]),
            rescale_factor=settings["rescale_factor"],
            image_mean=settings["image_mean"],
            image_std=settings["image_std"],
        )


def _inference_session(path: Path, threads: int | None) -> Any:
    """A CPU onnxruntime session of ``path`` whose idle threads sleep."""
    try:
        import onnxruntime
    except ImportError:
        raise ValueError(f"running {path} needs onnxruntime, which cannot be imported: {INSTALL_HINT}") from None
    if threads is not None and (type(threads) is not int or threads < 1):
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file; give an .onnx file written by `vit-zoo export`")

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime's own exception classes (InvalidProtobuf, Fail, ...)
        raise ValueError(f"{path} is not an ONNX model onnxruntime can load ({first_line(error)})") from None
