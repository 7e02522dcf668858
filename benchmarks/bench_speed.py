"""Forward speed of vit_zoo against timm, open_clip and Hugging Face CLIP, same weights, one process.

Every library gets the same random weights (copied in through its own OpenAI-key route), the same
dtype, device and batch. Outputs are checked to agree before anything is timed. Cases run interleaved,
in a rotating order, ``--rounds`` times after ``--warmup`` calls each; the report gives median
images/s, and each case's ratio to timm as the median of per-round paired ratios (robust to the load
of a shared machine drifting during the run). MFU is measured against a square ``torch.mm`` of the same
dtype timed in the same rounds. One more forward per case runs under ``torch.profiler``: its top kernels
(CUDA) or operators (CPU) by self time go next to the results.

    python benchmarks/bench_speed.py --device cpu
    python benchmarks/bench_speed.py --device cuda --dtype bfloat16 --batch-sizes 256 --compile \
        --models ViT-B/16 ViT-L/14
    python benchmarks/bench_speed.py --device cuda --dtype bfloat16 --batch-sizes 1 8 32 --compile \
        --compile-mode reduce-overhead --cases "timm compiled" "vit_zoo compiled"

Writes ``speed_<device>.json`` (with the commit, date, command and load it ran under), ``speed_<device>.md``,
``speed_<device>_kernels.md`` (and ``speed_<device>.png`` when matplotlib is installed) into ``--output-dir``
(default ``benchmarks/results``), through ``results_report.py``. ``--plot RESULTS.json`` redraws the plot of a
results file next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmark this checkout's vit_zoo, installed or not
sys.path.insert(0, str(ROOT / "benchmarks"))

import open_clip  # noqa: E402
import results_report  # noqa: E402
import timm  # noqa: E402
import transformers  # noqa: E402
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # noqa: E402
from timm.models.vision_transformer import checkpoint_filter_fn  # noqa: E402
from transformers import CLIPVisionModelWithProjection  # noqa: E402

import vit_zoo  # noqa: E402
from vit_zoo import VisionTransformer, VitZooConfig, ZooEntry, get_entry  # noqa: E402
from vit_zoo.state_dicts import to_hf_clip_state_dict, to_hf_clip_vision_config  # noqa: E402

Forward = Callable[[torch.Tensor], torch.Tensor]
BASELINE = "timm"
REFERENCE = "vit_zoo"  # every output is checked against this case's
MATMUL = "matmul"
EAGER_CASES = (
    "timm",
    "open_clip",
    "hf_sdpa",
    "hf_eager+attentions",
    "vit_zoo",
    "vit_zoo+attention_map",
    "vit_zoo+patch_tokens",
)
COMPILED_CASES = (
    "timm compiled",
    "open_clip compiled",
    "hf_sdpa compiled",
    "vit_zoo compiled",
    "vit_zoo+attention_map compiled",
)
TOP_KERNELS = 12
OVERHEADS = [  # (with attention maps, without): the "attention map almost free"
    ("vit_zoo+attention_map", "vit_zoo"),
    ("vit_zoo+attention_map compiled", "vit_zoo compiled"),
    ("hf_eager+attentions", "hf_sdpa"),
]
# agreement with vit_zoo's embedding required before timing (relative L2 error)
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def timm_model(geometry: dict, visual: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = timm.create_model(
        "vit_base_patch16_clip_quickgelu_224",
        pretrained=False,
        img_size=geometry["input_resolution"],
        patch_size=geometry["patch_size"],
        embed_dim=geometry["width"],
        depth=geometry["layers"],
        num_heads=geometry["heads"],
        mlp_ratio=geometry["mlp_ratio"],
        in_chans=geometry["in_channels"],
        num_classes=geometry["output_dim"],
        act_layer=geometry["activation"],
    )
    model.load_state_dict(checkpoint_filter_fn({"visual." + k: v for k, v in visual.items()}, model))
    return model


def open_clip_model(geometry: dict, visual: dict[str, torch.Tensor]) -> torch.nn.Module:
    vision_cfg = CLIPVisionCfg(
        layers=geometry["layers"],
        width=geometry["width"],
        head_width=geometry["width"] // geometry["heads"],
        mlp_ratio=geometry["mlp_ratio"],
        patch_size=geometry["patch_size"],
        image_size=geometry["input_resolution"],
    )
    text_cfg = CLIPTextCfg(context_length=8, vocab_size=64, width=64, heads=1, layers=1)  # unused, kept small
    quick_gelu = geometry["activation"] == "quick_gelu"
    model = CLIP(geometry["output_dim"], vision_cfg, text_cfg, quick_gelu=quick_gelu).visual
    model.load_state_dict(visual)
    return model


def hf_model(geometry: dict, visual: dict[str, torch.Tensor], attention: str) -> torch.nn.Module:
    config = to_hf_clip_vision_config(VitZooConfig(**geometry))
    model = CLIPVisionModelWithProjection._from_config(config, attn_implementation=attention)
    model.load_state_dict(to_hf_clip_state_dict(visual))
    return model


def build_cases(
    entry: ZooEntry, dtype: torch.dtype, device: str, compile_mode: str | None
) -> tuple[dict[str, Forward], dict[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """Each case's forward, and the attention-map getters of the libraries that give maps.

    Forwards return the projected CLS embedding ``[b, output_dim]``; map getters ``[layers, b, heads, g, g]``.
    """
    geometry = {"in_channels": 3, "mlp_ratio": 4.0, "activation": "quick_gelu", "layer_norm_eps": 1e-5, **entry.model}
    torch.manual_seed(0)
    ours = VisionTransformer(**geometry)
    visual = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    models = {
        "vit_zoo": ours,
        "timm": timm_model(geometry, visual),
        "open_clip": open_clip_model(geometry, visual),
        "hf_sdpa": hf_model(geometry, visual, "sdpa"),
        "hf_eager": hf_model(geometry, visual, "eager"),
    }
    models = {name: model.to(device=device, dtype=dtype).eval() for name, model in models.items()}
    ours, hf_eager = models["vit_zoo"], models["hf_eager"]
    grid = geometry["input_resolution"] // geometry["patch_size"]

    def hf_maps(x: torch.Tensor) -> torch.Tensor:
        attentions = hf_eager(pixel_values=x, output_attentions=True).attentions
        return torch.stack([a[:, :, 0, 1:] for a in attentions]).unflatten(-1, (grid, grid))

    cases = {
        "timm": models["timm"],
        "open_clip": models["open_clip"],
        "hf_sdpa": lambda x: models["hf_sdpa"](pixel_values=x).image_embeds,
        "hf_eager+attentions": lambda x: hf_eager(pixel_values=x, output_attentions=True).image_embeds,
        "vit_zoo": lambda x: ours(x)[0],
        "vit_zoo+attention_map": lambda x: ours(x, output_attention_map=True)[0],
        "vit_zoo+patch_tokens": lambda x: ours(x, output_all_features=True)[0],
    }
    if compile_mode:
        # one static graph per batch size, as a user serving a fixed batch would have (no dynamic-shape guards)
        compiled = {
            name: torch.compile(models[name], mode=compile_mode, dynamic=False)
            for name in ("vit_zoo", "timm", "open_clip", "hf_sdpa")
        }
        cases.update(
            {
                "timm compiled": compiled["timm"],
                "open_clip compiled": compiled["open_clip"],
                "hf_sdpa compiled": lambda x: compiled["hf_sdpa"](pixel_values=x).image_embeds,
                "vit_zoo compiled": lambda x: compiled["vit_zoo"](x)[0],
                "vit_zoo+attention_map compiled": lambda x: compiled["vit_zoo"](x, output_attention_map=True)[0],
            }
        )
    maps = {"vit_zoo": lambda x: ours(x, output_attention_map=True)[1], "hf_eager": hf_maps}
    return cases, maps


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def check_agreement(cases: dict[str, Forward], maps: dict[str, Forward], images: torch.Tensor) -> dict[str, float]:
    """Relative error of every case's embedding vs vit_zoo's, and max |diff| of the two attention maps.

    Raises ``RuntimeError`` when a library disagrees: its timing would not be of the same model.
    """
    tolerance = TOLERANCE[images.dtype]
    reference = cases[REFERENCE](images)
    errors = {name: relative_error(forward(images), reference) for name, forward in cases.items()}
    errors["attention_map max|vit_zoo - hf_eager|"] = (maps["vit_zoo"](images) - maps["hf_eager"](images)).abs().max().item()
    bad = {name: error for name, error in errors.items() if error > tolerance}
    if bad:
        raise RuntimeError(f"outputs disagree with vit_zoo beyond {tolerance:g}: {bad}")
    return errors


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def profile_cases(cases: dict[str, Forward], images: torch.Tensor, top: int = TOP_KERNELS) -> dict[str, list[dict]]:
    """One more forward per case under ``torch.profiler``: its ``top`` kernels (CUDA) or operators (CPU) by
    self time, each with its call count, microseconds and share of the case's total."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    on_cuda = images.device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_cuda else [ProfilerActivity.CPU]
    kernels = {}
    for name, forward in cases.items():
        with profile(activities=activities) as profiler:
            forward(images)
            synchronize(str(images.device))
        # on CUDA the kernels themselves (CPU-side operators also carry the device time of what they launch)
        times = {
            event.key: (event.count, event.self_device_time_total if on_cuda else event.self_cpu_time_total)
            for event in profiler.key_averages()
            if (event.device_type != DeviceType.CPU) == on_cuda
        }
        times = {key: value for key, value in times.items() if value[1] > 0}
        total = sum(us for _, us in times.values()) or 1.0
        ranked = sorted(times.items(), key=lambda item: -item[1][1])[:top]
        kernels[name] = [{"name": key, "calls": calls, "us": us, "share": us / total} for key, (calls, us) in ranked]
    return kernels


