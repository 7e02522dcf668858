"""timm integration: every zoo variant becomes a timm model entry, the way timm's own model files register.

The module is named as timm names its ViT family file (``timm/models/vision_transformer.py``): timm files
each entry under the last part of its registering module's name, and timm's own test suite selects the
ViT-family feature tests (``forward_intermediates``, ``features_only``) by that name.

Importing this module (``import vit_zoo`` does) subscribes to the zoo with ``zoo.on_register``; each
variant, built-in or registered later, gets

- a ``default_cfgs`` entry per pretrained tag (``vit_zoo_base_patch32_clip_224.openai``) with OpenAI's
  preprocessing, the weight source and ``num_classes = output_dim``;
- a named entrypoint function registered with ``timm.models.register_model``, so ``timm.list_models``,
  ``timm.create_model`` (plain, ``hf-hub:`` and ``local-dir:`` names) and ``pretrained=True`` work as
  for timm's own models.

The model is ``TimmVisionTransformer``: the core ``VisionTransformer`` under ``visual`` (as in transformers'
classes) with the head semantics of timm's own CLIP entries (``vit_base_patch16_clip_224.openai``): OpenAI's
projection IS the ``head``, so ``model(x)`` returns OpenAI's ``encode_image`` embedding. ``pretrained_filter_fn``
turns ``proj`` into ``head.weight`` and ``openai_state_dict`` turns it back, so saved folders keep OpenAI's ``proj``.
OpenAI's weights are fetched by ``vit_zoo.download`` (one cache, SHA-256 checked).
"""

import contextlib
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models import (
    build_model_with_cfg,
    filter_pretrained_cfg,
    generate_default_cfgs,
    is_model,
    load_pretrained,
    register_model,
    resolve_pretrained_cfg,
)
from timm.models._features import feature_take_indices
from torch import nn

from .download import download_url, sha256_in_url
from .errors import CheckpointError, ZooConfigError, first_line
from .model import VisionTransformer
from .modeling import weight_shapes
from .readers import load_checkpoint
from .spec import GEOMETRY_FIELDS, SHAPE_FIELDS, Geometry, check_weights_fit
from .state_dicts import infer_geometry, to_vit_zoo_state_dict
from .zoo import ZooEntry, get_entry, list_entries, on_register

__all__ = ["TimmVisionTransformer", "openai_state_dict", "pretrained_cfgs", "pretrained_filter_fn", "timm_config_dict"]

# The Geometry fields timm names its own way; the others keep their names as timm keywords.
_TIMM_NAMES = {"input_resolution": "img_size", "in_channels": "in_chans"}
GEOMETRY_KWARGS = tuple(_TIMM_NAMES.get(name, name) for name in GEOMETRY_FIELDS)
MODEL_KWARGS = ("num_classes", "dynamic_img_size", "drop_rate", "device", "dtype")
# consumed by timm's build_model_with_cfg / create_model on the way to the model
BUILDER_KWARGS = (
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "pretrained_strict",
    "pretrained_model_args",
    "cache_dir",
    "features_only",
    "out_indices",
    "feature_cls",
)
OPENAI_CLIP_REPO = "https://github.com/openai/CLIP"

default_cfgs: dict[str, Any] = {}  # timm's register_model reads the entries' DefaultCfg from here
_registered: dict[str, ZooEntry] = {}


def _square_size(img_size: int | Sequence[int]) -> int:
    """timm's ``img_size`` (an int or ``(height, width)``) as the one side vit_zoo models take."""
    if isinstance(img_size, Sequence) and not isinstance(img_size, str) and len(img_size) == 2:
        height, width = img_size
        if height != width:
            raise ValueError(
                f"vit_zoo models take square images, got img_size={tuple(img_size)}; pass one side (e.g. "
                f"img_size={max(height, width)}) and use dynamic_img_size=True for other shapes at run time"
            )
        return height
    # Geometry says what is wrong with anything else
    return img_size  # type: ignore[return-value]


