"""The vit_zoo tower as a transformers model: ``VitZooModel`` and ``VitZooForImageClassification``.

Both wrap the core ``VisionTransformer`` of ``model.py`` under the attribute ``visual`` (OpenAI's own name
for the tower), so their state-dict keys are those of OpenAI's vision tower inside CLIP
(``visual.conv1.weight``, ...). ``base_model_prefix = "visual"`` lets ``from_pretrained`` also load checkpoints
holding the bare tower names (``conv1.weight``, ...), as timm and the core model write them. Whole CLIP
checkpoints go through ``vit_zoo.convert`` instead: their text tower's bare names (``positional_embedding``,
``transformer.resblocks.N.*``) would be given the prefix too.

Like ``config.py`` and ``model.py``, this file is copied flat into folders written by ``save_pretrained`` so
that ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` works without vit_zoo installed: it
imports only torch, transformers and its siblings (``config.py``, ``model.py``, ``spec.py``, ``files.py``,
``errors.py``).
"""

from __future__ import annotations

import copy
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.integrations.accelerate import force_accelerate_hooks
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput

from .config import VitZooConfig
from .errors import first_line
from .files import regular_file_size
from .model import Attention, ResidualAttentionBlock, TowerOutput, VisionTransformer
from .spec import check_weights_fit, read_weight_map, safetensors_header

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
# from_pretrained's keywords that say where its files come from (transformers' cached_file takes them too)
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")


@dataclass
class VitZooModelOutput(ModelOutput):
    """What ``VitZooModel`` returns; ``N = grid_h * grid_w`` patches, CLS token first.

    Args:
        image_embeds: ``[batch, output_dim]``, the projected CLS embedding (``ln_post`` then ``proj``):
            ``VisionTransformer``'s first output, OpenAI's ``encode_image``.
        last_hidden_state: ``[batch, N + 1, width]``, the last block's tokens, before ``ln_post``.
        attention_map: ``[layers, batch, heads, grid_h, grid_w]``, each layer's CLS-query attention over the
            patches (``VisionTransformer``'s format); with ``output_attention_map=True``, else ``None``.
        hidden_states: ``layers + 1`` tensors ``[batch, N + 1, width]``: the tokens after ``ln_pre``, then after
            each block; with ``output_hidden_states=True``, else ``None``.
        attentions: ``layers`` tensors ``[batch, heads, N + 1, N + 1]``, the softmax attention probabilities;
            with ``output_attentions=True``, else ``None``.
    """

    image_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    attention_map: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class VitZooBlock(ResidualAttentionBlock, GradientCheckpointingLayer):
    """The core's block as a transformers ``GradientCheckpointingLayer`` (same parameters, same computation), so
    ``activation_checkpointing_enable`` checkpoints it the way it does transformers' own layers (every
    ``every_n_layers``-th one, with the checkpoint function it is given)."""


