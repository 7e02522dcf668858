"""OpenAI's preprocessing for a zoo variant as a transformers CLIP image processor.

Saved next to a model (``image_processor_for(entry).save_pretrained(folder)``), it makes
``AutoImageProcessor.from_pretrained(folder)`` return a CLIP image processor with the variant's settings;
that needs only transformers, so it also works where vit_zoo is not installed. The saved settings do not
depend on the backend: ``AutoImageProcessor`` picks the torchvision one when torchvision is installed
(pixels within about 2/255 of OpenAI's), ``backend="pil"`` reproduces OpenAI's PIL pipeline exactly.
"""

from __future__ import annotations

import math

from transformers import CLIPImageProcessor, CLIPImageProcessorPil
from transformers.image_utils import PILImageResampling

from .config import VitZooConfig
from .zoo import Preprocessing, ZooEntry, get_entry

RESAMPLING = {
    "bicubic": PILImageResampling.BICUBIC,
    "bilinear": PILImageResampling.BILINEAR,
    "nearest": PILImageResampling.NEAREST,
}
BACKENDS = {"pil": CLIPImageProcessorPil, "torchvision": CLIPImageProcessor}


def image_processor_for(
    source: ZooEntry | VitZooConfig | str, backend: str = "pil"
) -> CLIPImageProcessorPil | CLIPImageProcessor:
    """A CLIP image processor turning RGB images into ``pixel_values`` for this variant.

    Resizes the shortest edge to ``input_resolution / crop_pct`` (``interpolation``, bicubic for OpenAI),
    center-crops ``input_resolution`` squared, rescales to [0, 1] and normalises with the variant's mean and
    std. ``source`` is a zoo entry, its name (or OpenAI name, e.g. ``"ViT-B/32"``), or a ``VitZooConfig``, for
    which OpenAI's preprocessing is used since a config does not record any. ``backend`` is ``"pil"``
    (``CLIPImageProcessorPil``, OpenAI's exact pixels) or ``"torchvision"`` (``CLIPImageProcessor``).

    Raises:
        ValueError: unknown ``backend``, a variant that does not take 3-channel images, or a mean/std
            without 3 values.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
    if isinstance(source, str):
        source = get_entry(source)
    if isinstance(source, ZooEntry):
        geometry, preprocessing = source.config(), source.preprocessing
    else:
        geometry, preprocessing = source, Preprocessing()
    if geometry.in_channels != 3:
        raise ValueError(
            f"CLIPImageProcessor prepares RGB images, but this variant takes {geometry.in_channels} channels; "
            f"prepare its pixel_values yourself"
        )
    if len(preprocessing.mean) != 3 or len(preprocessing.std) != 3:
        raise ValueError(
            f"mean and std need one value per RGB channel, got mean={preprocessing.mean} std={preprocessing.std}"
        )
    resolution = geometry.input_resolution
    return BACKENDS[backend](
        size={"shortest_edge": math.floor(resolution / preprocessing.crop_pct)},
        crop_size={"height": resolution, "width": resolution},
        resample=RESAMPLING[preprocessing.interpolation],
        image_mean=list(preprocessing.mean),
        image_std=list(preprocessing.std),
    )
