"""vit_zoo: OpenAI CLIP's vision tower for timm and transformers, with patch features and attention maps.

Importing it registers the zoo with timm and ``vit_zoo`` with transformers' Auto classes: at once for
those already imported, otherwise as soon as they are (see ``vit_zoo.registration``). The public names
below load their module on first use (PEP 562), so ``import vit_zoo`` and the ``vit-zoo`` command start
without importing torch, timm or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__, check_no_namesake
from .registration import register_on_import

check_no_namesake()

# Public name -> the module that defines it.
_EXPORTS = {
    "CheckpointError": "errors",
    "CliError": "errors",
    "DownloadError": "errors",
    "FolderError": "errors",
    "HubError": "errors",
    "OutputError": "errors",
    "OutputExistsError": "errors",
    "UnknownVariantError": "errors",
    "ZooConfigError": "errors",
    "Geometry": "spec",
    "TowerOutput": "model",
    "VisionTransformer": "model",
    "VitZooConfig": "config",
    "VitZooForImageClassification": "modeling",
    "VitZooModel": "modeling",
    "VitZooModelOutput": "modeling",
    "TimmVisionTransformer": "vision_transformer",
    "ZooEntry": "zoo",
    "get_entry": "zoo",
    "list_entries": "zoo",
    "register_config": "zoo",
    "unregister_config": "zoo",
    "check_folder": "folder_check",
    "save_folder": "folder",
    "save_model_folder": "folder",
    "convert_checkpoint": "convert",
    "image_processor_for": "image_processing",
    "load_checkpoint": "readers",
    "infer_geometry": "state_dicts",
    "to_hf_clip_state_dict": "state_dicts",
    "to_vit_zoo_state_dict": "state_dicts",
    "pull": "hub",
    "push_folder": "hub",
    "push_to_hub": "hub",
    "export": "exporter",
    "OnnxRuntimeModel": "exporter",
}
__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:  # what type checkers and the API reference see
    from .config import VitZooConfig
    from .convert import convert_checkpoint
    from .errors import (
        CheckpointError,
        CliError,
        DownloadError,
        FolderError,
        HubError,
        OutputError,
        OutputExistsError,
        UnknownVariantError,
        ZooConfigError,
    )
    from .exporter import OnnxRuntimeModel, export
    from .folder import save_folder, save_model_folder
    from .folder_check import check_folder
    from .hub import pull, push_folder, push_to_hub
    from .image_processing import image_processor_for
    from .model import TowerOutput, VisionTransformer
    from .modeling import VitZooForImageClassification, VitZooModel, VitZooModelOutput
    from .readers import load_checkpoint
    from .spec import Geometry
    from .state_dicts import infer_geometry, to_hf_clip_state_dict, to_vit_zoo_state_dict
    from .vision_transformer import TimmVisionTransformer
    from .zoo import ZooEntry, get_entry, list_entries, register_config, unregister_config


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vit_zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


register_on_import()
