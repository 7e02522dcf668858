"""CUDA: torch.compile (inductor, default mode and CUDA graphs) and the attention-map path compute what eager does.

Run with ``pytest -m gpu`` on a machine with a CUDA device; the default run deselects these tests, and
without a device ``-m gpu`` reports them skipped. Outputs are compared by relative L2 norm: fused
kernels reorder reductions, so a near-zero element can differ by more than any elementwise rtol while
the tensors agree. fp32 matmuls run without TF32 (torch's default).
"""

import pytest
import torch
from reference import OPENAI_GEOMETRIES, TINY, relative_error

from vit_zoo import VisionTransformer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("fresh_dynamo"),
]

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
FORWARDS = {
    "plain": dict(),
    "attention_map": dict(output_attention_map=True),
    "all_features_and_map": dict(output_all_features=True, output_attention_map=True),
}
# (geometry, dtype): the tiny test tower in fp32, and ViT-B/16's widths (2 blocks) in bf16 as GPUs run it
CASES = {"tiny-float32": (TINY, torch.float32), "B16-bfloat16": (OPENAI_GEOMETRIES["ViT-B/16"], torch.bfloat16)}


def model_and_images(geometry: dict, dtype: torch.dtype, batch: int = 2) -> tuple[VisionTransformer, torch.Tensor]:
    torch.manual_seed(0)
    model = VisionTransformer(**geometry).eval().to("cuda", dtype)
    side = geometry["input_resolution"]
    return model, torch.randn(batch, 3, side, side, device="cuda", dtype=dtype)


def assert_agree(actual: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...], tolerance: float) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        assert relative_error(a, e) <= tolerance, relative_error(a, e)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_inductor_matches_eager(case):
    geometry, dtype = case
    model, images = model_and_images(geometry, dtype)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        for kwargs in FORWARDS.values():
            assert_agree(compiled(images, **kwargs), model(images, **kwargs), TOLERANCE[dtype])


@pytest.mark.parametrize("batch", [1, 8])
def test_cuda_graphs_match_eager(batch):
    """``mode="reduce-overhead"``: the small-batch path; the third call replays the recorded graph."""
    model, images = model_and_images(OPENAI_GEOMETRIES["ViT-B/16"], torch.bfloat16, batch)
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        expected = model(images, output_attention_map=True)
        for _ in range(3):
            actual = tuple(t.clone() for t in compiled(images, output_attention_map=True))
    assert_agree(actual, expected, TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_cls_row_attention_map_matches_full_softmax(case):
    """The SDPA path's CLS row (block-diagonal query over K in place) equals the explicit softmax's row."""
    geometry, dtype = case
    model, images = model_and_images(geometry, dtype)
    with torch.no_grad():
        fused = model.encode(images, attention_map=True)
        explicit = model.encode(images, attention_map=True, eager=True)
    assert_agree((fused.image_embeds, fused.attention_map), (explicit.image_embeds, explicit.attention_map), TOLERANCE[dtype])
