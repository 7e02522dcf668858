"""``vit_zoo.spec``: a tower's geometry and tensors, and weights files checked against them from their headers alone."""

import json
import time

import pytest
import torch
from reference import OPENAI_GEOMETRIES, TINY
from safetensors.torch import save_file

from vit_zoo import CheckpointError, Geometry, VisionTransformer
from vit_zoo.spec import (
    MAX_HEADER_BYTES,
    block_indices,
    check_weights_fit,
    read_weight_map,
    safetensors_header,
)


@pytest.mark.parametrize("geometry", [TINY, *OPENAI_GEOMETRIES.values(), {**TINY, "mlp_ratio": 2.5, "in_channels": 1}])
def test_tensor_shapes_are_the_models_state_dict_in_order(geometry):
    with torch.device("meta"):
        model = VisionTransformer(**geometry)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    shapes = Geometry(**geometry).tensor_shapes()
    assert list(shapes.items()) == list(expected.items())
    assert Geometry(**geometry).num_params == sum(p.numel() for p in model.parameters())


def test_safetensors_header_gives_dtypes_and_shapes_without_reading_tensors(tmp_path):
    tensors = {"ln_pre.weight": torch.ones(4), "transformer.resblocks.0.ln_1.weight": torch.ones(2, 3).half()}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert safetensors_header(tmp_path / "model.safetensors") == {
        "ln_pre.weight": ("F32", (4,)),
        "transformer.resblocks.0.ln_1.weight": ("F16", (2, 3)),
    }


def _header_file(path, header: object, data: bytes = b"") -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(b""), "header of 0 bytes"),
        (lambda p: p.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{garb"), "not a JSON object"),
        (lambda p: p.write_bytes((MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"{}"), "at most"),
        (lambda p: p.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00[]"), "not a JSON object"),
        (lambda p: p.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00" + b"[" * 2), "not a JSON object"),
        (lambda p: _header_file(p, {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}), "does not fit the file"),
        (lambda p: _header_file(p, {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 16), "does not fit"),
        (lambda p: _header_file(p, {"x": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8), "does not fit"),
        (lambda p: _header_file(p, {"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}), "does not fit"),
        (lambda p: _header_file(p, {"x": [1, 2]}), "does not fit"),
    ],
    ids=[
        "empty",
        "garbage",
        "header-too-large",
        "not-an-object",
        "truncated",
        "past-the-end",
        "wrong-size",
        "dtype",
        "shape",
        "entry",
    ],
)
def test_damaged_headers_are_refused_naming_the_file(tmp_path, write, message):
    path = tmp_path / "model.safetensors"
    write(path)
    with pytest.raises(CheckpointError, match=message) as error:
        safetensors_header(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_pipe_or_a_folder_is_not_read(tmp_path):
    import os

    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match=r"is a FIFO \(named pipe\), not a regular file"):
        safetensors_header(fifo)  # would block forever if opened
    with pytest.raises(CheckpointError, match="is a folder"):
        safetensors_header(tmp_path)


def test_weight_map_of_an_index(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}))
    assert read_weight_map(index) == {"a": "model-1.safetensors", "b": "model-2.safetensors"}
    for damaged in ('{"weight_map": [1]}', '{"weight_map": {}}', '{"weight_map": {"a": 3}}', "[" * 100_000, "{"):
        index.write_text(damaged)
        with pytest.raises(CheckpointError, match=str(index)):
            read_weight_map(index)


def test_blocks_are_found_under_any_prefix():
    names = [
        "visual.transformer.resblocks.0.ln_1.weight",
        "visual.transformer.resblocks.0.ln_2.weight",
        "visual.transformer.resblocks.11.mlp.c_fc.weight",
        "transformer.resblocks.3.attn.in_proj_weight",
        "ln_post.weight",
        "my_transformer.resblocks.7.x",  # not a tower block
    ]
    assert block_indices(names) == {0, 3, 11}
    assert block_indices([]) == set()


TINY_SHAPES = Geometry(**TINY).tensor_shapes()


def test_weights_of_the_geometry_fit():
    check_weights_fit(Geometry(**TINY), TINY_SHAPES, "tiny")
    check_weights_fit(Geometry(**TINY), TINY_SHAPES, "tiny", partial=True)


@pytest.mark.parametrize("partial", [False, True])
def test_more_layers_than_blocks_and_other_shapes_are_refused_in_every_mode(partial):
    with pytest.raises(CheckpointError, match=f"config asks for layers=20000 but the weights hold {TINY['layers']} blocks"):
        check_weights_fit(Geometry(**{**TINY, "layers": 20000}), TINY_SHAPES, "tiny", partial=partial)
    with pytest.raises(CheckpointError, match=r"wrong shape: transformer\.resblocks\.0\.mlp\.c_fc\.weight \[256, 64\]"):
        check_weights_fit(Geometry(**{**TINY, "mlp_ratio": 4096.0}), TINY_SHAPES, "tiny", partial=partial)
    with pytest.raises(CheckpointError, match=r"wrong shape: class_embedding \[64\] \(expected \[65536\]\)"):
        check_weights_fit(Geometry(**{**TINY, "width": 65536, "heads": 1}), TINY_SHAPES, "tiny", partial=partial)


def test_the_check_costs_nothing_for_a_config_of_20000_layers():
    started = time.perf_counter()
    with pytest.raises(CheckpointError):
        check_weights_fit(Geometry(**{**TINY, "layers": 20000}), {"x.transformer.resblocks.0.a": (1,)}, "tiny")
    assert time.perf_counter() - started < 0.5  # the block count is compared before 240 000 shapes are listed


def test_strict_mode_lists_missing_and_unexpected_tensors():
    shapes = {**TINY_SHAPES, "transformer.resblocks.0.attn.bias_k": (64,)}
    del shapes["ln_post.bias"]
    with pytest.raises(CheckpointError, match="missing: ln_post.bias; unexpected: transformer.resblocks.0.attn.bias_k"):
        check_weights_fit(Geometry(**TINY), shapes, "tiny")
    check_weights_fit(Geometry(**TINY), shapes, "tiny", partial=True)  # transformers initialises and reports them


def test_partial_mode_follows_transformers_loading_contract():
    fewer = Geometry(**{**TINY, "layers": 1})
    check_weights_fit(fewer, TINY_SHAPES, "tiny", partial=True)  # blocks past `layers` are dropped
    with pytest.raises(CheckpointError, match="unexpected: transformer.resblocks.1"):
        check_weights_fit(fewer, TINY_SHAPES, "tiny")
    check_weights_fit(Geometry(**TINY), {"tensor": (2,)}, "nothing", partial=True)  # a model initialised from nothing


def test_adapted_tensors_are_left_to_the_loader():
    shapes = {**TINY_SHAPES, "positional_embedding": (37, 64)}  # a 6x6 grid: timm resamples it
    check_weights_fit(Geometry(**TINY), shapes, "tiny", adapted=("positional_embedding",))
    with pytest.raises(CheckpointError, match=r"positional_embedding \[37, 64\]"):
        check_weights_fit(Geometry(**TINY), shapes, "tiny")
