"""`vit-zoo embed` at dataset scale against what a user writes by hand (timm + DataLoader), side by side.

Three parts, each optional (``--parts``):

``speed``  The same JPEGs (``--images`` of 640x480) and the same random weights, ViT-B/32 at full depth (model-bound)
           and with 2 blocks (decode-bound), in paired rounds of rotating order, each case a fresh call in this
           process (model load included, as a user's run has it):
           ``timm``     timm.create_model("local-dir:...") + timm's eval transform + DataLoader(num_workers=N,
                        batch 64) + one .npy, the ten-line script;
           ``vit_zoo``  vit_zoo.cli.main(["embed", ..., "--output-dir", ..., "--num-workers", N, "--batch-size", 64]);
           ``vit_zoo+attention`` the same with --attention-map (float16 arrays, no PNGs).
           Reported: median images/s and the medians of the per-round paired ratios with their quartiles.
``scale``  ``--tiny-images`` 32x32 PNGs through the tiny test variant in a subprocess: images/s and the peak memory
           of the process tree (PSS summed, sampled every 0.2 s; also at 10 %, 50 % and 90 % of the run: flat?).
``resume`` the same run killed with SIGKILL after half its shards, then rerun: the rerun's seconds, the shards it
           skipped and whether the result equals the uninterrupted run's bit for bit.

Results: ``benchmarks/results/embed_<device>.json`` and ``.md`` (``embed_<device>_<parts>.*`` for a subset).
Example (the figures in RESULTS.md)::

    python benchmarks/bench_embed.py --device cpu --rounds 3
    python benchmarks/bench_embed.py --device cuda --dtype bfloat16 --images 4096 --workers 16 --parts speed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from reference import TINY  # noqa: E402

from vit_zoo import VisionTransformer, cli, get_entry, save_model_folder  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def write_jpegs(folder: Path, count: int) -> Path:
    """``count`` 640x480 JPEGs (quality 90) of smooth random colour fields with fine noise, like photos to decode."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        field = Image.fromarray(rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)).resize((640, 480), Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(field, dtype=np.int16) + rng.integers(-12, 13, (480, 640, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{index:06d}.jpg", quality=90)
    return folder


