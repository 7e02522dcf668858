"""benchmarks/bench_speed.py runs end to end on a tiny model: every peer gets the same weights."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_speed.py"


@pytest.fixture(scope="module")
def bench_speed():
    spec = importlib.util.spec_from_file_location("bench_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_speed"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_speed"]


def test_tiny_run_writes_agreeing_results_per_batch_size(bench_speed, tmp_path):
    argv = ["--models", "vit_zoo_tiny_patch8_test_32", "--dtype", "float32", "--batch-sizes", "1", "3"]
    bench_speed.main([*argv, "--rounds", "2", "--warmup", "0", "--output-dir", str(tmp_path)])
    report = json.loads((tmp_path / "speed_cpu.json").read_text())
    environment = report["environment"]
    assert report["benchmark"] == "speed" and environment["commit"] and environment["date"]
    assert environment["command"].startswith("python benchmarks/bench_speed.py --models vit_zoo_tiny_patch8_test_32")
    assert len(environment["load_average_start"]) == len(environment["load_average_end"]) == 3
    assert [result["batch_size"] for result in report["results"]] == [1, 3]
    expected_cases = {"timm", "open_clip", "hf_sdpa", "hf_eager+attentions", "vit_zoo", "vit_zoo+attention_map"}
    for result in report["results"]:
        assert expected_cases <= set(result["cases"])
        for name, case in result["cases"].items():
            assert len(case["samples_s"]) == 2, name
            assert case["images_per_s"] > 0 and case["ratio_vs_timm"] > 0, name
        assert result["cases"]["timm"]["ratio_vs_timm"] == 1.0
        assert 0 < result["cases"]["vit_zoo"]["mfu"] and result["matmul_ceiling"]["best_tflops"] > 0
        assert set(result["attention_map_overheads"]) == {
            "vit_zoo+attention_map / vit_zoo",
            "hf_eager+attentions / hf_sdpa",
        }
        for name, (low, high) in result["attention_map_overhead_quartiles"].items():
            assert low <= result["attention_map_overheads"][name] <= high, name
        assert all(error <= 1e-5 for error in result["agreement"].values()), result["agreement"]
        # the profiled forward: the attention-map case runs its block-diagonal CLS-row product
        assert set(result["kernels"]) == set(result["cases"])
        map_ops = {kernel["name"] for kernel in result["kernels"]["vit_zoo+attention_map"]}
        assert "aten::bmm" in map_ops or len(map_ops) == bench_speed.TOP_KERNELS
        assert all(0 < kernel["share"] <= 1 for kernels in result["kernels"].values() for kernel in kernels)
    table = (tmp_path / "speed_cpu.md").read_text()
    assert "| vit_zoo+attention_map |" in table and "vit_zoo_tiny_patch8_test_32, float32, batch 3" in table
    kernels = (tmp_path / "speed_cpu_kernels.md").read_text()
    assert "**vit_zoo+attention_map**" in kernels and "`aten::addmm`" in kernels


def test_cases_selects_what_is_timed_and_keeps_the_baselines(bench_speed):
    args = bench_speed.parse_args(["--cases", "open_clip"])
    assert args.cases == ["timm", "open_clip", "vit_zoo"]
    with pytest.raises(SystemExit):
        bench_speed.parse_args(["--cases", "vit_zoo compiled"])  # compiled cases need --compile
    args = bench_speed.parse_args(["--compile", "--cases", "vit_zoo compiled", "timm compiled"])
    assert args.cases == ["timm", "vit_zoo", "timm compiled", "vit_zoo compiled"]


def test_plot_redraws_a_results_file(bench_speed, tmp_path):
    results = tmp_path / "reported.json"
    cases = {"timm": {"images_per_s": 10.0, "ratio_vs_timm": 1.0}, "vit_zoo": {"images_per_s": 12.0}}
    record = {"model": "m", "dtype": "bfloat16", "batch_size": 4, "cases": cases}
    results.write_text(json.dumps({"benchmark": "speed", "environment": {"device": "cuda"}, "results": [record]}))
    bench_speed.main(["--plot", str(results)])
    assert (tmp_path / "reported.png").read_bytes().startswith(b"\x89PNG")


def test_peers_that_disagree_stop_the_run(bench_speed):
    import torch

    images = torch.randn(2, 3, 8, 8)
    cases = {"vit_zoo": lambda x: x.flatten(1), "timm": lambda x: x.flatten(1) + 1}
    maps = {"vit_zoo": lambda x: x, "hf_eager": lambda x: x}
    with pytest.raises(RuntimeError, match="timm"):
        bench_speed.check_agreement(cases, maps, images)


def test_cuda_without_a_device_is_refused(bench_speed):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit):
        bench_speed.parse_args(["--device", "cuda"])
