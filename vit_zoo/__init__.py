"""vit_zoo: OpenAI CLIP's vision tower for timm and transformers, with patch features and attention maps."""

__version__ = "0.1.0"  # first: modules imported below read it

from . import _timm  # noqa: F401  (registers the zoo with timm)
from .config import VitZooConfig
from .model import VisionTransformer
from .zoo import ZooEntry, get_entry, list_entries, register_config

__all__ = [
    "VisionTransformer",
    "VitZooConfig",
    "ZooEntry",
    "get_entry",
    "list_entries",
    "register_config",
]
