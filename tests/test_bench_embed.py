"""benchmarks/bench_embed.py writes a results file that results_report.py reads, with the run's provenance."""

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_speed_part_writes_an_embed_results_file_the_report_reads(tmp_path):
    bench_embed = load_script("bench_embed")
    argv = ["--parts", "speed", "--images", "2", "--layers", "1", "--rounds", "2", "--workers", "0", "--engines", "torch"]
    path = bench_embed.main([*argv, "--output-dir", str(tmp_path)])
    assert path == tmp_path / "embed_cpu_speed.json"
    report = json.loads(path.read_text())
    environment = report["environment"]
    assert report["benchmark"] == "embed" and environment["commit"] and environment["date"]
    assert environment["command"] == "python benchmarks/bench_embed.py " + " ".join([*argv, "--output-dir", str(tmp_path)])
    assert (environment["images"], environment["batch_size"], environment["workers"], environment["rounds"]) == (2, 64, 0, 2)
    assert len(environment["load_average_start"]) == len(environment["load_average_end"]) == 3
    (result,) = report["results"]
    assert (result["model"], result["layers"]) == ("vit_zoo_base_patch32_clip_224", 1)
    cases = result["cases"]
    assert list(cases) == ["timm", "vit_zoo", "vit_zoo+attention"] and cases["timm"]["ratio_vs_timm"] == 1.0
    for name, case in cases.items():
        assert len(case["seconds"]) == 2 and case["images_per_s"] == pytest.approx(2 / statistics.median(case["seconds"]))
        low, high = case["ratio_vs_timm_quartiles"]
        assert low <= case["ratio_vs_timm"] <= high, name
    seconds = {name: case["seconds"] for name, case in cases.items()}
    per_round = [with_maps / plain for with_maps, plain in zip(seconds["vit_zoo+attention"], seconds["vit_zoo"])]
    assert result["attention_map_overheads"]["vit_zoo+attention / vit_zoo"] == pytest.approx(sum(per_round) / 2)

    results_report = sys.modules["results_report"]
    section = results_report.section(path, "")
    assert f"commit {environment['commit']}" in section and "### vit_zoo_base_patch32_clip_224, 1 block\n" in section
    ratio = results_report.speed_value(path, "ratio", "vit_zoo_base_patch32_clip_224/1", "vit_zoo")
    assert ratio == f"{cases['vit_zoo']['ratio_vs_timm']:.2f}×"
