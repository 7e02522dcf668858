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


def test_tiny_run_writes_agreeing_results(bench_speed, tmp_path):
    argv = ["--models", "vit_zoo_tiny_patch8_test_32", "--dtype", "float32", "--batch-size", "2"]
    bench_speed.main([*argv, "--rounds", "2", "--warmup", "0", "--output-dir", str(tmp_path)])
    report = json.loads((tmp_path / "speed_cpu.json").read_text())
    (result,) = report["results"]
    expected_cases = {"timm", "open_clip", "hf_sdpa", "hf_eager+attentions", "vit_zoo", "vit_zoo+attention_map"}
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
    assert all(error <= 1e-5 for error in result["agreement"].values()), result["agreement"]
    table = (tmp_path / "speed_cpu.md").read_text()
    assert "| vit_zoo+attention_map |" in table and "vit_zoo_tiny_patch8_test_32, float32" in table


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
