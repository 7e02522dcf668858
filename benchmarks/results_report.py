"""Reports of the results files in ``benchmarks/results``: tables, plots and single numbers, never typed by hand.

Every results file is a JSON object ``{"benchmark": KIND, "environment": {...}, ...}``, the environment saying
the device, commit, date, command and load of the run. The kinds:

- ``speed`` (``bench_speed.py``): ``results``, one per model, dtype and batch, each case's rate and its paired
  ratio to timm eager;
- ``embed`` (``bench_embed.py``): ``results``, one per model and depth, each case's rate and its paired ratio to
  the hand-written timm script; ``scale``, many small images through one run, killed and resumed;
- ``export`` (``bench_export.py``): ``results``, one per model, each exported file's rate, its paired ratio to
  eager torch with the same outputs and its error, and how long each export took;
- ``fidelity`` (``compare_peers.py --output``): ``errors``, each library's embedding against OpenAI's
  architecture.

Everything shown of them (``RESULTS.md``, the plots, the numbers on the docs pages through ``docs/hooks.py``) is
computed here from the files, each with the commit, machine and load it was measured on. Imports neither torch
nor vit_zoo, so the docs build stays light.

    python benchmarks/results_report.py           # rewrite RESULTS.md, the tables and the plots from results/*.json
    python benchmarks/results_report.py --check   # exit 1 when a Markdown file is not what the results files give
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS / "results"
RESULTS_MD = BENCHMARKS / "RESULTS.md"
BASELINE = "timm"  # the case speed and embed results compare with
SPEED, EMBED, EXPORT, FIDELITY = "speed", "embed", "export", "fidelity"
KINDS = (SPEED, EMBED, EXPORT, FIDELITY)  # in the order RESULTS.md and the performance page show them
# The fields that tell the results of one file apart, as a reference to one names them: MODEL/DTYPE/BATCH, ...
RESULT_KEYS = {SPEED: ("model", "dtype", "batch_size"), EMBED: ("model", "layers"), EXPORT: ("model",)}
RATIO_LABEL = {SPEED: "× timm eager", EMBED: "× the timm script", EXPORT: "× eager torch"}
RATE_RATIO_MARK = "†"  # a ratio of median rates, for a case whose run kept no per-round pairs


class ReportError(ValueError):
    """A results file, or a reference to a number in one, that cannot be read; the message names both."""


def load(path: Path) -> dict[str, Any]:
    """A results file written by ``bench_speed.py`` or ``compare_peers.py``; ``ReportError`` otherwise."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReportError(f"{path}: not a readable results file ({error})") from None
    if not isinstance(report, dict) or report.get("benchmark") not in KINDS:
        raise ReportError(f'{path}: expected a JSON object with "benchmark": one of {", ".join(KINDS)}')
    if not isinstance(report.get("environment"), dict):
        raise ReportError(f'{path}: expected an "environment" object (device, commit, date, load)')
    return report


def load_kind(path: Path, kind: str) -> dict[str, Any]:
    report = load(path)
    if report["benchmark"] != kind:
        raise ReportError(f"{path}: holds {report['benchmark']} results, not {kind} results")
    return report


def results_files(results_dir: Path = RESULTS_DIR) -> list[Path]:
    """The results files of ``results_dir`` in the order of ``KINDS``, CPU before GPU; newest first in each."""
    reports = {path: load(path) for path in results_dir.glob("*.json")}
    newest_first = sorted(reports, key=lambda path: (reports[path]["environment"].get("date") or "", path.name), reverse=True)

    def group(path: Path) -> tuple[int, bool]:
        report = reports[path]
        return KINDS.index(report["benchmark"]), report["environment"].get("device", "cpu") != "cpu"

    return sorted(newest_first, key=group)


# --- where, on what code, when ---------------------------------------------------------------------------------


def machine(environment: dict) -> str:
    """``"AMD EPYC (CPU, 2 threads)"``, ``"NVIDIA H200 (CUDA)"``."""
    device = environment.get("device", "cpu")
    threads = f", {environment['threads']} threads" if device == "cpu" and environment.get("threads") else ""
    return f"{environment.get('device_name') or device} ({'CPU' if device == 'cpu' else 'CUDA'}{threads})"


