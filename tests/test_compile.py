"""torch.compile(fullgraph=True): no graph breaks with or without attention maps, same numbers as eager.

``aot_eager`` traces the whole forward (and backward) through dynamo and AOTAutograd, so a graph break
or an in-place op autograd cannot functionalise fails here in seconds. Inductor, which generates and
compiles C++ on CPU (Triton on CUDA, ``pytest -m gpu``), runs once on the attention-map forward (the
superset of the plain one); its outputs are compared by relative L2 norm, since fused kernels reorder
reductions and a near-zero element can then differ by more than any elementwise rtol.
"""

import shutil

import pytest
import torch
from reference import TINY, relative_error

from vit_zoo import VisionTransformer

pytestmark = pytest.mark.usefixtures("fresh_dynamo")

FORWARDS = {
    "plain": dict(),
    "attention_map": dict(output_attention_map=True),
    "all_features_and_map": dict(output_all_features=True, output_attention_map=True),
}


def tiny_model_and_images() -> tuple[VisionTransformer, torch.Tensor]:
    torch.manual_seed(0)
    return VisionTransformer(**TINY).eval(), torch.randn(2, 3, TINY["input_resolution"], TINY["input_resolution"])


@pytest.mark.parametrize("kwargs", FORWARDS.values(), ids=FORWARDS.keys())
def test_fullgraph_forward_matches_eager(kwargs):
    model, images = tiny_model_and_images()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        expected = model(images, **kwargs)
        actual = compiled(images, **kwargs)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_fullgraph_backward_matches_eager():
    model, images = tiny_model_and_images()
    model.train()
    model(images, output_attention_map=True)[0].square().sum().backward()
    expected = {name: param.grad.clone() for name, param in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(images, output_attention_map=True)[0].square().sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="inductor on CPU needs a C compiler"),
    ),
    pytest.param(
        "cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_inductor_attention_map_forward_matches_eager(device):
    model, images = tiny_model_and_images()
    model, images = model.to(device), images.to(device)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        expected = model(images, output_attention_map=True)
        actual = compiled(images, output_attention_map=True)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and relative_error(a, e) <= 1e-4
