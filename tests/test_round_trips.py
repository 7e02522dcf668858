"""One format both ways: what the hosts' own writers save is what vit-zoo's tools and every loader read.

Writers: transformers' ``save_pretrained`` / ``push_to_hub`` (``VitZooModel`` and the classifier), timm's
``save_for_hf`` / ``push_to_hf_hub``, vit-zoo's ``save_model_folder`` and ``vit-zoo push``. Readers: ``check_folder``,
``vit-zoo embed`` and ``vit-zoo pull``, ``AutoModel`` (installed and as remote code), timm's ``local-dir:`` /
``hf-hub:``. ``vit-zoo convert`` (test_convert.py, test_folder.py) and ``vit-zoo push`` of its folders
(test_folder.py) are covered where they are written.

The one thing no reader can take is timm's own folder in transformers: timm writes its config.json without a
``model_type``. vit-zoo's tools say so in one line and name the conversion, which is tested here too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from helpers import TINY_NAME, assert_cli_error, call_main
from hub_server import WRITE_TOKEN
from PIL import Image
from reference import TINY
from safetensors.torch import load_file
from timm.models import push_to_hf_hub, save_for_hf
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

from conversion.offline_demo import remote_code_embeddings
from vit_zoo import FolderError, VitZooConfig, VitZooForImageClassification, VitZooModel, check_folder, save_model_folder

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def vit_zoo_folder(tmp_path_factory) -> Path:
    """A folder vit-zoo wrote (timm's keys in its config.json, its preprocessing, the card)."""
    torch.manual_seed(0)
    return save_model_folder(timm.create_model(TINY_NAME).eval(), tmp_path_factory.mktemp("vit-zoo") / "tiny")


def embeddings_of(folder: Path | str) -> dict[str, torch.Tensor]:
    """``IMAGES`` through every loader that takes ``folder`` (a folder or a Hub repo id)."""
    with torch.no_grad():
        return {
            "AutoModel": AutoModel.from_pretrained(folder).eval()(IMAGES).image_embeds,
            "timm": timm.create_model(
                f"{'local-dir' if Path(str(folder)).is_dir() else 'hf-hub'}:{folder}", pretrained=True
            ).eval()(IMAGES),
            "remote code": remote_code_embeddings(folder, IMAGES),
        }


def embed_with_the_cli(capsys, model: Path | str, image: Path, output: Path) -> torch.Tensor:
    code, out, err = call_main(capsys, "embed", model, image, "--output", output)
    assert code == 0, err
    return load_file(output)["embeddings"]


def test_save_pretrained_of_a_loaded_model_is_a_folder_every_reader_takes(vit_zoo_folder, image, tmp_path, capsys):
    """Fine-tuning in transformers: load a vit-zoo folder, change the weights, ``save_pretrained``."""
    model = VitZooModel.from_pretrained(vit_zoo_folder).eval()
    with torch.no_grad():
        model.visual.ln_post.weight.mul_(1.5)
        expected = model(IMAGES).image_embeds
    model.save_pretrained(tmp_path / "saved")
    saved = tmp_path / "saved"
    assert all(name.startswith("visual.") for name in load_file(saved / "model.safetensors"))  # transformers' layout
    assert check_folder(saved) == saved
    for loader, embedding in embeddings_of(saved).items():
        assert torch.equal(embedding, expected), loader
    processor = AutoImageProcessor.from_pretrained(saved, backend="pil")  # written beside it by save_pretrained
    pixel_values = processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        direct = model(pixel_values).image_embeds
    assert torch.equal(embed_with_the_cli(capsys, saved, image, tmp_path / "e.safetensors"), direct)


def test_save_pretrained_of_a_new_model_writes_openai_preprocessing(tmp_path, image, capsys):
    torch.manual_seed(0)
    model = VitZooModel(VitZooConfig(**TINY)).eval()
    model.save_pretrained(tmp_path / "new")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "new", backend="pil")
    assert processor.crop_size == {"height": 32, "width": 32} and list(processor.image_mean) == [
        0.48145466,
        0.4578275,
        0.40821073,
    ]
    check_folder(tmp_path / "new")
    with torch.no_grad():
        direct = model(processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]).image_embeds
    assert torch.equal(embed_with_the_cli(capsys, tmp_path / "new", image, tmp_path / "e.safetensors"), direct)
    extractor = pipeline("image-feature-extraction", model=str(tmp_path / "new"), image_processor=processor)
    assert torch.tensor(extractor(str(image))).shape[-1] == TINY["output_dim"]  # the pipeline's first output


