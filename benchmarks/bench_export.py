"""Exported towers against eager torch on the CPU: onnxruntime, AOTInductor, and how long the exports take.

For each ``--models`` entry (zoo or OpenAI names; random weights, the full geometry) a vit_zoo folder is saved in a
temporary folder, then:

1. Each export runs in a fresh process, as ``vit-zoo export`` does (``vit_zoo.export``): ONNX with the embedding
   only and with the attention map, ``pt2``, and the AOTInductor package (``aoti``). Reported: the seconds of the
   export call (tracing, conversion, compiling, writing and the built-in check against eager torch) and of the
   whole process (with the imports), and the file's size.
2. The cases run in this process on ``--threads`` threads at batch ``--batch-size``: eager torch (``model(x)`` and
   ``model(x, output_attention_map=True)``), ``vit_zoo.export.OnnxRuntimeModel`` on each ONNX file (idle threads
   not spinning) and the AOTInductor package. Every output is checked against eager torch first (relative L2 error
   at most 1e-5). Then the cases are timed interleaved, in a rotating order, ``--rounds`` times after ``--warmup``
   calls each; each case's speed-up is the median of the per-round paired ratios ``t_eager / t_case`` against the
   eager forward with the same outputs (> 1 is faster), with its quartiles.

    python benchmarks/bench_export.py                                   # B/32 and B/16, 2 threads, batch 8
    python benchmarks/bench_export.py --models ViT-B/32 --formats onnx  # no AOTInductor compile

Writes ``export_cpu.json`` (every sample, versions, CPU, load average at start and end) and ``export_cpu.md``
(the tables, included by docs/export.md) into ``--output-dir`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import onnxruntime
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmark this checkout's vit_zoo, installed or not

from bench_speed import cpu_flags, device_name, paired, quartiles, relative_error, time_cases  # noqa: E402

import vit_zoo  # noqa: E402
from vit_zoo import (  # noqa: E402
    OnnxRuntimeModel,  # noqa: E402
    VitZooModel,
    get_entry,
    save_model_folder,
)

TOLERANCE = 1e-5
# case -> (file name, export options, the eager case it is timed against; None: exported, not timed)
EXPORTS = {
    "onnxruntime": ("embeds.onnx", dict(format="onnx"), "torch eager"),
    "onnxruntime + attention map": ("map.onnx", dict(format="onnx", attention_map=True), "torch eager + attention map"),
    "torch.export (pt2)": ("program.pt2", dict(format="pt2"), None),
    "AOTInductor": ("aoti.pt2", dict(format="aoti"), "torch eager"),
}

# Runs in a fresh process: one export, its seconds (the call alone and the whole process) as JSON on stdout.
CHILD = r"""
import json, sys, time
started = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[4]))
import vit_zoo
call = time.perf_counter()
vit_zoo.export(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))
done = time.perf_counter()
print(json.dumps({"export_s": done - call, "process_s": done - started}))
"""


def export_in_fresh_process(folder: Path, output: Path, options: dict, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    command = [sys.executable, "-c", CHILD, str(folder), str(output), json.dumps(options), str(threads)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"exporting {output.name} failed:\n{result.stderr}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "file_mb": output.stat().st_size / 1e6}


def build_cases(folder: Path, files: dict[str, Path], threads: int) -> dict[str, tuple]:
    """name -> (forward returning the outputs as a tuple, the eager case it is compared with)."""
    core = VitZooModel.from_pretrained(folder).visual.eval()
    cases: dict[str, tuple] = {
        "torch eager": (core, None),
        "torch eager + attention map": (partial(core, output_attention_map=True), None),
    }
    for name, path in files.items():
        _, options, baseline = EXPORTS[name]
        if options["format"] == "onnx":
            maps = options.get("attention_map", False)
            model = OnnxRuntimeModel(path, threads=threads, output_attention_map=maps)
            cases[name] = (partial(model, output_attention_map=maps), baseline)
        elif options["format"] == "aoti":
            cases[name] = (partial(_call_as_tuple, torch._inductor.aoti_load_package(str(path))), baseline)
    return cases


def _call_as_tuple(compiled, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(compiled(images))


def check_agreement(cases: dict[str, tuple], images: torch.Tensor) -> dict[str, float]:
    """The largest relative error over each case's outputs against its eager case; raises past ``TOLERANCE``."""
    errors = {}
    for name, (forward, baseline) in cases.items():
        if baseline is None:
            continue
        expected, actual = cases[baseline][0](images), forward(images)
        errors[name] = max(relative_error(got, wanted) for got, wanted in zip(actual, expected))
    bad = {name: error for name, error in errors.items() if error > TOLERANCE}
    if bad:
        raise RuntimeError(f"exported outputs disagree with eager torch beyond {TOLERANCE:g}: {bad}")
    return errors