def time_cases(cases: dict[str, Forward], images: torch.Tensor, warmup: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each case, ``rounds`` samples each, cases interleaved in a rotating order."""
    device = str(images.device)
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            cases[name](images)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            cases[name](images)
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return samples


def matmul_case(device: str, dtype: torch.dtype) -> tuple[Forward, float]:
    """A square ``torch.mm`` timed among the cases (so MFU pairs with it round by round), and its FLOPs."""
    size = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return (lambda _images: torch.mm(a, b)), 2 * size**3


def paired(numerators: list[float], denominators: list[float]) -> list[float]:
    return [n / d for n, d in zip(numerators, denominators, strict=True)]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    low, median, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, median, high


def summarise(
    samples: dict[str, list[float]], batch: int, flops_per_image: float, matmul_flops: float
) -> tuple[dict[str, dict], dict[str, tuple[float, float, float]], dict[str, float]]:
    """Per case: median/min seconds, images/s, paired ratio to timm (> 1 = faster) with quartiles, MFU.

    Also the attention-map overheads (paired ``t_with_maps / t_without``: lower quartile, median, upper
    quartile) and the matmul ceiling.
    Ratios and MFU pair each case with timm's / the matmul's time of the same round.
    """
    samples = dict(samples)
    matmul_times = samples.pop(MATMUL)
    summary = {}
    for name, times in samples.items():
        low, ratio, high = quartiles(paired(samples[BASELINE], times))
        achieved = [batch * flops_per_image / t for t in times]
        summary[name] = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "images_per_s": batch / statistics.median(times),
            "ratio_vs_timm": ratio,
            "ratio_vs_timm_quartiles": [low, high],
            "mfu": statistics.median(paired(achieved, [matmul_flops / t for t in matmul_times])),
            "samples_s": times,
        }
    overheads = {
        f"{with_maps} / {without}": quartiles(paired(samples[with_maps], samples[without]))
        for with_maps, without in OVERHEADS
        if with_maps in samples and without in samples
    }
    ceiling = {
        "best_tflops": matmul_flops / min(matmul_times) / 1e12,
        "median_tflops": matmul_flops / statistics.median(matmul_times) / 1e12,
    }
    return summary, overheads, ceiling


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return []
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx512_bf16", "amx", "avx512f")))
    return []


def git_commit() -> str | None:
    """This checkout's commit (``-dirty`` when vit_zoo/ or benchmarks/ has changes), else ``$VIT_ZOO_COMMIT``:
    a copy of the tree without ``.git`` (a GPU machine's) names its commit through that variable."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "vit_zoo", "benchmarks"], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("VIT_ZOO_COMMIT")
    return head.stdout.strip() + ("-dirty" if changes.stdout.strip() else "")


def run_environment(device: str, command: str) -> dict:
    """What every results file records of its run: device, commit, date, command, versions, load at the start."""
    return {
        "device": device.split(":")[0],
        "device_name": device_name(device),
        "cpu_flags": cpu_flags(),
        "threads": torch.get_num_threads(),
        "commit": git_commit(),
        "date": datetime.now(timezone.utc).date().isoformat(),
        "command": command,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "vit_zoo": vit_zoo.__version__,
            "timm": timm.__version__,
            "open_clip": open_clip.__version__,
            "transformers": transformers.__version__,
        },
        "load_average_start": os.getloadavg(),
    }


def environment(args: argparse.Namespace) -> dict:
    return {
        **run_environment(args.device, shlex.join(["python", "benchmarks/bench_speed.py", *args.argv])),
        "batch_sizes": args.batch_sizes,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "compile": args.compile_mode if args.compile else None,
    }


def run_model(entry: ZooEntry, dtype: torch.dtype, args: argparse.Namespace) -> Iterator[dict]:
    """Build every library's model once, then check, time and profile the cases at each batch size."""
    cases, maps = build_cases(entry, dtype, args.device, args.compile_mode if args.compile else None)
    cases = {name: forward for name, forward in cases.items() if name in args.cases}
    matmul, matmul_flops = matmul_case(args.device, dtype)
    resolution, channels = entry.model["input_resolution"], entry.model.get("in_channels", 3)
    for batch in args.batch_sizes:
        print(f"{entry.name} {dtype} batch {batch} ...", flush=True)
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(batch, channels, resolution, resolution, generator=generator)
        images = images.to(device=args.device, dtype=dtype)
        with torch.inference_mode():
            errors = check_agreement(cases, maps, images)
            samples = time_cases({**cases, MATMUL: matmul}, images, args.warmup, args.rounds)
            kernels = profile_cases(cases, images)
        summary, overheads, ceiling = summarise(samples, batch, 2e9 * entry.gmacs, matmul_flops)
        yield (
            {
                "model": entry.name,
                "dtype": str(dtype).removeprefix("torch."),
                "batch_size": batch,
                "gflops_per_image": 2 * entry.gmacs,
                "matmul_ceiling": ceiling,
                "agreement": errors,
                "attention_map_overheads": {name: median for name, (_, median, _) in overheads.items()},
                "attention_map_overhead_quartiles": {name: [low, high] for name, (low, _, high) in overheads.items()},
                "cases": summary,
                "matmul_samples_s": samples[MATMUL],
                "kernels": kernels,
            }
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=["float32", "bfloat16", "float16"],
        help="dtypes to run (default: float32 bfloat16 on CPU, bfloat16 on CUDA)",
    )
    parser.add_argument(
        "--batch-sizes",
        "--batch-size",
        nargs="+",
        type=int,
        help="images per forward, one run per size (default 8 on CPU, 256 on CUDA)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["ViT-B/32", "ViT-B/16"],
        help="zoo entries or OpenAI names (default ViT-B/32 ViT-B/16)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per case first (default 2)")
    parser.add_argument("--rounds", type=int, default=10, help="timed interleaved rounds (default 10)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models (needs a C compiler on CPU)")
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode for --compile (reduce-overhead = CUDA graphs; default: default)",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=EAGER_CASES + COMPILED_CASES,
        metavar="CASE",
        help=f"time only these (timm and vit_zoo always run: ratios and agreement need them); "
        f"default all. Choices: {', '.join(EAGER_CASES + COMPILED_CASES)}",
    )
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--plot", type=Path, metavar="RESULTS_JSON", help="only redraw the plot of a results file")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.plot:
        return args
    on_cuda = args.device.startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        parser.error(f"--device {args.device} asked but torch sees no CUDA device; use --device cpu")
    args.dtype = args.dtype or (["bfloat16"] if on_cuda else ["float32", "bfloat16"])
    args.batch_sizes = args.batch_sizes or [256 if on_cuda else 8]
    if min(args.batch_sizes) <= 0 or args.rounds <= 0 or args.warmup < 0:
        parser.error("--batch-sizes and --rounds must be positive, --warmup non-negative")
    available = EAGER_CASES + (COMPILED_CASES if args.compile else ())
    if args.cases and not set(args.cases) <= set(available):
        parser.error(f"cases {sorted(set(args.cases) - set(available))} need --compile")
    args.cases = [name for name in available if name in {BASELINE, REFERENCE, *(args.cases or available)}]
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.plot:
        print(plot_file(args.plot))
        return []
    if args.threads:
        torch.set_num_threads(args.threads)
    entries = [get_entry(name) for name in args.models]
    env = environment(args)
    results = []
    for dtype in (getattr(torch, name) for name in args.dtype):
        for entry in entries:
            for result in run_model(entry, dtype, args):
                results.append(result)
                write_reports(results, env, args)  # after each case set: a run cut short keeps what it measured
    print(results_report.full_tables(results, env))
    return results


def write_reports(results: list[dict], env: dict, args: argparse.Namespace) -> None:
    env["load_average_end"] = os.getloadavg()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / f"speed_{args.device.split(':')[0]}"
    report = {"benchmark": results_report.SPEED, "environment": env, "results": results}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(results_report.full_tables(results, env) + "\n")
    stem.with_name(stem.name + "_kernels.md").write_text(results_report.kernel_tables(results, env) + "\n")
    results_report.plot(report, stem.with_suffix(".png"))


def plot_file(path: Path) -> Path:
    """Redraw the plot of a speed results file next to it."""
    target = path.with_suffix(".png")
    if not results_report.plot(results_report.load_kind(path, results_report.SPEED), target):
        raise SystemExit("--plot needs matplotlib (pip install matplotlib, or the docs extra)")
    return target


if __name__ == "__main__":
    main()
