"""The vit_zoo folder: one folder that timm, transformers (installed or as remote code) and vit_zoo all load.

What it holds: ``model.safetensors`` with the bare tower names (``conv1.weight``...; sharded with an index
past ``max_shard_size``), one ``config.json`` holding both transformers' keys (``model_type``,
``architectures``, ``auto_map``, geometry) and timm's (``architecture``, ``num_classes``, ``num_features``,
``pretrained_cfg``, ``model_args``), ``preprocessor_config.json`` (for RGB models), the remote-code files
(``vit_zoo.folder_check.REMOTE_CODE_FILES``) and a model card (``README.md``).

``save_folder`` / ``save_model_folder`` write it; ``vit_zoo.folder_check`` checks one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import save_torch_state_dict
from transformers.dynamic_module_utils import custom_object_save

from .card import Provenance, model_card
from .config import VitZooConfig
from .errors import OutputExistsError
from .model import VisionTransformer
from .modeling import VitZooModel, VitZooPreTrainedModel, remote_auto_map
from .vision_transformer import TimmVisionTransformer, openai_state_dict, timm_config_dict, timm_model_args
from .zoo import ZooEntry, list_entries

__all__ = ["save_folder", "save_model_folder"]

DEFAULT_MAX_SHARD_SIZE = "5GB"


def save_folder(
    state_dict: Mapping[str, torch.Tensor],
    config: VitZooConfig,
    folder: str | os.PathLike,
    *,
    entry: ZooEntry | None = None,
    provenance: Provenance | None = None,
    timm_keys: Mapping[str, Any] | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Write the one folder that timm, transformers (installed or remote code) and vit_zoo all load.

    Args:
        state_dict: the tower's tensors with bare names (``conv1.weight`` ... ``proj``),
            saved in their own dtype.
        config: the geometry; ``config.json`` also gets ``architectures``, ``auto_map``, ``dtype`` and timm's keys.
        folder: an empty or missing folder.
        entry: the zoo variant the weights belong to (preprocessing, license, timm pretrained cfg).
        provenance: what the model card says about the source (``Provenance``).
        timm_keys: timm's ``config.json`` keys (default: from ``entry``, else the closest zoo variant, with
            ``config``'s geometry as ``model_args``).
        max_shard_size: size past which ``model.safetensors`` is split into shards with an index.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise OutputExistsError(f"{folder} is not empty; save into a new folder")
    save_torch_state_dict(dict(state_dict), folder, max_shard_size=max_shard_size, metadata={"format": "pt"})
    combined = VitZooConfig.from_dict(config.to_dict())
    combined.architectures = [VitZooModel.__name__]
    combined.auto_map = remote_auto_map()
    combined.dtype = _storage_dtype(state_dict)
    # timm's pretrained_cfg in config.json would otherwise make AutoImageProcessor ignore preprocessor_config.json
    combined.image_processor_type = "CLIPImageProcessor"
    if provenance is not None and provenance.note:
        combined.provenance_note = provenance.note
    for key, value in (timm_keys or _timm_keys(config, entry)).items():
        setattr(combined, key, value)
    # config.json, config.py for remote code, and the preprocessing its timm pretrained_cfg states (RGB towers)
    combined.save_pretrained(folder)
    custom_object_save(VitZooModel, folder)  # modeling.py and its siblings
    (folder / "README.md").write_text(model_card(config, entry, provenance), encoding="utf-8")
    return folder


def save_model_folder(
    model: VisionTransformer | VitZooPreTrainedModel | TimmVisionTransformer,
    folder: str | os.PathLike,
    *,
    entry: ZooEntry | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """``save_folder`` for a model in memory: a timm model (``timm.create_model("vit_zoo_...")``), a
    ``VitZooModel`` or a core ``VisionTransformer``."""
    timm_keys = None
    # the three kinds of model hold the tower's tensors under three layouts
    if isinstance(model, TimmVisionTransformer):
        geometry, state_dict, timm_keys = model.visual.geometry, openai_state_dict(model), timm_config_dict(model)
        if entry is None:
            architecture = getattr(model, "pretrained_cfg", {}).get("architecture")
            entry = next((e for e in list_entries() if e.name == architecture), None)
    elif isinstance(model, VitZooPreTrainedModel):
        geometry, state_dict = model.visual.geometry, model.visual.state_dict()
    elif isinstance(model, VisionTransformer):
        geometry, state_dict = model.geometry, model.state_dict()
    else:
        raise TypeError(f"expected a vit_zoo model (timm, transformers or core), got {type(model).__name__}")
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    config = VitZooConfig(**geometry)
    return save_folder(tensors, config, folder, entry=entry, timm_keys=timm_keys, max_shard_size=max_shard_size)


def _storage_dtype(state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    dtypes = {tensor.dtype for tensor in state_dict.values() if tensor.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _closest_entry(config: VitZooConfig) -> ZooEntry:
    """The zoo variant sharing most of ``config``'s geometry: timm's ``architecture`` for weights of unknown origin
    (``model_args`` then carry the exact geometry)."""
    geometry = config.geometry
    return max(list_entries(), key=lambda entry: sum(entry.geometry[k] == v for k, v in geometry.items()))


def _timm_keys(config: VitZooConfig, entry: ZooEntry | None) -> dict[str, Any]:
    base = entry if entry is not None else _closest_entry(config)
    keys = timm_config_dict(base, next(iter(base.pretrained), None) if entry is not None else None)
    model_args = timm_model_args(config.geometry)
    keys["model_args"] = dict(model_args, num_classes=config.output_dim)
    keys["num_classes"], keys["num_features"] = config.output_dim, config.width
    keys["pretrained_cfg"].update(
        num_classes=config.output_dim, input_size=(config.in_channels, config.input_resolution, config.input_resolution)
    )
    if entry is None:
        keys["pretrained_cfg"].pop("tag", None)
    return keys