def run_model(name: str, args: argparse.Namespace, work: Path) -> dict:
    entry = get_entry(name)
    torch.manual_seed(0)
    folder = save_model_folder(VitZooModel(entry.config()).eval(), work / entry.name)
    exports, files = {}, {}
    for case, (file_name, options, _) in EXPORTS.items():
        if options["format"] in args.formats:
            files[case] = work / f"{entry.name}-{file_name}"
            exports[case] = export_in_fresh_process(folder, files[case], options, args.threads)
            print(f"{entry.name}: exported {case} in {exports[case]['export_s']:.1f} s", file=sys.stderr)
    cases = build_cases(folder, files, args.threads)
    geometry = entry.geometry
    images = torch.randn(args.batch_size, geometry.in_channels, geometry.input_resolution, geometry.input_resolution)
    with torch.inference_mode():
        errors = check_agreement(cases, images)
        samples = time_cases({case: forward for case, (forward, _) in cases.items()}, images, args.warmup, args.rounds)
    summary = {}
    for case, (_, baseline) in cases.items():
        low, ratio, high = quartiles(paired(samples[baseline], samples[case])) if baseline else (1.0, 1.0, 1.0)
        summary[case] = {
            "images_per_s": args.batch_size / statistics.median(samples[case]),
            "vs_eager": ratio,
            "vs_eager_quartiles": [low, high],
            "baseline": baseline,
            "max_relative_error": errors.get(case, 0.0),
            "samples_s": samples[case],
        }
    return {"model": entry.name, "cases": summary, "exports": exports}


def markdown(results: list[dict], env: dict) -> str:
    lines = [
        f"{env['device_name']}, {env['threads']} threads, torch {env['versions']['torch']}, onnxruntime "
        f"{env['versions']['onnxruntime']}, fp32, batch {env['batch_size']}, random weights; {env['rounds']} interleaved "
        f"rounds after {env['warmup']} warm-up calls; load average {env['load_average_start'][0]:.1f} at the start, "
        f"{env['load_average_end'][0]:.1f} at the end (1-minute).",
        "",
        "| model | case | img/s | × eager torch [quartiles] | max rel. error |",
        "|---|---|---:|---:|---:|",
    ]
    for result in results:
        for case, row in result["cases"].items():
            low, high = row["vs_eager_quartiles"]
            ratio = f"{row['vs_eager']:.3f} [{low:.2f}–{high:.2f}]" if row["baseline"] else "—"
            error = f"{row['max_relative_error']:.1e}" if row["baseline"] else "—"
            lines.append(f"| {result['model']} | {case} | {row['images_per_s']:.2f} | {ratio} | {error} |")
    lines += ["", "| model | export | seconds (export call) | seconds (process) | file MB |", "|---|---|---:|---:|---:|"]
    for result in results:
        for case, row in result["exports"].items():
            lines.append(
                f"| {result['model']} | {case} | {row['export_s']:.1f} | {row['process_s']:.1f} | {row['file_mb']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B/32", "ViT-B/16"], help="zoo or OpenAI names")
    parser.add_argument("--formats", nargs="+", default=["onnx", "pt2", "aoti"], choices=["onnx", "pt2", "aoti"])
    parser.add_argument("--threads", type=int, default=2, help="torch, onnxruntime and OpenMP threads (default 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    env = {
        "device_name": device_name("cpu"),
        "cpu_flags": cpu_flags(),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "vit_zoo": vit_zoo.__version__,
        },
        "load_average_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-export-") as work:
        results = [run_model(name, args, Path(work)) for name in args.models]
    env["load_average_end"] = os.getloadavg()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "export_cpu.json").write_text(json.dumps({"environment": env, "results": results}, indent=1))
    table = markdown(results, env)
    (args.output_dir / "export_cpu.md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    main()
