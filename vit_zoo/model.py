"""OpenAI CLIP's vision tower with patch features and CLS->patch attention maps, in plain torch.

The parameter names are those of OpenAI CLIP's ``visual`` module, so an OpenAI ``visual.*`` state dict
loads once the prefix is removed. Tokens are kept batch-first internally (OpenAI's code runs
sequence-first through ``nn.MultiheadAttention``); the outputs are those of OpenAI's ``VisionTransformer``.

This module knows nothing of timm, transformers or the Hub: adapters build on it. It also travels, as a
flat file, inside saved model folders for ``trust_remote_code`` users, so it imports torch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .spec import Geometry

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


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
    expect, and ``torch.compile`` sees the ``addmm`` -> pointwise -> ``addmm`` pattern it fuses and tunes
    (bias in the GEMM, the activation in one kernel, or in the GEMM's epilogue with ``max-autotune``).
    """

    def __init__(self, width: int, hidden: int, activation: str = "quick_gelu") -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU() if activation == "quick_gelu" else nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., width]`` -> ``[..., width]``."""
        return self.c_proj(self.gelu(self.c_fc(x)))


def softmax_in_fp32(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, accumulated in fp32 and returned in the scores' dtype."""
    return scores.softmax(dim=-1, dtype=torch.float32).to(scores.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names, batch-first.

    Runs through ``F.scaled_dot_product_attention`` (``implementation="sdpa"``) or explicit
    matmul-softmax (``"eager"``). Attention probabilities are computed only when asked: the CLS query
    row alone for attention maps, the full matrix only when ``output_full_attention`` is set. With
    ``cls_only`` only the CLS token attends (keys and values still come from every token).
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.implementation = "sdpa"
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        x: torch.Tensor,
        output_cls_attention: bool = False,
        output_full_attention: bool = False,
        cls_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``x [b, n, width]`` -> ``(out [b, q, width], cls_attention [b, heads, n-1] | None,
        attention [b, heads, q, n] | None)``, ``q = 1`` with ``cls_only``, else ``n``."""
        width = x.shape[-1]
        if cls_only:
            queries = F.linear(x[:, :1], self.in_proj_weight[:width], self.in_proj_bias[:width])
            keys_values = F.linear(x, self.in_proj_weight[width:], self.in_proj_bias[width:])
            q = self._split_heads(queries)[0]  # indexed, not unpacked: TorchScript types it as a list
            k, v = self._split_heads(keys_values)
            cls_query, keys = queries[:, 0], keys_values[..., :width]
        else:
            projected = F.linear(x, self.in_proj_weight, self.in_proj_bias)
            q, k, v = self._split_heads(projected)
            cls_query, keys = projected[:, 0, :width], projected[..., width : 2 * width]
        full_attention: torch.Tensor | None = None
        cls_attention: torch.Tensor | None = None
        if output_full_attention or self.implementation == "eager":
            probs = self._probabilities(q, k)
            out = probs @ v
            full_attention = probs if output_full_attention else None
            if output_cls_attention:
                cls_attention = probs[:, :, 0, 1:]
        else:
            out = F.scaled_dot_product_attention(q, k, v)
            if output_cls_attention:
                cls_attention = self._cls_probabilities(cls_query, keys)[:, :, 1:]
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        return out, cls_attention, full_attention

    def _split_heads(self, projected: torch.Tensor) -> list[torch.Tensor]:
        """``[b, n, parts * width]`` -> ``parts`` strided views ``[b, heads, n, head_dim]`` (no copy; a tuple
        in eager mode, which TorchScript types as a list)."""
        batch, tokens, features = projected.shape
        parts = features // (self.heads * self.head_dim)  # not -1: an empty batch leaves it ambiguous
        views = projected.view(batch, tokens, parts, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # a tuple in eager mode, a list to TorchScript
        return views.unbind(0)  # type: ignore[return-value]

    def _probabilities(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        scores = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
        return softmax_in_fp32(scores)

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
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``.

    With ``cls_only`` the block computes the CLS token's output alone (``[b, 1, width]``), attending over
    every token: all a projected embedding needs from the last block.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, activation: str = "quick_gelu", eps: float = 1e-5) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, hidden, activation)
        self.ln_2 = LayerNorm(width, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        output_cls_attention: bool = False,
        output_full_attention: bool = False,
        cls_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        attended, cls_attention, full_attention = self.attn(self.ln_1(x), output_cls_attention, output_full_attention, cls_only)
        x = (x[:, :1] if cls_only else x) + attended
        x = x + self.mlp(self.ln_2(x))
        return x, cls_attention, full_attention


class Transformer(nn.Module):
    """A stack of ``layers`` residual attention blocks (``resblocks.N``), with optional checkpointing.

    With ``grad_checkpointing`` set, each block runs through torch's non-reentrant checkpoint.

    ``cls_only`` makes the last block compute the CLS token alone: ``last_hidden_state``
    (and the last of ``hidden_states``) is then ``[b, 1, width]`` and the last of ``attentions``
    ``[b, heads, 1, n]``; the CLS values are those of the full computation.
    """

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        activation: str = "quick_gelu",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_ratio, activation, eps) for _ in range(layers))

    @torch.jit.unused  # TorchScript runs forward_blocks
    def forward(
        self,
        x: torch.Tensor,
        output_cls_attention: bool = False,
        output_full_attention: bool = False,
        output_hidden_states: bool = False,
        cls_only: bool = False,
    ) -> TransformerOutput:
        hidden_states = [x] if output_hidden_states else None
        cls_attentions: list[torch.Tensor] | None = [] if output_cls_attention else None
        full_attentions: list[torch.Tensor] | None = [] if output_full_attention else None
        last = len(self.resblocks) - 1
        for index, block in enumerate(self.resblocks):
            x, cls_attention, full_attention = self.run_block(
                # ModuleList items are typed Module
                block,  # type: ignore[arg-type]
                x,
                output_cls_attention,
                output_full_attention,
                cls_only and index == last,
            )
            if hidden_states is not None:
                hidden_states.append(x)
            if cls_attentions is not None:
                assert cls_attention is not None  # the block returns what it was asked for
                cls_attentions.append(cls_attention)
            if full_attentions is not None:
                assert full_attention is not None
                full_attentions.append(full_attention)
        return TransformerOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            cls_attentions=tuple(cls_attentions) if cls_attentions is not None else None,
            attentions=tuple(full_attentions) if full_attentions is not None else None,
        )

    def forward_blocks(self, x: torch.Tensor, take_indices: list[int], last: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens ``[b, n, width]`` through blocks ``0..last`` (checkpointed when set): the last output, and the
        outputs of the blocks in ``take_indices``. Tokens only, and scriptable, unlike ``forward``."""
        taken: list[torch.Tensor] = []
        for index, block in enumerate(self.resblocks):
            if index <= last:  # not `break`, and no run_block(block): TorchScript unrolls this loop
                if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                    x = checkpoint(block, x, use_reentrant=False)[0]
                else:
                    x = block(x)[0]
                if index in take_indices:
                    taken.append(x)
        return x, taken

    def run_block(
        self,
        block: ResidualAttentionBlock,
        x: torch.Tensor,
        output_cls_attention: bool = False,
        output_full_attention: bool = False,
        cls_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One block's ``(tokens, cls_attention, attention)``, under torch's non-reentrant checkpoint when
        checkpointing."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, output_cls_attention, output_full_attention, cls_only, use_reentrant=False)
        return block(x, output_cls_attention, output_full_attention, cls_only)


@dataclass
class TransformerOutput:
    """What the tower computes before ``ln_post`` and ``proj``.

    Attributes:
        last_hidden_state: ``[b, 1 + grid*grid, width]``, CLS token first.
        hidden_states: ``layers + 1`` tensors ``[b, 1 + grid*grid, width]`` (after ``ln_pre``, then
            each block), when asked.
        cls_attentions: ``layers`` tensors ``[b, heads, grid*grid]``, the CLS query's attention
            over the patches, when asked.
        attentions: ``layers`` tensors ``[b, heads, 1 + grid*grid, 1 + grid*grid]``, when asked.
    """

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    cls_attentions: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


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
def check_image_batch(
    x: torch.Tensor, in_channels: int, input_resolution: int, patch_size: int, interpolate_pos_encoding: bool = False
) -> None:
    """Raise ``ValueError`` saying what was expected if ``x`` is not an image batch the tower takes."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor of images [batch, {in_channels}, H, W], got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"expected a 4D image batch [batch, {in_channels}, {input_resolution}, {input_resolution}], "
            f"got a {x.ndim}D tensor of shape {tuple(x.shape)}; add a batch dimension with x[None] for one image"
        )
    if not x.is_floating_point():
        raise ValueError(f"expected floating-point pixel values, got dtype {x.dtype}; normalise the images first")
    if x.shape[1] != in_channels:
        raise ValueError(f"expected {in_channels} channels, got {x.shape[1]} (input shape {tuple(x.shape)})")
    height, width = x.shape[-2:]
    if interpolate_pos_encoding:
        if height < patch_size or width < patch_size:
            raise ValueError(f"image size {height}x{width} is smaller than one {patch_size}px patch")
    elif (height, width) != (input_resolution, input_resolution):
        raise ValueError(
            f"expected images of {input_resolution}x{input_resolution}, got {height}x{width}; "
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
    """

    # read from `geometry`, which is no TorchScript type; scripted code does not need them
    __jit_unused_properties__ = ["input_resolution", "patch_size", "in_channels", "output_dim", "grid_size"]

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
    ) -> None:
        super().__init__()
        self.geometry = Geometry(
            input_resolution,
            patch_size,
            width,
            layers,
            heads,
            output_dim,
            in_channels,
            mlp_ratio,
            activation,
            layer_norm_eps,
        )
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size, bias=False)

        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width, eps=layer_norm_eps)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, activation, layer_norm_eps)
        self.ln_post = LayerNorm(width, eps=layer_norm_eps)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    @property
    def input_resolution(self) -> int:
        return self.geometry.input_resolution

    @property
    def patch_size(self) -> int:
        return self.geometry.patch_size

    @property
    def in_channels(self) -> int:
        return self.geometry.in_channels

    @property
    def output_dim(self) -> int:
        return self.geometry.output_dim

    @property
    def grid_size(self) -> int:
        return self.geometry.grid_size

    def set_attention_implementation(self, implementation: str) -> None:
        """Pick ``"sdpa"`` (default, fused kernels) or ``"eager"`` (explicit softmax) for every block."""
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {implementation!r}")
        for block in self.transformer.resblocks:
            block.attn.implementation = implementation

    def embed_patches(self, x: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Images ``[b, c, H, W]`` -> tokens after ``ln_pre`` ``[b, 1 + grid_h*grid_w, width]``."""
        if not torch.jit.is_scripting():  # the messages need Python; a scripted model relies on torch's own checks
            check_image_batch(x, self.in_channels, self.input_resolution, self.patch_size, interpolate_pos_encoding)
        x = self.conv1(x.to(self.conv1.weight.dtype))
        positional_embedding: torch.Tensor = self.positional_embedding
        if interpolate_pos_encoding:
            positional_embedding = resample_positional_embedding(positional_embedding, x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls_token = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_token, x], dim=1) + positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def forward_tokens(
        self,
        x: torch.Tensor,
        output_cls_attention: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        interpolate_pos_encoding: bool = False,
        cls_only: bool = False,
    ) -> TransformerOutput:
        """Run the tower up to (not including) ``ln_post``; see ``TransformerOutput`` for shapes.

        ``cls_only`` skips the last block's patch outputs (see ``Transformer``): enough for
        ``project``, and cheaper by most of a block.
        """
        tokens = self.embed_patches(x, interpolate_pos_encoding)
        return self.transformer(tokens, output_cls_attention, output_attentions, output_hidden_states, cls_only)

    def project(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """CLS token of ``[b, n, width]`` -> ``ln_post`` -> ``proj`` -> ``[b, output_dim]``."""
        return self.ln_post(last_hidden_state[:, 0, :]) @ self.proj.to(last_hidden_state.dtype)

    def forward(
        self,
        x: torch.Tensor,
        output_all_features: bool = False,
        output_attention_map: bool = False,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        interpolate_pos_encoding: bool = False,
        return_tokens: bool = False,
    ) -> tuple[torch.Tensor, ...] | tuple[torch.Tensor, TransformerOutput]:
        """Encode images ``x [b, in_channels, input_resolution, input_resolution]``.

        Returns OpenAI's tuple: ``(cls_feature [b, output_dim],)``, followed by
        ``patch_tokens [b, grid*grid, width]`` (last block's output, CLS excluded) if
        ``output_all_features``, followed by ``attention_map [layers, b, heads, grid, grid]`` (each
        layer's CLS-query attention over the patches) if ``output_attention_map``.

        The keyword-only options serve adapters that need every token: with ``return_tokens`` the result is
        ``(cls_feature, TransformerOutput)`` (``cls_attentions`` when ``output_attention_map``; ``hidden_states`` /
        ``attentions`` when asked; other image sizes with ``interpolate_pos_encoding``). Running the tower through
        ``forward`` lets module hooks on it fire (accelerate's offloading loads its own tensors in one).
        """
        out = self.forward_tokens(
            x,
            output_cls_attention=output_attention_map,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
        )
        cls_feature = self.project(out.last_hidden_state)
        if return_tokens:
            return cls_feature, out
        outputs: tuple[torch.Tensor, ...] = (cls_feature,)
        if output_all_features:
            outputs += (out.last_hidden_state[:, 1:, :],)
        if output_attention_map:
            assert out.cls_attentions is not None  # asked for above
            grid = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
            outputs += (stack_attention_map(out.cls_attentions, grid),)
        return outputs


def stack_attention_map(cls_attentions: tuple[torch.Tensor, ...], grid: tuple[int, int]) -> torch.Tensor:
    """``layers`` tensors ``[b, heads, gh*gw]`` -> ``[layers, b, heads, gh, gw]``, as ``forward`` returns it."""
    return torch.stack(cls_attentions).unflatten(-1, grid)
