"""``vit_zoo.cli``: the ``vit-zoo`` command as a user meets it: quick answers, quiet pipes, ``--debug`` anywhere (the
traceback, ending in the one line), plain errors, files written under the user's umask, checks the CLI makes before
any work (an embeddings file's names past the safetensors header cap).

The cases run the real command in a fresh interpreter (``python -m vit_zoo``), since start-up imports, TTY detection
and exit codes are what is tested; the header-cap check calls ``vit_zoo.cli.main`` in this process, with the cap
lowered.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import socket
import stat
import struct
import subprocess
import sys
import termios

import pytest
import torch
from helpers import assert_cli_error, call_main, run_cli
from reference import TINY

from vit_zoo import VisionTransformer, cli

HEAVY = ("torch", "timm", "transformers", "torchvision", "huggingface_hub")
# Runs main() in a fresh interpreter and reports which heavy libraries the command imported.
IMPORTS_OF = """
import json, sys
from vit_zoo.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"heavy": sorted(set(HEAVY) & set(sys.modules)), "code": code}), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args, code, output",
    [
        (["--help"], 0, "usage: vit-zoo"),
        (["list"], 0, "vit_zoo_base_patch16_clip_224"),
        (["list", "--names-only"], 0, "vit_zoo_large_patch14_clip_336"),
        (["--version"], 0, "vit-zoo-clip "),
        (["convert", "--help"], 0, "--dtype {float32,float16,bfloat16}"),
        (["convert"], 2, "the following arguments are required: SRC, --output"),
        (["embed", "model"], 2, "the following arguments are required: IMAGE_OR_DIR"),
        (["convert", "x.pt", "--output", "out", "--dtype", "float64"], 2, "invalid choice: 'float64'"),
        (["nope"], 2, "invalid choice: 'nope'"),
        (["export", "--help"], 0, "--format {onnx,pt2,aoti}"),
        (["export", "m", "--output", "x.onnx", "--format", "tflite"], 2, "invalid choice: 'tflite'"),
        (["export", "m", "--output", "x.pt2"], 1, "--output must end in .onnx for --format onnx, got x.pt2"),
        (["push", "/nonexistent", "org/x"], 1, "/nonexistent is not a folder; give the --output folder of `vit-zoo convert`"),
        (["embed", "m", "/nonexistent.png", "-o", "e.npy"], 1, "/nonexistent.png does not exist"),
        (["embed", "m", "/nonexistent.png", "-o", "e.npy", "--batch-size", "0"], 1, "--batch-size must be"),
    ],
)
def test_help_list_and_argument_errors_import_no_heavy_library(args, code, output):
    script = f"HEAVY = {HEAVY!r}\n" + IMPORTS_OF
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report == {"heavy": [], "code": code}, result.stderr
    assert output in result.stdout + result.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_before_or_after_the_subcommand(tmp_path, where):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    message = (
        "notes.txt is not a checkpoint (unknown file type); expected an OpenAI CLIP .pt archive, a torch.save state "
        "dict or a .safetensors file"
    )
    command = ["convert", "notes.txt", "--output", "out"]
    plain = run_cli(*command, cwd=tmp_path)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1 and plain.stderr.startswith("vit-zoo convert: error:")
    assert plain.stderr.rstrip().endswith(message), plain.stderr
    debug = run_cli(*(["--debug", *command] if where == "before" else [*command, "--debug"]), cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.rstrip().endswith(message) and "vit_zoo/readers.py" in debug.stderr, debug.stderr
    assert not (tmp_path / "out").exists()


def test_embed_through_a_pipe_prints_no_progress_bar(tmp_path, model_folder, image):
    result = run_cli("embed", str(model_folder), str(image), "--output", str(tmp_path / "emb.safetensors"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"embedded 1 image into {tmp_path / 'emb.safetensors'} (0 skipped)\n"
    assert result.stderr == ""


def _on_a_terminal(args: list[str]) -> tuple[int, str]:
    """Run ``vit-zoo ARGS`` with stderr on a pseudo-terminal; return the exit code and what reached it."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 0x0 terminal gets empty bars
    process = subprocess.Popen(
        [sys.executable, "-m", "vit_zoo", *args], stdout=subprocess.DEVNULL, stderr=terminal, stdin=subprocess.DEVNULL
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closes when the process exits
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return process.wait(timeout=600), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bars_on_a_terminal_unless_quiet(tmp_path, model_folder, image, quiet):
    args = ["embed", str(model_folder), str(image), "--output", str(tmp_path / "emb.safetensors")]
    code, terminal = _on_a_terminal([*args, "--quiet"] if quiet else args)
    assert code == 0, terminal
    assert ("embedding" in terminal) is not quiet, terminal  # the tqdm bar's label
    assert ("%|" in terminal) is not quiet, terminal


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the socket is closed


def test_pull_says_at_once_that_the_hub_cannot_be_reached(tmp_path):
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path)}
    result = run_cli("pull", "your-name/vit-b-16", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("vit-zoo pull: error: cannot reach the Hub at http://127.0.0.1:"), result.stderr
    assert "Retrying" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_pull_honours_hf_hub_offline(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    result = run_cli("pull", "your-name/vit-b-16", env=env)
    assert result.returncode == 1
    assert result.stderr == (
        "vit-zoo pull: error: your-name/vit-b-16 is not in the local cache and HF_HUB_OFFLINE is set; pull it once online\n"
    )


def test_written_files_honour_the_umask(tmp_path, model_folder, image):
    """A converted folder and an embeddings file are meant to be shared or served: 0644 under umask 022."""
    checkpoint = tmp_path / "clip.pt"
    state_dict = {f"visual.{name}": value for name, value in VisionTransformer(**TINY).state_dict().items()}
    torch.save(state_dict, checkpoint)
    commands = [
        ["convert", str(checkpoint), "--output", str(tmp_path / "converted")],
        ["embed", str(model_folder), str(image), "--output", str(tmp_path / "emb.npy")],
    ]
    for command in commands:
        result = run_cli(*command, preexec_fn=lambda: os.umask(0o022))
        assert result.returncode == 0, result.stderr
    written = [*(tmp_path / "converted").iterdir(), tmp_path / "emb.npy", tmp_path / "emb.npy.files.txt"]
    modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in written}
    assert set(modes.values()) == {"0o644"}, modes
    assert oct(stat.S_IMODE((tmp_path / "converted").stat().st_mode)) == "0o755"


def test_names_past_a_safetensors_header_are_refused_before_the_work(model_folder, tmp_path, monkeypatch, capsys):
    """8 200 long names failed after all the work with "header too large; choose ... a writable disk"."""
    monkeypatch.setattr(cli, "SAFETENSORS_MAX_HEADER", 2 << 20)  # the real cap is 100 MB of names
    listing = tmp_path / "paths.txt"
    listing.write_text("".join(f"{tmp_path}/{'x' * 1000}{i}.png\n" for i in range(1200)))
    message = assert_cli_error(
        call_main(capsys, "embed", model_folder, listing, "--output", tmp_path / "e.safetensors"), "embed", "1200 file names take"
    )
    assert "use a .npy --output (names in <output>.files.txt) or --output-dir" in message
    assert sorted(path.name for path in tmp_path.iterdir()) == ["paths.txt"]
