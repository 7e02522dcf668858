"""``vit_zoo.spec``'s torch-free reading of weight files: tensor names and block counts, without reading tensors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from vit_zoo.spec import MAX_HEADER_BYTES, block_indices, safetensors_names


def test_names_from_a_safetensors_header_and_from_an_index(tmp_path):
    tensors = {"ln_pre.weight": torch.ones(4), "transformer.resblocks.0.ln_1.weight": torch.ones(4)}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert sorted(safetensors_names(tmp_path / "model.safetensors")) == sorted(tensors)
    index = {"metadata": {}, "weight_map": {name: "model-00001-of-00001.safetensors" for name in tensors}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert sorted(safetensors_names(tmp_path / "model.safetensors.index.json")) == sorted(tensors)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x05\x00\x00\x00\x00\x00\x00\x00{garb",
        (MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"{}",
        (0).to_bytes(8, "little"),
        b"\x02\x00\x00\x00\x00\x00\x00\x00[]",
    ],
    ids=["empty", "garbage", "header-too-large", "zero-size", "not-an-object"],
)
def test_damaged_files_give_none_for_the_loader_to_report(tmp_path, content):
    (tmp_path / "model.safetensors").write_bytes(content)
    assert safetensors_names(tmp_path / "model.safetensors") is None
    assert safetensors_names(tmp_path / "missing.safetensors") is None
    (tmp_path / "index.json").write_text('{"weight_map": [1]}')
    assert safetensors_names(tmp_path / "index.json") is None


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
