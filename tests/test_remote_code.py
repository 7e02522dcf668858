"""A folder written by save_pretrained loads with trust_remote_code=True where vit_zoo cannot be imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference import TINY
from safetensors.torch import load_file, save_file
from transformers import set_seed
from transformers.dynamic_module_utils import get_imports, get_relative_imports

import vit_zoo
from conversion.offline_demo import BLOCK_VIT_ZOO
from vit_zoo import VitZooConfig, VitZooModel, image_processor_for

PACKAGE = Path(vit_zoo.__file__).parent
REMOTE_FILES = ("config.py", "model.py", "modeling.py", "spec.py")

# Runs in a fresh interpreter: vit_zoo is blocked from import, the repository is not on sys.path.
REMOTE_SCRIPT = (
    BLOCK_VIT_ZOO
    + r"""
import json
import shutil

folder, work = sys.argv[1], sys.argv[2]

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

try:
    AutoModel.from_pretrained(folder, trust_remote_code=False)
    refused_without_trust = ""
except ValueError as error:
    refused_without_trust = str(error)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
classifier = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True, num_labels=3)
processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
inputs = load_file(f"{work}/inputs.safetensors")
with torch.no_grad():
    out = model(inputs["pixel_values"], output_attention_map=True, output_attentions=True, output_hidden_states=True)
    logits = classifier.eval()(inputs["pixel_values"]).logits
processed = processor(images=inputs["image"].numpy(), return_tensors="pt")["pixel_values"]
bomb = shutil.copytree(folder, f"{work}/bomb")
with open(f"{bomb}/config.json") as file:
    settings = json.load(file)
with open(f"{bomb}/config.json", "w") as file:
    json.dump({**settings, "layers": 20000}, file)
try:
    AutoModel.from_pretrained(bomb, trust_remote_code=True)
    refused_bomb = ""
except ValueError as error:
    refused_bomb = str(error)
save_file(
    {
        "image_embeds": out.image_embeds,
        "last_hidden_state": out.last_hidden_state,
        "attention_map": out.attention_map,
        "attentions_0": out.attentions[0],
        "hidden_states_0": out.hidden_states[0],
        "processed": processed,
        "logits": logits,
    },
    f"{work}/outputs.safetensors",
)
report = {
    "model_module": type(model).__module__,
    "classifier_class": type(classifier).__name__,
    "processor_class": type(processor).__name__,
    "refused_without_trust": refused_without_trust,
    "refused_bomb": refused_bomb,
    "vit_zoo_modules": sorted(name for name in sys.modules if name.partition(".")[0] == "vit_zoo"),
}
with open(f"{work}/report.json", "w") as file:
    json.dump(report, file)
"""
)


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("remote") / "tiny_vit_zoo"
    set_seed(0)
    VitZooModel(VitZooConfig(**TINY)).save_pretrained(folder)
    image_processor_for(VitZooConfig(**TINY)).save_pretrained(folder)
    return folder


def test_folder_carries_the_package_files_and_auto_map(saved_folder):
    for name in REMOTE_FILES:
        assert (saved_folder / name).read_bytes() == (PACKAGE / name).read_bytes(), name
    auto_map = json.loads((saved_folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "config.VitZooConfig",
        "AutoModel": "modeling.VitZooModel",
        "AutoModelForImageClassification": "modeling.VitZooForImageClassification",
    }


@pytest.mark.parametrize("name", REMOTE_FILES)
def test_remote_files_import_only_torch_transformers_and_siblings(saved_folder, name):
    path = saved_folder / name
    third_party = set(get_imports(path)) - set(sys.stdlib_module_names)
    assert third_party <= {"torch", "transformers"}
    assert {module.split(".")[0] for module in get_relative_imports(path)} <= {"config", "errors", "files", "model", "spec"}


def test_loads_with_trust_remote_code_without_vit_zoo(saved_folder, tmp_path):
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    image = torch.randint(0, 256, (40, 56, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    save_file({"pixel_values": pixel_values, "image": image}, tmp_path / "inputs.safetensors")
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_MODULES_CACHE")}
    environment |= {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    work = tmp_path / "elsewhere"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(saved_folder), str(tmp_path)],
        cwd=work,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["vit_zoo_modules"] == []
    assert report["model_module"].startswith("transformers_modules.") and report["model_module"].endswith(".modeling")
    assert report["classifier_class"] == "VitZooForImageClassification"
    assert report["processor_class"] == "CLIPImageProcessorPil"
    assert "trust_remote_code=True" in report["refused_without_trust"]
    assert (
        f"(model.safetensors): the config asks for layers=20000 but the weights hold {TINY['layers']} blocks"
        in report["refused_bomb"]
    )

    remote = load_file(tmp_path / "outputs.safetensors")
    installed = VitZooModel.from_pretrained(saved_folder).eval()
    with torch.no_grad():
        out = installed(pixel_values, output_attention_map=True, output_attentions=True, output_hidden_states=True)
    expected = {
        "image_embeds": out.image_embeds,
        "last_hidden_state": out.last_hidden_state,
        "attention_map": out.attention_map,
        "attentions_0": out.attentions[0],
        "hidden_states_0": out.hidden_states[0],
        "processed": image_processor_for(VitZooConfig(**TINY))(images=image.numpy(), return_tensors="pt")["pixel_values"],
    }
    for name, value in expected.items():
        assert torch.equal(remote[name], value), name
    assert remote["logits"].shape == (2, 3)
