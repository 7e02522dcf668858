"""How fast, and with how little memory, vit-zoo refuses hostile inputs: pickle bombs, regex-hostile archives,
devices and pipes, endless downloads, image bombs, folders whose config claims a huge model (through every
loader), oversized configs and headers, absurd preprocessing and float64 weights past float32.

Each case runs in this process after its fixtures are built; the peak resident memory is reset before it
(``/proc/self/clear_refs``), so "extra MB" is what the refusal itself took beyond the memory already held. The
``vit-zoo`` cases run the command as a user does, in a process of its own: their time is the whole run's and their
MB the process's peak, interpreter and imports included.
Prints one row per case and the worst time and memory; the goal is < 1 s and < 100 MB for every case.

    python benchmarks/bench_hostile.py [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import timm  # noqa: E402
import torch  # noqa: E402
from checkpoints import openai_clip, write_torchscript_archive  # noqa: E402
from file_server import FileServer  # noqa: E402
from PIL import Image  # noqa: E402
from reference import TINY  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from vit_zoo import (  # noqa: E402
    VisionTransformer,
    VitZooConfig,
    VitZooModel,
    check_folder,
    convert_checkpoint,
    save_model_folder,  # noqa: E402
)
from vit_zoo.download import fetch_verified  # noqa: E402
from vit_zoo.embed_data import Preprocess, load_image  # noqa: E402
from vit_zoo.image_processing import image_processor_for, load_image_processor  # noqa: E402
from vit_zoo.readers import load_checkpoint  # noqa: E402

BLANK_LINES = 300_000
NESTING = 60


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(case: Callable[[], object]) -> tuple[float, float, str]:
    """Seconds, extra peak MB and the outcome (the refusal's message, or ``accepted``)."""
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _status("VmRSS")
    start = time.perf_counter()
    try:
        case()
        outcome = "accepted"
    except Exception as error:  # noqa: BLE001 - the refusal is the result
        outcome = str(error).splitlines()[0][:110]
    seconds = time.perf_counter() - start
    return seconds, (_status("VmHWM") - before) / 2**20, outcome


# Runs the command and prints its exit code and its peak RSS in KB: measured from a small parent, since a child
# forked from this process would report this process's memory as its own peak.
_LAUNCHER = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def measure_command(argv: list[str]) -> tuple[float, float, str]:
    """Seconds and peak MB of the ``vit-zoo`` process running ``argv``, and its last line on stderr (``accepted``
    when it exits 0)."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, sys.executable, "-m", "vit_zoo", *argv], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    code, peak_kb = map(int, result.stdout.split()[-2:])
    outcome = "accepted" if code == 0 else (result.stderr.strip().splitlines() or ["(no message)"])[-1][:110]
    return seconds, peak_kb / 1024, outcome


def pickle_bomb(folder: Path) -> Path:
    """A state dict whose only key is a tuple nested ``(t, t)`` NESTING deep: a few hundred bytes."""
    body = bytearray(b"\x80\x02}" + b")q\x00")
    for _ in range(NESTING):
        body += b"h\x00h\x00\x86q\x00"
    path = folder / "nested.pt"
    path.write_bytes(bytes(body) + b"Ns.")
    return path


def blank_line_archive(folder: Path) -> Path:
    """A real OpenAI-format archive whose code file has BLANK_LINES blank lines before ``__parameters__``."""
    source = write_torchscript_archive(openai_clip(dict(TINY, layers=1)), folder / "clip.pt")
    path = folder / "blank-lines.pt"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as padded:
        for info in original.infolist():
            data = original.read(info)
            if b"    __parameters__" in data:
                data = data.replace(b"    __parameters__", b"\n" * BLANK_LINES + b"    __parameters__", 1)
            padded.writestr(info.filename, data)
    return path


def image(folder: Path, name: str, mode: str, size: tuple[int, int]) -> Path:
    Image.new(mode, size).save(folder / name)
    return folder / name


def header_only_png(folder: Path) -> Path:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path = folder / "header-only.png"
    ihdr = struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def hostile_folders(work: Path) -> dict[str, Path]:
    """Copies of a tiny folder, each edited one hostile way."""
    torch.manual_seed(0)
    plain = save_model_folder(VisionTransformer(**TINY), work / "plain")

    def copy(name: str, config: dict | None = None, processor: dict | None = None) -> Path:
        folder = work / name
        shutil.copytree(plain, folder)
        for file, changes in (("config.json", config), ("preprocessor_config.json", processor)):
            if changes:
                settings = json.loads((folder / file).read_text())
                (folder / file).write_text(json.dumps({**settings, **changes}))
        return folder

    layers = copy("layers-2000", {"layers": 2000, "model_args": {"layers": 2000}})
    weights = load_file(layers / "model.safetensors")
    weights.update({f"transformer.resblocks.{i}.ln_1.weight": torch.zeros(1) for i in range(TINY["layers"], 2000)})
    save_file(weights, layers / "model.safetensors")
    zeros = copy("zero-size-tensors")
    save_file(
        {**load_file(zeros / "model.safetensors"), **{f"z{i}": torch.zeros(0) for i in range(300_000)}},
        zeros / "model.safetensors",
    )
    big = copy("config-89MB", {"junk": "x" * 89_000_000})
    rescale = copy("rescale-1e300", processor={"rescale_factor": 1e300})
    source = {f"visual.{k}": v.double() for k, v in VisionTransformer(**TINY).state_dict().items()}
    source["visual.proj"][0, 0] = 1e300
    save_file(source, work / "float64-1e300.safetensors")
    return {"layers": layers, "zeros": zeros, "big": big, "rescale": rescale, "float64": work / "float64-1e300.safetensors"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    server = FileServer().__enter__()
    server.endless.add("/endless.pt")
    try:
        nested, padded = pickle_bomb(work), blank_line_archive(work)
        wide = image(work, "wide.png", "L", (400_000, 1))
        thin = image(work, "thin.png", "1", (1, 200_000))
        header_only = header_only_png(work)
        os.mkfifo(work / "fifo")
        geometry = VitZooConfig(input_resolution=224, patch_size=32, width=64, layers=1, heads=1, output_dim=8)
        preprocess = Preprocess(image_processor_for(geometry))  # OpenAI's, at a 224-pixel edge
        folders = hostile_folders(work)
        cases: dict[str, Callable[[], object]] = {
            f"pickle: tuple nested (t, t) {NESTING} deep ({nested.stat().st_size} B)": lambda: load_checkpoint(nested),
            f"archive: {BLANK_LINES} blank lines in its code ({padded.stat().st_size >> 10} KB)": lambda: load_checkpoint(padded),
            "convert /dev/zero": lambda: load_checkpoint(Path("/dev/zero")),
            "convert a FIFO": lambda: load_checkpoint(work / "fifo"),
            f"image: 400000x1 PNG ({wide.stat().st_size} B)": lambda: load_image(wide, preprocess),
            f"image: 1x200000 1-bit PNG ({thin.stat().st_size} B)": lambda: load_image(thin, preprocess),
            f"image: header-only 20000x10000 PNG ({header_only.stat().st_size} B)": lambda: load_image(header_only, preprocess),
            "download: endless response, 64 MB cap": lambda: fetch_verified(
                f"{server.url}/endless.pt", "0" * 64, work / "cache" / "endless.pt", False, max_bytes=64 << 20
            ),
            "AutoModel: config layers=2000, a tiny tensor per block": lambda: VitZooModel.from_pretrained(folders["layers"]),
            "timm local-dir: config layers=2000, a tiny tensor per block": lambda: timm.create_model(
                f"local-dir:{folders['layers']}", pretrained=True
            ),
            "check_folder: 300000 zero-size tensors": lambda: check_folder(folders["zeros"]),
            "check_folder: an 89 MB config.json": lambda: check_folder(folders["big"]),
            "preprocessor: rescale_factor 1e300": lambda: load_image_processor(folders["rescale"] / "preprocessor_config.json"),
            "convert: a float64 weight of 1e300": lambda: convert_checkpoint(
                folders["float64"], work / "converted", name="vit_zoo_tiny_patch8_test_32"
            ),
        }
        picture = image(work, "picture.png", "RGB", (40, 30))
        commands = {
            "vit-zoo embed: config layers=2000 (whole process)": ["embed", str(folders["layers"]), str(picture)],
            "vit-zoo export: config layers=2000 (whole process)": [
                "export",
                str(folders["layers"]),
                "--format",
                "pt2",
                "-o",
                str(work / "m.pt2"),
            ],
            "vit-zoo push: rescale_factor 1e300 (whole process)": ["push", str(folders["rescale"]), "org/never-pushed"],
        }
        measured = [(name, lambda case=case: measure(case)) for name, case in cases.items()]
        measured += [(name, lambda argv=argv: measure_command(argv)) for name, argv in commands.items()]
        rows = []
        for name, run in measured:
            seconds, extra_mb, outcome = run()
            rows.append(dict(case=name, seconds=round(seconds, 4), extra_mb=round(extra_mb, 1), outcome=outcome))
            print(f"{name:<62} {seconds * 1000:8.1f} ms {extra_mb:7.1f} MB  {outcome}")
        worst_time = max(rows, key=lambda row: row["seconds"])
        worst_memory = max(rows, key=lambda row: row["extra_mb"])
        print(f"worst time:   {worst_time['seconds'] * 1000:.1f} ms ({worst_time['case']})")
        print(f"worst memory: {worst_memory['extra_mb']:.1f} MB ({worst_memory['case']})")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
    finally:
        server.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
