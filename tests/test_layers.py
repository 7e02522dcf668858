"""The package's layers only look down: every import between vit_zoo's modules, lazy ones inside functions
included, goes to the same layer or one above it, and no chain of imports comes back to where it started.

The order is the one docs/architecture.md draws; a new module must be given its layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vit_zoo"

LAYERS = [
    ("core", {"_version", "errors", "files", "spec", "model"}),
    ("data", {"config", "zoo", "download", "readers", "outputs"}),
    ("state dicts", {"state_dicts"}),
    ("adapters", {"modeling", "image_processing", "vision_transformer", "registration"}),
    ("folder format", {"card", "folder_check", "folder"}),
    ("pipelines", {"convert", "hub"}),
    ("faces", {"embed_inputs", "embed_data", "shards", "visualize", "embed", "exporter", "cli", "__main__", "__init__"}),
]
LAYER_OF = {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}


def package_imports(path: Path) -> set[str]:
    """The vit_zoo modules ``path`` imports anywhere in its body (``from . import x``, ``from .x import y``,
    ``import vit_zoo.x``, ``from vit_zoo.x import y``), under ``if TYPE_CHECKING`` and inside functions too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or node.module == "vit_zoo" or (node.module or "").startswith("vit_zoo."):
                base = (node.module or "").removeprefix("vit_zoo").lstrip(".")
                if base:
                    found.add(base.split(".")[0])
                else:  # from . import x, y: each name is a module, or a name of __init__
                    found.update(alias.name if (PACKAGE / f"{alias.name}.py").exists() else "__init__" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("vit_zoo."))
            found.update("__init__" for alias in node.names if alias.name == "vit_zoo")
    found.discard(path.stem)
    return found


GRAPH = {path.stem: package_imports(path) for path in sorted(PACKAGE.glob("*.py"))}


def test_every_module_has_a_layer():
    assert sorted(set(GRAPH) - set(LAYER_OF)) == []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_look_down(module):
    upward = sorted(name for name in GRAPH[module] if LAYER_OF[name] > LAYER_OF[module])
    assert upward == [], f"vit_zoo.{module} ({LAYERS[LAYER_OF[module]][0]}) imports from a layer below it: {upward}"


def test_no_import_cycle():
    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        for name in sorted(GRAPH[module]):
            if name in path:
                return path[path.index(name) :] + [name]
            found = cycle_from(name, [*path, name])
            if found:
                return found
        return None

    cycles = [cycle for module in sorted(GRAPH) if (cycle := cycle_from(module, [module]))]
    assert cycles == [], " -> ".join(cycles[0])


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(
        "from . import model, __version__\nfrom .zoo import get_entry\nimport vit_zoo.hub\n\n"
        "def later():\n    from vit_zoo.folder import save_folder\n    import vit_zoo\n"
    )
    assert package_imports(source) == {"model", "__init__", "zoo", "hub", "folder"}
