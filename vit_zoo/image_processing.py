"""OpenAI's preprocessing for a zoo variant as a transformers CLIP image processor.

Saved next to a model (``image_processor_for(entry).save_pretrained(folder)``), it makes
``AutoImageProcessor.from_pretrained(folder)`` return a CLIP image processor with the variant's settings;
that needs only transformers, so it also works where vit_zoo is not installed. The saved settings do not
depend on the backend: ``AutoImageProcessor`` picks the torchvision one when torchvision is installed
(pixels within about 2/255 of OpenAI's), ``backend="pil"`` reproduces OpenAI's PIL pipeline exactly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL.Image import Resampling

from .errors import shown
from .files import read_json_object
from .zoo import ZooEntry, get_entry

if TYPE_CHECKING:  # transformers imports torch: what a folder check reads (read_preprocessor_config) needs neither
    from transformers import CLIPImageProcessor, CLIPImageProcessorPil

    from .config import VitZooConfig

PROCESSOR_TYPES = ("CLIPImageProcessor", "CLIPImageProcessorPil")
MAX_RESIZE_FACTOR = 4  # shortest edge / crop side: crop_pct down to 0.25
MAX_NORMALISED_PIXEL = 1000.0  # how far normalising may take a pixel from 0 (OpenAI's reach 2.15)
_STEPS = ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb")


def image_processor_for(
    source: ZooEntry | VitZooConfig | str, backend: str = "pil"
) -> CLIPImageProcessorPil | CLIPImageProcessor:
    """A CLIP image processor turning RGB images into ``pixel_values`` for this variant
    (``vit_zoo.config.clip_image_processor`` with its preprocessing).

    ``source`` is a zoo entry, its name (or OpenAI name, e.g. ``"ViT-B/32"``), or a ``VitZooConfig``
    (``VitZooConfig.image_processor``: the preprocessing of its timm ``pretrained_cfg``, else OpenAI's).
    ``backend`` is ``"pil"`` (``CLIPImageProcessorPil``, OpenAI's exact pixels) or ``"torchvision"``
    (``CLIPImageProcessor``).

    Raises:
        ValueError: unknown ``backend``, a variant that does not take 3-channel images, or a mean/std
            without 3 values.
    """
    from .config import clip_image_processor

    if isinstance(source, str):
        source = get_entry(source)
    if not isinstance(source, ZooEntry):
        return source.image_processor(backend)
    if source.geometry.in_channels != 3:
        raise ValueError(
            f"CLIPImageProcessor prepares RGB images, but this variant takes {source.geometry.in_channels} channels; "
            f"prepare its pixel_values yourself"
        )
    preprocessing = source.preprocessing
    return clip_image_processor(
        source.input_resolution,
        preprocessing.crop_pct,
        preprocessing.interpolation,
        preprocessing.mean,
        preprocessing.std,
        backend,
    )


def load_image_processor(path: str | os.PathLike) -> CLIPImageProcessorPil:
    """The ``CLIPImageProcessorPil`` a ``preprocessor_config.json`` describes, every value checked
    (``read_preprocessor_config``).

    vit_zoo builds the processor itself instead of asking ``AutoImageProcessor``: a folder's ``auto_map`` is never
    followed, so no repo code can be offered or run. Raises ``ValueError`` naming the file and the field.
    """
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**read_preprocessor_config(path))


def read_preprocessor_config(path: str | os.PathLike) -> dict[str, Any]:
    """The settings of a ``preprocessor_config.json`` as ``CLIPImageProcessorPil`` arguments, each checked: OpenAI's
    steps all on, a square crop, a resize within reach of it, a PIL filter and a normalisation that keeps pixels
    finite. Reads the file alone (no transformers, no torch); ``ValueError`` naming the file and the field."""
    path = Path(path)
    settings = read_json_object(path)
    kind = settings.get("image_processor_type", PROCESSOR_TYPES[0])
    if kind not in PROCESSOR_TYPES:
        raise ValueError(f"{path}: image_processor_type {shown(kind)} is not CLIP's; vit_zoo folders use {PROCESSOR_TYPES[0]}")
    for step in _STEPS:
        if settings.get(step, True) is not True:
            raise ValueError(f"{path}: {step} must be true in a vit_zoo folder (OpenAI's preprocessing does every step)")
    crop = _side(path, settings, "crop_size", "height")
    if _side(path, settings, "crop_size", "width") != crop:
        raise ValueError(f"{path}: crop_size must be square (height == width), got {shown(settings['crop_size'])}")
    shortest_edge = _side(path, settings, "size", "shortest_edge")
    if not crop <= shortest_edge <= MAX_RESIZE_FACTOR * crop:
        raise ValueError(
            f"{path}: size.shortest_edge {shortest_edge} must lie between crop_size ({crop}) and {MAX_RESIZE_FACTOR}x it"
        )
    resample = settings.get("resample", int(Resampling.BICUBIC))
    if type(resample) is not int or resample not in set(Resampling):
        raise ValueError(f"{path}: resample {shown(resample)} is not a PIL resampling filter (0-5; bicubic is 3)")
    mean, std = (_channel_values(path, settings, field) for field in ("image_mean", "image_std"))
    if min(std) <= 0:
        raise ValueError(f"{path}: image_std {std} must be positive (a zero std divides by zero: NaN embeddings)")
    rescale_factor = settings.get("rescale_factor", 1 / 255)
    if not _finite_number(rescale_factor) or rescale_factor <= 0:
        raise ValueError(f"{path}: rescale_factor {shown(rescale_factor)} must be a positive number (1/255 for 8-bit images)")
    reach = max(max(abs(mean[c]), abs(255 * rescale_factor - mean[c])) / std[c] for c in range(3))
    if not reach <= MAX_NORMALISED_PIXEL:
        raise ValueError(
            f"{path}: rescale_factor, image_mean and image_std map 8-bit pixels as far as {reach:.3g} from 0, past "
            f"{MAX_NORMALISED_PIXEL:g} (OpenAI's map them within 2.2; extreme values make NaN embeddings); fix these fields"
        )
    return {
        "size": {"shortest_edge": shortest_edge},
        "crop_size": {"height": crop, "width": crop},
        "resample": resample,
        "image_mean": mean,
        "image_std": std,
        "rescale_factor": rescale_factor,
    }


def _finite_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _side(path: Path, settings: dict, field: str, key: str) -> int:
    value = settings.get(field)
    side = value.get(key) if isinstance(value, dict) else None
    if type(side) is not int or side < 1:
        raise ValueError(f"{path}: {field}.{key} must be a positive int, got {shown(side)}")
    return side


def _channel_values(path: Path, settings: dict, field: str) -> list[float]:
    values = settings.get(field)
    if not isinstance(values, list) or len(values) != 3 or not all(map(_finite_number, values)):
        raise ValueError(f"{path}: {field} must be 3 finite numbers (one per RGB channel), got {shown(values)}")
    return values
