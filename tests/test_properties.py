"""Property tests over random geometries and dtypes.

- Valid: an OpenAI-format state dict of a random tower (float32, float16 or bfloat16) goes through
  ``convert_checkpoint`` -> folder -> the core model, ``AutoModel`` and timm's ``local-dir:`` -> ``push_folder``
  -> ``pull``, and every step gives the same bits: tensors, dtypes, files and embeddings.
- Invalid: random bad values (zero, negative, bool, float, NaN, Inf, str, None, non-divisible sizes, unknown
  activations) are refused with a ``ValueError`` raised by vit_zoo's own checks (never from inside torch) by
  ``VitZooConfig``, ``VisionTransformer``, ``timm.create_model`` keyword arguments and a zoo entry.
"""

from __future__ import annotations

import copy
import math
import uuid
from pathlib import Path

import pytest
import timm
import torch
from helpers import TINY_NAME
from hub_server import WRITE_TOKEN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import AutoModel

from vit_zoo import VisionTransformer, VitZooConfig, pull, push_folder
from vit_zoo.card import REPO_ID_PLACEHOLDER
from vit_zoo.convert import convert_checkpoint
from vit_zoo.spec import ACTIVATIONS
from vit_zoo.vision_transformer import openai_state_dict
from vit_zoo.zoo import parse_entry

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SIZE_FIELDS = ("input_resolution", "patch_size", "width", "layers", "heads", "output_dim", "in_channels")
VALID = dict(
    input_resolution=32,
    patch_size=8,
    width=64,
    layers=2,
    heads=4,
    output_dim=32,
    in_channels=3,
    mlp_ratio=4.0,
    activation="quick_gelu",
    layer_norm_eps=1e-5,
)
TIMM_NAMES = {"input_resolution": "img_size", "in_channels": "in_chans"}  # the other fields keep their names


@st.composite
def valid_geometries(draw) -> dict:
    """Geometries ``vit-zoo convert`` can infer: heads = width // 64 (OpenAI's rule), any MLP width."""
    heads = draw(st.integers(1, 2))
    width = 64 * heads
    patch, grid = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    return dict(
        input_resolution=patch * grid,
        patch_size=patch,
        width=width,
        layers=draw(st.integers(1, 2)),
        heads=heads,
        output_dim=draw(st.integers(1, 16)),
        in_channels=draw(st.integers(1, 4)),
        mlp_ratio=draw(st.integers(1, 2 * width)) / width,  # exact: width is a power of two
        activation=draw(st.sampled_from(ACTIVATIONS)),
    )


