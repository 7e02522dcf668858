"""OpenAI CLIP's vision tower with patch features and CLS->patch attention maps, in plain torch.

The parameter names are those of OpenAI CLIP's ``visual`` module, so an OpenAI ``visual.*`` state dict
loads once the prefix is removed. Tokens are kept batch-first internally (OpenAI's code runs
sequence-first through ``nn.MultiheadAttention``); the outputs are those of OpenAI's ``VisionTransformer``.

``VisionTransformer.forward`` is OpenAI's call; ``VisionTransformer.encode`` is the one way in for everything
else (timm, transformers, embed, export): it returns a ``TowerOutput`` holding what was asked for.

This module knows nothing of timm, transformers or the Hub: adapters build on it. It also travels, as a
flat file, inside saved model folders for ``trust_remote_code`` users, so it imports torch only. No
``from __future__ import annotations``: TorchScript (which timm's test suite runs) reads ``TowerOutput``'s
annotations as types.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .spec import Geometry


class TowerOutput(NamedTuple):
    """What one pass through the tower computed; what was not asked for is ``None``. ``N = gh * gw`` patches.

    A ``NamedTuple`` rather than a dataclass: TorchScript compiles it.

    Attributes:
        last_hidden_state: ``[b, 1 + N, width]``, the last block's tokens, CLS first, before ``ln_post``.
        image_embeds: ``[b, output_dim]``, ``ln_post(CLS) @ proj`` (OpenAI's ``encode_image``); ``[b, width]``,
            ``ln_post(CLS)``, for a tower built without ``proj``.
        grid: ``(gh, gw)``, the patch grid of this pass.
        attention_map: ``[layers, b, heads, gh, gw]``, each layer's CLS-query attention over the patches.
        hidden_states: ``layers + 1`` tensors ``[b, 1 + N, width]``: after ``ln_pre``, then after each block.
        attentions: ``layers`` tensors ``[b, heads, 1 + N, 1 + N]``, the softmax attention probabilities.
    """

    last_hidden_state: torch.Tensor
    image_embeds: torch.Tensor
    grid: tuple[int, int]
    attention_map: torch.Tensor | None = None
    hidden_states: list[torch.Tensor] | None = None
    attentions: list[torch.Tensor] | None = None


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and returned in the input's dtype, as OpenAI's subclass does.

    OpenAI's version upcasts the input only, which fails once the weights themselves are fp16/bf16;
    weight and bias are upcast together with it here when the dtypes differ. When they match, torch's
    kernels already accumulate fp16/bf16 in fp32, so the casts (two extra passes over the tokens) are
    skipped.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)


@torch.fx.wrap  # one graph node for FX tracers: its dtype test is no control flow they can trace through
def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``LayerNorm``'s computation over the last dimension (``weight.shape``)."""
    if x.dtype == weight.dtype:
        return F.layer_norm(x, weight.shape, weight, bias, eps)
    return F.layer_norm(x.float(), weight.shape, weight.float(), bias.float(), eps).to(x.dtype)


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation, ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)  # a literal: TorchScript cannot read float globals


