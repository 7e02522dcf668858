"""``vit-zoo convert`` and ``conversion/convert_openai_clip.py`` as a user runs them (subprocesses).

Bad input must end with exit code != 0, one line on stderr, no traceback and nothing left behind. The
processes run in parallel (each spends seconds importing torch) and are checked one test per case.
"""

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from checkpoints import (
    malicious_pickle,
    openai_clip,
    reference_image_embedding,
    write_state_dict,
    write_torchscript_archive,
)
from file_server import FileServer
from helpers import REPO_ROOT, TINY_NAME
from reference import TINY, relative_error
from safetensors.torch import load_file

from vit_zoo import VisionTransformer, VitZooConfig

SERVED_NAME = "vit_zoo_served_tiny_test"


def served_entry_yaml(url: str, sha256: str) -> str:
    """A zoo variant whose pretrained weights are the tiny archive on the local server."""
    geometry = "\n".join(f"  {key}: {value}" for key, value in TINY.items())
    return (
        f"name: {SERVED_NAME}\ndescription: Tiny test CLIP served locally\nmodel:\n{geometry}\n"
        f"pretrained:\n  openai:\n    url: {url}\n    sha256: {sha256}\n    license: mit\n"
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    model = openai_clip(TINY)
    archive = write_torchscript_archive(model, folder / "ViT-T-8.pt")
    tower = {k: v for k, v in model.state_dict().items() if not k.startswith("visual.transformer.resblocks.0.")}
    data = archive.read_bytes()
    (folder / "empty.pt").write_bytes(b"")
    (folder / "random.pt").write_bytes(bytes(range(256)) * 16)
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    (folder / "evil.pt").write_bytes(malicious_pickle(folder / "marker"))
    (folder / "exists").mkdir()
    return dict(
        folder=folder,
        model=model,
        archive=archive,
        holey=write_state_dict(tower, folder / "holey.pt"),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vit_zoo", "convert", *args]


def script(*args: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "conversion" / "convert_openai_clip.py"), *args]


# Runs `vit-zoo convert` once per case in one interpreter (each refusal would otherwise pay its own torch import):
# argv = [[work folder, [arguments...]], ...]; prints [[exit code, stdout, stderr], ...] as JSON.
REFUSALS_IN_ONE_PROCESS = """
import contextlib, io, json, os, sys
from vit_zoo.cli import main
results = []
for work, arguments in json.loads(sys.argv[1]):
    os.chdir(work)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(arguments)
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def runs(files, tmp_path_factory):
    """Run every case, as many at once as there are CPUs; ``runs[case]`` = (completed process, its work folder).
    The refusals (``ERRORS``) share one process; each run that writes a folder has its own."""
    inputs = files["folder"]
    with FileServer() as server:
        server.files["/weights/ViT-T-8.pt"] = files["archive"].read_bytes()
        zoo = tmp_path_factory.mktemp("zoo")
        (zoo / "served.yaml").write_text(served_entry_yaml(f"{server.url}/weights/ViT-T-8.pt", files["sha256"]))
        refusals = {
            "missing": [str(inputs / "nope.pt"), "--output", "out"],
            "empty": [str(inputs / "empty.pt"), "--output", "out"],
            "random": [str(inputs / "random.pt"), "--output", "out"],
            "truncated": [str(inputs / "truncated.pt"), "--output", "out"],
            "malicious": [str(inputs / "evil.pt"), "--output", "out"],
            "wrong_geometry": [str(files["archive"]), "--output", "out", "--name", "vit_zoo_base_patch32_clip_224"],
            "missing_blocks": [str(files["holey"]), "--output", "out", "--name", TINY_NAME],
            "output_exists": [str(files["archive"]), "--output", str(inputs / "exists")],
            "unknown_name": ["ViT-X/99", "--output", "out"],
        }
        works = {case: tmp_path_factory.mktemp(case) for case in refusals}
        batch = json.dumps([[str(works[case]), ["convert", *arguments]] for case, arguments in refusals.items()])
        cases = {
            "refusals": [sys.executable, "-c", REFUSALS_IN_ONE_PROCESS, batch],
            "archive": command(str(files["archive"]), "--output", "nested/out", "--name", TINY_NAME),
            "script": script(str(files["archive"]), "--output", "out", "--dtype", "float32", "--name", TINY_NAME),
            "by_name": command(SERVED_NAME, "--output", "out", "--cache-dir", "cache"),
            "known_file": command(str(files["archive"]), "--output", "out"),
        }
        environment = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "VIT_ZOO_CONFIGS": str(zoo),
            "VIT_ZOO_CACHE": "unused-cache",
        }

        def run(case: str):
            work = tmp_path_factory.mktemp(case)
            return subprocess.run(cases[case], cwd=work, env=environment, capture_output=True, text=True, timeout=300), work

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            results = dict(zip(cases, pool.map(run, cases), strict=True))
    batch_result, _ = results.pop("refusals")
    assert batch_result.returncode == 0 and batch_result.stderr == "", batch_result.stderr  # nothing at import either
    for (case, arguments), (code, out, err) in zip(refusals.items(), json.loads(batch_result.stdout), strict=True):
        results[case] = subprocess.CompletedProcess(arguments, code, out, err), works[case]
    return results


ERRORS = {
    "missing": "nope.pt: no such file, and not a model name; give a checkpoint file or one of ViT-",
    "empty": "empty.pt is empty; expected an OpenAI CLIP .pt archive, a torch.save state dict or a .safetensors file",
    "random": "random.pt is not a checkpoint (unknown file type)",
    "truncated": "truncated.pt is a truncated or corrupt zip file",
    "malicious": "evil.pt: refused to unpickle",
    "wrong_geometry": "not a vit_zoo_base_patch32_clip_224: input_resolution is 32 in the checkpoint but 224",
    "missing_blocks": "transformer block(s) 0 missing: the checkpoint has blocks 1",
    "output_exists": "already exists; choose a new folder or remove it",
    "unknown_name": "ViT-X/99: no such file, and not a model name",
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_ends_with_one_line_and_leaves_nothing(runs, files, case):
    result, work = runs[case]
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("vit-zoo convert: error: ") and ERRORS[case] in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in files["folder"].iterdir()) == sorted(
        ["ViT-T-8.pt", "empty.pt", "random.pt", "truncated.pt", "evil.pt", "exists", "holey.pt"]
    )  # no marker from the malicious pickle, no partial output beside "exists"
    assert list((files["folder"] / "exists").iterdir()) == []


def check_folder(folder: Path, model, dtype: torch.dtype) -> VitZooConfig:
    config = VitZooConfig.from_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    assert config.heads == TINY["heads"] and {w.dtype for w in weights.values()} == {dtype}
    vit = VisionTransformer(**config.geometry).eval()
    vit.load_state_dict(weights)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert relative_error(vit(images)[0], reference_image_embedding(model, images)) <= 1e-5
    return config


def test_convert_a_file(runs, files):
    result, work = runs["archive"]
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "wrote nested/out: README.md, config.json, config.py, errors.py, files.py, model.py, model.safetensors, "
        "modeling.py, preprocessor_config.json, spec.py\n"
    )
    check_folder(work / "nested" / "out", files["model"], torch.float16)
    assert [p.name for p in (work / "nested").iterdir()] == ["out"]  # no staging folder left


def test_conversion_script_is_the_same_command(runs, files):
    result, work = runs["script"]
    assert result.returncode == 0, result.stderr
    check_folder(work / "out", files["model"], torch.float32)
    assert "Weights: float32, converted from the source's float16" in (work / "out" / "README.md").read_text()


def test_convert_by_name_downloads_verifies_and_records_the_release(runs, files):
    result, work = runs["by_name"]
    assert result.returncode == 0, result.stderr
    assert (work / "cache" / "checkpoints" / "ViT-T-8.pt").read_bytes() == files["archive"].read_bytes()
    check_folder(work / "out", files["model"], torch.float16)
    card = (work / "out" / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n")
    assert "- Source: http://127.0.0.1:" in card and f"`{files['sha256']}`" in card
    assert f"`vit-zoo convert {SERVED_NAME} --output out`" in card


def test_a_local_copy_of_a_release_is_recognised_by_its_sha256(runs, files):
    result, work = runs["known_file"]
    assert result.returncode == 0, result.stderr
    config = check_folder(work / "out", files["model"], torch.float16)  # heads=4 from the zoo, not width // 64
    assert json.loads((work / "out" / "config.json").read_text())["heads"] == config.heads
    assert "Tiny test CLIP served locally" in (work / "out" / "README.md").read_text()
