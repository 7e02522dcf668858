"""vit_zoo: OpenAI CLIP's vision tower for timm and transformers, with patch features and attention maps.

Importing it registers the zoo with timm and ``vit_zoo`` with transformers' Auto classes.
"""

__version__ = "0.1.0"  # first: modules imported below read it

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from . import vision_transformer  # noqa: F401  (registers the zoo with timm)
from .config import VitZooConfig
from .image_processing import image_processor_for
from .model import VisionTransformer
from .modeling import VitZooForImageClassification, VitZooModel, VitZooModelOutput
from .zoo import ZooEntry, get_entry, list_entries, register_config

AutoConfig.register(VitZooConfig.model_type, VitZooConfig, exist_ok=True)
AutoModel.register(VitZooConfig, VitZooModel, exist_ok=True)
AutoModelForImageClassification.register(VitZooConfig, VitZooForImageClassification, exist_ok=True)

__all__ = [
    "VisionTransformer",
    "VitZooConfig",
    "VitZooForImageClassification",
    "VitZooModel",
    "VitZooModelOutput",
    "ZooEntry",
    "get_entry",
    "image_processor_for",
    "list_entries",
    "register_config",
]
