"""timm's own ``tests/test_models.py``, of the installed timm version and unedited, run against every vit_zoo entry.

The file comes from timm's sdist on PyPI (``upstream.upstream_tests``). It runs in a pytest subprocess in the
unpacked folder (timm's ``pyproject.toml`` declares its markers there) with a ``conftest.py`` that imports vit_zoo,
selected with ``-k vit_zoo``; only the tests that need the network (they download weights and reference tensors from
the Hugging Face Hub) are deselected. ``test_vision_transformer.py`` runs ``test_model_load_pretrained``'s assertions offline.

Every entry runs the tests timm's CI runs (it selects them by marker: ``-m forward``, ``-m features``, ...). The two it
leaves out (the prune contract, "slow ..., excluded from CI for now", and the FX + TorchScript test, defined only
outside GitHub Actions) run on the tiny entry alone: they check code paths that no geometry changes, and on the real
entries they cost minutes (pruning ViT-L/14 at each of its 24 blocks alone takes nine on 2 cores).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict

import pytest
from upstream import upstream_tests

import vit_zoo

pytestmark = pytest.mark.slow

NETWORK_BOUND = ("test_model_inference", "test_model_load_pretrained", "test_model_features_pretrained")
TINY = "vit_zoo_tiny_patch8_test_32"
# every vit_zoo entry must be collected by each of these (the forward_intermediates ones select the ViT family by the
# registering module's name, vit_zoo.vision_transformer)
MARKED_TESTS = (
    "test_model_forward",
    "test_model_backward",
    "test_model_default_cfgs_non_std",
    "test_model_forward_torchscript",
    "test_model_forward_intermediates_features",
    "test_model_forward_intermediates",
    "test_model_forward_fx",
    "test_model_backward_fx",
)
UNMARKED_TESTS = ("test_prune_intermediate_layers_contract", "test_model_forward_fx_torchscript")  # the tiny entry
# timm's own skip for models whose fixed input size is above a test's limit (e.g. 336 px), the only skip allowed
SIZE_LIMIT_SKIP = "Fixed input size model > limit."
CONFTEST = "import vit_zoo  # noqa: F401  (registers the vit_zoo entries with timm)\n"


def _run_timm_suite(report) -> ET.Element:
    root = upstream_tests("timm")
    (root / "conftest.py").write_text(CONFTEST)
    unmarked = " or ".join(UNMARKED_TESTS)
    selection = " and ".join(["vit_zoo", *(f"not {name}" for name in NETWORK_BOUND), f"not (({unmarked}) and not {TINY})"])
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/test_models.py",
        "-k",
        selection,
        "-p",
        "no:cacheprovider",
        "-q",
        "-W",
        "ignore::pytest.PytestUnknownMarkWarning",
        f"--junitxml={report}",
    ]
    result = subprocess.run(command, cwd=root, env=dict(os.environ), capture_output=True, text=True)
    assert report.is_file(), result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0, result.stdout[-8000:]
    return ET.parse(report).getroot()


def _outcomes(junit: ET.Element) -> dict[str, dict[str, str]]:
    """``{test function: {model name: "passed" | "skipped: <message>"}}`` from a junit report."""
    outcomes: dict[str, dict[str, str]] = defaultdict(dict)
    for case in junit.iter("testcase"):
        function, _, params = case.get("name").partition("[")
        model = re.sub(r"^\d+-", "", params.rstrip("]"))  # drop the batch-size parameter
        skipped = case.find("skipped")
        outcome = "passed" if case.find("failure") is None and case.find("error") is None else "failed"
        if skipped is not None:
            outcome = f"skipped: {skipped.get('message', '')}"
        outcomes[function][model] = outcome
    return outcomes


def test_timm_test_models_passes_for_every_vit_zoo_entry(tmp_path):
    outcomes = _outcomes(_run_timm_suite(tmp_path / "timm.xml"))
    entries = {entry.name for entry in vit_zoo.list_entries()}
    for function in MARKED_TESTS:
        collected = {model.partition(".")[0] for model in outcomes[function]}
        assert collected == entries, f"{function} did not collect {sorted(entries - collected)}"
    for function in UNMARKED_TESTS:
        assert {model.partition(".")[0] for model in outcomes[function]} == {TINY}, function
    results = [(f, m, o) for f, models in outcomes.items() for m, o in models.items()]
    assert not [r for r in results if r[2] == "failed"]
    unexpected_skips = [r for r in results if r[2].startswith("skipped") and SIZE_LIMIT_SKIP not in r[2]]
    assert not unexpected_skips
    # the tiny entry runs everything, so every test function has at least one vit_zoo pass
    assert all(models[TINY] == "passed" for models in outcomes.values() if TINY in models)
