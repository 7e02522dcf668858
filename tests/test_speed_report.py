"""benchmarks/speed_report.py: every table, plot and number shown of a results file is that file's, with its provenance."""

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
def speed_report():
    spec = importlib.util.spec_from_file_location("speed_report", BENCHMARKS / "speed_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["speed_report"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["speed_report"]


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


def drawn_bars(speed_report, report: dict) -> list[list[tuple[str, float, float]]]:
    """Per panel of the drawn figure: (case, bar length, number in the bar's label), read back from matplotlib."""
    import matplotlib.pyplot as plt

    figure = speed_report.draw(report)
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
def test_every_bar_is_as_long_as_its_label_says(speed_report, path):
    report = speed_report.load(path)
    panels = drawn_bars(speed_report, report)
    assert len(panels) == len(report["results"])
    for panel, result in zip(panels, report["results"], strict=True):
        assert [name for name, _, _ in panel] == list(result["cases"])
        for name, length, label in panel:
            assert label == pytest.approx(length, abs=0.005), f"{path.name} {name}: bar {length} labelled {label}"
            assert length == pytest.approx(speed_report.ratio_of(result, name)[0])


def test_a_loaded_run_is_drawn_and_tabled_by_its_paired_ratio(speed_report):
    report = loaded_cpu_run()
    (panel,) = drawn_bars(speed_report, report)
    lengths = {name: length for name, length, _ in panel}
    cases = report["results"][0]["cases"]
    assert cases["vit_zoo"]["images_per_s"] > cases["timm"]["images_per_s"]
    assert lengths["vit_zoo"] == pytest.approx(1 / 1.1) and lengths["vit_zoo"] < lengths["timm"] == 1.0
    assert lengths["open_clip"] == pytest.approx(3.0 / (8 / 3.0))  # no pairs: the ratio of median rates
    table = speed_report.summary_tables(report)
    assert "| `vit_zoo` | 2.76 | 0.91× [0.91–0.91] |" in table
    assert f"| `open_clip` | 3.00 | 1.12× {speed_report.RATE_RATIO_MARK} |" in table
    assert "ratio of median rates" in table


def test_a_section_says_commit_machine_date_and_load(speed_report, tmp_path):
    path = tmp_path / "speed_cpu.json"
    path.write_text(json.dumps(loaded_cpu_run()))
    section = speed_report.section(path, "results/")
    assert "Test CPU (CPU, 2 threads); commit abc1234; 2026-12-01" in section
    assert "**Load**: 7.5 at start, 8.2 at end. More processes wanted the CPU than the run's 2 threads" in section
    assert "![Ratio to timm eager per case: Test CPU (CPU, 2 threads), commit abc1234" in section
    unrecorded = copy.deepcopy(loaded_cpu_run())
    for key in ("commit", "date", "load_average_start", "load_average_end"):
        del unrecorded["environment"][key]
    path.write_text(json.dumps(unrecorded))
    section = speed_report.section(path, "results/")
    assert "commit not recorded; date not recorded" in section and "**Load**: not recorded." in section


@pytest.mark.parametrize("path", RESULTS, ids=lambda path: path.name)
def test_every_results_file_records_its_commit_machine_and_date(speed_report, path):
    environment = speed_report.load(path)["environment"]
    assert re.fullmatch(r"[0-9a-f]{7,40}", environment["commit"]), environment.get("commit")
    assert environment["device_name"] and re.fullmatch(r"\d{4}-\d{2}-\d{2}", environment["date"])


def test_the_markdown_files_are_what_the_results_files_give(speed_report, capsys):
    assert speed_report.main(["--check"]) == 0, capsys.readouterr().err
    assert (BENCHMARKS / "RESULTS.md") in speed_report.text_reports()


def test_values_are_formatted_as_the_tables_format_them(speed_report, tmp_path):
    path = tmp_path / "run.json"
    report = loaded_cpu_run()
    report["results"][0]["attention_map_overheads"] = {"vit_zoo+attention_map / vit_zoo": 1.0954}
    path.write_text(json.dumps(report))
    assert speed_report.speed_value(path, "ratio", "vit_zoo_base_patch32_clip_224", "vit_zoo") == "0.91×"
    assert speed_report.speed_value(path, "ratio", "vit_zoo_base_patch32_clip_224/float32/8", "open_clip") == "1.12×"
    assert speed_report.speed_value(path, "rate", "vit_zoo_base_patch32_clip_224", "timm") == "2.67"
    assert speed_report.speed_value(path, "overhead", "vit_zoo_base_patch32_clip_224", "vit_zoo+attention_map") == "+9.5 %"
    assert speed_report.format_rate(8869.0) == "8\u202f869"


def test_a_reference_to_a_missing_number_names_what_exists(speed_report, tmp_path):
    path = tmp_path / "run.json"
    report = loaded_cpu_run()
    report["results"].append({**report["results"][0], "batch_size": 16})
    path.write_text(json.dumps(report))
    with pytest.raises(speed_report.ReportError, match="matches 2 of the results .*MODEL/DTYPE/BATCH"):
        speed_report.speed_value(path, "ratio", "vit_zoo_base_patch32_clip_224", "vit_zoo")
    with pytest.raises(speed_report.ReportError, match="has no case 'vit_zoo compiled'; it has"):
        speed_report.speed_value(path, "ratio", "vit_zoo_base_patch32_clip_224/float32/8", "vit_zoo compiled")
    with pytest.raises(speed_report.ReportError, match="no attention-map overhead"):
        speed_report.speed_value(path, "overhead", "vit_zoo_base_patch32_clip_224/float32/8", "vit_zoo")
    with pytest.raises(speed_report.ReportError, match="holds speed results, not fidelity results"):
        speed_report.fidelity_value(path, "vit_zoo")
    (tmp_path / "other.json").write_text('{"results": []}')
    with pytest.raises(speed_report.ReportError, match=r"other.json: expected a JSON object with \"benchmark\""):
        speed_report.load(tmp_path / "other.json")
