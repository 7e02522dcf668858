"""State dicts in and out: one key map per foreign CLIP layout, geometry inference and the checks.

Layouts read (``to_vit_zoo_state_dict`` tells them apart by their keys):

* OpenAI / open_clip full CLIP: ``visual.*`` next to the text tower (open_clip training checkpoints also
  wrap it in ``state_dict`` and prefix ``module.``; ``vit_zoo.readers.load_checkpoint`` removes both).
* A bare image tower with vit_zoo's (= OpenAI's visual) names: ``conv1.weight``, ``transformer.resblocks.N.*``...
* timm's ``vit_zoo_*`` models (``save_for_hf``): ``visual.*`` with the projection as ``head.weight`` (``proj``
  transposed; bare names in saves from before the tower moved under ``visual``).
* transformers CLIP (``CLIPVisionModelWithProjection``, ``CLIPModel``): ``vision_model.*`` + ``visual_projection``.

``to_hf_clip_state_dict`` / ``to_hf_clip_vision_config`` map the other way, for transformers' own CLIP classes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import torch
from transformers import CLIPVisionConfig

from .config import VitZooConfig
from .errors import CheckpointError
from .spec import SHAPE_FIELDS, Geometry, block_indices, check_weights_fit, listed, ranges
from .zoo import ZooEntry

__all__ = [
    "check_entry_geometry",
    "check_state_dict",
    "infer_geometry",
    "refuse_non_finite",
    "to_hf_clip_state_dict",
    "to_hf_clip_vision_config",
    "to_vit_zoo_state_dict",
]

OPENAI_HEAD_WIDTH = 64  # OpenAI's build_model: heads = width // 64

# --- key maps -----------------------------------------------------------------------------------------------

_TEXT_KEYS = ("token_embedding.weight", "text_projection", "ln_final.", "text_model.", "text.")
_RESNET_KEYS = ("layer1.", "attnpool.")
_HF_IGNORED = ("text_model.", "text_projection.", "logit_scale", "vision_model.embeddings.position_ids")
# (HF CLIP name, vit_zoo name); {i} is a block index, {p} weight or bias. The attention's q/k/v and the
# projection are not renames (concatenated, transposed) and are handled apart.
_HF_CLIP_NAMES = (
    ("vision_model.embeddings.class_embedding", "class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight", "conv1.weight"),
    ("vision_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("vision_model.pre_layrnorm.{p}", "ln_pre.{p}"),
    ("vision_model.post_layernorm.{p}", "ln_post.{p}"),
    ("vision_model.encoder.layers.{i}.layer_norm1.{p}", "transformer.resblocks.{i}.ln_1.{p}"),
    ("vision_model.encoder.layers.{i}.self_attn.out_proj.{p}", "transformer.resblocks.{i}.attn.out_proj.{p}"),
    ("vision_model.encoder.layers.{i}.layer_norm2.{p}", "transformer.resblocks.{i}.ln_2.{p}"),
    ("vision_model.encoder.layers.{i}.mlp.fc1.{p}", "transformer.resblocks.{i}.mlp.c_fc.{p}"),
    ("vision_model.encoder.layers.{i}.mlp.fc2.{p}", "transformer.resblocks.{i}.mlp.c_proj.{p}"),
)
_HF_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_IN_PROJ = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
_HF_PROJECTION = "visual_projection.weight"


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)") + "$")


_HF_TO_VIT_ZOO = [(_pattern(hf), vz) for hf, vz in _HF_CLIP_NAMES]
_VIT_ZOO_TO_HF = [(_pattern(vz), hf) for hf, vz in _HF_CLIP_NAMES]


def _rename(key: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in table:
        match = pattern.match(key)
        if match:
            return template.format(**match.groupdict())
    return None


def to_vit_zoo_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower of a CLIP state dict under vit_zoo's names (OpenAI's ``visual`` names, no prefix).

    Accepts OpenAI/open_clip full CLIP (``visual.*``), a bare image tower, timm's saves of vit_zoo models (the
    projection ``head.weight`` transposed into ``proj``) and transformers CLIP (``vision_model.*`` +
    ``visual_projection.weight``, transposed into ``proj [width, output_dim]``).
    Text-tower tensors are dropped, never copied. Shapes are checked later (``check_state_dict``).

    Raises:
        CheckpointError: a ResNet CLIP, a text-only checkpoint, or keys of no known CLIP layout.
    """
    keys = list(state_dict)
    if any(key.startswith("vision_model.") for key in keys):
        return _from_hf_clip(state_dict)
    if any(key.startswith("visual.") for key in keys):
        tower = {key.removeprefix("visual."): value for key, value in state_dict.items() if key.startswith("visual.")}
    elif "conv1.weight" in state_dict or any(key.startswith(_RESNET_KEYS) for key in keys):
        tower = dict(state_dict)
    elif any(key.startswith(_TEXT_KEYS) for key in keys):
        raise CheckpointError(
            "text-only checkpoint: it holds a CLIP text tower (token_embedding, ...) but no image tower "
            "(visual.* or vision_model.*); convert the full CLIP checkpoint instead"
        )
    else:
        raise CheckpointError(
            f"not a CLIP checkpoint: keys like {keys[:3]} match no known layout; expected OpenAI/open_clip "
            "visual.*, transformers CLIP vision_model.* or vit_zoo's conv1.weight, transformer.resblocks.N.*"
        )
    if any(key.startswith(_RESNET_KEYS) for key in tower):
        raise CheckpointError(
            "ResNet CLIP checkpoint (layer1.*, attnpool.*): vit_zoo holds OpenAI's ViT image towers only "
            "(ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14@336px)"
        )
    head = {key: tower.pop(key) for key in [key for key in tower if key.startswith("head.")]}
    head.update({key: value for key, value in state_dict.items() if key.startswith("head.")})
    if head and "proj" not in tower:
        if set(head) != {"head.weight"}:
            raise CheckpointError(
                f"a timm checkpoint whose head is a classifier ({', '.join(sorted(head))}), not OpenAI's projection: "
                "the tower has no proj; save the model with num_classes=output_dim, or load it with timm"
            )
        tower["proj"] = head["head.weight"].t()
    return tower


