"""`vit-zoo export` / `vit_zoo.export`: ONNX, torch.export and AOTInductor files of the tiny tower give the eager
core's outputs at batch 1, 3 and 8 for every output combination, carry their metadata, and run where vit_zoo is not
installed (AOTInductor); `OnnxRuntimeModel` is called like the core; bad input ends in one line, nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch
from helpers import REPO_ROOT, assert_cli_error, call_main, listing
from reference import TINY, relative_error
from safetensors.torch import load_file, save_file

import vit_zoo
from conversion.offline_demo import BLOCK_VIT_ZOO
from vit_zoo import VitZooConfig, VitZooModel, save_model_folder
from vit_zoo.exporter import OnnxRuntimeModel, artifact_metadata, output_names
from vit_zoo.image_processing import load_image_processor

BATCHES = (1, 3, 8)
COMBINATIONS = [(False, False), (True, False), (False, True), (True, True)]  # (patch_tokens, attention_map)
COMBINATION_IDS = ["embeds", "tokens", "map", "tokens+map"]
GRID = TINY["input_resolution"] // TINY["patch_size"]
SHAPES = {  # what the metadata and the ONNX graph say, "batch" being the dynamic dimension
    "image_embeds": ["batch", TINY["output_dim"]],
    "patch_tokens": ["batch", GRID * GRID, TINY["width"]],
    "attention_map": [TINY["layers"], "batch", TINY["heads"], GRID, GRID],
}

# Runs in a fresh interpreter that cannot import vit_zoo (nor find the repository): loads the AOTInductor package,
# runs it on the saved inputs and saves its outputs and metadata.
AOTI_SCRIPT = (
    BLOCK_VIT_ZOO
    + r"""
import json
import torch
from safetensors.torch import load_file, save_file
package, work = sys.argv[1], sys.argv[2]
try:
    import vit_zoo
    raise SystemExit("vit_zoo could be imported")
except ModuleNotFoundError:
    pass
compiled = torch._inductor.aoti_load_package(package)
results = {}
for name, images in load_file(f"{work}/inputs.safetensors").items():
    for index, output in enumerate(compiled(images)):
        results[f"{name}.{index}"] = output.contiguous()
save_file(results, f"{work}/outputs.safetensors")
with open(f"{work}/metadata.json", "w") as file:
    json.dump(compiled.get_metadata(), file)
"""
)


@pytest.fixture(scope="module")
def core(model_folder):
    return VitZooModel.from_pretrained(model_folder).visual.eval()


@pytest.fixture(scope="module")
def images() -> dict[int, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {
        batch: torch.randn(batch, 3, TINY["input_resolution"], TINY["input_resolution"], generator=generator) for batch in BATCHES
    }


@pytest.fixture(scope="module")
def onnx_files(model_folder, tmp_path_factory) -> dict[tuple[bool, bool], Path]:
    """One ONNX file per output combination, through the Python API."""
    folder = tmp_path_factory.mktemp("onnx")
    return {
        (tokens, maps): vit_zoo.export(model_folder, folder / f"{name}.onnx", patch_tokens=tokens, attention_map=maps)
        for (tokens, maps), name in zip(COMBINATIONS, COMBINATION_IDS)
    }


def eager(core, images: torch.Tensor, patch_tokens: bool, attention_map: bool) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return core(images, patch_tokens, attention_map)


def assert_agrees(actual, expected, tolerance: float = 1e-5) -> None:
    assert len(actual) == len(expected)
    for got, wanted in zip(actual, expected):
        got = torch.as_tensor(got)
        assert got.shape == wanted.shape and got.dtype == wanted.dtype
        assert relative_error(got, wanted) <= tolerance


def check_metadata(metadata: dict[str, str], model_folder: Path, names: tuple[str, ...], dtype: str = "float32") -> None:
    """The metadata describes the model: geometry, the folder's preprocessing, shapes, dtype and provenance."""
    assert json.loads(metadata["geometry"]) == dict(VitZooConfig.from_pretrained(model_folder).geometry)
    processor = load_image_processor(model_folder / "preprocessor_config.json")
    assert json.loads(metadata["preprocessing"]) == {
        "resize_shortest_edge": processor.size["shortest_edge"],
        "resample": "bicubic",
        "crop_size": processor.crop_size["height"],
        "rescale_factor": processor.rescale_factor,
        "image_mean": list(processor.image_mean),
        "image_std": list(processor.image_std),
    }
    resolution = TINY["input_resolution"]
    assert json.loads(metadata["inputs"]) == {"pixel_values": ["batch", 3, resolution, resolution]}
    assert json.loads(metadata["outputs"]) == {name: SHAPES[name] for name in names}
    assert metadata["dtype"] == dtype and metadata["source"] == str(model_folder)
    sha256 = hashlib.sha256((model_folder / "model.safetensors").read_bytes()).hexdigest()
    assert json.loads(metadata["weights_sha256"]) == {"model.safetensors": sha256}
    assert metadata["vit_zoo_version"] == vit_zoo.__version__ and "revision" not in metadata