def write_tiny_pngs(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    for index in range(count):
        sub = folder / f"{index // 10_000:02d}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(pixels[index % 64]).save(sub / f"{index:06d}.png")
    return folder


def b32_folder(work: Path, layers: int) -> Path:
    """ViT-B/32 with ``layers`` blocks and random weights, saved as a vit_zoo folder (timm and vit_zoo load it)."""
    torch.manual_seed(0)
    geometry = {**get_entry("ViT-B/32").model, "layers": layers}
    return save_model_folder(VisionTransformer(**geometry).eval(), work / f"b32-{layers}")


def run_timm(folder: Path, images: Path, output: Path, args) -> int:
    """The hand-written baseline: timm's model and eval transform, a DataLoader with workers, one .npy at the end."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from torch.utils.data import DataLoader, Dataset

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval().to(args.device, getattr(torch, args.dtype))
    transform = create_transform(**resolve_data_config({}, model=model))
    paths = sorted(images.glob("*.jpg"))

    class Images(Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, index: int) -> torch.Tensor:
            with Image.open(paths[index]) as image:
                return transform(image.convert("RGB"))

    loader = DataLoader(Images(), batch_size=64, num_workers=args.workers, pin_memory=args.device == "cuda")
    embeddings = []
    with torch.inference_mode():
        for batch in loader:
            embeddings.append(model(batch.to(args.device, getattr(torch, args.dtype))).float().cpu().numpy())
    np.save(output, np.concatenate(embeddings))
    return len(paths)


def run_vit_zoo(folder: Path, images: Path, output: Path, args, attention: bool = False, engine: str = "torch") -> int:
    command = ["embed", str(folder), str(images), "--output-dir", str(output), "--batch-size", "64", "--quiet"]
    command += ["--num-workers", str(args.workers), "--device", args.device, "--dtype", args.dtype]
    command += ["--engine", engine, "--cache-dir", str(output.parent / "cache")]
    if attention:
        command.append("--attention-map")
    if cli.main(command) != 0:
        raise SystemExit("vit-zoo embed failed")
    return sum(len(np.load(path, mmap_mode="r")) for path in output.glob("img_emb/*.npy"))


def speed(work: Path, args) -> list[dict]:
    images = write_jpegs(work / "jpegs", args.images)
    cases = {
        "timm": lambda folder, out: run_timm(folder, images, out.with_suffix(".npy"), args),
        "vit_zoo": lambda folder, out: run_vit_zoo(folder, images, out, args),
        "vit_zoo+attention": lambda folder, out: run_vit_zoo(folder, images, out, args, attention=True),
    }
    if args.device == "cpu":  # the ONNX files are exported into the cache before the first round (see below)
        cases["vit_zoo+onnxruntime"] = lambda folder, out: run_vit_zoo(folder, images, out, args, engine="onnxruntime")
        cases["vit_zoo+onnxruntime+attention"] = lambda folder, out: run_vit_zoo(
            folder, images, out, args, attention=True, engine="onnxruntime"
        )
    rows = []
    for layers in args.layers:
        folder = b32_folder(work, layers)
        if args.device == "cpu":
            from vit_zoo.exporter import cached_onnx

            for attention in (False, True):
                cached_onnx(folder, attention, work / "cache")
        seconds: dict[str, list[float]] = {name: [] for name in cases}
        for round_index in range(args.rounds):
            names = list(cases)
            names = names[round_index % len(names) :] + names[: round_index % len(names)]  # rotating order
            for name in names:
                output = work / f"out-{name}"
                shutil.rmtree(output, ignore_errors=True)
                output.with_suffix(".npy").unlink(missing_ok=True)
                start = time.perf_counter()
                count = cases[name](folder, output)
                seconds[name].append(time.perf_counter() - start)
                assert count == args.images, (name, count)
                print(
                    f"B/32 {layers} blocks, round {round_index + 1}: {name:<18} {args.images / seconds[name][-1]:7.2f} img/s",
                    flush=True,
                )
        for name in cases:
            ratios = [t_timm / t for t_timm, t in zip(seconds["timm"], seconds[name])]
            rows.append(
                {
                    "model": f"B/32, {layers} blocks",
                    "case": name,
                    "images_per_s": round(args.images / statistics.median(seconds[name]), 2),
                    "x_timm": _quartiles(ratios),
                    "x_vit_zoo_time": _quartiles([t / t_plain for t, t_plain in zip(seconds[name], seconds["vit_zoo"])]),
                    "seconds": [round(value, 2) for value in seconds[name]],
                }
            )
    return rows


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [round(values[0], 3)] * 3
    low, median, high = statistics.quantiles(values, n=4, method="inclusive")
    return [round(median, 3), round(low, 3), round(high, 3)]


def tree_rss(process: psutil.Process) -> int:
    """The memory of a process and its loader workers: the sum of their PSS (proportional set size), so that the
    pages the forked workers share with their parent (torch's libraries, the model) count once."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def embed_subprocess(folder: Path, images: Path, output: Path, args, kill_after_shards: int | None = None) -> dict:
    """Run ``vit-zoo embed`` on the tiny images in a subprocess, sampling the process tree's RSS; with
    ``kill_after_shards``, SIGKILL it once that many shards are complete."""
    command = [sys.executable, "-m", "vit_zoo", "embed", str(folder), str(images), "--output-dir", str(output)]
    command += ["--shard-size", str(args.shard_size), "--batch-size", "256", "--num-workers", str(args.workers), "--quiet"]
    start = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    watched, samples = psutil.Process(process.pid), []
    while process.poll() is None:
        done = len(list(output.glob("done/*.json")))
        samples.append((time.perf_counter() - start, tree_rss(watched), done))
        if kill_after_shards is not None and done >= kill_after_shards:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            break
        time.sleep(0.2)
    stdout = process.communicate(timeout=60)[0]
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "samples": samples, "stdout": stdout.strip(), "returncode": process.returncode}


def scale_and_resume(work: Path, args) -> dict:
    images = write_tiny_pngs(work / "tiny-images", args.tiny_images)
    torch.manual_seed(0)
    folder = save_model_folder(VisionTransformer(**TINY).eval(), work / "tiny")
    whole = embed_subprocess(folder, images, work / "whole", args)
    shards = -(-args.tiny_images // args.shard_size)
    peak = max(rss for _, rss, _ in whole["samples"])
    by_progress = {}
    for fraction in (0.1, 0.5, 0.9):
        sample = min(whole["samples"], key=lambda s: abs(s[2] - fraction * shards))
        by_progress[f"{int(fraction * 100)}%"] = round(sample[1] / 2**20)
    result = {
        "images": args.tiny_images,
        "shards": shards,
        "seconds": round(whole["seconds"], 1),
        "images_per_s": round(args.tiny_images / whole["seconds"], 1),
        "peak_rss_mb": round(peak / 2**20),
        "rss_mb_by_progress": by_progress,
        "summary": whole["stdout"],
    }
    if "resume" in args.parts:
        killed = embed_subprocess(folder, images, work / "resumed", args, kill_after_shards=shards // 2)
        complete = len(list((work / "resumed").glob("done/*.json")))
        rerun = embed_subprocess(folder, images, work / "resumed", args)
        identical = _tree_bytes(work / "resumed") == _tree_bytes(work / "whole")
        result["resume"] = {
            "killed_after_s": round(killed["seconds"], 1),
            "complete_when_killed": complete,
            "rerun_s": round(rerun["seconds"], 1),
            "rerun_summary": rerun["stdout"],
            "bit_identical_to_uninterrupted": identical,
        }
    return result


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def markdown(report: dict) -> str:
    lines = [f"# vit-zoo embed, {report['device']}", "", f"{report['machine']}; load average {report['load']}", ""]
    if report.get("speed"):
        lines += [
            "| model | case | images/s | × timm (paired, [quartiles]) | time ÷ vit_zoo plain |",
            "|---|---|---:|---:|---:|",
        ]
        for row in report["speed"]:
            ratio, low, high = row["x_timm"]
            time_ratio, time_low, time_high = row["x_vit_zoo_time"]
            lines.append(
                f"| {row['model']} | {row['case']} | {row['images_per_s']} | {ratio} [{low}–{high}] | "
                f"{time_ratio} [{time_low}–{time_high}] |"
            )
    if report.get("scale"):
        scale = report["scale"]
        lines += [
            "",
            f"- {scale['images']} images of 32×32 (tiny variant, {scale['shards']} shards): {scale['images_per_s']} images/s, "
            f"peak memory of the process tree (PSS) {scale['peak_rss_mb']} MB; by progress {scale['rss_mb_by_progress']} MB",
        ]
        if "resume" in scale:
            resume = scale["resume"]
            lines.append(
                f"- killed with SIGKILL after {resume['killed_after_s']} s ({resume['complete_when_killed']} shards complete); "
                f"the rerun took {resume['rerun_s']} s (`{resume['rerun_summary']}`); bit-identical to the uninterrupted "
                f"run: {resume['bit_identical_to_uninterrupted']}"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--parts", nargs="+", default=["speed", "scale", "resume"], choices=("speed", "scale", "resume"))
    parser.add_argument("--images", type=int, default=512, help="640x480 JPEGs for the speed part")
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 2], help="B/32 depths for the speed part")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="loader workers for every case")
    parser.add_argument("--tiny-images", type=int, default=100_000)
    parser.add_argument("--shard-size", type=int, default=5_000)
    parser.add_argument("--work", type=Path, help="keep the images and outputs here (default: a temporary folder)")
    args = parser.parse_args()
    report = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.dtype}, {args.workers} loader workers",
        "load": None,
    }
    load_start = os.getloadavg()[0]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        if "speed" in args.parts:
            report["speed"] = speed(work, args)
        if "scale" in args.parts or "resume" in args.parts:
            report["scale"] = scale_and_resume(work, args)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report["load"] = f"{load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"embed_{'cpu' if args.device == 'cpu' else 'cuda'}"
    if set(args.parts) != {"speed", "scale", "resume"}:  # a partial run does not overwrite a whole one
        name += "_" + "-".join(sorted(args.parts))
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