def _from_hf_clip(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if _HF_PROJECTION not in state_dict:
        raise CheckpointError(
            "transformers CLIP checkpoint without visual_projection.weight (a CLIPVisionModel?): vit_zoo needs "
            "the projection; use the CLIPVisionModelWithProjection or CLIPModel checkpoint"
        )
    tower = {"proj": state_dict[_HF_PROJECTION].t()}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key == _HF_PROJECTION or key.startswith(_HF_IGNORED):
            continue
        name, split = _rename(key, _HF_TO_VIT_ZOO), _HF_QKV.match(key)
        if name is not None:
            tower[name] = value
        elif split is not None:
            block, part, kind = split.groups()
            qkv.setdefault((block, kind), {})[part] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"transformers CLIP checkpoint with unknown vision keys {unknown[:3]}")
    for (block, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise CheckpointError(f"layer {block} of the transformers CLIP checkpoint lacks self_attn.{missing}_proj.{kind}")
        tower[f"transformer.resblocks.{block}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return tower


def to_hf_clip_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A vit_zoo state dict under transformers ``CLIPVisionModelWithProjection``'s names (the reverse map).

    ``attn.in_proj_*`` is split into ``self_attn.{q,k,v}_proj``; ``proj [width, output_dim]`` becomes
    ``visual_projection.weight [output_dim, width]``. ``to_vit_zoo_state_dict`` of the result gives the
    input back bit for bit.
    """
    hf = {}
    for key, value in state_dict.items():
        name, fused = _rename(key, _VIT_ZOO_TO_HF), _IN_PROJ.match(key)
        if key == "proj":
            hf[_HF_PROJECTION] = value.t().contiguous()
        elif name is not None:
            hf[name] = value
        elif fused is not None:
            block, kind = fused.groups()
            for part, tensor in zip("qkv", value.chunk(3), strict=True):
                hf[f"vision_model.encoder.layers.{block}.self_attn.{part}_proj.{kind}"] = tensor.contiguous()
        else:
            raise CheckpointError(f"{key} is not a vit_zoo parameter name")
    return hf


def to_hf_clip_vision_config(config: VitZooConfig) -> CLIPVisionConfig:
    """The transformers ``CLIPVisionConfig`` of the same model (for ``to_hf_clip_state_dict``'s weights)."""
    return CLIPVisionConfig(
        hidden_size=config.width,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_channels=config.in_channels,
        image_size=config.input_resolution,
        patch_size=config.patch_size,
        projection_dim=config.output_dim,
        hidden_act=config.activation,
        layer_norm_eps=config.layer_norm_eps,
    )


# --- geometry and checks ------------------------------------------------------------------------------------


def infer_geometry(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """The geometry of a vit_zoo state dict, as OpenAI's ``build_model`` infers it from shapes.

    Returns ``input_resolution, patch_size, width, layers, heads, output_dim, in_channels, mlp_ratio``;
    ``heads = width // 64`` (OpenAI's rule: heads cannot be seen in the weights).

    Raises:
        CheckpointError: a tensor that defines the geometry is missing or malformed, or blocks are missing.
    """
    missing = [key for key in ("conv1.weight", "positional_embedding", "proj") if key not in state_dict]
    if missing:
        raise CheckpointError(f"not a ViT image tower in OpenAI's layout: {', '.join(missing)} missing")
    conv, positions, proj = state_dict["conv1.weight"], state_dict["positional_embedding"], state_dict["proj"]
    if conv.ndim != 4 or conv.shape[-1] != conv.shape[-2] or positions.ndim != 2 or proj.ndim != 2:
        raise CheckpointError(
            f"conv1.weight {list(conv.shape)}, positional_embedding {list(positions.shape)} and proj "
            f"{list(proj.shape)} do not have the shapes of a ViT ([width, channels, patch, patch], [tokens, width], "
            "[width, output_dim])"
        )
    empty = [
        name
        for name, tensor in (("conv1.weight", conv), ("positional_embedding", positions), ("proj", proj))
        if not tensor.numel()
    ]
    if empty:
        raise CheckpointError(f"{', '.join(empty)} empty (a zero-size dimension); the checkpoint is damaged")
    width, in_channels, patch_size = conv.shape[0], conv.shape[1], conv.shape[-1]
    grid = math.isqrt(max(positions.shape[0] - 1, 0))
    if grid == 0 or grid * grid + 1 != positions.shape[0]:
        raise CheckpointError(f"positional_embedding has {positions.shape[0]} rows; a ViT needs 1 + grid * grid")
    if width % OPENAI_HEAD_WIDTH:
        raise CheckpointError(
            f"width {width} is not a multiple of 64, so heads cannot be inferred (OpenAI: heads = width // 64); "
            "give the zoo variant name (--name) of this geometry"
        )
    return dict(
        input_resolution=patch_size * grid,
        patch_size=patch_size,
        width=width,
        layers=_count_layers(state_dict),
        heads=width // OPENAI_HEAD_WIDTH,
        output_dim=proj.shape[1],
        in_channels=in_channels,
        mlp_ratio=_mlp_ratio(state_dict, width),
    )


def _count_layers(state_dict: Mapping[str, torch.Tensor]) -> int:
    blocks = sorted(block_indices(state_dict))
    if not blocks:
        raise CheckpointError("no transformer blocks (transformer.resblocks.N.*) in the image tower")
    missing = sorted(set(range(blocks[-1] + 1)) - set(blocks))
    if missing:
        raise CheckpointError(
            f"transformer block(s) {ranges(missing)} missing: the checkpoint has blocks {ranges(blocks)}, "
            "a complete one numbers them 0..N-1"
        )
    return len(blocks)


def _mlp_ratio(state_dict: Mapping[str, torch.Tensor], width: int) -> float:
    hidden_weight = state_dict.get("transformer.resblocks.0.mlp.c_fc.weight")
    if hidden_weight is None or hidden_weight.ndim != 2:
        return Geometry.mlp_ratio  # check_state_dict reports the missing/malformed tensor
    hidden = hidden_weight.shape[0]
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise CheckpointError(f"MLP width {hidden} is not expressible as width {width} * mlp_ratio")
    return ratio


def check_state_dict(state_dict: Mapping[str, torch.Tensor], geometry: Mapping, source: str = "the image tower") -> None:
    """Raise ``CheckpointError`` unless ``state_dict`` has exactly the tensors and shapes of a
    ``VisionTransformer(**geometry)`` (``spec.check_weights_fit``), all of them floating point."""
    check_weights_fit(Geometry(**geometry), {name: tensor.shape for name, tensor in state_dict.items()}, source)
    not_float = [f"{name} ({tensor.dtype})" for name, tensor in state_dict.items() if not tensor.is_floating_point()]
    if not_float:
        raise CheckpointError(f"{source}: not floating point: {listed(not_float)}; a vision tower's weights are floats")


def refuse_non_finite(named_tensors: Iterable[tuple[str, torch.Tensor]], why: str) -> None:
    """Raise ``CheckpointError`` naming the tensors that hold NaN or Inf (a NaN weight makes every embedding NaN).
    ``named_tensors`` may read each tensor as it is reached: one is held at a time."""
    non_finite = [name for name, tensor in named_tensors if not torch.isfinite(tensor).all()]
    if non_finite:
        raise CheckpointError(f"NaN or Inf values in {listed(non_finite)}: {why}")


def check_entry_geometry(geometry: Mapping, entry: ZooEntry) -> None:
    """Raise ``CheckpointError`` naming each field where the inferred ``geometry`` is not ``entry``'s."""
    expected = entry.geometry
    differences = [
        f"{field} is {geometry[field]} in the checkpoint but {expected[field]} in the zoo"
        for field in SHAPE_FIELDS
        if geometry[field] != expected[field]
    ]
    if differences:
        raise CheckpointError(f"the checkpoint is not a {entry.name}: " + "; ".join(differences))