def graph_shape(value_info) -> list:
    return [dim.dim_param or dim.dim_value for dim in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("patch_tokens, attention_map", COMBINATIONS, ids=COMBINATION_IDS)
def test_onnx_file_runs_in_onnxruntime_like_the_eager_core(onnx_files, model_folder, core, images, patch_tokens, attention_map):
    path = onnx_files[patch_tokens, attention_map]
    names = output_names(patch_tokens, attention_map)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 20
    assert [(i.name, graph_shape(i)) for i in proto.graph.input] == [("pixel_values", ["batch", 3, 32, 32])]
    assert [(o.name, graph_shape(o)) for o in proto.graph.output] == [(name, SHAPES[name]) for name in names]
    check_metadata({prop.key: prop.value for prop in proto.metadata_props}, model_folder, names)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])  # plain onnxruntime, no vit_zoo
    for batch in BATCHES:
        outputs = session.run(None, {"pixel_values": images[batch].numpy()})
        assert_agrees([torch.from_numpy(output) for output in outputs], eager(core, images[batch], patch_tokens, attention_map))


def test_onnx_runtime_model_is_called_like_the_core(onnx_files, model_folder, core, images):
    model = OnnxRuntimeModel(onnx_files[True, True], threads=2, output_all_features=True, output_attention_map=True)
    options = model.session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert model.geometry == core.geometry and model.dtype == torch.float32 and model.device == torch.device("cpu")
    assert model.outputs == ("image_embeds", "patch_tokens", "attention_map")
    for patch_tokens, attention_map in COMBINATIONS:
        for batch in BATCHES:
            expected = eager(core, images[batch], patch_tokens, attention_map)
            assert_agrees(model(images[batch], patch_tokens, attention_map), expected)
    assert_agrees(model(images[3].double()), eager(core, images[3], False, False))  # cast to the graph's dtype
    processor = model.image_processor().to_dict()
    folder_processor = load_image_processor(model_folder / "preprocessor_config.json").to_dict()
    keys = ("size", "crop_size", "resample", "rescale_factor", "image_mean", "image_std")
    assert {key: processor[key] for key in keys} == {key: folder_processor[key] for key in keys}


def test_onnx_runtime_model_refuses_what_the_file_cannot_do(onnx_files, tmp_path):
    embeds_only = onnx_files[False, False]
    with pytest.raises(ValueError, match="has no attention_map output; export it again with --attention-map"):
        OnnxRuntimeModel(embeds_only, output_attention_map=True)
    model = OnnxRuntimeModel(embeds_only)
    with pytest.raises(ValueError, match="has no patch_tokens or attention_map output; .* --patch-tokens --attention-map"):
        model(torch.zeros(1, 3, 32, 32), output_all_features=True, output_attention_map=True)
    with pytest.raises(ValueError, match="expected images of 32x32, got 64x64"):
        model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="threads must be a positive int"):
        OnnxRuntimeModel(embeds_only, threads=0)
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"not a protobuf at all")
    with pytest.raises(ValueError, match="is not an ONNX model onnxruntime can load"):
        OnnxRuntimeModel(not_onnx)
    foreign = tmp_path / "identity.onnx"
    value = onnx.helper.make_tensor_value_info("pixel_values", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["pixel_values"], ["y"])], "g", [value], [value])
    graph.output[0].name = "y"
    onnx.save(onnx.helper.make_model(graph), foreign)
    with pytest.raises(ValueError, match="has no vit_zoo geometry in its metadata_props"):
        OnnxRuntimeModel(foreign)
    with pytest.raises(ValueError, match="is not a file"):
        OnnxRuntimeModel(tmp_path / "missing.onnx")


