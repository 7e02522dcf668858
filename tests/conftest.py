"""Fixtures shared by the test files (pytest finds them here; no imports needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from checkpoints import openai_clip, write_torchscript_archive
from open_clip.model import CLIP
from reference import TINY

from vit_zoo import zoo

pytest_plugins = ["hub_server"]  # its hub_server fixture, for every test file
# tests/upstream_transformers/ holds modules copied into transformers' test package (tests/upstream.py), not tests.
collect_ignore = ["upstream_transformers"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, so that under xdist the upstream suites (minutes each) start at once, beside the rest."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def tiny_clip() -> CLIP:
    """A whole CLIP of the tiny test geometry as OpenAI ships one: fp16, with the scalar buffers. Read only."""
    return openai_clip(TINY)


@pytest.fixture(scope="session")
def tiny_archive(tiny_clip: CLIP, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_clip`` as an OpenAI TorchScript archive. Read only."""
    return write_torchscript_archive(tiny_clip, tmp_path_factory.mktemp("archive") / "ViT-T-8.pt")


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