class Mlp(nn.Module):
    """``c_proj(gelu(c_fc(x)))``, OpenAI's ``mlp`` (an ``nn.Sequential`` there; same parameter names).

    Plain ``nn.Linear`` layers: tools that rewrite linears (LoRA/PEFT, quantisers) see exactly what they
    expect, and ``torch.compile`` sees the ``addmm`` -> pointwise -> ``addmm`` pattern it fuses and tunes.
    """

    def __init__(self, geometry: Geometry) -> None:
        super().__init__()
        self.c_fc = nn.Linear(geometry.width, geometry.hidden)
        self.gelu = QuickGELU() if geometry.activation == "quick_gelu" else nn.GELU()
        self.c_proj = nn.Linear(geometry.hidden, geometry.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., width]`` -> ``[..., width]``."""
        return self.c_proj(self.gelu(self.c_fc(x)))


def softmax_in_fp32(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, accumulated in fp32 and returned in the scores' dtype."""
    return scores.softmax(dim=-1, dtype=torch.float32).to(scores.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names, batch-first.

    Runs through ``F.scaled_dot_product_attention``, or explicit matmul-softmax when ``eager`` or when the full
    probabilities are asked for. The CLS query's row of probabilities is computed alone when only it is asked for.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, x: torch.Tensor, cls_attention: bool = False, full_attention: bool = False, eager: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``x [b, n, width]`` -> ``(out [b, n, width], cls_attention [b, heads, n-1] | None,
        attention [b, heads, n, n] | None)``."""
        width = x.shape[-1]
        projected = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = self._split_heads(projected)
        probabilities: torch.Tensor | None = None
        if full_attention or eager:
            probabilities = softmax_in_fp32((q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1))
            out = probabilities @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        cls_row: torch.Tensor | None = None
        if cls_attention:
            if probabilities is not None:
                cls_row = probabilities[:, :, 0, 1:]
            else:
                cls_row = self._cls_probabilities(projected[:, 0, :width], projected[..., width : 2 * width])[:, :, 1:]
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        return out, cls_row, probabilities if full_attention else None

    def _split_heads(self, projected: torch.Tensor) -> list[torch.Tensor]:
        """``[b, n, 3 * width]`` -> q, k, v as strided views ``[b, heads, n, head_dim]`` (no copy; a tuple
        in eager mode, which TorchScript types as a list)."""
        batch, tokens, _ = projected.shape
        views = projected.view(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return views.unbind(0)  # type: ignore[return-value]

    def _cls_probabilities(self, cls_query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """CLS query ``[b, width]`` over ``keys [b, n, width]`` -> probabilities ``[b, heads, n]``.

        ``keys`` is a strided slice of the QKV projection. ``matmul`` over the per-head view
        ``[b, heads, n, head_dim]`` would first copy K into a contiguous buffer (a strided copy as large as
        K, per block); one batched product of a block-diagonal query (row ``i``: head ``i``'s query in head
        ``i``'s columns, zeros elsewhere) with ``keys`` reads K in place and gives every head's scores.
        """
        batch = cls_query.shape[0]
        eye = torch.eye(self.heads, dtype=cls_query.dtype, device=cls_query.device)
        per_head = cls_query.view(batch, 1, self.heads, self.head_dim) * (1.0 / math.sqrt(self.head_dim))
        block_diagonal_query = (eye[:, :, None] * per_head).flatten(2)
        return softmax_in_fp32(block_diagonal_query @ keys.transpose(1, 2))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, geometry: Geometry) -> None:
        super().__init__()
        self.attn = Attention(geometry.width, geometry.heads)
        self.ln_1 = LayerNorm(geometry.width, eps=geometry.layer_norm_eps)
        self.mlp = Mlp(geometry)
        self.ln_2 = LayerNorm(geometry.width, eps=geometry.layer_norm_eps)

    def forward(
        self, x: torch.Tensor, cls_attention: bool = False, full_attention: bool = False, eager: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``x [b, n, width]`` -> ``(x, cls_attention, attention)`` as ``Attention`` gives them."""
        attended, cls_row, probabilities = self.attn(self.ln_1(x), cls_attention, full_attention, eager)
        x = x + attended
        x = x + self.mlp(self.ln_2(x))
        return x, cls_row, probabilities


class Transformer(nn.Module):
    """The residual blocks; ``forward`` is the one loop over them. With ``grad_checkpointing`` set, each block
    runs under torch's non-reentrant checkpoint while gradients are recorded."""

    def __init__(self, geometry: Geometry) -> None:
        super().__init__()
        self.width = geometry.width
        self.layers = geometry.layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(geometry) for _ in range(geometry.layers))

    def forward(
        self,
        x: torch.Tensor,
        cls_attention: bool = False,
        full_attention: bool = False,
        hidden_states: bool = False,
        eager: bool = False,
        depth: int = -1,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Tokens ``[b, n, width]`` through the first ``depth`` blocks (all when negative) -> ``(tokens, hidden
        states (the input first) if asked, each block's CLS attention row if asked, each block's attention
        probabilities if asked)``."""
        states: list[torch.Tensor] = [x] if hidden_states else []
        cls_rows: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        for index, block in enumerate(self.resblocks):
            if depth < 0 or index < depth:  # not `break`: TorchScript unrolls this loop
                if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                    x, cls_row, probabilities = checkpoint(block, x, cls_attention, full_attention, eager, use_reentrant=False)
                else:
                    x, cls_row, probabilities = block(x, cls_attention, full_attention, eager)
                if hidden_states:
                    states.append(x)
                if cls_row is not None:
                    cls_rows.append(cls_row)
                if probabilities is not None:
                    attentions.append(probabilities)
        return x, states, cls_rows, attentions


@torch.fx.wrap  # a leaf for FX tracers: the grid is data there, and the early return is control flow
def resample_positional_embedding(positional_embedding: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Bicubically resample ``[1 + g*g, width]`` (CLS first) to ``[1 + grid_h*grid_w, width]``."""
    cls_pos, patch_pos = positional_embedding[:1], positional_embedding[1:]
    old = int(math.sqrt(patch_pos.shape[0]) + 0.5)  # not math.isqrt: TorchScript has no isqrt
    if old == grid_h and old == grid_w:
        return positional_embedding
    patch_pos = patch_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.to(positional_embedding.dtype).permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)
    return torch.cat([cls_pos, patch_pos])


