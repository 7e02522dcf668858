"""The README's main job runs offline, reports agreement, keeps its folder and names a next command that works."""

import os
import shlex
import subprocess
import sys

from helpers import REPO_ROOT, run_cli


def test_offline_demo_keeps_its_folder_and_its_next_command_works(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    stale = tmp_path / "vit-zoo-demo" / "converted"
    stale.mkdir(parents=True)
    (stale / "left-from-an-earlier-run.txt").write_text("")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "conversion" / "offline_demo.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all loaders bit-identical to each other: True" in result.stdout
    assert result.stdout.count("relative error") == 4
    folder = tmp_path / "vit-zoo-demo" / "converted"
    assert (folder / "model.safetensors").is_file() and not (folder / "left-from-an-earlier-run.txt").exists()
    assert "it is kept in vit-zoo-demo/converted" in result.stdout

    next_command = shlex.split(result.stdout.strip().splitlines()[-1])
    assert next_command[:3] == ["vit-zoo", "embed", "vit-zoo-demo/converted"]
    embed = run_cli(*next_command[1:], env=env, cwd=tmp_path)
    assert embed.returncode == 0, embed.stderr
    assert embed.stdout.startswith("embedded 1 image into vit-zoo-demo/embeddings.safetensors")
    assert (tmp_path / "vit-zoo-demo" / "attention").is_dir()
