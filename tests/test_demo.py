"""The README's main job runs offline and reports agreement."""

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_offline_demo(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "conversion" / "offline_demo.py"), "--workdir", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all loaders bit-identical to each other: True" in result.stdout
    assert result.stdout.count("relative error") == 4
    assert (tmp_path / "converted" / "model.safetensors").is_file()
