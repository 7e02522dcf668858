"""benchmarks/results_report.py: every table, plot and number shown of a results file is that file's, with its provenance."""

import copy
import importlib.util
import json
import re
import statistics
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RESULTS = sorted((BENCHMARKS / "results").glob("*.json"))


@pytest.fixture(scope="module")
def results_report():
    spec = importlib.util.spec_from_file_location("results_report", BENCHMARKS / "results_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["results_report"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["results_report"]


def speed_files() -> list[Path]:
    return [path for path in RESULTS if json.loads(path.read_text())["benchmark"] == "speed"]


def case(samples: list[float], timm: list[float]) -> dict:
    """A case as bench_speed.py records it: median rate of batch 8, paired ratio to timm with its quartiles."""
    low, median, high = statistics.quantiles([t / s for t, s in zip(timm, samples, strict=True)], n=4, method="inclusive")
    return {"images_per_s": 8 / statistics.median(samples), "ratio_vs_timm": median, "ratio_vs_timm_quartiles": [low, high]}


def loaded_cpu_run() -> dict:
    """A run on a loaded machine: vit_zoo's median rate beats timm's, yet it lost four rounds of five to timm."""
    timm = [1.0, 1.0, 3.0, 3.0, 3.0]
    ours = [1.1, 1.1, 2.9, 3.3, 3.3]  # median time 2.9 < 3.0; paired ratios 0.91, 0.91, 1.03, 0.91, 0.91
    cases = {"timm": case(timm, timm), "vit_zoo": case(ours, timm), "open_clip": {"images_per_s": 3.0}}
    result = {"model": "vit_zoo_base_patch32_clip_224", "dtype": "float32", "batch_size": 8, "cases": cases}
    environment = {"device": "cpu", "device_name": "Test CPU", "threads": 2, "commit": "abc1234", "date": "2026-12-01"}
    environment |= {"load_average_start": [7.5, 7.0, 6.0], "load_average_end": [8.25, 7.0, 6.0]}
    return {"benchmark": "speed", "environment": environment, "results": [result]}


def drawn_bars(results_report, report: dict) -> list[list[tuple[str, float, float]]]:
    """Per panel of the drawn figure: (case, bar length, number in the bar's label), read back from matplotlib."""
    import matplotlib.pyplot as plt

    figure = results_report.draw(report)
    try:
        panels = []
        for ax in figure.axes:
            names = [label.get_text() for label in ax.get_yticklabels()]
            lengths = [bar.get_width() for bar in ax.patches]
            labels = [float(re.search(r"[\d.]+", text.get_text()).group()) for text in ax.texts]
            assert len(names) == len(lengths) == len(labels), (names, lengths, labels)
            panels.append(list(zip(names, lengths, labels, strict=True)))
        return panels
    finally:
        plt.close(figure)


@pytest.mark.parametrize("path", speed_files(), ids=lambda path: path.name)
def test_every_bar_is_as_long_as_its_label_says(results_report, path):
    report = results_report.load(path)
    panels = drawn_bars(results_report, report)
    assert len(panels) == len(report["results"])
    for panel, result in zip(panels, report["results"], strict=True):
        assert [name for name, _, _ in panel] == list(result["cases"])
        for name, length, label in panel:
            assert label == pytest.approx(length, abs=0.005), f"{path.name} {name}: bar {length} labelled {label}"
            assert length == pytest.approx(results_report.ratio_of(result, name)[0])


def test_a_loaded_run_is_drawn_and_tabled_by_its_paired_ratio(results_report):
    report = loaded_cpu_run()
    (panel,) = drawn_bars(results_report, report)
    lengths = {name: length for name, length, _ in panel}
    cases = report["results"][0]["cases"]
    assert cases["vit_zoo"]["images_per_s"] > cases["timm"]["images_per_s"]
    assert lengths["vit_zoo"] == pytest.approx(1 / 1.1) and lengths["vit_zoo"] < lengths["timm"] == 1.0
    assert lengths["open_clip"] == pytest.approx(3.0 / (8 / 3.0))  # no pairs: the ratio of median rates
    table = results_report.summary_tables(report)
    assert "| `vit_zoo` | 2.76 | 0.91× [0.91–0.91] |" in table
    assert f"| `open_clip` | 3.00 | 1.12× {results_report.RATE_RATIO_MARK} |" in table
    assert "ratio of median rates" in table


def test_a_section_says_commit_machine_date_and_load(results_report, tmp_path):
    path = tmp_path / "speed_cpu.json"
    path.write_text(json.dumps(loaded_cpu_run()))
    section = results_report.section(path, "results/")
    assert "Test CPU (CPU, 2 threads); commit abc1234; 2026-12-01" in section
    assert "**Load**: 7.5 at start, 8.2 at end. More processes wanted the CPU than the run's 2 threads" in section
    assert "![Ratio to timm eager per case: Test CPU (CPU, 2 threads), commit abc1234" in section
    unrecorded = copy.deepcopy(loaded_cpu_run())
    for key in ("commit", "date", "load_average_start", "load_average_end"):
        del unrecorded["environment"][key]
    path.write_text(json.dumps(unrecorded))
    section = results_report.section(path, "results/")
    assert "commit not recorded; date not recorded" in section and "**Load**: not recorded." in section


@pytest.mark.parametrize("path", RESULTS, ids=lambda path: path.name)
def test_every_results_file_records_its_commit_machine_and_date(results_report, path):
    environment = results_report.load(path)["environment"]
    assert re.fullmatch(r"[0-9a-f]{7,40}", environment["commit"]), environment.get("commit")
    assert environment["device_name"] and re.fullmatch(r"\d{4}-\d{2}-\d{2}", environment["date"])


def test_the_markdown_files_are_what_the_results_files_give(results_report, capsys):
    assert results_report.main(["--check"]) == 0, capsys.readouterr().err
    assert (BENCHMARKS / "RESULTS.md") in results_report.text_reports()


def test_values_are_formatted_as_the_tables_format_them(results_report, tmp_path):
    path = tmp_path / "run.json"
    report = loaded_cpu_run()
    report["results"][0]["attention_map_overheads"] = {"vit_zoo+attention_map / vit_zoo": 1.0954}
    path.write_text(json.dumps(report))
    assert results_report.speed_value(path, "ratio", "vit_zoo_base_patch32_clip_224", "vit_zoo") == "0.91×"
    assert results_report.speed_value(path, "ratio", "vit_zoo_base_patch32_clip_224/float32/8", "open_clip") == "1.12×"
    assert results_report.speed_value(path, "rate", "vit_zoo_base_patch32_clip_224", "timm") == "2.67"
    assert results_report.speed_value(path, "overhead", "vit_zoo_base_patch32_clip_224", "vit_zoo+attention_map") == "+9.5\u202f%"
    assert results_report.format_rate(8869.0) == "8\u202f869"


def test_a_reference_to_a_missing_number_names_what_exists(results_report, tmp_path):
    path = tmp_path / "run.json"
    report = loaded_cpu_run()
    report["results"].append({**report["results"][0], "batch_size": 16})
    path.write_text(json.dumps(report))
    with pytest.raises(results_report.ReportError, match="matches 2 of the results .*MODEL/DTYPE/BATCH"):
        results_report.speed_value(path, "ratio", "vit_zoo_base_patch32_clip_224", "vit_zoo")
    with pytest.raises(results_report.ReportError, match="has no case 'vit_zoo compiled'; it has"):
        results_report.speed_value(path, "ratio", "vit_zoo_base_patch32_clip_224/float32/8", "vit_zoo compiled")
    with pytest.raises(results_report.ReportError, match="no attention-map overhead"):
        results_report.speed_value(path, "overhead", "vit_zoo_base_patch32_clip_224/float32/8", "vit_zoo")
    with pytest.raises(results_report.ReportError, match="holds speed results, not fidelity results"):
        results_report.fidelity_value(path, "vit_zoo")
    (tmp_path / "other.json").write_text('{"results": []}')
    with pytest.raises(results_report.ReportError, match=r"other.json: expected a JSON object with \"benchmark\""):
        results_report.load(tmp_path / "other.json")


def embed_run(identical: bool = True) -> dict:
    """An embed run as bench_embed.py records it: one depth, the script and vit-zoo embed, and a resumed scale run."""
    cases = {
        "timm": {"images_per_s": 2.0, "ratio_vs_timm": 1.0, "ratio_vs_timm_quartiles": [1.0, 1.0]},
        "vit_zoo": {"images_per_s": 2.2, "ratio_vs_timm": 1.1, "ratio_vs_timm_quartiles": [1.05, 1.2]},
    }
    overheads = {"vit_zoo+attention / vit_zoo": 1.125}
    result = {"model": "vit_zoo_base_patch32_clip_224", "layers": 2, "cases": cases, "attention_map_overheads": overheads}
    resume = {"killed_after_s": 40.2, "complete_when_killed": 2, "rerun_s": 39.6, "rerun_summary": "embedded 2 images"}
    scale = {"model": "vit_zoo_tiny_patch8_test_32", "image_size": "32×32", "batch_size": 256, "images": 12000, "shards": 4}
    scale |= {"seconds": 60.0, "images_per_s": 200.0, "peak_memory_mb": 1234, "memory_mb_by_progress": {"10%": 1000}}
    scale["resume"] = resume | {"bit_identical_to_uninterrupted": identical}
    environment = {"device": "cpu", "device_name": "Test CPU", "threads": 2, "commit": "abc1234", "date": "2026-12-02"}
    environment |= {"images": 8, "image_size": "640×480", "batch_size": 64, "workers": 2, "dtype": "float32", "rounds": 3}
    environment["recorded_after_the_run"] = "the commit, from git history"
    return {"benchmark": "embed", "environment": environment, "results": [result], "scale": scale}


def export_run() -> dict:
    """An export run as bench_export.py records it: eager torch, one ONNX file against it, and the export's times."""
    eager = {"images_per_s": 3.0, "vs_eager": 1.0, "vs_eager_quartiles": [1.0, 1.0], "baseline": None, "max_relative_error": 0.0}
    onnx = {"images_per_s": 4.5, "vs_eager": 1.5, "vs_eager_quartiles": [1.4, 1.6], "baseline": "torch eager"}
    onnx["max_relative_error"] = 5.76e-07
    exports = {"onnxruntime": {"export_s": 37.6, "process_s": 41.1, "file_mb": 352.03}}
    result = {"model": "vit_zoo_base_patch32_clip_224", "cases": {"torch eager": eager, "onnxruntime": onnx}, "exports": exports}
    environment = {"device": "cpu", "device_name": "Test CPU", "threads": 2, "commit": "def5678", "date": "2026-12-02"}
    environment |= {"batch_size": 8, "rounds": 12, "warmup": 2}
    return {"benchmark": "export", "environment": environment, "results": [result]}


def write(tmp_path: Path, name: str, report: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return path


def test_an_embed_section_shows_the_ratios_the_overhead_and_the_resumed_run(results_report, tmp_path):
    section = results_report.section(write(tmp_path, "embed_cpu.json", embed_run()), "results/")
    assert section.startswith("## `vit-zoo embed`: Test CPU (CPU, 2 threads), 2026-12-02, commit abc1234\n")
    assert "- **Recorded after the run**: the commit, from git history." in section
    assert "8 JPEGs of 640×480, batch 64, 2 loader workers, float32." in section
    assert "### vit_zoo_base_patch32_clip_224, 2 blocks" in section
    assert "| case | images/s | × the timm script [quartiles] |" in section
    assert "| `vit_zoo` | 2.20 | 1.10× [1.05–1.20] |" in section and "`vit_zoo+attention / vit_zoo` +12.5\u202f%" in section
    assert "12\u202f000 PNGs of 32×32 px through `vit_zoo_tiny_patch8_test_32` into 4 shards (batch 256): 200 images/s" in section
    assert "peaked at 1\u202f234 MB (1\u202f000 MB at 10% of the run)" in section
    rerun = "(after 40 s), then rerun: the rerun took 40 s (`embedded 2 images`) and its output is bit for bit identical"
    assert rerun in section
    assert "Files: [`embed_cpu.json`](results/embed_cpu.json)." in section
    differing = results_report.section(write(tmp_path, "embed_other.json", embed_run(identical=False)), "results/")
    assert "its output is different from the uninterrupted run's" in differing


def test_embed_values_are_read_by_model_and_depth(results_report, tmp_path):
    path = write(tmp_path, "embed_cpu.json", embed_run())
    assert results_report.speed_value(path, "ratio", "vit_zoo_base_patch32_clip_224/2", "vit_zoo") == "1.10×"
    assert results_report.speed_value(path, "rate", "vit_zoo_base_patch32_clip_224", "timm") == "2.00"
    assert results_report.speed_value(path, "overhead", "vit_zoo_base_patch32_clip_224/2", "vit_zoo+attention") == "+12.5\u202f%"
    values = {quantity: results_report.scale_value(path, quantity) for quantity in results_report.SCALE_QUANTITIES}
    assert values == {
        "images": "12\u202f000",
        "rate": "200",
        "peak-memory": "1\u202f234 MB",
        "resumed-output": "bit for bit identical to",
    }
    with pytest.raises(results_report.ReportError, match="'vit_zoo_base_patch32_clip_224/12' matches 0 .*MODEL/LAYERS"):
        results_report.speed_value(path, "ratio", "vit_zoo_base_patch32_clip_224/12", "vit_zoo")
    with pytest.raises(results_report.ReportError, match="holds embed results: no 'export-time'; use ratio or rate or overhead"):
        results_report.speed_value(path, "export-time", "vit_zoo_base_patch32_clip_224", "vit_zoo")
    no_scale = {key: value for key, value in embed_run().items() if key != "scale"}
    with pytest.raises(results_report.ReportError, match="has no run over many small images"):
        results_report.scale_value(write(tmp_path, "speed_only.json", no_scale), "rate")


def test_an_export_section_compares_each_file_with_eager_torch(results_report, tmp_path):
    path = write(tmp_path, "export_cpu.json", export_run())
    section = results_report.section(path, "results/")
    assert section.startswith("## Exported files against eager torch: Test CPU (CPU, 2 threads), 2026-12-02, commit def5678\n")
    assert "- **Rounds**: 12, cases interleaved, after 2 warmup calls each." in section and "Batch 8." in section
    assert "| torch eager | 3.00 | — | — |" in section and "| onnxruntime | 4.50 | 1.50× [1.40–1.60] | 5.8e-7 |" in section
    assert "| onnxruntime | 38 s | 41 s | 352 MB |" in section
    assert results_report.speed_value(path, "ratio", "vit_zoo_base_patch32_clip_224", "onnxruntime") == "1.50×"
    assert results_report.speed_value(path, "export-time", "vit_zoo_base_patch32_clip_224", "onnxruntime") == "41 s"
    with pytest.raises(results_report.ReportError, match="'torch eager' is what the exported files are compared with"):
        results_report.speed_value(path, "ratio", "vit_zoo_base_patch32_clip_224", "torch eager")
    with pytest.raises(results_report.ReportError, match="has no export 'AOTInductor'; it has \\['onnxruntime'\\]"):
        results_report.speed_value(path, "export-time", "vit_zoo_base_patch32_clip_224", "AOTInductor")


def test_results_files_come_in_the_order_of_their_kinds(results_report, tmp_path):
    gpu = copy.deepcopy(loaded_cpu_run())
    gpu["environment"] |= {"device": "cuda", "date": "2026-12-09"}
    fidelity = {"benchmark": "fidelity", "environment": {"date": "2026-12-09"}, "errors": {}}
    names = {"a_fidelity.json": fidelity, "b_export.json": export_run(), "c_embed.json": embed_run()}
    names |= {"d_gpu.json": gpu, "e_cpu.json": loaded_cpu_run()}
    for name, report in names.items():
        write(tmp_path, name, report)
    found = [path.name for path in results_report.results_files(tmp_path)]
    assert found == ["e_cpu.json", "d_gpu.json", "c_embed.json", "b_export.json", "a_fidelity.json"]