def commit(environment: dict) -> str:
    return f"commit {environment['commit']}" if environment.get("commit") else "commit not recorded"


def load_average(environment: dict) -> str:
    """The 1-minute load average at the start and the end of the run, or that it was not recorded."""
    start, end = environment.get("load_average_start"), environment.get("load_average_end")
    if not start:
        return "load average not recorded"
    return f"load average {start[0]:.1f} at start" + (f", {end[0]:.1f} at end" if end else "")


def date(environment: dict) -> str:
    return environment.get("date") or "date not recorded"


def source(environment: dict) -> str:
    """One line for captions: machine, commit, date and load."""
    return f"{machine(environment)}, {commit(environment)}, {date(environment)}, {load_average(environment)}"


def provenance(environment: dict, timed: bool = True) -> list[str]:
    """Markdown list items: where, on what code, under what load and with which command a run was measured
    (for a ``timed`` run, with a word on reading it when the machine was busy)."""
    busy = _shared_machine(environment) if timed else ""
    lines = [f"- **Machine**: {machine(environment)}; {commit(environment)}; {date(environment)}."]
    lines.append(f"- **Load**: {load_average(environment).removeprefix('load average ')}.{busy}")
    versions = ", ".join(f"{name} {version}" for name, version in environment.get("versions", {}).items())
    if versions:
        lines.append(f"- **Versions**: {versions}.")
    if environment.get("rounds"):
        warmup = environment.get("warmup")
        calls = "" if warmup is None else f", after {warmup} warmup call{'s' * (warmup != 1)} each"
        lines.append(f"- **Rounds**: {environment['rounds']}, cases interleaved{calls}.")
    if environment.get("command"):
        lines.append(f"- **Command**: `{environment['command']}`")
    if environment.get("recorded_after_the_run"):
        lines.append(f"- **Recorded after the run**: {environment['recorded_after_the_run']}.")
    lines += [f"- {note}" for note in environment.get("notes", [])]
    return lines


def _shared_machine(environment: dict) -> str:
    start, threads = environment.get("load_average_start"), environment.get("threads")
    if environment.get("device", "cpu") != "cpu" or not start or not threads or start[0] <= threads:
        return ""
    return (
        f" More processes wanted the CPU than the run's {threads} threads: absolute rates are low and noisy, and"
        " the paired ratios, which cancel most of the load, are what to read."
    )


# --- single numbers ---------------------------------------------------------------------------------------------


def title(result: dict) -> str:
    """``"vit_zoo_base_patch32_clip_224, float32, batch 8"``, ``"vit_zoo_base_patch32_clip_224, 2 blocks"``."""
    parts = [result["model"]]
    if "layers" in result:
        parts.append(f"{result['layers']} block{'s' * (result['layers'] != 1)}")
    if "dtype" in result:
        parts += [result["dtype"], f"batch {result['batch_size']}"]
    return ", ".join(parts)


def find_result(report: dict, selector: str) -> dict:
    """The result whose ``model`` (or ``model/dtype/batch_size``, ``model/layers``, as ``RESULT_KEYS`` has it) is
    ``selector``; exactly one must match."""
    if report["benchmark"] not in RESULT_KEYS:
        raise ReportError(f"{report['benchmark']} results have no models and cases to choose from")
    keys, parts = RESULT_KEYS[report["benchmark"]], selector.split("/")
    results = report.get("results", [])
    matches = [r for r in results if [str(r.get(k)) for k in keys][: len(parts)] == parts]
    if len(matches) != 1:
        found = [title(result) for result in results]
        wanted = "/".join(key.upper().removesuffix("_SIZE") for key in keys)
        raise ReportError(f"{selector!r} matches {len(matches)} of the results {found}; name one as {wanted}")
    return matches[0]


def case_of(result: dict, case: str) -> dict:
    if case not in result["cases"]:
        raise ReportError(f"{title(result)} has no case {case!r}; it has {sorted(result['cases'])}")
    return result["cases"][case]