def test_the_classifiers_save_pretrained_keeps_its_head_and_gives_its_tower_to_every_tool(vit_zoo_folder, tmp_path):
    classifier = VitZooForImageClassification.from_pretrained(vit_zoo_folder, num_labels=3).eval()
    classifier.save_pretrained(tmp_path / "classifier")
    folder = tmp_path / "classifier"
    assert {"classifier.weight", "classifier.bias"} <= set(load_file(folder / "model.safetensors"))
    assert check_folder(folder) == folder  # the tower is whole; the head beside it is left alone
    with torch.no_grad():
        logits = AutoModelForImageClassification.from_pretrained(folder).eval()(IMAGES).logits
        tower = AutoModel.from_pretrained(folder).eval()(IMAGES).image_embeds
        assert torch.equal(logits, classifier(IMAGES).logits)
        assert torch.equal(tower, VitZooModel.from_pretrained(vit_zoo_folder).eval()(IMAGES).image_embeds)


def test_timm_save_for_hf_round_trips_bit_exact_and_vit_zoo_names_the_conversion(vit_zoo_folder, tmp_path, capsys):
    model = timm.create_model(f"local-dir:{vit_zoo_folder}", pretrained=True).eval()
    save_for_hf(model, tmp_path / "timm", safe_serialization=True)  # refused a non-contiguous head before
    with torch.no_grad():
        reloaded = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
        assert torch.equal(reloaded(IMAGES), model(IMAGES))
    with pytest.raises(FolderError, match=r"is timm's \(save_for_hf.*vit-zoo convert .*model.safetensors --name ") as error:
        check_folder(tmp_path / "timm")
    converted = tmp_path / "converted"
    command = str(error.value).rpartition("vit-zoo convert ")[2].replace("NEW_FOLDER", str(converted)).split()
    code, _, err = call_main(capsys, "convert", *command)  # the command the message names
    assert code == 0, err
    for loader, embedding in embeddings_of(converted).items():
        assert torch.equal(embedding, model(IMAGES).detach()), loader


@pytest.mark.hub
def test_push_to_hub_then_pull_embed_and_every_loader(vit_zoo_folder, hub_server, image, tmp_path, capsys):
    model = VitZooModel.from_pretrained(vit_zoo_folder).eval()
    model.push_to_hub("org/pushed", token=WRITE_TOKEN)
    pulled = tmp_path / "pulled"
    code, out, err = call_main(capsys, "pull", "org/pushed", "--output", pulled)
    assert code == 0, err
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in pulled.iterdir()}
    with torch.no_grad():
        expected = model(IMAGES).image_embeds
    for loader, embedding in embeddings_of("org/pushed").items():
        assert torch.equal(embedding, expected), loader
    from_repo = embed_with_the_cli(capsys, "org/pushed", image, tmp_path / "repo.safetensors")
    assert torch.equal(from_repo, embed_with_the_cli(capsys, pulled, image, tmp_path / "folder.safetensors"))


@pytest.mark.hub
def test_timm_push_to_hf_hub_round_trips_and_pull_names_the_conversion(vit_zoo_folder, hub_server, tmp_path, capsys):
    model = timm.create_model(f"local-dir:{vit_zoo_folder}", pretrained=True).eval()
    push_to_hf_hub(model, "org/timm-pushed", token=WRITE_TOKEN, safe_serialization=True)
    with torch.no_grad():
        assert torch.equal(timm.create_model("hf-hub:org/timm-pushed", pretrained=True).eval()(IMAGES), model(IMAGES))
    assert_cli_error(call_main(capsys, "pull", "org/timm-pushed", "--output", tmp_path / "out"), "pull", "is timm's")
    assert not (tmp_path / "out").exists()


@pytest.mark.hub
def test_sharded_folders_load_whole_in_every_loader_from_disk_and_the_hub(vit_zoo_folder, hub_server, tmp_path, capsys):
    """timm's ``local-dir:`` read the first shard of a sharded folder alone and refused it (missing tensors)."""
    model = VitZooModel.from_pretrained(vit_zoo_folder).eval()
    sharded = save_model_folder(model, tmp_path / "sharded", max_shard_size=100_000)
    assert len(list(sharded.glob("model-*.safetensors"))) > 1 and not (sharded / "model.safetensors").exists()
    with torch.no_grad():
        expected = model(IMAGES).image_embeds
    for loader, embedding in embeddings_of(sharded).items():
        assert torch.equal(embedding, expected), loader
    code, _, err = call_main(capsys, "push", sharded, "org/sharded", "--token", WRITE_TOKEN)
    assert code == 0, err
    for loader, embedding in embeddings_of("org/sharded").items():
        assert torch.equal(embedding, expected), loader
