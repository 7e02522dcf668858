"""The core VisionTransformer: the seed's outputs, OpenAI parity, properties and bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    OPENAI_GEOMETRIES,
    TINY,
    reference_attention_maps,
    reference_clip,
    relative_error,
    visual_state_dict,
)
from torch.utils._python_dispatch import TorchDispatchMode

from vit_zoo import VisionTransformer


def test_seed_worked_example_shapes():
    torch.manual_seed(0)
    model = VisionTransformer(input_resolution=6, patch_size=3, width=3, layers=2, heads=1, output_dim=5, in_channels=1)
    cls_feature, patch_tokens, attention_map = model(torch.randn(2, 1, 6, 6), True, True)
    assert cls_feature.shape == (2, 5)
    assert patch_tokens.shape == (2, 4, 3)
    assert attention_map.shape == (2, 2, 1, 2, 2)
    assert len(model(torch.randn(2, 1, 6, 6))) == 1
    assert len(model(torch.randn(2, 1, 6, 6), output_attention_map=True)) == 2


def test_parameter_names_are_openai_visual_names():
    reference = reference_clip(**TINY)
    model = VisionTransformer(**TINY)
    assert set(model.state_dict()) == set(visual_state_dict(reference))


def test_mlp_computes_exactly_openais_linear_quickgelu_linear():
    """Bit for bit OpenAI's ``nn.Sequential(c_fc, QuickGELU, c_proj)``: tools that rewrite or merge into
    ``nn.Linear`` (LoRA, quantisers) rely on each linear computing ``x Wᵀ + b`` and nothing else."""
    reference = reference_clip(**TINY).visual.transformer.resblocks[0].mlp
    model = VisionTransformer(**TINY).eval()
    model.load_state_dict(visual_state_dict(reference_clip(**TINY)))
    mlp = model.transformer.resblocks[0].mlp
    assert type(mlp.c_fc) is torch.nn.Linear and type(mlp.c_proj) is torch.nn.Linear
    tokens = torch.randn(2, 17, TINY["width"])
    with torch.no_grad():
        assert torch.equal(mlp(tokens), reference(tokens))


@pytest.mark.parametrize("name", ["tiny", *OPENAI_GEOMETRIES])
def test_matches_openai_reference(name):
    geometry = TINY if name == "tiny" else OPENAI_GEOMETRIES[name]
    reference = reference_clip(**geometry)
    model = VisionTransformer(**geometry).eval()
    model.load_state_dict(visual_state_dict(reference))
    images = torch.randn(2, 3, geometry["input_resolution"], geometry["input_resolution"])
    with torch.no_grad():
        expected = reference.encode_image(images)
        cls_feature, patch_tokens, attention_map = model(images, True, True)
    assert relative_error(cls_feature, expected) <= 1e-5
    expected_maps = reference_attention_maps(reference, images)
    assert attention_map.shape == expected_maps.shape
    assert (attention_map - expected_maps).abs().max().item() <= 1e-5
    # the attention map sums to 1 with the CLS column: patches alone get slightly less
    assert torch.all(attention_map.sum(dim=(-1, -2)) <= 1 + 1e-5)


def test_eager_and_sdpa_agree():
    torch.manual_seed(0)
    model = VisionTransformer(**TINY).eval()
    images = torch.randn(3, 3, 32, 32)
    calls = [(True, True), (False, True), (False, False)]  # the last two run the last block for CLS only
    with torch.no_grad():
        sdpa = [model(images, *call) for call in calls]
        model.set_attention_implementation("eager")
        eager = [model(images, *call) for call in calls]
    for sdpa_outputs, eager_outputs in zip(sdpa, eager, strict=True):
        for a, b in zip(sdpa_outputs, eager_outputs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_attention_map_does_not_change_embedding():
    torch.manual_seed(0)
    model = VisionTransformer(**TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(images)[0]
        torch.testing.assert_close(plain, model(images, output_attention_map=True)[0], rtol=0, atol=0)
        # all features run the last block on every token: same values, another matmul shape
        torch.testing.assert_close(plain, model(images, True, True)[0], rtol=1e-5, atol=1e-6)


def large_copies(model: VisionTransformer, images: torch.Tensor, **kwargs) -> list[tuple[str, int]]:
    """The copying ops (clone, copy_, contiguous) a forward runs on tensors of at least ``[b, n, width]``."""
    tokens = images.shape[0] * (1 + model.grid_size**2) * model.transformer.width
    copies = []

    class RecordCopies(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.clone, torch.ops.aten.copy_) and out.numel() >= tokens:
                copies.append((str(func), out.numel()))
            return out

    with torch.no_grad(), RecordCopies():
        model(images, **kwargs)
    return copies


def test_attention_map_reads_keys_in_place():
    """The CLS row's scores come from the fused QKV projection as it is: no strided copy of K per block."""
    torch.manual_seed(0)
    model = VisionTransformer(**TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    assert large_copies(model, images, output_attention_map=True) == large_copies(model, images)


def test_cls_only_gives_the_full_computations_cls_token():
    torch.manual_seed(0)
    model = VisionTransformer(**TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model.forward_tokens(images, True, True, True)
        cls_only = model.forward_tokens(images, True, True, True, cls_only=True)
    assert cls_only.last_hidden_state.shape == (2, 1, TINY["width"])
    assert cls_only.attentions[-1].shape == (2, TINY["heads"], 1, full.last_hidden_state.shape[1])
    torch.testing.assert_close(cls_only.last_hidden_state, full.last_hidden_state[:, :1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cls_only.attentions[-1], full.attentions[-1][:, :, :1], rtol=1e-5, atol=1e-6)
    for a, b in zip(cls_only.cls_attentions, full.cls_attentions, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(cls_only.hidden_states[:-1], full.hidden_states[:-1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = VisionTransformer(**TINY)
    images = torch.randn(2, 3, 32, 32)
    model(images)[0].square().sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.transformer.grad_checkpointing = True
    model(images)[0].square().sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], msg=name)


@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_forward_blocks_gives_forwards_hidden_states(grad_checkpointing):
    torch.manual_seed(0)
    model = VisionTransformer(**TINY)
    model.transformer.grad_checkpointing = grad_checkpointing
    tokens = model.embed_patches(torch.randn(2, 3, 32, 32))
    hidden_states = model.transformer(tokens, output_hidden_states=True).hidden_states
    last, taken = model.transformer.forward_blocks(tokens, take_indices=[0, 2], last=TINY["layers"] - 1)
    assert torch.equal(last, hidden_states[-1])
    assert [torch.equal(a, b) for a, b in zip(taken, (hidden_states[1], hidden_states[3]), strict=True)] == [True, True]
    early, taken = model.transformer.forward_blocks(tokens, take_indices=[1], last=1)
    assert torch.equal(early, hidden_states[2]) and torch.equal(taken[0], hidden_states[2])
    early.square().sum().backward()  # through the checkpointed blocks when set
    assert model.transformer.resblocks[0].mlp.c_fc.weight.grad is not None
    assert model.transformer.resblocks[2].mlp.c_fc.weight.grad is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_weights_and_autocast(dtype):
    torch.manual_seed(0)
    model = VisionTransformer(**TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(images, True, True)
        low = model.to(dtype)(images.to(dtype), True, True)
    assert low[0].dtype == dtype
    assert relative_error(low[0], expected) < 2e-2
    assert relative_error(autocast[0].float(), expected) < 2e-2
    assert low[2].dtype == dtype


geometries = st.tuples(
    st.integers(1, 4),  # grid
    st.integers(1, 5),  # patch
    st.integers(1, 3),  # heads
    st.integers(1, 8),  # head width
    st.integers(1, 3),  # layers
    st.integers(1, 16),  # output_dim
    st.integers(1, 4),  # in_channels
)


@settings(max_examples=25, deadline=None)
@given(geometry=geometries, batch=st.integers(1, 3))
def test_random_geometries_shapes_and_batch_independence(geometry, batch):
    grid, patch, heads, head_width, layers, output_dim, channels = geometry
    torch.manual_seed(0)
    model = VisionTransformer(grid * patch, patch, heads * head_width, layers, heads, output_dim, channels).eval()
    images = torch.randn(batch, channels, grid * patch, grid * patch)
    with torch.no_grad():
        cls_feature, tokens, attention_map = model(images, True, True)
        first = model(images[:1], True, True)
    assert cls_feature.shape == (batch, output_dim)
    assert tokens.shape == (batch, grid * grid, heads * head_width)
    assert attention_map.shape == (layers, batch, heads, grid, grid)
    torch.testing.assert_close(first[0], cls_feature[:1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first[2], attention_map[:, :1], rtol=1e-4, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(geometry=geometries)
def test_random_geometries_bf16_agrees_with_fp32(geometry):
    grid, patch, heads, head_width, layers, output_dim, channels = geometry
    torch.manual_seed(0)
    model = VisionTransformer(grid * patch, patch, heads * head_width * 4, layers, heads, output_dim, channels).eval()
    images = torch.randn(2, channels, grid * patch, grid * patch)
    with torch.no_grad():
        expected = model(images)[0]
        low = model.to(torch.bfloat16)(images.bfloat16())[0].float()
    torch.testing.assert_close(low, expected, rtol=0.1, atol=0.1 * expected.abs().max().item())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_resolution=225), "divisible by patch_size"),
        (dict(heads=5), "divisible by heads"),
        (dict(layers=0), "layers must be a positive int"),
        (dict(width=64.0), "width must be a positive int"),
        (dict(activation="relu"), "activation must be one of"),
        (dict(in_channels=-1), "in_channels must be a positive int"),
    ],
)
def test_bad_geometry_is_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisionTransformer(**{**TINY, **kwargs})


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.randn(3, 32, 32), r"4D image batch .* got a 3D tensor"),
        (torch.randn(1, 1, 32, 32), "expected 3 channels, got 1"),
        (torch.randn(1, 3, 64, 64), "expected images of 32x32, got 64x64"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating-point"),
        ([[1.0]], "torch.Tensor"),
    ],
)
def test_bad_input_raises_clear_value_error(images, message):
    model = VisionTransformer(**TINY)
    with pytest.raises(ValueError, match=message):
        model(images)
