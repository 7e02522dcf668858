"""The README's main job runs offline, reports agreement, keeps its folder, says its weights are random and names a
next command that runs as printed."""

import json
import os
import shlex
import subprocess
import sys

from helpers import REPO_ROOT


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
    workdir = tmp_path / "vit-zoo-demo"
    folder = workdir / "converted"
    assert (folder / "model.safetensors").is_file() and not (folder / "left-from-an-earlier-run.txt").exists()
    assert "it is kept in vit-zoo-demo/converted" in result.stdout
    # nothing undocumented left beside what the docstring names, and nothing private to the user
    assert sorted(p.name for p in workdir.iterdir()) == ["ViT-B-32-2blocks.pt", "converted", "example.png"]
    assert all(path.stat().st_mode & 0o044 for path in workdir.rglob("*") if path.is_file())
    # the folder says that its weights are random, in its card and its config
    card = (folder / "README.md").read_text()
    assert "> **Note:** random weights (vit-zoo's offline demo)" in card
    assert json.loads((folder / "config.json").read_text())["provenance_note"].startswith("random weights")

    printed = result.stdout.strip().splitlines()[-1]
    command = shlex.split(printed)
    assert command[-7:-5] == ["embed", "vit-zoo-demo/converted"] and "vit-zoo" in command[0]
    embed = subprocess.run(printed, shell=True, capture_output=True, text=True, cwd=tmp_path)  # as a user pastes it
    assert embed.returncode == 0, embed.stderr
    assert embed.stdout.startswith("embedded 1 image into vit-zoo-demo/embeddings.safetensors")
    assert (workdir / "attention").is_dir()
