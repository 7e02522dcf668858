"""Fixtures shared by the test files (pytest finds them here; no imports needed)."""

from __future__ import annotations

import pytest

from vit_zoo import zoo

pytest_plugins = ["hub_server"]  # its hub_server fixture, for every test file
# tests/upstream_transformers/ holds modules copied into transformers' test package (tests/upstream.py), not tests.
collect_ignore = ["upstream_transformers"]


@pytest.fixture
def scratch_zoo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variants registered (or refused) during the test, and listeners added, leave the zoo with it.

    A leaked variant changes what other tests see: a folder saved for weights of unknown origin names the
    closest zoo variant, so a registered twin of the tiny test geometry would take its place.
    """
    monkeypatch.setattr(zoo, "_registry", dict(zoo._registry))
    monkeypatch.setattr(zoo, "_listeners", list(zoo._listeners))