def timm_model_args(geometry: Mapping[str, Any]) -> dict[str, Any]:
    """Geometry fields under timm's keyword names (``img_size``, ``in_chans``; the others as they are)."""
    return {_TIMM_NAMES.get(name, name): value for name, value in geometry.items()}


def _geometry_of(model_args: Mapping[str, Any]) -> Geometry:
    """The ``Geometry`` timm keyword arguments describe (``img_size`` an int or a square ``(side, side)``)."""
    geometry = {name: model_args[_TIMM_NAMES.get(name, name)] for name in GEOMETRY_FIELDS}
    geometry["input_resolution"] = _square_size(geometry["input_resolution"])
    return Geometry(**geometry)


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")


class TimmVisionTransformer(nn.Module):
    """OpenAI CLIP's vision tower with timm's model interface and the head of timm's CLIP entries.

    The core ``VisionTransformer`` is ``visual`` (built without ``proj``), as in transformers' classes; the
    projection is the classifier ``head``: ``head.weight`` is ``proj`` transposed (``pretrained_filter_fn`` and
    ``openai_state_dict`` convert). State-dict keys are those of OpenAI's whole CLIP (``visual.conv1.weight`` ...)
    plus ``head.*``.

    - ``forward_features(x) -> [b, 1 + grid*grid, width]``: tokens after ``ln_post`` (CLS first), as
      timm's ViT returns normed tokens.
    - ``forward_head(x, pre_logits=True) -> [b, width]``: the CLS token (``num_features == head_hidden_size ==
      width``); without ``pre_logits`` it goes through ``head``.
    - ``head``: with ``num_classes == output_dim`` (the pretrained cfg's) it is OpenAI's projection, a bias-free
      ``nn.Linear(width, output_dim)``, and ``model(x)`` is OpenAI's ``encode_image``; ``num_classes=0`` makes
      it an identity (pre-logits out); any other count, and every ``reset_classifier(n)``, a fresh
      ``nn.Linear(width, n)`` in place of the projection.

    Args:
        img_size: side of the square input (an int, or ``(side, side)``).
        patch_size: side of a square patch.
        in_chans: image channels.
        num_classes: outputs of ``model(x)``; ``None`` means ``output_dim`` (the projection).
        dynamic_img_size: accept any image size at run time, resampling the positional embedding.
        drop_rate: dropout before ``head``.
        device: where to create the parameters (``dtype``: in which dtype).
        geometry: the rest of the core's geometry (``width``, ``layers``, ``heads``, ``output_dim``, ``mlp_ratio``,
            ``activation``, ``layer_norm_eps``) as in ``VisionTransformer``.
    """

    def __init__(
        self,
        img_size: int | Sequence[int],
        patch_size: int,
        in_chans: int = 3,
        num_classes: int | None = None,
        *,
        dynamic_img_size: bool = False,
        drop_rate: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **geometry: Any,
    ) -> None:
        super().__init__()
        output_dim: int = geometry["output_dim"]
        num_classes = output_dim if num_classes is None else num_classes
        _check_num_classes(num_classes)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.visual = VisionTransformer(
                _square_size(img_size), patch_size, in_channels=in_chans, projection=False, **geometry
            )
            width = self.visual.geometry.width
            self.in_chans = in_chans
            self.num_features = self.head_hidden_size = width
            self.num_prefix_tokens = 1
            self.has_class_token = True
            self.dynamic_img_size = dynamic_img_size
            self.feature_info = [
                dict(module=f"visual.transformer.resblocks.{i}", num_chs=width, reduction=patch_size)
                for i in range(self.visual.geometry.layers)
            ]
            self.head_drop = nn.Dropout(drop_rate)
            self.num_classes = num_classes
            self.head = self._new_head(num_classes, bias=num_classes != output_dim)
        if dtype is not None:
            self.to(dtype)
        self.register_state_dict_post_hook(_contiguous_tensors)

    @property
    def grad_checkpointing(self) -> bool:
        return self.visual.transformer.grad_checkpointing

    def _new_head(self, num_classes: int, bias: bool = True) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        weight = self.visual.conv1.weight
        head = nn.Linear(self.num_features, num_classes, bias=bias, device=weight.device, dtype=weight.dtype)
        if not bias:  # OpenAI's projection: proj's memory layout, so head(x) is the very matmul of x @ proj
            head.weight = nn.Parameter(head.weight.detach().t().contiguous().t())
        return head

    def no_weight_decay(self) -> set[str]:
        return {"visual.class_embedding", "visual.positional_embedding"}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups for layer-wise learning-rate decay: stem, one group per block, then ln_post/head."""
        return dict(
            stem=r"^visual\.(?:conv1|class_embedding|positional_embedding|ln_pre)",
            blocks=[(r"^visual\.transformer\.resblocks\.(\d+)", None), (r"^visual\.ln_post", (99999,))],
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh ``nn.Linear(width, num_classes)`` ``head`` in place of the projection (0: pre-logits out)."""
        if global_pool not in (None, "token"):
            raise ValueError(f"vit_zoo models pool the CLS token only (global_pool='token'), got {global_pool!r}")
        _check_num_classes(num_classes)
        self.num_classes = num_classes
        self.head = self._new_head(num_classes)
        self.head.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[b, in_chans, H, W]`` -> tokens after ``ln_post`` ``[b, 1 + grid*grid, width]``."""
        tokens = self.visual.encode(x, interpolate_pos_encoding=self.dynamic_img_size).last_hidden_state
        return self.visual.ln_post(tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens ``[b, n, width]`` -> the CLS token ``[b, width]`` (``pre_logits``) or ``[b, num_classes]``."""
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[b, in_chans, H, W]`` -> ``[b, num_classes]`` (OpenAI's image embedding with the projection)."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]] | dict[str, Any]:
        """Block outputs as timm's ViT returns them.

        Args:
            x: images ``[b, in_chans, H, W]``.
            indices: last n blocks if an int, all if None, else these block indices (negative from the end).
            return_prefix_tokens: pair each intermediate with its CLS token ``[b, 1, width]``.
            norm: apply ``ln_post`` to the intermediates.
            stop_early: skip the blocks after the last one asked for.
            output_fmt: ``"NCHW"`` (``[b, width, grid_h, grid_w]``) or ``"NLC"`` (``[b, grid_h*grid_w, width]``).
            intermediates_only: return the intermediates alone.
            output_dict: return ``{"image_intermediates", "image_intermediates_prefix"?, "image_features"?}``.

        Returns:
            ``intermediates``, or ``(forward_features output, intermediates)``, or the dict.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.visual.transformer.resblocks), indices)
        out = self.visual.encode(
            x, hidden_states=True, interpolate_pos_encoding=self.dynamic_img_size, depth=max_index + 1 if stop_early else -1
        )
        assert out.hidden_states is not None  # asked for
        intermediates = [out.hidden_states[index + 1] for index in take_indices]  # [0] is the input of block 0
        if norm:
            intermediates = [self.visual.ln_post(y) for y in intermediates]
        prefix_tokens = [y[:, :1] for y in intermediates]
        intermediates = [y[:, 1:] for y in intermediates]
        if output_fmt == "NCHW":
            intermediates = [y.unflatten(1, out.grid).permute(0, 3, 1, 2).contiguous() for y in intermediates]

        if output_dict:
            result: dict[str, Any] = {"image_intermediates": intermediates}
            if return_prefix_tokens:
                result["image_intermediates_prefix"] = prefix_tokens
            if not intermediates_only:
                result["image_features"] = self.visual.ln_post(out.last_hidden_state)
            return result
        if return_prefix_tokens:
            # timm's pairs
            intermediates = list(zip(intermediates, prefix_tokens, strict=True))  # type: ignore[arg-type]
        if intermediates_only:
            return intermediates
        return self.visual.ln_post(out.last_hidden_state), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last index kept (and ``ln_post`` / ``head`` if asked)."""
        transformer = self.visual.transformer
        take_indices, max_index = feature_take_indices(len(transformer.resblocks), indices)
        transformer.resblocks = transformer.resblocks[: max_index + 1]
        transformer.layers = len(transformer.resblocks)
        if prune_norm:
            # timm's pruning replaces the norm
            self.visual.ln_post = nn.Identity()  # type: ignore[assignment]
        if prune_head:
            self.reset_classifier(0)
        return take_indices

    def load_pretrained(self, checkpoint_path: str) -> None:
        """Load any checkpoint ``vit_zoo.readers.load_checkpoint`` reads (OpenAI TorchScript archive, torch
        pickle, safetensors; OpenAI, open_clip, HF CLIP or vit_zoo keys) through timm's ``load_pretrained``.

        timm calls this for ``custom_load`` sources: OpenAI's archive (fetched and SHA-256 checked by
        ``vit_zoo.download`` when the model is created) or a local ``file``.
        """
        cfg: dict[str, Any] = getattr(self, "pretrained_cfg", {})
        in_memory = {**cfg, "state_dict": load_checkpoint(checkpoint_path), "custom_load": False, "source": None}
        load_pretrained(
            self, pretrained_cfg=in_memory, num_classes=self.num_classes, in_chans=self.in_chans, filter_fn=pretrained_filter_fn
        )


def _contiguous_tensors(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """The projection head keeps ``proj``'s layout (a transposed view); savers (safetensors, timm's save_for_hf)
    take contiguous tensors."""
    for name, tensor in state_dict.items():
        if name.startswith(prefix) and not tensor.is_contiguous():
            state_dict[name] = tensor.contiguous()


def _weights_source(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return str(cfg.get("file") or cfg.get("hf_hub_id") or cfg.get("url") or "the checkpoint")


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


def _resampled(weights: dict[str, torch.Tensor], model: TimmVisionTransformer, source: str) -> dict[str, torch.Tensor]:
    """``weights`` with patch kernel and positional embedding fitted to the model's patch size and grid."""
    weights = dict(weights)
    kernel = model.visual.conv1.weight.shape[-2:]
    conv = weights.get("conv1.weight")
    if conv is not None and conv.ndim == 4 and conv.shape[-2:] != kernel:
        weights["conv1.weight"] = resample_patch_embed(conv, list(kernel), verbose=True)
    positional = weights.get("positional_embedding")
    if positional is None or positional.ndim != 2:
        return weights
    old_grid = math.isqrt(positional.shape[0] - 1)
    if old_grid * old_grid != positional.shape[0] - 1:
        raise CheckpointError(
            f"{source}: positional_embedding has {positional.shape[0]} rows, expected 1 + grid*grid (a square grid)"
        )
    new_grid = model.visual.geometry.grid_size
    if old_grid != new_grid:
        weights["positional_embedding"] = resample_abs_pos_embed(
            positional[None],
            new_size=[new_grid, new_grid],
            old_size=[old_grid, old_grid],
            num_prefix_tokens=1,
            verbose=True,
        )[0]
    return weights


def _shape_args(geometry: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``geometry`` that decide tensor shapes, in timm's keyword names."""
    return timm_model_args({name: geometry[name] for name in SHAPE_FIELDS})


def _check_fits(
    weights: Mapping[str, torch.Tensor], geometry: Geometry, in_chans: int, source: str, name: str, adapted: tuple[str, ...]
) -> None:
    """Raise ``CheckpointError`` unless ``weights`` (vit_zoo names) load into a timm model of ``geometry``, the
    tensors of ``adapted`` aside; the message names the geometry the checkpoint holds and the zoo entries of it.
    The input channels of ``conv1`` are timm's to adapt (``adapt_input_conv``)."""
    shapes = {key: tuple(tensor.shape) for key, tensor in weights.items()}
    conv = shapes.get("conv1.weight")
    if conv is not None and len(conv) == 4:
        shapes["conv1.weight"] = (conv[0], in_chans, *conv[2:])
    try:
        check_weights_fit(
            geometry, shapes, f"{source} ({name} built with {_kwargs_text(_shape_args(geometry))})", adapted=adapted
        )
    except CheckpointError as error:
        try:
            found = infer_geometry(weights)
        except CheckpointError:
            raise error from None
        same_shapes = ("width", "layers", "output_dim", "mlp_ratio")
        matches = [e.name for e in list_entries() if e.name != name and all(e.geometry[k] == found[k] for k in same_shapes)]
        alternative = f", or use {' / '.join(matches)}" if matches else ""
        raise CheckpointError(
            f"{first_line(error)}: the checkpoint holds a ViT with {_kwargs_text(_shape_args(found))}; pass that geometry "
            f"as keyword arguments{alternative}"
        ) from None


def pretrained_filter_fn(state_dict: Mapping[str, torch.Tensor], model: TimmVisionTransformer) -> dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn``: any CLIP ViT state dict -> this model's keys and shapes.

    Converts OpenAI / open_clip / HF CLIP / vit_zoo layouts (and timm's own saves of these models) with
    ``vit_zoo.state_dicts.to_vit_zoo_state_dict`` (keeping a saved ``head.*`` classifier), resamples the patch kernel
    and positional embedding with timm's ``resample_patch_embed`` / ``resample_abs_pos_embed`` when ``patch_size``
    or ``img_size`` differ, and raises ``CheckpointError`` naming the checkpoint's and the model's geometry when the
    rest does not fit. Input-channel adaptation (``in_chans``) is timm's, applied after this function.
    """
    source = _weights_source(model)
    head = {k: v for k, v in state_dict.items() if k.startswith("head.")}
    try:
        weights = to_vit_zoo_state_dict({k: v for k, v in state_dict.items() if k not in head})
    except CheckpointError as error:
        raise CheckpointError(f"{source}: {error}") from None
    fitted = _resampled(weights, model, source)
    name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    # timm's load_pretrained drops the projection unless num_classes == output_dim
    _check_fits(fitted, model.visual.geometry, model.in_chans, source, name, adapted=("proj",))
    projection = fitted.pop("proj", None)
    tensors = {f"visual.{key}": tensor for key, tensor in fitted.items()}
    if projection is not None:
        tensors["head.weight"] = projection.t()
    return {**tensors, **head}


def openai_state_dict(model: TimmVisionTransformer) -> dict[str, torch.Tensor]:
    """``model``'s tensors under OpenAI's names (``visual.`` removed, ``head.weight`` back to ``proj``), as saved
    folders hold them.

    Raises:
        ValueError: ``head`` is not OpenAI's projection (``num_classes != output_dim`` or ``reset_classifier``), so
            the tower has no ``proj`` that transformers or remote code could load.
    """
    head, output_dim = model.head, model.visual.geometry.output_dim
    if not (isinstance(head, nn.Linear) and head.bias is None and head.out_features == output_dim):
        raise ValueError(
            f"this timm model's head is a {model.num_classes}-way classifier in place of OpenAI's projection, so it "
            f"has no `proj` for transformers or remote code; save it with timm.models.save_for_hf (timm loads that "
            f"folder), or keep num_classes={output_dim} (the projection)"
        )
    tensors = {key.removeprefix("visual."): tensor for key, tensor in model.state_dict().items()}
    tensors["proj"] = tensors.pop("head.weight").t()
    return tensors


def _entry_model_args(entry: ZooEntry) -> dict[str, Any]:
    return timm_model_args(entry.geometry)


def pretrained_cfgs(entry: ZooEntry) -> dict[str, Any]:
    """timm ``default_cfgs``-style pretrained cfgs of a zoo variant, keyed ``name.tag`` (``name`` if it has no
    weights)."""
    args = _entry_model_args(entry)
    base = dict(
        input_size=(args["in_chans"], args["img_size"], args["img_size"]),
        fixed_input_size=True,
        mean=tuple(entry.preprocessing.mean or OPENAI_CLIP_MEAN),
        std=tuple(entry.preprocessing.std or OPENAI_CLIP_STD),
        interpolation=entry.preprocessing.interpolation,
        crop_pct=float(entry.preprocessing.crop_pct),
        crop_mode="center",
        num_classes=args["output_dim"],
        first_conv="visual.conv1",
        classifier="head",
        description=entry.description or None,
    )
    if not entry.pretrained:
        return {entry.name: base}
    return {
        f"{entry.name}.{tag}": dict(
            base,
            url=source.url,
            hf_hub_id=source.hf_hub_id,
            # the URL holds an OpenAI archive (TorchScript): read by TimmVisionTransformer.load_pretrained
            custom_load=bool(source.url),
            license=source.license,
            paper_ids=source.paper,
            origin_url=OPENAI_CLIP_REPO if source.openai_name else None,
            notes=(f"OpenAI CLIP {source.openai_name}",) if source.openai_name else None,
        )
        for tag, source in entry.pretrained.items()
    }


def timm_config_dict(source: TimmVisionTransformer | ZooEntry, tag: str | None = None) -> dict[str, Any]:
    """The timm keys of a Hub folder's ``config.json``: ``architecture``, ``num_classes``, ``num_features``,
    ``pretrained_cfg``, ``model_args`` — what ``create_model("local-dir:DIR" | "hf-hub:REPO")`` reads.

    ``source`` is a model (describing its current weights) or a zoo entry (its ``tag`` weights, the
    default tag if None). ``model_args`` carries the whole geometry, so the folder does not depend on the
    entry's YAML staying the same; the weights are a native ``model.safetensors`` (``custom_load=False``).
    """
    if isinstance(source, ZooEntry):
        cfgs = pretrained_cfgs(source)
        key = f"{source.name}.{tag}" if tag else next(iter(cfgs))
        if key not in cfgs:
            raise ValueError(f"{source.name} has no pretrained tag {tag!r}; tags: {list(source.pretrained)}")
        cfg = dict(cfgs[key], architecture=source.name, tag=tag or key.partition(".")[2] or None)
        model_args = dict(_entry_model_args(source), num_classes=cfg["num_classes"])
        num_features = model_args["width"]
    else:
        # a timm model attribute, not a submodule
        cfg = dict(source.pretrained_cfg)  # type: ignore[arg-type]
        model_args = dict(timm_model_args(source.visual.geometry), num_classes=source.num_classes)
        if source.dynamic_img_size:
            model_args["dynamic_img_size"] = True
        num_features = source.num_features
    cfg = filter_pretrained_cfg({k: v for k, v in cfg.items() if k != "state_dict"}, remove_source=True)
    cfg.update(
        custom_load=False,
        num_classes=model_args["num_classes"],
        input_size=(model_args["in_chans"], model_args["img_size"], model_args["img_size"]),
    )
    return dict(
        architecture=cfg.pop("architecture"),
        num_classes=model_args["num_classes"],
        num_features=num_features,
        pretrained_cfg=cfg,
        model_args=model_args,
    )


def _create(entry: ZooEntry, pretrained: bool, kwargs: dict[str, Any]) -> TimmVisionTransformer:
    accepted = (*GEOMETRY_KWARGS, *MODEL_KWARGS, *BUILDER_KWARGS)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:  # TypeError, as for any timm model's unexpected keyword
        raise TypeError(f"{entry.name}: unknown argument(s) {unknown}; accepted: {', '.join(accepted)}")
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if overlay.get("file") or overlay.get("url"):
        # timm would torch.load these; an OpenAI archive is TorchScript, so read them with load_pretrained
        overlay.setdefault("custom_load", True)
    cfg = resolve_pretrained_cfg(entry.name, kwargs.pop("pretrained_cfg", None), overlay).to_dict()
    channels, height, width = cfg["input_size"]
    kwargs.setdefault("img_size", (height, width))
    kwargs.setdefault("in_chans", channels)
    for key, value in _entry_model_args(entry).items():
        kwargs.setdefault(key, value)
    try:
        geometry = _geometry_of(kwargs)
    except ValueError as error:
        raise ValueError(f"{entry.name}: {error} (timm's img_size is input_resolution, in_chans in_channels)") from None
    if pretrained:
        _fetch_release(cfg, entry, kwargs.get("cache_dir"))
        index = _check_hub_weights(cfg, geometry, entry.name)
        if index is not None:  # timm reads one .safetensors file of a folder or repo: load_pretrained reads the shards
            cfg.update(source="", file=index, custom_load=True)
    out_indices = kwargs.pop("out_indices", min(3, kwargs["layers"]))
    return build_model_with_cfg(
        TimmVisionTransformer,
        entry.name,
        pretrained,
        pretrained_cfg=cfg,
        pretrained_filter_fn=pretrained_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _fetch_release(cfg: dict[str, Any], entry: ZooEntry, cache_dir: str | os.PathLike | None) -> None:
    """OpenAI's weights come through ``vit_zoo.download`` (one cache, SHA-256 checked, ``$VIT_ZOO_OPENAI_BASE_URL``
    honoured) rather than timm's downloader: a cfg ``url`` whose SHA-256 is known (a zoo release's, or the folder of
    an OpenAI-style URL) is fetched now and handed to timm as its ``file``. Other URLs are timm's to fetch."""
    url = cfg.get("url")
    if not url or cfg.get("file") or cfg.get("source") in ("hf-hub", "local-dir") or cfg.get("state_dict") is not None:
        return
    release = next((source for source in entry.pretrained.values() if source.url == url and source.sha256), None)
    sha256 = release.sha256 if release is not None else sha256_in_url(url)
    if sha256 is not None:
        cfg["file"] = str(download_url(url, sha256, cache_dir))


def _check_hub_weights(cfg: Mapping[str, Any], geometry: Geometry, name: str) -> str | None:
    """The weights of a ``local-dir:`` folder or an ``hf-hub:`` repo against ``model_args``' geometry, from their
    headers, before anything is built (a config.json claiming 20 000 layers or a 4096x MLP must not build them).
    The patch kernel, positional embedding and projection are left to ``pretrained_filter_fn``, which fits them.
    Returns the local path of the index of sharded safetensors weights (their shards fetched beside it), else None."""
    if cfg.get("source") == "local-dir":
        source, hub_kwargs = str(cfg["file"]), {}
    elif cfg.get("source") == "hf-hub":
        repo_id, _, revision = str(cfg["hf_hub_id"]).partition("@")
        source, hub_kwargs = repo_id, {"revision": revision or None}
    else:
        return None
    found = weight_shapes(source, hub_kwargs)
    if found is None:
        return None  # no weights there: timm's loader says so in its own words
    filename, shapes = found
    on_meta = {key: torch.empty(shape, device="meta") for key, shape in shapes.items() if not key.startswith("head.")}
    try:
        weights = to_vit_zoo_state_dict(on_meta)
    except CheckpointError as error:
        raise CheckpointError(f"{source} ({filename}): {error}") from None
    adapted = ("conv1.weight", "positional_embedding", "proj")
    _check_fits(weights, geometry, geometry.in_channels, f"{source} ({filename})", name, adapted)
    if filename != "model.safetensors":
        return None
    from transformers.utils import cached_file

    return cached_file(source, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False, **hub_kwargs)


def _entrypoint(entry: ZooEntry):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> TimmVisionTransformer:
        return _create(get_entry(entry.name), pretrained, kwargs)  # refused once the variant is unregistered

    entrypoint.__name__ = entrypoint.__qualname__ = entry.name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{entry.description or entry.name} ({_kwargs_text(_entry_model_args(entry))})."
    return entrypoint


def _register(entry: ZooEntry) -> None:
    """Zoo listener: give ``entry`` a timm entrypoint and pretrained cfgs."""
    if _registered.get(entry.name) == entry:
        return
    if entry.name not in _registered and is_model(entry.name):
        raise ZooConfigError(
            f"{entry.path or '<dict>'}: variant name {entry.name!r} is already a timm model; rename it "
            f"(vit_zoo variants usually start with 'vit_zoo_')"
        )
    default_cfgs.update(generate_default_cfgs(pretrained_cfgs(entry)))
    entrypoint = _entrypoint(entry)
    setattr(sys.modules[__name__], entry.name, entrypoint)
    register_model(entrypoint)
    _registered[entry.name] = entry


on_register(_register)