@pytest.mark.parametrize("patch_tokens, attention_map", COMBINATIONS, ids=COMBINATION_IDS)
def test_pt2_program_loads_with_torch_export_like_the_eager_core(
    model_folder, core, images, tmp_path, capsys, patch_tokens, attention_map
):
    output = tmp_path / "tower.pt2"
    flags = ["--patch-tokens"] * patch_tokens + ["--attention-map"] * attention_map
    code, out, err = call_main(capsys, "export", model_folder, "--format", "pt2", "--output", output, *flags)
    names = output_names(patch_tokens, attention_map)
    assert code == 0, err
    assert out == f"wrote {output} (pt2, float32; pixel_values -> {', '.join(names)}; checked against eager torch)\n"
    assert listing(tmp_path) == ["tower.pt2"]
    extra_files = {"vit_zoo.json": ""}
    program = torch.export.load(output, extra_files=extra_files)
    check_metadata(json.loads(extra_files["vit_zoo.json"]), model_folder, names)
    for batch in BATCHES:
        with torch.no_grad():
            outputs = program.module()(images[batch])
        assert_agrees(outputs, eager(core, images[batch], patch_tokens, attention_map))


@pytest.mark.parametrize("format", ["onnx", "pt2"])
def test_float16_export_agrees_with_torch_in_float16(model_folder, images, tmp_path, format):
    output = vit_zoo.export(
        model_folder, tmp_path / f"half.{format}", format=format, dtype="float16", patch_tokens=True, attention_map=True
    )
    half = VitZooModel.from_pretrained(model_folder, dtype=torch.float16).visual.eval()
    if format == "onnx":
        model = OnnxRuntimeModel(output, output_all_features=True, output_attention_map=True)  # runs on CPU
        assert model.dtype == torch.float16 and model.metadata["dtype"] == "float16"
        run = model
    else:
        run = torch.export.load(output).module()
    for batch in BATCHES:
        pixel_values = images[batch].half()
        with torch.no_grad():
            outputs = run(pixel_values) if format == "pt2" else run(pixel_values, True, True)
        assert_agrees(outputs, eager(half, pixel_values, True, True), tolerance=1e-2)


@pytest.mark.slow
def test_aoti_package_runs_where_vit_zoo_cannot_be_imported(model_folder, core, images, tmp_path):
    package = vit_zoo.export(model_folder, tmp_path / "tower.pt2", format="aoti", patch_tokens=True, attention_map=True)
    save_file({str(batch): images[batch] for batch in BATCHES}, tmp_path / "inputs.safetensors")
    result = subprocess.run(
        [sys.executable, "-c", AOTI_SCRIPT, str(package), str(tmp_path)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},  # no PYTHONPATH: the repository is not on the path
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    outputs = load_file(tmp_path / "outputs.safetensors")
    for batch in BATCHES:
        assert_agrees([outputs[f"{batch}.{index}"] for index in range(3)], eager(core, images[batch], True, True))
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    check_metadata(
        {key: metadata[key] for key in metadata if not key.startswith("AOTI_")}, model_folder, output_names(True, True)
    )


@pytest.mark.slow
def test_sigterm_during_an_export_leaves_nothing(model_folder, tmp_path):
    """Killed while AOTInductor compiles into its staging file: exit 143, and the output folder is empty."""
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    command = [sys.executable, "-m", "vit_zoo", "export", str(model_folder), "--format", "aoti", "-o", str(output_dir / "t.pt2")]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stderr=subprocess.PIPE, text=True)
    try:
        while not any(path.name.endswith(".partial") for path in output_dir.iterdir()):  # the compile has begun
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143 and "vit-zoo: terminated" in stderr, stderr
    assert listing(output_dir) == []


