"""vit_zoo: OpenAI CLIP's vision tower for timm and transformers, with patch features and attention maps.

Importing it registers the zoo with timm and ``vit_zoo`` with transformers' Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from ._version import __version__
from .config import VitZooConfig
from .convert import convert_checkpoint
from .errors import (
    CheckpointError,
    CliError,
    DownloadError,
    FolderError,
    HubError,
    OutputError,
    UnknownVariantError,
    ZooConfigError,
)
from .folder import check_folder, save_folder, save_model_folder
from .hub import pull, push_folder, push_to_hub
from .image_processing import image_processor_for
from .model import Geometry, VisionTransformer
from .modeling import VitZooForImageClassification, VitZooModel, VitZooModelOutput
from .readers import load_checkpoint
from .state_dicts import infer_geometry, to_hf_clip_state_dict, to_vit_zoo_state_dict
from .vision_transformer import TimmVisionTransformer
from .zoo import ZooEntry, get_entry, list_entries, register_config

AutoConfig.register(VitZooConfig.model_type, VitZooConfig, exist_ok=True)
AutoModel.register(VitZooConfig, VitZooModel, exist_ok=True)
AutoModelForImageClassification.register(VitZooConfig, VitZooForImageClassification, exist_ok=True)

__all__ = [
    "CheckpointError",
    "CliError",
    "DownloadError",
    "FolderError",
    "Geometry",
    "HubError",
    "OutputError",
    "TimmVisionTransformer",
    "UnknownVariantError",
    "VisionTransformer",
    "VitZooConfig",
    "VitZooForImageClassification",
    "VitZooModel",
    "VitZooModelOutput",
    "ZooConfigError",
    "ZooEntry",
    "__version__",
    "check_folder",
    "convert_checkpoint",
    "get_entry",
    "image_processor_for",
    "infer_geometry",
    "list_entries",
    "load_checkpoint",
    "pull",
    "push_folder",
    "push_to_hub",
    "register_config",
    "save_folder",
    "save_model_folder",
    "to_hf_clip_state_dict",
    "to_vit_zoo_state_dict",
]