class VitZooPreTrainedModel(PreTrainedModel):
    """Loading, saving, initialisation and attention dispatch shared by the vit_zoo models."""

    config_class = VitZooConfig
    base_model_prefix = "visual"
    main_input_name = "pixel_values"
    input_modalities = ["image"]
    # The tower holds tensors of its own (class_embedding, positional_embedding, proj): a device map can only place
    # them with the whole tower (split, they would become device_map keys that name no module)
    _no_split_modules = ["VisionTransformer", "VitZooBlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: VitZooConfig) -> None:
        if getattr(config, "model_type", None) != VitZooConfig.model_type:
            raise ValueError(
                f"{type(self).__name__} needs a VitZooConfig (model_type 'vit_zoo'), got {type(config).__name__} "
                f"(model_type {getattr(config, 'model_type', None)!r}); "
                f"convert foreign checkpoints with `vit-zoo convert`"
            )
        super().__init__(config)
        # `_init_weights` draws every weight in `post_init`; the core's own draws are discarded, and kept off the
        # global RNG so that a seed gives the same weights here as in `from_pretrained` (which builds on meta).
        with torch.random.fork_rng(devices=[]):
            self.visual = VisionTransformer(**config.geometry)
        for block in self.visual.transformer.resblocks:
            # transformers' every_n_layers checkpointing counts GradientCheckpointingLayer instances: re-classed in
            # place (as FSDP2 re-classes the layers it wraps), the block's parameters and computation stay the core's
            block.__class__ = VitZooBlock

    def _init_weights(self, module: nn.Module) -> None:
        """OpenAI CLIP's initialisation, scaled by ``config.initializer_factor``; covers every parameter.

        Only the modules that own parameters directly are handled: transformers skips the others for
        code outside its library. ``transformers.initialization`` leaves weights loaded from a checkpoint alone.
        """
        factor = self.config.initializer_factor
        width = self.config.width
        if isinstance(module, VisionTransformer):
            for parameter in (module.class_embedding, module.positional_embedding, module.proj):
                if parameter is not None:
                    init.normal_(parameter, std=width**-0.5 * factor)
        elif isinstance(module, nn.Conv2d):  # conv1: LeCun normal, unit-variance patch tokens
            init.normal_(module.weight, std=module.weight[0].numel() ** -0.5 * factor)
        elif isinstance(module, Attention):
            init.normal_(module.in_proj_weight, std=width**-0.5 * factor)
            init.zeros_(module.in_proj_bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=self._linear_std(module) * factor)
            init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def _linear_std(self, linear: nn.Linear) -> float:
        """OpenAI's std for a block's ``mlp.c_fc`` / ``mlp.c_proj`` / ``attn.out_proj``; fan-in for a head."""
        width, layers = self.config.width, self.config.layers
        for block in self.visual.transformer.resblocks:
            if linear is block.mlp.c_fc:
                return (2 * width) ** -0.5
            if linear is block.mlp.c_proj or linear is block.attn.out_proj:
                return width**-0.5 * (2 * layers) ** -0.5
        return linear.in_features**-0.5

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding (``visual.conv1``), as transformers' vision models return theirs."""
        return self.visual.conv1

    @force_accelerate_hooks("visual")  # the tower runs through `encode`, not its forward: fire its offload hook
    def _encode(
        self,
        pixel_values: torch.Tensor,
        output_attention_map: bool,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
        interpolate_pos_encoding: bool,
    ) -> TowerOutput:
        """The tower's ``encode`` with transformers' flags (``None`` takes the config's value) and attention
        implementation."""
        implementation = self.config._attn_implementation
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {implementation!r}")
        return self.visual.encode(
            pixel_values,
            attention_map=output_attention_map,
            hidden_states=bool(self.config.output_hidden_states if output_hidden_states is None else output_hidden_states),
            attentions=bool(self.config.output_attentions if output_attentions is None else output_attentions),
            interpolate_pos_encoding=interpolate_pos_encoding,
            eager=implementation == "eager",
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, first comparing the config (the one given, else ``config.json``'s)
        with the tensors the weights name, from their headers, before anything is built: a config asking for more
        blocks than the weights hold, or for tensors of other shapes (20 000 layers, a 4096x MLP), is refused with a
        one-line ``ValueError`` instead of being built and filled with random values. Otherwise it loads as
        transformers loads: tensors missing from the weights are initialised and reported, fewer layers than the
        weights hold truncate the tower."""
        source = pretrained_model_name_or_path
        if source is not None and "state_dict" not in kwargs:
            cls._check_weights(source, kwargs)
        try:
            return super().from_pretrained(source, *args, **kwargs)
        except Exception as error:
            if not type(error).__module__.startswith("safetensors"):  # SafetensorError: this file imports no safetensors
                raise
            raise ValueError(
                f"the weights of {source} are not a readable safetensors file "
                f"({str(error).strip().splitlines()[0]}); download or convert the model again"
            ) from error

    @classmethod
    def _check_weights(cls, source, kwargs: dict) -> None:
        config = kwargs.get("config")
        hub_kwargs = {name: kwargs[name] for name in HUB_KWARGS if name in kwargs}
        if not isinstance(config, VitZooConfig):
            settings, _ = VitZooConfig.get_config_dict(source, **hub_kwargs)
            if settings.get("model_type") != VitZooConfig.model_type:
                return  # not a vit_zoo config.json: __init__ says so
            config = VitZooConfig.from_dict(settings)
        found = weight_shapes(source, hub_kwargs)
        if found is not None:
            filename, shapes = found
            prefix = f"{cls.base_model_prefix}."
            tower = {name.removeprefix(prefix): shape for name, shape in shapes.items()}
            adapted = tower if kwargs.get("ignore_mismatched_sizes") else ()
            check_weights_fit(config.geometry, tower, f"{source} ({filename})", partial=True, adapted=adapted)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """``PreTrainedModel.save_pretrained``; the folder also carries ``config.py``, ``model.py`` and
        ``modeling.py`` and an ``auto_map`` naming ``AutoModel`` and ``AutoModelForImageClassification``,
        so it loads with ``trust_remote_code=True`` where vit_zoo is not installed."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **remote_auto_map()}
        return super().save_pretrained(save_directory, *args, **kwargs)


class VitZooModel(VitZooPreTrainedModel):
    r"""OpenAI CLIP's vision tower: projected CLS embedding, tokens, and attention maps on request.

    Example:

    ```python
    >>> import torch
    >>> from vit_zoo import VitZooConfig, VitZooModel
    >>> config = VitZooConfig(input_resolution=32, patch_size=8, width=64, layers=2, heads=4, output_dim=32)
    >>> model = VitZooModel(config).eval()
    >>> out = model(torch.randn(2, 3, 32, 32), output_attention_map=True)
    >>> out.image_embeds.shape, out.attention_map.shape
    (torch.Size([2, 32]), torch.Size([2, 2, 4, 4, 4]))
    ```
    """

    def __init__(self, config: VitZooConfig) -> None:
        super().__init__(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attention_map: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> VitZooModelOutput | tuple[torch.Tensor, ...]:
        r"""Encode ``pixel_values`` `(batch_size, in_channels, input_resolution, input_resolution)`.

        Args:
            output_attention_map: also return ``attention_map`` (``VisionTransformer``'s CLS->patch maps).
            output_attentions: also return every layer's full attention probabilities (either
                ``attn_implementation``); defaults to ``config.output_attentions``.
            output_hidden_states: also return every layer's tokens; defaults to ``config.output_hidden_states``.
            return_dict: ``False`` returns a tuple of the non-``None`` fields in ``VitZooModelOutput``'s order.
            interpolate_pos_encoding: accept other image sizes (multiples of ``patch_size`` are used whole)
                by bicubically resampling the positional embedding.

        Raises:
            ValueError: ``pixel_values`` is not a float image batch of the expected channels and size.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self._encode(pixel_values, output_attention_map, output_attentions, output_hidden_states, interpolate_pos_encoding)
        output = VitZooModelOutput(
            image_embeds=out.image_embeds,
            last_hidden_state=out.last_hidden_state,
            attention_map=out.attention_map,
            hidden_states=_as_tuple(out.hidden_states),
            attentions=_as_tuple(out.attentions),
        )
        return output if return_dict else output.to_tuple()


class VitZooForImageClassification(VitZooPreTrainedModel):
    """A linear classifier on the projected CLS embedding (``image_embeds``), ``config.num_labels`` outputs."""

    def __init__(self, config: VitZooConfig) -> None:
        super().__init__(config)
        with torch.random.fork_rng(devices=[]):  # see VitZooPreTrainedModel.__init__
            self.classifier = nn.Linear(config.output_dim, cast(int, config.num_labels))
        self.post_init()

    @property
    def base_model(self) -> VitZooModel:
        """The body without the classifier: a ``VitZooModel`` holding this model's own tower (no copy), so
        ``base_model.save_pretrained`` writes the tower alone, under the keys the classifier loads it from."""
        with torch.device("meta"):  # its own tower is replaced at once: allocate nothing for it
            # a copy: its post_init must not consume flags of this config
            body = VitZooModel(cast(VitZooConfig, copy.deepcopy(self.config)))
        body.visual = self.visual
        return body

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> ImageClassifierOutput | tuple[torch.Tensor, ...]:
        r"""Classify ``pixel_values`` `(batch_size, in_channels, input_resolution, input_resolution)`.

        Args:
            labels: `(batch_size,)` class indices (cross-entropy), float targets for regression
                (``num_labels == 1``) or `(batch_size, num_labels)` multi-hot targets, as
                ``config.problem_type`` says; when given, ``loss`` is returned.

        Returns ``logits`` `(batch_size, num_labels)`, ``loss`` and ``hidden_states`` / ``attentions`` as
        ``VitZooModel`` gives them.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self._encode(pixel_values, False, output_attentions, output_hidden_states, interpolate_pos_encoding)
        logits = self.classifier(out.image_embeds)
        loss = None if labels is None else self.loss_function(labels, logits, self.config)
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=_as_tuple(out.hidden_states), attentions=_as_tuple(out.attentions)
        )
        return output if return_dict else output.to_tuple()


VitZooModel.register_for_auto_class("AutoModel")
VitZooForImageClassification.register_for_auto_class("AutoModelForImageClassification")


def _as_tuple(tensors: list[torch.Tensor] | None) -> tuple[torch.Tensor, ...] | None:
    """transformers' outputs hold per-layer tensors as tuples."""
    return None if tensors is None else tuple(tensors)


def weight_shapes(source, hub_kwargs: dict) -> tuple[str, dict[str, tuple[int, ...]]] | None:
    """The file transformers loads the weights from and each tensor's shape, read without loading any tensor:
    safetensors headers (a sharded index's shards too), ``torch.load`` onto the meta device for ``.bin`` files.
    ``None`` when there are none (transformers then says what is missing)."""
    from transformers.utils import cached_file

    def fetch(name: str) -> str | None:
        local = Path(source) / name
        if Path(source).is_dir() and (local.exists() or local.is_symlink()):
            regular_file_size(local)  # a FIFO or device there: named, where transformers and timm call it missing
        return cached_file(source, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)

    for weights, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (path := fetch(index)) is not None:
            shards = sorted({str(shard) for shard in read_weight_map(path).values()})
            files = [(shard, fetch(shard)) for shard in shards]
        elif (path := fetch(weights)) is not None:
            files = [(weights, path)]
        else:
            continue
        shapes: dict[str, tuple[int, ...]] = {}
        for name, shard_path in files:
            if shard_path is None:
                raise ValueError(f"{source}: {index} names {name}, which is missing; download or convert the model again")
            shapes.update(_file_shapes(shard_path))
        return weights, shapes
    return None


def _file_shapes(path: str) -> dict[str, tuple[int, ...]]:
    if path.endswith(".safetensors"):
        return {name: shape for name, (_, shape) in safetensors_header(path).items()}
    try:  # onto the meta device: shapes without reading tensor data (mmap: not even the storages of a zip file)
        tensors = torch.load(path, map_location="meta", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # noqa: BLE001 - any failure to parse is a damaged file
        raise ValueError(
            f"{path} is not a readable torch checkpoint ({first_line(error)}); download or convert the model again"
        ) from None
    if not isinstance(tensors, dict):
        raise ValueError(f"{path} holds a {type(tensors).__name__}, not a state dict; download or convert the model again")
    return {str(name): tuple(tensor.shape) for name, tensor in tensors.items() if isinstance(tensor, torch.Tensor)}


def remote_auto_map() -> dict[str, str]:
    """``auto_map`` entries for both model classes, ``{"AutoModel": "modeling.VitZooModel", ...}``."""
    return {
        str(cls._auto_class): f"{cls.__module__.rpartition('.')[2]}.{cls.__name__}"
        for cls in (VitZooModel, VitZooForImageClassification)
    }
