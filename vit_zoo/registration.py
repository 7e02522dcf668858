"""Registration with timm and transformers, done as soon as each is imported.

``import vit_zoo`` registers the zoo with timm and ``model_type="vit_zoo"`` with transformers' Auto classes
(the public contract). Importing timm costs seconds (torch, torchvision), which ``vit-zoo --help`` and
``vit-zoo list`` must not pay. So each registration runs right after the module it registers with has been
imported: at once when it already is, otherwise from a ``sys.meta_path`` finder that wraps that module's
loader. ``import vit_zoo; import timm`` and ``import timm; import vit_zoo`` both end with the entries
registered, and a program that never imports timm never pays for it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


def _register_timm_entries() -> None:
    importlib.import_module("vit_zoo.vision_transformer")  # its @register_model functions run on import


def _register_auto_config() -> None:
    from transformers.models.auto.configuration_auto import AutoConfig

    from .config import VitZooConfig

    AutoConfig.register(VitZooConfig.model_type, VitZooConfig, exist_ok=True)


def _register_auto_models() -> None:
    """Runs after either of transformers' modeling_auto and vit_zoo.modeling is imported, once both can be used.

    Importing vit_zoo.modeling imports transformers' Auto classes itself; registering from inside that import would
    meet a half-built vit_zoo.modeling, so then it waits for vit_zoo.modeling's own callback.
    """
    modeling = sys.modules.get("vit_zoo.modeling")
    if "transformers.models.auto.modeling_auto" not in sys.modules or (
        modeling is not None and not hasattr(modeling, "VitZooForImageClassification")
    ):
        return
    from transformers.models.auto.modeling_auto import AutoModel, AutoModelForImageClassification

    from .config import VitZooConfig
    from .modeling import VitZooForImageClassification, VitZooModel

    AutoModel.register(VitZooConfig, VitZooModel, exist_ok=True)
    AutoModelForImageClassification.register(VitZooConfig, VitZooForImageClassification, exist_ok=True)


# Module -> what to run once it is imported. transformers imports its Auto classes lazily, one module each.
AFTER_IMPORT: dict[str, Callable[[], None]] = {
    "timm": _register_timm_entries,
    "transformers.models.auto.configuration_auto": _register_auto_config,
    "transformers.models.auto.modeling_auto": _register_auto_models,
    "vit_zoo.modeling": _register_auto_models,
}


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: hands out the other finders' spec, its loader set to run a callback after it."""

    def __init__(self, callbacks: dict[str, Callable[[], None]]) -> None:
        self.callbacks = callbacks

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in self.callbacks:
            return None
        spec = _spec_from_other_finders(self, fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, exec_module = spec.loader, spec.loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            del loader.exec_module  # this loader instance is this module's alone; back to its class's method
            self.run(fullname)

        # importlib has no post-import hook: this loader instance (this module's alone) runs the callback after the
        # module's own code, and goes back to its class's method above
        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec

    def run(self, fullname: str) -> None:
        callback = self.callbacks.pop(fullname, None)
        if not self.callbacks and self in sys.meta_path:
            sys.meta_path.remove(self)
        if callback is not None:
            callback()


def _spec_from_other_finders(
    finder: importlib.abc.MetaPathFinder, fullname: str, path: Sequence[str] | None, target: ModuleType | None
) -> ModuleSpec | None:
    for other in sys.meta_path:
        find_spec = getattr(other, "find_spec", None)
        if other is finder or find_spec is None:
            continue
        spec = find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


def register_on_import() -> None:
    """Register with timm and transformers now for what is imported, and on import for the rest."""
    finder = _AfterImportFinder({name: callback for name, callback in AFTER_IMPORT.items()})
    imported = [name for name in finder.callbacks if name in sys.modules]
    if len(imported) < len(finder.callbacks):
        sys.meta_path.insert(0, finder)
    for name in imported:
        finder.run(name)