def test_metadata_records_the_hub_commit_of_a_folder_in_the_hub_cache(model_folder, tmp_path):
    snapshot = tmp_path / "models--your-name--tiny" / "snapshots" / ("0123abcd" * 5)
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(model_folder, target_is_directory=True)
    geometry = VitZooConfig.from_pretrained(model_folder).geometry
    processor = load_image_processor(model_folder / "preprocessor_config.json")
    metadata = artifact_metadata("your-name/tiny", snapshot, geometry, processor, "float32", ("image_embeds",))
    assert metadata["source"] == "your-name/tiny" and metadata["revision"] == "0123abcd" * 5


def test_export_refuses_outputs_that_are_not_finite(tmp_path):
    """Weights whose float16 activations overflow: the float16 export is refused, nothing written."""
    torch.manual_seed(0)
    model = VitZooModel(VitZooConfig(**TINY)).eval()
    with torch.no_grad():
        model.visual.proj.mul_(1e5)  # finite float32 weights, but embeddings beyond float16's 65504
    folder = save_model_folder(model, tmp_path / "loud")
    output = tmp_path / "out" / "loud.pt2"
    with pytest.raises(RuntimeError, match="gives NaN or Inf in image_embeds .* nothing was written - export in float32"):
        vit_zoo.export(folder, output, format="pt2", dtype="float16")
    assert not output.parent.exists()


def test_a_model_too_big_for_one_onnx_file_is_refused_before_the_export(model_folder, tmp_path, capsys, monkeypatch):
    tiny_bytes = VitZooConfig(**TINY).geometry.num_params * 4
    monkeypatch.setattr(sys.modules["vit_zoo.exporter"], "ONNX_MAX_BYTES", tiny_bytes)  # the tiny tower plays a 2 GB one
    result = call_main(capsys, "export", model_folder, "-o", tmp_path / "x.onnx")
    assert_cli_error(result, "export", "more than one ONNX file holds (2 GB); export --dtype float16, or --format pt2")
    assert listing(tmp_path) == []


def test_vit_zoo_export_is_the_export_function():
    assert vit_zoo.export is sys.modules["vit_zoo.exporter"].export


@pytest.mark.parametrize(
    "args, message",
    [
        (["--opset", "17"], "--opset must be an int from 18 to 25"),
        (["--opset", "26"], "--opset must be an int from 18 to 25"),
        (["--format", "pt2", "--opset", "20", "-o", "{tmp}/x.pt2"], "--opset applies to --format onnx only, not pt2"),
        (["-o", "{tmp}/x.pt2"], "--output must end in .onnx for --format onnx, got x.pt2"),
        (["--format", "aoti", "-o", "{tmp}/x.onnx"], "--output must end in .pt2 for --format aoti"),
        (["-o", "{tmp}/existing.onnx"], "already exists; choose a new file or remove it"),
        (["-o", "{tmp}/existing.onnx/x.onnx"], "a folder above it is a file"),
        (["-o", "{model}/x.onnx"], "is inside the model folder"),
    ],
    ids=["opset-low", "opset-high", "opset-pt2", "suffix-onnx", "suffix-aoti", "exists", "parent-file", "in-model"],
)
def test_bad_export_options_end_in_one_line_and_write_nothing(model_folder, tmp_path, capsys, args, message):
    (tmp_path / "existing.onnx").write_bytes(b"kept")
    before, model_before = listing(tmp_path), listing(model_folder)
    args = [arg.format(tmp=tmp_path, model=model_folder) for arg in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "x.onnx")]
    assert_cli_error(call_main(capsys, "export", model_folder, *args), "export", message)
    assert listing(tmp_path) == before and listing(model_folder) == model_before
    assert (tmp_path / "existing.onnx").read_bytes() == b"kept"


def test_a_model_that_is_not_a_vit_zoo_model_is_refused(tmp_path, capsys):
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", "hidden_size": 768}))
    assert_cli_error(call_main(capsys, "export", clip, "-o", tmp_path / "x.onnx"), "export", "clip_vision_model")
    assert_cli_error(call_main(capsys, "export", clip / "config.json", "-o", tmp_path / "x.onnx"), "export", "is a file")
    assert listing(tmp_path) == ["clip", "clip/config.json"]


