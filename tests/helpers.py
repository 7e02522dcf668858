"""Constants and helpers the test files share (fixtures live in conftest.py, reference models in reference.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from vit_zoo import cli

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


def call_main(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    """``vit_zoo.cli.main(ARGS)`` in this process (the console script's code path, without the seconds a fresh
    interpreter spends importing torch): exit code, stdout, stderr."""
    code = cli.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_cli_error(result: tuple[int, str, str], command: str, *fragments: str) -> str:
    """Exit code 1, nothing on stdout, and one ``vit-zoo COMMAND: error:`` line (after any retry notices) holding
    every fragment; no traceback."""
    code, out, err = result
    lines = err.strip().splitlines()
    assert code == 1 and out == "", (code, out, err)
    assert lines and lines[-1].startswith(f"vit-zoo {command}: error: "), err
    assert sum("error:" in line for line in lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def listing(folder: Path) -> list[str]:
    """Every path under ``folder``, relative to it and sorted (``[]`` when it does not exist): what a run left."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[bool]:
    """Mount a tmpfs with ``options`` on ``folder`` if this process may (root with mount rights); yields whether it
    did."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield False
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def sdpa_calls(function) -> int:
    """How many times ``function()`` calls ``F.scaled_dot_product_attention``."""
    calls = []

    class Count(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            calls.extend([func] if func is torch.nn.functional.scaled_dot_product_attention else [])
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Count():
        function()
    return len(calls)