def ratio_of(result: dict, case: str) -> tuple[float, bool]:
    """The case's ratio to timm (eager, or the hand-written script), and whether it is paired: the median of the
    per-round ratios, as the benchmarks record it; a run that kept no pairs for the case gives the ratio of median
    rates."""
    entry = case_of(result, case)
    if "ratio_vs_timm" in entry:
        return entry["ratio_vs_timm"], True
    return entry["images_per_s"] / case_of(result, BASELINE)["images_per_s"], False


def overhead_of(result: dict, case: str) -> float:
    """Time of ``case`` (a forward or run with attention maps) ÷ time of the same without them, paired median."""
    overheads = result.get("attention_map_overheads", {})
    matches = [value for name, value in overheads.items() if name.split(" / ")[0] == case]
    if len(matches) != 1:
        raise ReportError(f"{title(result)} has no attention-map overhead for {case!r}; it has {sorted(overheads)}")
    return matches[0]


def export_ratio(result: dict, case: str) -> tuple[float, tuple[float, float]]:
    """An exported file's speed against eager torch with the same outputs: the paired median and its quartiles."""
    entry = case_of(result, case)
    if entry.get("baseline") is None:
        raise ReportError(f"{title(result)}: {case!r} is what the exported files are compared with, it has no ratio")
    low, high = entry["vs_eager_quartiles"]
    return entry["vs_eager"], (low, high)


def export_of(result: dict, case: str) -> dict:
    """How long exporting ``case`` took (the call, the whole process) and the file's size."""
    exports = result.get("exports", {})
    if case not in exports:
        raise ReportError(f"{title(result)} has no export {case!r}; it has {sorted(exports)}")
    return exports[case]


def format_ratio(ratio: float) -> str:
    return f"{ratio:.2f}×"


def format_rate(images_per_s: float) -> str:
    """Images per second, three significant digits or more, thousands set apart by a narrow space."""
    digits = 0 if images_per_s >= 100 else 1 if images_per_s >= 10 else 2
    return f"{images_per_s:,.{digits}f}".replace(",", "\u202f")


def format_overhead(ratio: float) -> str:
    """``1.0954`` (time with maps ÷ time without) -> ``"+9.5\u202f%"``."""
    return f"{(ratio - 1) * 100:+.1f}\u202f%"  # a narrow no-break space: the number and its % stay on one line


def format_error(error: float) -> str:
    return "0 (bit for bit)" if error == 0 else f"{error:.1e}".replace("e-0", "e-")


def format_count(count: int) -> str:
    return f"{count:,}".replace(",", "\u202f")


def format_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s"


def format_megabytes(megabytes: float) -> str:
    return f"{megabytes:,.0f} MB".replace(",", "\u202f")


QUANTITIES = {
    SPEED: ("ratio", "rate", "overhead"),
    EMBED: ("ratio", "rate", "overhead"),
    EXPORT: ("ratio", "rate", "export-time"),
}


def speed_value(path: Path, quantity: str, selector: str, case: str) -> str:
    """One number of a speed, embed or export results file as the pages show it: ``ratio`` (× the file's
    baseline: timm eager, the timm script, eager torch), ``rate`` (images/s), ``overhead`` (the extra time of a
    case with attention maps over the same without) or ``export-time`` (seconds of the whole export process)."""
    report = load(path)
    kind = report["benchmark"]
    if quantity not in QUANTITIES.get(kind, ()):
        raise ReportError(f"{path.name} holds {kind} results: no {quantity!r}; use {' or '.join(QUANTITIES.get(kind, ()))}")
    result = find_result(report, selector)
    if quantity == "rate":
        return format_rate(case_of(result, case)["images_per_s"])
    if quantity == "overhead":
        return format_overhead(overhead_of(result, case))
    if quantity == "export-time":
        return format_seconds(export_of(result, case)["process_s"])
    return format_ratio(export_ratio(result, case)[0] if kind == EXPORT else ratio_of(result, case)[0])


SCALE_QUANTITIES = ("images", "rate", "peak-memory", "resumed-output")