def test_missing_onnx_packages_and_compiler_are_named(model_folder, tmp_path, capsys, monkeypatch):
    with torch._inductor.config.patch({"cpp.cxx": (None, "no-such-c++")}):
        result = call_main(capsys, "export", model_folder, "--format", "aoti", "-o", tmp_path / "x.pt2")
    assert_cli_error(result, "export", "--format aoti compiles C++, but no working C++ compiler was found")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: importing it raises ImportError
    result = call_main(capsys, "export", model_folder, "-o", tmp_path / "x.onnx")
    assert_cli_error(result, "export", "--format onnx needs onnxruntime", "pip install onnx onnxscript onnxruntime")
    with pytest.raises(ValueError, match="needs onnxruntime, which cannot be imported"):
        OnnxRuntimeModel(tmp_path / "x.onnx")
    assert listing(tmp_path) == []


def test_unknown_format_and_dtype_are_refused(model_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:  # argparse's own error, as for every subcommand
        call_main(capsys, "export", model_folder, "--format", "tflite", "-o", tmp_path / "x.onnx")
    assert exit.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--dtype must be one of float32, float16 for an export, got 'bfloat16'"):
        vit_zoo.export(model_folder, tmp_path / "x.onnx", dtype="bfloat16")
    assert listing(tmp_path) == []


def test_onnx_opset_is_the_one_asked_for(model_folder, core, images, tmp_path):
    output = vit_zoo.export(model_folder, tmp_path / "opset23.onnx", opset=23, attention_map=True)
    assert onnx.load(output).opset_import[0].version == 23
    session = onnxruntime.InferenceSession(output, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"pixel_values": images[3].numpy()})
    assert_agrees([torch.from_numpy(output) for output in outputs], eager(core, images[3], False, True))


def test_embed_on_onnxruntime_gives_torch_s_outputs_and_exports_once(model_folder, tmp_path, capsys):
    """`vit-zoo embed --engine onnxruntime`: the folder exported once into the cache, its embeddings and attention maps
    those of the torch engine (maps are float16 reductions), resumable runs told apart by the engine."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for index in range(5):
        Image.effect_noise((40, 36), 30 + 20 * index).convert("RGB").save(images / f"{index}.png")
    cache, results = tmp_path / "cache", {}
    for engine in ("torch", "onnxruntime", "onnxruntime"):
        output = tmp_path / f"{engine}-{len(results)}.safetensors"
        args = ["embed", model_folder, images, "-o", output, "--attention-map", "--engine", engine, "--cache-dir", cache]
        code, _, err = call_main(capsys, *args)
        assert code == 0, err
        results[output.name] = load_file(output)
    torch_run, onnx_run, again = results.values()
    assert_agrees(onnx_run["embeddings"], torch_run["embeddings"])
    assert torch.allclose(onnx_run["attention_map"].float(), torch_run["attention_map"].float(), rtol=1e-3, atol=1e-4)
    assert torch.equal(again["embeddings"], onnx_run["embeddings"])
    assert [path.name.endswith("-attention-map.onnx") for path in (cache / "onnx").glob("*.onnx")] == [True]
    code, _, err = call_main(capsys, "embed", model_folder, images, "--output-dir", tmp_path / "sharded", "--cache-dir", cache)
    assert code == 0, err
    assert_cli_error(
        call_main(capsys, "embed", model_folder, images, "--output-dir", tmp_path / "sharded", "--engine", "onnxruntime"),
        "embed",
        "engine",
    )


@pytest.mark.parametrize(
    "option, message",
    [
        (["--device", "cuda"], "--engine onnxruntime runs on cpu alone (--device cuda)"),
        (["--dtype", "float16"], "--engine onnxruntime runs on float32 alone (--dtype float16)"),
        (["--compile"], "--compile applies to --engine torch"),
    ],
)
def test_embed_engine_combinations_that_cannot_work_are_refused_at_once(model_folder, tmp_path, capsys, option, message):
    args = ["embed", model_folder, tmp_path, "-o", tmp_path / "e.npy", "--engine", "onnxruntime", *option]
    assert_cli_error(call_main(capsys, *args), "embed", message)
    assert listing(tmp_path) == []
