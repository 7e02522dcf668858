"""Constants and helpers the test files share (fixtures live in conftest.py, reference models in reference.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_NAME = "vit_zoo_tiny_patch8_test_32"  # configs/ geometry == reference.TINY


def run_cli(
    *args: Any, cwd: Path | None = None, env: dict[str, str] | None = None, **options: Any
) -> subprocess.CompletedProcess:
    """``python -m vit_zoo ARGS`` in a fresh interpreter, as a user runs the console script; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "vit_zoo", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
        timeout=600,
        **options,
    )