def scale_value(path: Path, quantity: str) -> str:
    """One fact of an embed results file's run over many small images: ``images`` (how many), ``rate``
    (images/s), ``peak-memory`` (of the process tree) or ``resumed-output`` (how the output of the run killed
    halfway and rerun compares with the uninterrupted run's)."""
    scale = load_kind(path, EMBED).get("scale")
    if not scale:
        raise ReportError(f"{path.name} has no run over many small images (scale)")
    if quantity == "images":
        return format_count(scale["images"])
    if quantity == "rate":
        return format_rate(scale["images_per_s"])
    if quantity == "peak-memory":
        return format_megabytes(scale["peak_memory_mb"])
    if quantity == "resumed-output":
        if "resume" not in scale:
            raise ReportError(f"{path.name} has no resumed run")
        return "bit for bit identical to" if scale["resume"]["bit_identical_to_uninterrupted"] else "different from"
    raise ReportError(f"unknown quantity {quantity!r}; use {', '.join(SCALE_QUANTITIES)}")


def fidelity_value(path: Path, library: str) -> str:
    """The relative L2 error of one library's embedding in a fidelity results file."""
    errors = load_kind(path, FIDELITY)["errors"]
    if library not in errors:
        raise ReportError(f"{path.name} has no library {library!r}; it has {sorted(errors)}")
    return format_error(errors[library])


# --- tables -----------------------------------------------------------------------------------------------------


def summary_tables(report: dict, heading: str = "###", about: str = "") -> str:
    """A speed or embed results file for readers: where it was measured, ``about`` (what was timed), then per
    result each case's images/s and its ratio to timm."""
    lines = [*provenance(report["environment"]), "", *([about, ""] if about else [])]
    unpaired = False
    label = RATIO_LABEL[report["benchmark"]]
    for result in report["results"]:
        lines += [f"{heading} {title(result)}", "", f"| case | images/s | {label} [quartiles] |", "|---|---:|---:|"]
        for name, entry in result["cases"].items():
            ratio, paired = ratio_of(result, name)
            unpaired |= not paired
            quartiles = entry.get("ratio_vs_timm_quartiles") if name != BASELINE else None
            spread = f" [{quartiles[0]:.2f}–{quartiles[1]:.2f}]" if quartiles else ""
            mark = "" if paired else f" {RATE_RATIO_MARK}"
            lines.append(f"| `{name}` | {format_rate(entry['images_per_s'])} | {format_ratio(ratio)}{spread}{mark} |")
        lines += ["", *_overhead_lines(result)]
    if unpaired:
        lines += [f"{RATE_RATIO_MARK} The ratio of median rates: the run kept no per-round pairs for this case.", ""]
    return "\n".join(lines)


EMBED_CASES = (
    "The same JPEGs and the same random weights for every case, each case a fresh call that loads the model, with "
    "the same loader workers and batch size: `timm` is the script a user writes (timm's model from the same folder, "
    "timm's eval transform, a `DataLoader`, one `.npy`), `vit_zoo` is `vit-zoo embed --output-dir`, "
    "`vit_zoo+attention` the same with `--attention-map`, and `+onnxruntime` marks a run with `--engine onnxruntime` "
    "(the model exported to ONNX once, beforehand). Rounds in rotating order; the ratio is the median over "
    "rounds of the timm script's time ÷ the case's (above 1 is faster)."
)


def embed_tables(report: dict, heading: str = "###") -> str:
    """An embed results file for readers: where it was measured, what was timed, each case's images/s and ratio
    to the timm script, then the run over many small images and its resumption."""
    environment = report["environment"]
    lines = [*provenance(environment), ""]
    if report.get("results"):
        workload = f"{environment['images']} JPEGs of {environment['image_size']}, batch {environment['batch_size']}, "
        workload += f"{environment['workers']} loader workers, {environment['dtype']}."
        lines = [summary_tables(report, heading, about=f"{EMBED_CASES} {workload}")]
    if report.get("scale"):
        lines += [f"{heading} Many small images, killed and resumed", "", *_scale_lines(report["scale"]), ""]
    return "\n".join(lines)


