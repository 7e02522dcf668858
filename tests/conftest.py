"""Fixtures shared by the test files (pytest finds them here; no imports needed).

Read only, built once per process: ``reference_tiny_clip`` (an fp32 open_clip CLIP), ``tiny_clip`` and
``tiny_archive`` (an OpenAI-format checkpoint), ``model_folder`` (a saved vit_zoo folder), ``sharded_folder`` (the
same in shards), ``clip_vision_folder`` (a transformers CLIP folder: another model type), ``corrupt_safetensors``
(damaged weights files) and ``image`` (a PNG to embed). Per test: ``copied_folder`` (a copy of ``model_folder`` to
damage), ``read_only_folder``, ``fresh_dynamo`` and ``scratch_zoo``. Helpers that are not fixtures live in
helpers.py, hostile inputs in hostile.py.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from checkpoints import openai_clip, write_torchscript_archive
from helpers import tmpfs
from hostile import damaged_safetensors
from open_clip.model import CLIP
from PIL import Image
from reference import TINY, reference_clip

from vit_zoo import VitZooConfig, VitZooModel, save_model_folder, zoo

pytest_plugins = ["hub_server"]  # its hub_server fixture, for every test file
# tests/upstream_transformers/ holds modules copied into transformers' test package (tests/upstream.py), not tests.
collect_ignore = ["upstream_transformers"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, so that under xdist the upstream suites (minutes each) start at once, beside the rest."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def reference_tiny_clip() -> CLIP:
    """``reference.reference_clip`` of the tiny test geometry: a whole fp32 CLIP, random weights (seed 0). Read only."""
    return reference_clip(**TINY)


@pytest.fixture(scope="session")
def tiny_clip() -> CLIP:
    """A whole CLIP of the tiny test geometry as OpenAI ships one: fp16, with the scalar buffers. Read only."""
    return openai_clip(TINY)


@pytest.fixture(scope="session")
def tiny_archive(tiny_clip: CLIP, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_clip`` as an OpenAI TorchScript archive. Read only."""
    return write_torchscript_archive(tiny_clip, tmp_path_factory.mktemp("archive") / "ViT-T-8.pt")


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vit_zoo folder of the tiny geometry as ``save_model_folder`` writes it (random weights, seed 0). Read only:
    a test that damages a folder takes ``copied_folder``."""
    torch.manual_seed(0)
    return save_model_folder(VitZooModel(VitZooConfig(**TINY)).eval(), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40x48 RGB gradient PNG to embed. Read only."""
    path = tmp_path_factory.mktemp("image") / "image.png"
    Image.linear_gradient("L").convert("RGB").resize((40, 48)).save(path)
    return path


@pytest.fixture(scope="session")
def sharded_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model_folder``'s model saved in shards of at most 100 kB, with ``model.safetensors.index.json``. Read only."""
    torch.manual_seed(0)
    model = VitZooModel(VitZooConfig(**TINY)).eval()
    return save_model_folder(model, tmp_path_factory.mktemp("sharded") / "tiny", max_shard_size=100_000)


@pytest.fixture
def copied_folder(model_folder: Path, tmp_path: Path) -> Path:
    """A copy of ``model_folder`` that the test may change."""
    return Path(shutil.copytree(model_folder, tmp_path / "copy"))


@pytest.fixture(scope="session")
def clip_vision_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers ``CLIPVisionModel`` folder: a model of another type (``clip_vision_model``). Read only."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    folder = tmp_path_factory.mktemp("clip-vision")
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    CLIPVisionModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def corrupt_safetensors(model_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``model_folder``'s ``model.safetensors`` damaged three ways (``hostile.damaged_safetensors``), by name."""
    folder = tmp_path_factory.mktemp("corrupt")
    damaged = damaged_safetensors((model_folder / "model.safetensors").read_bytes())
    for name, content in damaged.items():
        (folder / f"{name}.safetensors").write_bytes(content)
    return {name: folder / f"{name}.safetensors" for name in damaged}


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may write into: a read-only tmpfs, or (for a non-root user) a folder without write mode."""
    folder = tmp_path / "read-only"
    with tmpfs(folder, "ro,size=64k") as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("root ignores file modes and may not mount here: no read-only folder to test with")
            folder.chmod(0o555)
        yield folder
        if not mounted:
            folder.chmod(0o755)


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """torch.compile's caches emptied before and after the test, so no compiled graph leaks between tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def scratch_zoo() -> Iterator[None]:
    """Variants registered during the test leave the zoo with it.

    A leaked variant changes what other tests see: a folder saved for weights of unknown origin names the
    closest zoo variant, so a registered twin of the tiny test geometry would take its place.
    """
    before = {entry.name for entry in zoo.list_entries()}
    yield
    for entry in zoo.list_entries():
        if entry.name not in before:
            zoo.unregister_config(entry.name)
