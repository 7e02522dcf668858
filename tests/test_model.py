"""``vit_zoo.model``: the core VisionTransformer. The seed's outputs, OpenAI parity, the one block loop, properties
and bad input (geometry; images: ``hostile.BAD_IMAGES``, which the timm and transformers models refuse alike)."""

import pytest
import torch
from helpers import sdpa_calls
from hostile import BAD_IMAGES
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
    with torch.no_grad():
        for asked in (dict(attention_map=True, hidden_states=True), dict(attention_map=True), {}):
            sdpa, eager = model.encode(images, **asked), model.encode(images, eager=True, **asked)
            for field in ("image_embeds", "last_hidden_state", "attention_map"):
                if getattr(sdpa, field) is not None:
                    torch.testing.assert_close(getattr(eager, field), getattr(sdpa, field), rtol=1e-5, atol=1e-6)


def test_attention_runs_fused_unless_eager_or_the_full_probabilities_are_asked_for():
    model = VisionTransformer(**TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    assert sdpa_calls(lambda: model(images, True, True)) == TINY["layers"]  # the CLS row comes apart
    assert sdpa_calls(lambda: model.encode(images, eager=True)) == 0
    assert sdpa_calls(lambda: model.encode(images, attentions=True)) == 0


def test_encode_returns_what_was_asked_for_and_forward_is_built_from_it():
    torch.manual_seed(0)
    model = VisionTransformer(**TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    grid, tokens = (4, 4), 1 + 16
    with torch.no_grad():
        plain = model.encode(images)
        mapped = model.encode(images, attention_map=True)
        full = model.encode(images, attention_map=True, hidden_states=True, attentions=True)  # explicit softmax
        embedding, patch_tokens, attention_map = model(images, True, True)
    assert plain.grid == grid and plain.attention_map is plain.hidden_states is plain.attentions is None
    assert full.last_hidden_state.shape == (2, tokens, TINY["width"]) and full.image_embeds.shape == (2, TINY["output_dim"])
    assert full.attention_map.shape == (TINY["layers"], 2, TINY["heads"], *grid)
    assert len(full.hidden_states) == TINY["layers"] + 1 and full.hidden_states[-1] is full.last_hidden_state
    assert [a.shape for a in full.attentions] == [(2, TINY["heads"], tokens, tokens)] * TINY["layers"]
    for layer, probabilities in enumerate(full.attentions):  # the map is each full matrix's CLS row over the patches
        torch.testing.assert_close(full.attention_map[layer].flatten(-2), probabilities[:, :, 0, 1:], rtol=1e-5, atol=1e-7)
    assert torch.equal(embedding, plain.image_embeds) and torch.equal(patch_tokens, mapped.last_hidden_state[:, 1:])
    assert torch.equal(attention_map, mapped.attention_map)


def test_a_tower_without_projection_gives_the_normed_cls_token():
    torch.manual_seed(0)
    model = VisionTransformer(**TINY).eval()
    bare = VisionTransformer(**TINY, projection=False).eval()
    bare.load_state_dict({k: v for k, v in model.state_dict().items() if k != "proj"})
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = bare.encode(images)
        assert bare.proj is None and "proj" not in bare.state_dict()
        assert torch.equal(out.image_embeds, bare.ln_post(out.last_hidden_state[:, 0]))
        torch.testing.assert_close(out.image_embeds @ model.proj, model(images)[0], rtol=1e-6, atol=1e-7)


def test_attention_map_does_not_change_embedding():
    torch.manual_seed(0)
    model = VisionTransformer(**TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(images)[0]
        torch.testing.assert_close(plain, model(images, output_attention_map=True)[0], rtol=0, atol=0)
        torch.testing.assert_close(plain, model(images, True, True)[0], rtol=0, atol=0)


def large_copies(model: VisionTransformer, images: torch.Tensor, **kwargs) -> list[tuple[str, int]]:
    """The copying ops (clone, copy_, contiguous) a forward runs on tensors of at least ``[b, n, width]``."""
    tokens = images.shape[0] * (1 + model.geometry.grid_size**2) * model.geometry.width
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
def test_depth_stops_the_one_block_loop_early(grad_checkpointing):
    torch.manual_seed(0)
    model = VisionTransformer(**TINY)
    model.transformer.grad_checkpointing = grad_checkpointing
    images = torch.randn(2, 3, 32, 32)
    full = model.encode(images, hidden_states=True, attention_map=True)
    early = model.encode(images, hidden_states=True, attention_map=True, depth=2)
    assert len(early.hidden_states) == 3 and early.attention_map.shape[0] == 2
    assert all(torch.equal(a, b) for a, b in zip(early.hidden_states, full.hidden_states[:3], strict=True))
    assert torch.equal(early.last_hidden_state, full.hidden_states[2])
    early.last_hidden_state.square().sum().backward()  # through the checkpointed blocks when set
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


@pytest.mark.parametrize("images, message", list(BAD_IMAGES.values()), ids=list(BAD_IMAGES))
def test_bad_input_raises_clear_value_error(images, message):
    model = VisionTransformer(**TINY)
    for method in (model, model.encode):
        with pytest.raises(ValueError) as error:
            method(images)
        assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