def _scale_lines(scale: dict) -> list[str]:
    progress = ", ".join(f"{format_megabytes(mb)} at {share}" for share, mb in scale["memory_mb_by_progress"].items())
    lines = [
        f"- {format_count(scale['images'])} PNGs of {scale['image_size']} px through "
        f"`{scale['model']}` into {scale['shards']} shards (batch {scale['batch_size']}): "
        f"{format_rate(scale['images_per_s'])} images/s over {format_seconds(scale['seconds'])}. The memory of the process "
        f"tree (the PSS of the process and its loader workers) peaked at {format_megabytes(scale['peak_memory_mb'])} "
        f"({progress} of the run).",
    ]
    if "resume" in scale:
        resume = scale["resume"]
        outcome = "bit for bit identical to" if resume["bit_identical_to_uninterrupted"] else "different from"
        lines.append(
            f"- The same run killed with SIGKILL once {resume['complete_when_killed']} of its shards were complete "
            f"(after {format_seconds(resume['killed_after_s'])}), then rerun: the rerun took "
            f"{format_seconds(resume['rerun_s'])} (`{resume['rerun_summary']}`) and its output is {outcome} the "
            "uninterrupted run's."
        )
    return lines


EXPORT_CASES = (
    "Each exported file runs in the benchmark's process beside eager torch, on the same random weights and images, "
    "the cases interleaved in rotating order; the ratio is the median over rounds of eager torch's time with the "
    "same outputs ÷ the file's (above 1 is faster). Each export ran in a fresh process: the export call includes "
    "tracing, compiling, writing and the check against eager torch, the process also the imports."
)


