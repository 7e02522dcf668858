"""``VitZooConfig``: the transformers configuration of the vit_zoo tower, validated at construction, and the CLIP
image processor of its preprocessing (``clip_image_processor``).

It travels as a flat file inside saved model folders for ``trust_remote_code`` users, so it imports only
transformers and its sibling ``spec``.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedConfig

from .spec import GEOMETRY_FIELDS, MODEL_TYPE, Geometry

if TYPE_CHECKING:
    from transformers import CLIPImageProcessor, CLIPImageProcessorPil

BACKENDS = ("pil", "torchvision")


def clip_image_processor(
    resolution: int,
    crop_pct: float = 1.0,
    interpolation: str = "bicubic",
    mean: Any = None,
    std: Any = None,
    backend: str = "pil",
) -> CLIPImageProcessorPil | CLIPImageProcessor:
    """OpenAI's preprocessing at ``resolution``: resize the shortest edge to ``resolution / crop_pct``
    (``interpolation``), center-crop ``resolution`` squared, rescale to [0, 1], normalise with ``mean`` / ``std``
    (OpenAI's when ``None``). ``backend`` is ``"pil"`` (``CLIPImageProcessorPil``, OpenAI's exact pixels) or
    ``"torchvision"`` (``CLIPImageProcessor``; pixels within about 2/255 of OpenAI's)."""
    # transformers' image processors import its Auto classes, whose import registers this module's VitZooConfig: not
    # at this module's import
    from transformers import CLIPImageProcessor, CLIPImageProcessorPil
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    mean, std = list(mean or OPENAI_CLIP_MEAN), list(std or OPENAI_CLIP_STD)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need one value per RGB channel, got mean={mean} std={std}")
    processor = CLIPImageProcessorPil if backend == "pil" else CLIPImageProcessor
    return processor(
        size={"shortest_edge": math.floor(resolution / crop_pct)},
        crop_size={"height": resolution, "width": resolution},
        resample=getattr(PILImageResampling, interpolation.upper()),
        image_mean=mean,
        image_std=std,
    )


class VitZooConfig(PreTrainedConfig):
    r"""Geometry of OpenAI CLIP's vision tower, field names as OpenAI's ``VisionTransformer`` arguments.

    Args:
        input_resolution: side of the square input image in pixels.
        patch_size: side of a square patch; must divide ``input_resolution``.
        width: token dimension.
        layers: number of residual attention blocks.
        heads: attention heads; must divide ``width``.
        output_dim: dimension of the projected CLS embedding (``image_embeds``).
        in_channels: image channels.
        mlp_ratio: MLP hidden size as a multiple of ``width``.
        activation: ``"quick_gelu"`` (OpenAI) or ``"gelu"``.
        layer_norm_eps: LayerNorm epsilon.
        initializer_factor: scale of the random initialisation (1.0 = OpenAI's).

    Invalid values raise ``ValueError`` naming the field and the fix.

    Example:

    ```python
    >>> from vit_zoo import VitZooConfig, VitZooModel
    >>> config = VitZooConfig(input_resolution=32, patch_size=8, width=64, layers=2, heads=2, output_dim=32)
    >>> model = VitZooModel(config)
    ```
    """

    model_type = MODEL_TYPE
    # the names generic tooling (DeepSpeed "auto" sizes, PEFT, pipelines, transformers' CLIP vision config) reads
    attribute_map = {
        "hidden_size": "width",
        "num_attention_heads": "heads",
        "num_hidden_layers": "layers",
        "image_size": "input_resolution",
        "num_channels": "in_channels",
        "projection_dim": "output_dim",
        "hidden_act": "activation",
    }

    input_resolution: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    output_dim: int = 512
    in_channels: int = 3
    mlp_ratio: float = 4.0
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs) -> None:
        _ = self.geometry  # validates: a plain ValueError, before transformers wraps anything
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> VitZooConfig:
        """``PreTrainedConfig.from_dict``, refusing the config of another model type (transformers only warns)."""
        if not isinstance(config_dict, dict):
            raise ValueError(
                f"a config must be a JSON object of fields, got a {type(config_dict).__name__}; "
                "the config.json is damaged, write it again (save_pretrained or `vit-zoo convert`)"
            )
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(
                f"this config describes a {model_type!r} model, not {cls.model_type!r}; load it with its own class "
                f"(AutoConfig/AutoModel), or convert its weights with `vit-zoo convert`"
            )
        return super().from_dict(config_dict, **kwargs)

    def image_processor(self, backend: str = "pil") -> CLIPImageProcessorPil | CLIPImageProcessor:
        """``clip_image_processor`` at this config's resolution, with the preprocessing its timm ``pretrained_cfg``
        states (every folder vit-zoo writes carries one), else OpenAI's.

        Raises:
            ValueError: the tower does not take RGB images, or ``backend`` is unknown.
        """
        if self.in_channels != 3:
            raise ValueError(
                f"CLIPImageProcessor prepares RGB images, but this variant takes {self.in_channels} channels; "
                f"prepare its pixel_values yourself"
            )
        cfg = getattr(self, "pretrained_cfg", None)
        cfg = cfg if isinstance(cfg, dict) else {}
        options = {key: cfg[key] for key in ("crop_pct", "interpolation", "mean", "std") if cfg.get(key) is not None}
        return clip_image_processor(self.input_resolution, backend=backend, **options)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """``PreTrainedConfig.save_pretrained``; for an RGB tower the folder also gets the ``preprocessor_config.json``
        of ``image_processor()`` when it has none, so that every folder a model's ``save_pretrained`` or
        ``push_to_hub`` writes is one ``vit-zoo embed`` and ``AutoImageProcessor`` read."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.in_channels == 3 and not os.path.exists(os.path.join(save_directory, "preprocessor_config.json")):
            self.image_processor().save_pretrained(save_directory)

    @property
    def intermediate_size(self) -> int:
        """The MLP's hidden size, ``Geometry.hidden`` (set ``mlp_ratio`` to change it)."""
        return self.geometry.hidden

    @property
    def geometry(self) -> Geometry:
        """The ``Geometry`` this config describes (``VisionTransformer(**config.geometry)`` builds the tower)."""
        return Geometry(**{name: getattr(self, name) for name in GEOMETRY_FIELDS})


VitZooConfig.register_for_auto_class()
