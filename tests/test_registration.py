"""``vit_zoo.registration``: ``import vit_zoo`` registers with timm and transformers in any import order, without
importing them itself; the public names load on first use.

Each case runs in a fresh interpreter: registration depends on what was imported before, which a test
process that already imported everything cannot show.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TIMM_CHECK = """
assert "vit_zoo_base_patch16_clip_224" in timm.list_models("vit_zoo*")
assert "vit_zoo_base_patch16_clip_224.openai" in timm.list_models("vit_zoo*", pretrained=True)
model = timm.create_model("vit_zoo_tiny_patch8_test_32")
assert type(model).__module__ == "vit_zoo.vision_transformer", type(model)
"""
TRANSFORMERS_CHECK = """
model = AutoModel.from_pretrained(FOLDER)  # no trust_remote_code: the installed class must be registered
assert type(model).__module__ == "vit_zoo.modeling", type(model)
assert type(AutoConfig.from_pretrained(FOLDER)).__module__ == "vit_zoo.config"
classifier = AutoModelForImageClassification.from_pretrained(FOLDER, num_labels=3)
assert type(classifier).__name__ == "VitZooForImageClassification"
"""
FINDER_GONE = """
assert not [f for f in sys.meta_path if type(f).__module__ == "vit_zoo.registration"], sys.meta_path
"""
CASES = {
    "vit_zoo then timm": "import vit_zoo\nimport timm\n" + TIMM_CHECK,
    "timm then vit_zoo": "import timm\nimport vit_zoo\n" + TIMM_CHECK,
    "a vit_zoo submodule first, then timm": "from vit_zoo.vision_transformer import TimmVisionTransformer\nimport timm\n"
    + TIMM_CHECK,
    "vit_zoo then transformers": "import vit_zoo\n"
    "from transformers import AutoConfig, AutoModel, AutoModelForImageClassification\n" + TRANSFORMERS_CHECK,
    "transformers then vit_zoo": "from transformers import AutoConfig, AutoModel, AutoModelForImageClassification\n"
    "import vit_zoo\n" + TRANSFORMERS_CHECK,
    "a transformers model first, then vit_zoo": "from transformers import CLIPVisionModel\nimport vit_zoo\n"
    "from transformers import AutoConfig, AutoModel, AutoModelForImageClassification\n" + TRANSFORMERS_CHECK,
    "vit_zoo.VitZooConfig first, AutoConfig only": "import vit_zoo\nvit_zoo.VitZooConfig\n"
    "from transformers import AutoConfig\nassert AutoConfig.for_model('vit_zoo').__class__.__name__ == 'VitZooConfig'\n",
    "vit_zoo, timm and transformers: the import hook is gone": "import vit_zoo, timm\n"
    "from transformers import AutoModel\n" + FINDER_GONE,
    "everything before vit_zoo: no import hook at all": "import timm\nfrom transformers import AutoModel\n"
    "import vit_zoo\n" + FINDER_GONE + TIMM_CHECK,
}


def run_fresh(code: str, **variables: str) -> subprocess.CompletedProcess:
    prelude = "import sys\n" + "".join(f"{name} = {value!r}\n" for name, value in variables.items())
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", CASES)
def test_registered_in_any_import_order(case: str, model_folder: Path):
    result = run_fresh(CASES[case], FOLDER=str(model_folder))
    assert result.returncode == 0, result.stderr


def test_import_vit_zoo_loads_none_of_torch_timm_transformers():
    result = run_fresh(
        "import vit_zoo, vit_zoo.cli\n"
        "heavy = sorted({'torch', 'timm', 'transformers', 'torchvision', 'huggingface_hub'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
        "assert vit_zoo.VisionTransformer.__module__ == 'vit_zoo.model' and 'torch' in sys.modules\n"
    )
    assert result.returncode == 0, result.stderr


def test_public_names_are_listed_and_unknown_ones_raise():
    import vit_zoo

    assert set(vit_zoo.__all__) <= set(dir(vit_zoo))
    for name in set(vit_zoo.__all__) - {"__version__"}:
        assert getattr(vit_zoo, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vit_zoo.nope  # noqa: B018
