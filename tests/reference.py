"""OpenAI-format reference models for tests: open_clip's QuickGELU CLIP keeps OpenAI's key names.

``reference_clip`` builds a whole CLIP (vision + a small text tower, as OpenAI's archives hold) with
random weights; ``reference_attention_maps`` computes each layer's CLS->patch attention the way the seed
does, through ``nn.MultiheadAttention(need_weights=True, average_attn_weights=False)``.
"""

from __future__ import annotations

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

# Full widths of OpenAI's ViTs with reduced depth, to keep tests fast.
OPENAI_GEOMETRIES = {
    "ViT-B/32": dict(input_resolution=224, patch_size=32, width=768, layers=2, heads=12, output_dim=512),
    "ViT-B/16": dict(input_resolution=224, patch_size=16, width=768, layers=2, heads=12, output_dim=512),
    "ViT-L/14@336px": dict(input_resolution=336, patch_size=14, width=1024, layers=2, heads=16, output_dim=768),
}
TINY = dict(input_resolution=32, patch_size=8, width=64, layers=3, heads=4, output_dim=32)


def reference_clip(
    input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int, seed: int = 0
) -> CLIP:
    """An open_clip QuickGELU CLIP of this vision geometry, every parameter random (LayerNorms too)."""
    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=output_dim,
        vision_cfg=CLIPVisionCfg(
            layers=layers, width=width, head_width=width // heads, patch_size=patch_size, image_size=input_resolution
        ),
        text_cfg=CLIPTextCfg(context_length=8, vocab_size=64, width=64, heads=1, layers=1),
        quick_gelu=True,
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
                param.copy_(1 + 0.1 * torch.randn_like(param))
            elif param.ndim == 1 and name != "visual.class_embedding":
                param.copy_(0.02 * torch.randn_like(param))
    return model.eval()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``‖actual − expected‖ / ‖expected‖`` in float64: the agreement measure of the tests and benchmarks."""
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def visual_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    """The vision tower's tensors with the ``visual.`` prefix removed."""
    return {k.removeprefix("visual."): v for k, v in model.state_dict().items() if k.startswith("visual.")}


@torch.no_grad()
def reference_attention_maps(model: CLIP, images: torch.Tensor) -> torch.Tensor:
    """``[layers, b, heads, grid, grid]``: each layer's CLS-query attention over patches, via nn.MHA weights."""
    visual = model.visual
    x = visual.conv1(images)
    grid = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    maps = []
    for block in visual.transformer.resblocks:
        y = block.ln_1(x)
        out, weights = block.attn(y, y, y, need_weights=True, average_attn_weights=False)
        maps.append(weights[..., 0, 1:].unflatten(-1, grid))
        x = x + out
        x = x + block.mlp(block.ln_2(x))
    return torch.stack(maps)