def export_tables(report: dict, heading: str = "###") -> str:
    """An export results file for readers: where it was measured, then per model each case's images/s, ratio to
    eager torch and largest error, and each export's seconds and file size."""
    environment = report["environment"]
    lines = [*provenance(environment), "", f"{EXPORT_CASES} Batch {environment['batch_size']}.", ""]
    for result in report["results"]:
        lines += [
            f"{heading} {title(result)}",
            "",
            f"| case | images/s | {RATIO_LABEL[EXPORT]} [quartiles] | largest relative error |",
            "|---|---:|---:|---:|",
        ]
        for name, entry in result["cases"].items():
            cells = ["—", "—"]
            if entry.get("baseline") is not None:
                ratio, (low, high) = export_ratio(result, name)
                cells = [f"{format_ratio(ratio)} [{low:.2f}–{high:.2f}]", format_error(entry["max_relative_error"])]
            lines.append(f"| {name} | {format_rate(entry['images_per_s'])} | {cells[0]} | {cells[1]} |")
        lines += ["", "| export | export call | whole process | file |", "|---|---:|---:|---:|"]
        for name, export in result.get("exports", {}).items():
            lines.append(
                f"| {name} | {format_seconds(export['export_s'])} | {format_seconds(export['process_s'])} | "
                f"{format_megabytes(export['file_mb'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def _overhead_lines(result: dict) -> list[str]:
    overheads = result.get("attention_map_overheads", {})
    quartiles = result.get("attention_map_overhead_quartiles", {})
    items = []
    for name, ratio in overheads.items():
        spread = quartiles.get(name)
        shown = f" [{format_overhead(spread[0])} to {format_overhead(spread[1])}]" if spread else ""
        items.append(f"`{name}` {format_overhead(ratio)}{shown}")
    return ["Extra time with attention maps (paired median [quartiles]): " + "; ".join(items) + ".", ""] if items else []


def fidelity_table(report: dict) -> str:
    """A fidelity results file: provenance, what was compared, and each library's relative L2 error."""
    lines = [*provenance(report["environment"], timed=False), "", report["description"], ""]
    lines += ["| library | relative L2 error |", "|---|---:|"]
    lines += [f"| {library} | {format_error(error)} |" for library, error in report["errors"].items()]
    return "\n".join(lines) + "\n"


def full_tables(results: list[dict], environment: dict) -> str:
    """``speed_<device>.md``: per (model, dtype, batch) every case's rate, paired ratio, MFU and agreement."""
    lines = provenance(environment) + [""]
    for result in results:
        ceiling = result["matmul_ceiling"]
        lines += [
            f"### {title(result)}",
            "",
            f"{result['gflops_per_image']:.3g} GFLOP/image; matmul ceiling {ceiling['median_tflops']:.3g} TFLOP/s "
            f"(median), {ceiling['best_tflops']:.3g} (best).",
            "",
            "| case | images/s (median) | × timm, paired median [quartiles] | MFU | rel. L2 error vs vit_zoo |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, case in result["cases"].items():
            low, high = case["ratio_vs_timm_quartiles"]
            ratio = f"{case['ratio_vs_timm']:.3f} [{low:.2f}–{high:.2f}]"
            error = result["agreement"][name]
            lines.append(f"| {name} | {case['images_per_s']:.4g} | {ratio} | {case['mfu']:.1%} | {error:.1e} |")
        attention_error = result["agreement"]["attention_map max|vit_zoo - hf_eager|"]
        lines += ["", *_overhead_lines(result), f"Attention maps, max |vit_zoo − HF eager|: {attention_error:.1e}.", ""]
    return "\n".join(lines)


def kernel_tables(results: list[dict], environment: dict) -> str:
    """``speed_<device>_kernels.md``: per (model, dtype, batch) and case, the profiled forward's top kernels."""
    unit = "CUDA kernel" if environment["device"].startswith("cuda") else "CPU operator"
    lines = [f"Top {unit}s by self time in one profiled forward per case ({source(environment)}).", ""]
    for result in results:
        lines += [f"### {title(result)}", ""]
        for case, kernels in result["kernels"].items():
            lines += [f"**{case}**", "", f"| {unit} | calls | µs | share |", "|---|---:|---:|---:|"]
            for kernel in kernels:
                name = kernel["name"].replace("|", "\\|")
                name = name if len(name) <= 100 else name[:97] + "..."
                lines.append(f"| `{name}` | {kernel['calls']} | {kernel['us']:.0f} | {kernel['share']:.1%} |")
            lines.append("")
    return "\n".join(lines)


# --- plots ------------------------------------------------------------------------------------------------------


def bars(result: dict) -> list[tuple[str, float, str, tuple[float, float] | None]]:
    """What the plot draws for one result, per case: the bar's length (its ratio to timm eager), the label at
    its end (that ratio, written as the tables write it) and the whisker (the quartiles of the paired ratios)."""
    drawn = []
    for name, entry in result["cases"].items():
        ratio, paired = ratio_of(result, name)
        quartiles = entry.get("ratio_vs_timm_quartiles") if name != BASELINE else None
        label = format_ratio(ratio) + ("" if paired else f" {RATE_RATIO_MARK}")
        drawn.append((name, ratio, label, (quartiles[0], quartiles[1]) if quartiles else None))
    return drawn


def draw(report: dict):
    """The matplotlib figure of a speed results file: one panel per (model, dtype, batch), one bar per case, as
    long as its ratio to timm eager and labelled with that ratio; whiskers span the quartiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    rows = max(len(result["cases"]) for result in results)
    figure, axes = plt.subplots(1, len(results), figsize=(5.6 * len(results), 1.4 + 0.36 * rows), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        drawn = bars(result)
        names = [name for name, *_ in drawn]
        colors = ["tab:blue" if name.startswith("vit_zoo") else "tab:gray" for name in names]
        rectangles = ax.barh(names, [ratio for _, ratio, _, _ in drawn], color=colors)
        right = 0.0
        for rectangle, (_, ratio, label, quartiles) in zip(rectangles, drawn, strict=True):
            y = rectangle.get_y() + rectangle.get_height() / 2
            if quartiles:
                ax.plot(quartiles, (y, y), color="black", linewidth=1)
            end = max(ratio, *quartiles) if quartiles else ratio
            ax.annotate(f" {label}", (end, y), va="center", fontsize=8)
            right = max(right, end)
        ax.axvline(1.0, color="black", linewidth=0.6, linestyle=":")
        ax.set_title(title(result), fontsize=9)
        unpaired = any(label.endswith(RATE_RATIO_MARK) for _, _, label, _ in drawn)
        note = f"\n{RATE_RATIO_MARK} ratio of median rates: no per-round pairs kept" if unpaired else ""
        ax.set_xlabel(f"× timm eager, paired median (longer is faster); whiskers: quartiles{note}", fontsize=8)
        ax.set_xlim(0, right * 1.3)
        ax.tick_params(labelsize=8)
        ax.invert_yaxis()
    figure.suptitle(textwrap.fill(source(report["environment"]), width=int(16 * figure.get_figwidth())), fontsize=8)
    figure.tight_layout()
    return figure


def png(report: dict) -> bytes:
    """The plot of a speed results file as PNG bytes."""
    import matplotlib.pyplot as plt

    figure, buffer = draw(report), io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def plot(report: dict, path: Path) -> bool:
    """Write the plot of ``report`` to ``path``; False (nothing written) when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    path.write_bytes(png(report))
    return True


# --- RESULTS.md -------------------------------------------------------------------------------------------------

HEADER = """# Benchmark results

Generated by `python benchmarks/results_report.py` from the files in `results/`: do not edit by hand. Each
section says the commit, machine and load it was measured on; [README.md](README.md) says how.

Every ratio compares cases timed side by side in one process on the same weights and inputs: the median over
rounds of `t_baseline / t_case` within a round (above 1 is faster than the baseline: timm eager, the
hand-written timm script, eager torch), with the lower and upper quartiles in brackets. Absolute rates depend on
the machine and on what else it runs; the paired ratios cancel most of that.
"""


def section(path: Path, link_prefix: str, heading: str = "##", page_links: bool = True) -> str:
    """One results file as Markdown: a heading, where it was measured, its tables, its plot and its files.

    ``link_prefix`` leads from the page to the results folder; ``page_links`` also links the Markdown tables
    next to the file (``RESULTS.md`` does; the docs site carries only the JSON and the plots).
    """
    report = load(path)
    kind, environment = report["benchmark"], report["environment"]
    where = f"{machine(environment)}, {date(environment)}, {commit(environment)}"
    if kind == FIDELITY:
        return f"{heading} Embeddings against OpenAI's architecture: {where}\n\n{fidelity_table(report)}"
    stem = path.with_suffix("")
    tables = (stem.with_suffix(".md"), stem.with_name(f"{stem.name}_kernels.md")) if page_links else ()
    files = "Files: " + ", ".join(f"[`{file.name}`]({link_prefix}{file.name})" for file in (path, *tables) if file.is_file())
    if kind == EMBED:
        return "\n".join([f"{heading} `vit-zoo embed`: {where}", "", embed_tables(report, heading + "#"), files + ".", ""])
    if kind == EXPORT:
        return "\n".join(
            [f"{heading} Exported files against eager torch: {where}", "", export_tables(report, heading + "#"), files + ".", ""]
        )
    return "\n".join(
        [
            f"{heading} Forward speed: {where}",
            "",
            summary_tables(report, heading + "#"),
            f"![Ratio to timm eager per case: {source(environment)}]({link_prefix}{stem.name}.png)",
            "",
            files + ".",
            "",
        ]
    )


def results_markdown(results_dir: Path = RESULTS_DIR) -> str:
    """The text of ``RESULTS.md``: every results file of ``results_dir``."""
    return HEADER + "\n" + "\n".join(section(path, "results/") for path in results_files(results_dir))


def text_reports(benchmarks: Path = BENCHMARKS) -> dict[Path, str]:
    """Every Markdown file the results files give: ``RESULTS.md``, and the full and kernel tables of each speed
    results file that kept them (``speed_<device>.md``, ``speed_<device>_kernels.md``)."""
    reports = {benchmarks / "RESULTS.md": results_markdown(benchmarks / "results")}
    for path in results_files(benchmarks / "results"):
        report = load(path)
        results, environment = report.get("results", []), report["environment"]
        if report["benchmark"] == SPEED and all("kernels" in result and "matmul_ceiling" in result for result in results):
            reports[path.with_suffix(".md")] = full_tables(results, environment) + "\n"
            reports[path.with_name(f"{path.stem}_kernels.md")] = kernel_tables(results, environment) + "\n"
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the Markdown files are what the results give")
    args = parser.parse_args(argv)
    reports = text_reports()
    if args.check:
        stale = [path for path, text in reports.items() if not path.is_file() or path.read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"{path} is out of date: run python benchmarks/results_report.py", file=sys.stderr)
        return int(bool(stale))
    for path, text in reports.items():
        path.write_text(text, encoding="utf-8")
        print(path)
    for path in results_files():
        report = load(path)
        if report["benchmark"] == SPEED:
            plot(report, path.with_suffix(".png"))
            print(path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