@torch.fx.wrap  # one graph node for FX tracers, so the check still runs on the real tensors of a traced model
def check_image_batch(x: torch.Tensor, channels: int, resolution: int, patch: int, interpolate_pos_encoding: bool) -> None:
    """Raise ``ValueError`` saying what was expected if ``x`` is not an image batch the tower takes."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor of images [batch, {channels}, H, W], got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"expected a 4D image batch [batch, {channels}, {resolution}, {resolution}], "
            f"got a {x.ndim}D tensor of shape {tuple(x.shape)}; add a batch dimension with x[None] for one image"
        )
    if not x.is_floating_point():
        raise ValueError(f"expected floating-point pixel values, got dtype {x.dtype}; normalise the images first")
    if x.shape[1] != channels:
        raise ValueError(f"expected {channels} channels, got {x.shape[1]} (input shape {tuple(x.shape)})")
    height, width = x.shape[-2:]
    if interpolate_pos_encoding:
        if height < patch or width < patch:
            raise ValueError(f"image size {height}x{width} is smaller than one {patch}px patch")
    elif (height, width) != (resolution, resolution):
        raise ValueError(
            f"expected images of {resolution}x{resolution}, got {height}x{width}; "
            f"resize them, or pass interpolate_pos_encoding=True to resample the positional embedding"
        )


class VisionTransformer(nn.Module):
    """OpenAI CLIP's ``VisionTransformer``, returning patch features and CLS->patch attention maps on request.

    ``geometry`` holds the arguments as a ``Geometry`` (``VisionTransformer(**model.geometry)`` builds a twin).

    Args:
        input_resolution: side of the square input image in pixels.
        patch_size: side of a square patch; must divide ``input_resolution``.
        width: token dimension.
        layers: number of residual attention blocks.
        heads: attention heads; must divide ``width``.
        output_dim: dimension of the projected CLS embedding.
        in_channels: image channels.
        mlp_ratio: MLP hidden size as a multiple of ``width`` (OpenAI: 4).
        activation: ``"quick_gelu"`` (OpenAI) or ``"gelu"`` (open_clip's non-QuickGELU models).
        layer_norm_eps: LayerNorm epsilon (OpenAI: 1e-5).
        projection: build ``proj``; without it (``proj is None``, which OpenAI's code allows) the embedding is the
            ``width``-dim ``ln_post(CLS)``, for an adapter that holds the projection elsewhere (timm's ``head``).
    """

    def __init__(
        self,
        input_resolution: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        in_channels: int = 3,
        *,
        mlp_ratio: float = 4.0,
        activation: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        projection: bool = True,
    ) -> None:
        super().__init__()
        geometry = Geometry(
            input_resolution, patch_size, width, layers, heads, output_dim, in_channels, mlp_ratio, activation, layer_norm_eps
        )
        self.geometry = geometry  # no TorchScript type: scripted code never reads it
        self.input_resolution, self.output_dim = input_resolution, output_dim  # OpenAI's attributes
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(geometry.grid_size**2 + 1, width))
        self.ln_pre = LayerNorm(width, eps=layer_norm_eps)
        self.transformer = Transformer(geometry)
        self.ln_post = LayerNorm(width, eps=layer_norm_eps)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim)) if projection else None

    def encode(
        self,
        x: torch.Tensor,
        attention_map: bool = False,
        hidden_states: bool = False,
        attentions: bool = False,
        interpolate_pos_encoding: bool = False,
        eager: bool = False,
        depth: int = -1,
    ) -> TowerOutput:
        """Run images ``x [b, in_channels, H, W]`` through the tower; see ``TowerOutput`` for what comes back.

        Args:
            attention_map: also return each layer's CLS attention over the patches.
            hidden_states: also return the tokens after ``ln_pre`` and after each block.
            attentions: also return every layer's full attention probabilities (explicit softmax).
            interpolate_pos_encoding: accept other image sizes (multiples of ``patch_size`` are used whole) by
                bicubically resampling the positional embedding; otherwise ``H == W == input_resolution``.
            eager: explicit matmul-softmax attention instead of ``F.scaled_dot_product_attention``.
            depth: run the first ``depth`` blocks only (all when negative).

        Raises:
            ValueError: ``x`` is not a float image batch of the expected channels and size.
        """
        if not torch.jit.is_scripting():  # the messages need Python; a scripted model relies on torch's own checks
            geometry = self.geometry
            check_image_batch(x, geometry.in_channels, geometry.input_resolution, geometry.patch_size, interpolate_pos_encoding)
        patches = self.conv1(x.to(self.conv1.weight.dtype))
        grid = (patches.shape[-2], patches.shape[-1])
        positional_embedding: torch.Tensor = self.positional_embedding
        if interpolate_pos_encoding:
            positional_embedding = resample_positional_embedding(positional_embedding, grid[0], grid[1])
        tokens = patches.flatten(2).transpose(1, 2)
        cls_token = self.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        tokens = self.ln_pre(torch.cat([cls_token, tokens], dim=1) + positional_embedding.to(tokens.dtype))
        tokens, states, cls_rows, probabilities = self.transformer(tokens, attention_map, attentions, hidden_states, eager, depth)
        image_embeds = self.ln_post(tokens[:, 0, :])
        if self.proj is not None:
            image_embeds = image_embeds @ self.proj.to(tokens.dtype)
        return TowerOutput(
            last_hidden_state=tokens,
            image_embeds=image_embeds,
            grid=grid,
            attention_map=torch.stack(cls_rows).unflatten(-1, grid) if attention_map else None,
            hidden_states=states if hidden_states else None,
            attentions=probabilities if attentions else None,
        )

    @torch.jit.unused  # its tuple's length depends on the flags; scripted adapters call `encode`
    def forward(
        self, x: torch.Tensor, output_all_features: bool = False, output_attention_map: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Encode images ``x [b, in_channels, input_resolution, input_resolution]``.

        Returns OpenAI's tuple: ``(cls_feature [b, output_dim],)``, followed by ``patch_tokens [b, grid*grid,
        width]`` (the last block's output, CLS excluded, before ``ln_post``) if ``output_all_features``, followed by
        ``attention_map [layers, b, heads, grid, grid]`` (each layer's CLS-query attention over the patches) if
        ``output_attention_map``. ``encode`` gives more (hidden states, full attentions, other image sizes).
        """
        out = self.encode(x, attention_map=output_attention_map)
        outputs: tuple[torch.Tensor, ...] = (out.image_embeds,)
        if output_all_features:
            outputs += (out.last_hidden_state[:, 1:, :],)
        if out.attention_map is not None:
            outputs += (out.attention_map,)
        return outputs