def random_tower(geometry: dict, dtype: torch.dtype, seed: int) -> VisionTransformer:
    """Every parameter drawn at random (LayerNorms too), then cast to ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    tower = VisionTransformer(**geometry).eval()
    with torch.no_grad():
        for parameter in tower.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1 + (parameter == 1).float())
    return tower.to(dtype)


def in_own_memory(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its parameters copied out of the memory-mapped file they were loaded from. BLAS kernels may
    round a product differently for weights at another alignment (safetensors places tensors 8-byte aligned), so
    without this an ulp of difference would say something about the allocator, not about the model."""
    for parameter in model.parameters():
        parameter.data = parameter.data.clone()
    return model


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype and torch.equal(actual[key], tensor), key


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(geometry=valid_geometries(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_convert_load_push_pull_round_trips_bit_exactly(geometry, dtype, seed, hub_server, tmp_path_factory):
    work = tmp_path_factory.mktemp("round-trip")
    tower = random_tower(geometry, dtype, seed)
    expected = {key: tensor.detach().clone() for key, tensor in tower.state_dict().items()}
    clip = {f"visual.{key}": tensor for key, tensor in expected.items()} | {"token_embedding.weight": torch.ones(8, 4)}
    torch.save(clip, work / "clip.pt")  # an OpenAI/open_clip-format whole CLIP: the text tower is left behind
    folder = convert_checkpoint(work / "clip.pt", work / "converted", activation=geometry["activation"])

    assert_same_tensors(load_file(folder / "model.safetensors"), expected)
    config = VitZooConfig.from_pretrained(folder)
    assert {key: getattr(config, key) for key in geometry} == geometry and config.dtype == dtype

    channels, side = geometry["in_channels"], geometry["input_resolution"]
    images = torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = tower(images)[0]
        reference_fp32 = copy.deepcopy(tower).float()(images)[0]
        core = VisionTransformer(**config.geometry).to(dtype).eval()
        core.load_state_dict(load_file(folder / "model.safetensors"))
        auto = in_own_memory(AutoModel.from_pretrained(folder).eval())
        timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # timm builds in float32
        assert_same_tensors({k.removeprefix("visual."): v for k, v in auto.state_dict().items()}, expected)
        assert_same_tensors(openai_state_dict(timm_model), {key: tensor.float() for key, tensor in expected.items()})
        assert torch.equal(core(images)[0], reference)
        assert torch.equal(auto(images).image_embeds, reference)
        assert torch.equal(timm_model(images), reference_fp32)

    repo_id = f"org/round-trip-{uuid.uuid4().hex[:8]}"
    push_folder(folder, repo_id, token=WRITE_TOKEN)
    pulled = pull(repo_id)
    for path in folder.iterdir():
        content = path.read_bytes()
        if path.name == "README.md":  # the card's usage names the repo once pushed
            content = content.replace(REPO_ID_PLACEHOLDER.encode(), repo_id.encode())
        assert (pulled / path.name).read_bytes() == content, path.name
    assert_same_tensors(load_file(pulled / "model.safetensors"), expected)


# --- invalid geometries -----------------------------------------------------------------------------------------

not_a_positive_int = st.one_of(st.integers(max_value=0), st.booleans(), st.floats(allow_nan=True), st.text(max_size=4), st.none())
not_a_positive_number = st.one_of(
    st.floats(max_value=0), st.sampled_from([math.inf, -math.inf, math.nan]), st.booleans(), st.text(max_size=4), st.none()
)


@st.composite
def invalid_geometries(draw) -> dict:
    """``VALID`` with one field (or a pair of fields) made impossible."""
    geometry = dict(VALID)
    kind = draw(st.sampled_from(["size", "resolution", "heads", "mlp_ratio", "no_hidden_unit", "activation", "eps"]))
    if kind == "size":
        geometry[draw(st.sampled_from(SIZE_FIELDS))] = draw(not_a_positive_int)
    elif kind == "resolution":  # not a multiple of the patch
        patch = draw(st.integers(2, 16))
        geometry.update(patch_size=patch, input_resolution=patch * draw(st.integers(0, 8)) + draw(st.integers(1, patch - 1)))
    elif kind == "heads":  # width not a multiple of heads
        heads = draw(st.integers(2, 16))
        geometry.update(heads=heads, width=heads * draw(st.integers(0, 8)) + draw(st.integers(1, heads - 1)))
    elif kind == "mlp_ratio":
        geometry["mlp_ratio"] = draw(not_a_positive_number)
    elif kind == "no_hidden_unit":  # int(width * mlp_ratio) == 0
        geometry["mlp_ratio"] = draw(st.floats(min_value=1e-300, max_value=1 / geometry["width"], exclude_max=True))
    elif kind == "activation":
        geometry["activation"] = draw(st.text(max_size=12).filter(lambda name: name not in ACTIVATIONS))
    else:
        geometry["layer_norm_eps"] = draw(not_a_positive_number)
    return geometry


def assert_refused_by_vit_zoo(build, *args, **kwargs) -> None:
    """``build(...)`` raises ValueError, and the innermost frame that raised it is vit_zoo's code, not torch's."""
    with pytest.raises(ValueError) as error:
        build(*args, **kwargs)
    raiser = Path(error.traceback[-1].path)
    assert "vit_zoo" in raiser.parts and "torch" not in raiser.parts, (raiser, str(error.value))
    assert "\n" not in str(error.value)


@settings(max_examples=300, deadline=None)
@given(geometry=invalid_geometries())
def test_invalid_geometries_are_refused_at_config_time(geometry):
    assert_refused_by_vit_zoo(VitZooConfig, **geometry)
    assert_refused_by_vit_zoo(VisionTransformer, **geometry)
    assert_refused_by_vit_zoo(parse_entry, {"name": "vit_zoo_property_test", "model": geometry})
    if None not in geometry.values():  # timm drops None keyword arguments: None means "the entry's default"
        timm_kwargs = {TIMM_NAMES.get(key, key): value for key, value in geometry.items()}
        assert_refused_by_vit_zoo(timm.create_model, TINY_NAME, **timm_kwargs)
