"""The vit_zoo tower as a transformers model: ``VitZooModel`` and ``VitZooForImageClassification``.

Both wrap the core ``VisionTransformer`` of ``model.py`` under the attribute ``visual`` (OpenAI's own name
for the tower), so their state-dict keys are those of OpenAI's vision tower inside CLIP
(``visual.conv1.weight``, ...). ``base_model_prefix = "visual"`` lets ``from_pretrained`` also load checkpoints
holding the bare tower names (``conv1.weight``, ...), as timm and the core model write them. Whole CLIP
checkpoints go through ``vit_zoo.convert`` instead: their text tower's bare names (``positional_embedding``,
``transformer.resblocks.N.*``) would be given the prefix too.

Like ``config.py`` and ``model.py``, this file is copied flat into folders written by ``save_pretrained`` so
that ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` works without vit_zoo installed: it
imports only torch, transformers and its siblings (``config.py``, ``model.py``, ``spec.py``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput

from .config import VitZooConfig
from .model import Attention, ResidualAttentionBlock, TransformerOutput, VisionTransformer, stack_attention_map
from .spec import block_indices, safetensors_names

# from_pretrained's keywords that say where its files come from (transformers' cached_file takes them too)
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")


@dataclass
class VitZooModelOutput(ModelOutput):
    r"""What ``VitZooModel`` returns; ``N = grid_h * grid_w`` patches, CLS token first.

    Args:
        image_embeds (`torch.FloatTensor` of shape `(batch_size, output_dim)`):
            The projected CLS embedding (``ln_post`` then ``proj``), ``VisionTransformer``'s ``cls_feature``.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, N + 1, width)`):
            The last block's tokens, before ``ln_post``.
        attention_map (`torch.FloatTensor` of shape `(layers, batch_size, heads, grid_h, grid_w)`, *optional*):
            Each layer's CLS-query attention over the patches (``VisionTransformer``'s format); returned with
            ``output_attention_map=True``.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            ``layers + 1`` tensors of shape `(batch_size, N + 1, width)`: the tokens after ``ln_pre``, then
            after each block; returned with ``output_hidden_states=True``.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            ``layers`` tensors of shape `(batch_size, heads, N + 1, N + 1)`, the softmax attention
            probabilities; returned with ``output_attentions=True``.
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
            block.__class__ = VitZooBlock  # as FSDP2 re-classes the layers it wraps: the module itself is unchanged
        self._attention_implementation: str | None = None  # what the core's blocks were last set to

    def _init_weights(self, module: nn.Module) -> None:
        """OpenAI CLIP's initialisation, scaled by ``config.initializer_factor``; covers every parameter.

        Only the modules that own parameters directly are handled: transformers skips the others for
        code outside its library. ``transformers.initialization`` leaves weights loaded from a checkpoint alone.
        """
        factor = self.config.initializer_factor
        width = self.config.width
        if isinstance(module, VisionTransformer):
            for parameter in (module.class_embedding, module.positional_embedding, module.proj):
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

    def _sync_attention_implementation(self) -> None:
        """Apply ``config._attn_implementation`` ("sdpa" or "eager") to the core's blocks when it changed."""
        implementation = self.config._attn_implementation
        if implementation != self._attention_implementation:
            self.visual.set_attention_implementation(implementation)
            self._attention_implementation = implementation

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding (``visual.conv1``), as transformers' vision models return theirs."""
        return self.visual.conv1

    def _encode(
        self,
        pixel_values: torch.Tensor,
        output_attention_map: bool,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
        interpolate_pos_encoding: bool,
    ) -> tuple[torch.Tensor, TransformerOutput]:
        """``(image_embeds, tokens)`` from the tower's ``forward`` with transformers' flags (``None`` takes the
        config's value); through ``forward``, so module hooks on the tower fire (accelerate's offloading)."""
        self._sync_attention_implementation()
        return self.visual(
            pixel_values,
            output_attention_map=output_attention_map,
            output_attentions=self.config.output_attentions if output_attentions is None else output_attentions,
            output_hidden_states=self.config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_tokens=True,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, refusing with a one-line ``ValueError`` a config that asks for more
        blocks than the weights hold (compared from the safetensors header before anything is built: a config.json
        claiming 20 000 layers must not build them), and naming a damaged weights file. Otherwise it loads as
        transformers loads: tensors missing from the weights are initialised and reported, fewer layers than the
        weights hold truncate the tower."""
        source = pretrained_model_name_or_path
        if source is not None and "state_dict" not in kwargs:
            cls._check_block_count(source, kwargs)
        try:
            return super().from_pretrained(source, *args, **kwargs)
        except Exception as error:
            if not type(error).__module__.startswith("safetensors"):  # SafetensorError: this file imports no safetensors
                raise
            raise ValueError(
                f"the weights of {source} are not a readable safetensors file "
                f"({str(error).strip().splitlines()[0]}); download or convert the model again"
            ) from error

    @staticmethod
    def _check_block_count(source, kwargs: dict) -> None:
        """The config's ``layers`` (the one given, else ``config.json``'s) against the blocks the weights name
        (safetensors header or index). Weights naming no block at all are left to transformers, which initialises
        and reports every tensor."""
        from transformers.utils import cached_file

        hub_kwargs = {name: kwargs[name] for name in HUB_KWARGS if name in kwargs}
        config = kwargs.get("config")
        layers: object
        if isinstance(config, VitZooConfig):
            layers = config.layers
        else:
            settings, _ = VitZooConfig.get_config_dict(source, **hub_kwargs)
            if settings.get("model_type") != VitZooConfig.model_type:
                return  # not a vit_zoo config.json: __init__ says so
            layers = settings.get("layers")
        for filename in ("model.safetensors.index.json", "model.safetensors"):
            path = cached_file(source, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
            names = safetensors_names(path) if path else None
            if names is not None:
                blocks = len(block_indices(names))
                if blocks and isinstance(layers, int) and layers > blocks:
                    raise ValueError(
                        f"{source}: the config asks for layers={layers} but {filename} holds {blocks} blocks; "
                        "download or convert the model again"
                    )
                return

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
        image_embeds, tokens = self._encode(
            pixel_values, output_attention_map, output_attentions, output_hidden_states, interpolate_pos_encoding
        )
        attention_map = None
        if output_attention_map:
            patch_size = self.config.patch_size
            grid = pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size
            assert tokens.cls_attentions is not None  # asked for above
            attention_map = stack_attention_map(tokens.cls_attentions, grid)
        output = VitZooModelOutput(
            image_embeds=image_embeds,
            last_hidden_state=tokens.last_hidden_state,
            attention_map=attention_map,
            hidden_states=tokens.hidden_states,
            attentions=tokens.attentions,
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
        image_embeds, tokens = self._encode(
            pixel_values, False, output_attentions, output_hidden_states, interpolate_pos_encoding
        )
        logits = self.classifier(image_embeds)
        loss = None if labels is None else self.loss_function(labels, logits, self.config)
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=tokens.hidden_states, attentions=tokens.attentions)
        return output if return_dict else output.to_tuple()


VitZooModel.register_for_auto_class("AutoModel")
VitZooForImageClassification.register_for_auto_class("AutoModelForImageClassification")


def remote_auto_map() -> dict[str, str]:
    """``auto_map`` entries for both model classes, ``{"AutoModel": "modeling.VitZooModel", ...}``."""
    return {
        str(cls._auto_class): f"{cls.__module__.rpartition('.')[2]}.{cls.__name__}"
        for cls in (VitZooModel, VitZooForImageClassification)
    }
