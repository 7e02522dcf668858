"""``vit_zoo.image_processing``: OpenAI's preprocessing as a transformers CLIP image processor. ``image_processor_for``
(a zoo entry, an OpenAI name or a config; PIL and torchvision backends; ``crop_pct``; OpenAI's mean and std by
default) reproduces OpenAI's pixels and saves beside a model; ``load_image_processor`` checks every field of a
``preprocessor_config.json`` and refuses each bad one with a ValueError naming the file and the field."""

import json
import math

import numpy as np
import pytest
import torch
from hostile import make_evil
from PIL import Image
from reference import TINY
from torchvision import transforms
from transformers import AutoImageProcessor, CLIPImageProcessor, CLIPImageProcessorPil
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from vit_zoo import VitZooConfig, VitZooModel, get_entry, image_processor_for
from vit_zoo.image_processing import load_image_processor
from vit_zoo.zoo import parse_entry


def smooth_test_image(height: int = 300, width: int = 420) -> Image.Image:
    noise = (np.random.default_rng(0).random((height // 10, width // 10, 3)) * 255).astype("uint8")
    return Image.fromarray(noise).resize((width, height), Image.BILINEAR)


def openai_preprocess(entry, image: Image.Image) -> torch.Tensor:
    """OpenAI CLIP's `_transform`: torchvision transforms on the PIL image."""
    resolution = entry.input_resolution
    return transforms.Compose(
        [
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(resolution),
            transforms.ToTensor(),
            transforms.Normalize(entry.preprocessing.mean, entry.preprocessing.std),
        ]
    )(image.convert("RGB"))


@pytest.mark.parametrize("name", ["vit_zoo_base_patch32_clip_224", "ViT-L/14@336px"])
def test_image_processor_has_the_variants_settings(name):
    entry = get_entry(name)
    processor = image_processor_for(name)
    assert isinstance(processor, CLIPImageProcessorPil)
    resolution = entry.input_resolution
    assert processor.size["shortest_edge"] == resolution
    assert (processor.crop_size["height"], processor.crop_size["width"]) == (resolution, resolution)
    assert processor.resample == PILImageResampling.BICUBIC
    assert tuple(processor.image_mean) == entry.preprocessing.mean
    assert tuple(processor.image_std) == entry.preprocessing.std
    assert isinstance(image_processor_for(entry, backend="torchvision"), CLIPImageProcessor)


def test_image_processor_reproduces_openai_preprocessing():
    entry, image = get_entry("ViT-B/32"), smooth_test_image()
    expected = openai_preprocess(entry, image)
    pil = image_processor_for(entry)(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pil, expected, rtol=0, atol=1e-6)
    fast = image_processor_for(entry, backend="torchvision")(images=image, return_tensors="pt")["pixel_values"][0]
    assert (fast - expected).abs().max().item() < 2.5 / 255 / min(entry.preprocessing.std)


def test_image_processor_saved_with_the_model_loads_with_auto_image_processor(tmp_path):
    entry = get_entry("vit_zoo_tiny_patch8_test_32")
    model = VitZooModel(entry.config()).eval()
    model.save_pretrained(tmp_path)
    image_processor_for(entry).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "CLIPImageProcessor"
    for backend, processor_class in (("pil", CLIPImageProcessorPil), ("torchvision", CLIPImageProcessor)):
        loaded = AutoImageProcessor.from_pretrained(tmp_path, backend=backend)
        assert type(loaded) is processor_class
        assert loaded.size["shortest_edge"] == 32 and loaded.crop_size["height"] == 32
        assert loaded.resample == PILImageResampling.BICUBIC
        pixel_values = loaded(images=smooth_test_image(), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            assert model(pixel_values).image_embeds.shape == (1, entry.model["output_dim"])


def test_image_processor_crop_pct_and_interpolation():
    entry = parse_entry(
        {
            "name": "cropped_test",
            "model": {**TINY, "input_resolution": 224, "patch_size": 32},
            "preprocessing": {"crop_pct": 0.875, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.25] * 3},
        }
    )
    processor = image_processor_for(entry)
    assert processor.size["shortest_edge"] == 256 and processor.crop_size["height"] == 224
    assert processor.resample == PILImageResampling.BILINEAR
    assert tuple(processor.image_mean) == (0.5, 0.5, 0.5)
    # a bare config records no preprocessing: OpenAI's is used
    assert tuple(image_processor_for(VitZooConfig(**TINY)).image_std) == get_entry("ViT-B/32").preprocessing.std


def test_image_processor_bad_input():
    with pytest.raises(ValueError, match="RGB images, but this variant takes 1 channels"):
        image_processor_for(VitZooConfig(**TINY, in_channels=1))
    with pytest.raises(ValueError, match="backend must be one of"):
        image_processor_for(VitZooConfig(**TINY), backend="opencv")
    with pytest.raises(KeyError, match="unknown zoo variant"):
        image_processor_for("ViT-H/14")


@pytest.mark.parametrize("backend, processor_class", [("pil", CLIPImageProcessorPil), ("torchvision", CLIPImageProcessor)])
def test_a_config_gets_openais_mean_and_std_from_transformers(backend, processor_class):
    processor = image_processor_for(VitZooConfig(**TINY), backend=backend)
    assert type(processor) is processor_class
    assert tuple(processor.image_mean) == tuple(OPENAI_CLIP_MEAN) and tuple(processor.image_std) == tuple(OPENAI_CLIP_STD)
    assert processor.size == {"shortest_edge": 32} and processor.crop_size == {"height": 32, "width": 32}
    assert processor.resample == PILImageResampling.BICUBIC


@pytest.mark.parametrize("backend", ["pil", "torchvision"])
@pytest.mark.parametrize("crop_pct", [0.9, 0.875, 0.3])
def test_crop_pct_below_one_resizes_the_shortest_edge_to_the_floor_of_resolution_over_crop_pct(backend, crop_pct):
    entry = parse_entry(
        {
            "name": "cropped_test",
            "model": {**TINY, "input_resolution": 16, "patch_size": 4},
            "preprocessing": {"crop_pct": crop_pct},
        }
    )
    processor = image_processor_for(entry, backend=backend)
    assert processor.size == {"shortest_edge": math.floor(16 / crop_pct)}  # 17, 18, 53
    assert processor.crop_size == {"height": 16, "width": 16}
    pixel_values = processor(images=smooth_test_image(40, 60), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 16, 16)


# --- load_image_processor: what a folder's preprocessor_config.json may hold ----------------------------------------


@pytest.fixture
def settings_file(tmp_path):
    """Writes ``preprocessor_config.json`` as vit_zoo saves it for the tiny geometry, with ``changes`` applied."""

    def write(**changes):
        image_processor_for(VitZooConfig(**TINY)).save_pretrained(tmp_path)
        path = tmp_path / "preprocessor_config.json"
        settings = {key: value for key, value in json.loads(path.read_text()).items() if value is not None}
        path.write_text(json.dumps({**settings, **changes}))
        return path

    return write


def test_load_image_processor_gives_back_what_was_saved(settings_file):
    saved = image_processor_for(get_entry("vit_zoo_tiny_patch8_test_32"))
    loaded = load_image_processor(settings_file())
    assert type(loaded) is CLIPImageProcessorPil
    for field in ("size", "crop_size", "resample", "image_mean", "image_std", "rescale_factor"):
        assert getattr(loaded, field) == getattr(saved, field), field
    image = smooth_test_image()
    assert torch.equal(
        loaded(images=image, return_tensors="pt")["pixel_values"], saved(images=image, return_tensors="pt")["pixel_values"]
    )


def test_load_image_processor_accepts_what_the_pil_backend_saves_and_any_shortest_edge_up_to_4x(settings_file):
    path = settings_file(image_processor_type="CLIPImageProcessorPil", size={"shortest_edge": 128}, resample=2)
    loaded = load_image_processor(path)
    assert loaded.size == {"shortest_edge": 128} and loaded.resample == PILImageResampling.BILINEAR


def test_load_image_processor_accepts_normalisation_reaching_up_to_1000_from_0(settings_file):
    """std 0.001 takes a white pixel to 1000: the edge of what is accepted (OpenAI's mean and std reach 2.15)."""
    loaded = load_image_processor(settings_file(image_mean=[0, 0, 0], image_std=[0.001] * 3))
    assert tuple(loaded.image_std) == (0.001, 0.001, 0.001)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(image_processor_type="ViTImageProcessor"), "image_processor_type 'ViTImageProcessor' is not CLIP's"),
        (dict(do_resize=False), "do_resize must be true in a vit_zoo folder"),
        (dict(do_center_crop=False), "do_center_crop must be true in a vit_zoo folder"),
        (dict(do_rescale=0), "do_rescale must be true in a vit_zoo folder"),
        (dict(do_normalize=None), "do_normalize must be true in a vit_zoo folder"),
        (dict(do_convert_rgb="yes"), "do_convert_rgb must be true in a vit_zoo folder"),
        (dict(crop_size={"height": 32, "width": 16}), "crop_size must be square (height == width), got {'height': 32, 'wi"),
        (dict(crop_size={"height": 0, "width": 0}), "crop_size.height must be a positive int, got 0"),
        (dict(crop_size=32), "crop_size.height must be a positive int, got None"),
        (dict(crop_size={"height": 32.0, "width": 32.0}), "crop_size.height must be a positive int, got 32.0"),
        (dict(size={"height": 32, "width": 32}), "size.shortest_edge must be a positive int, got None"),
        (dict(size={"shortest_edge": 31}), "size.shortest_edge 31 must lie between crop_size (32) and 4x it"),
        (dict(size={"shortest_edge": 129}), "size.shortest_edge 129 must lie between crop_size (32) and 4x it"),
        (dict(resample=99), "resample 99 is not a PIL resampling filter (0-5; bicubic is 3)"),
        (dict(resample=-1), "resample -1 is not a PIL resampling filter"),
        (dict(resample=3.0), "resample 3.0 is not a PIL resampling filter"),
        (dict(resample=True), "resample True is not a PIL resampling filter"),
        (dict(image_mean=[0.5, 0.5]), "image_mean must be 3 finite numbers (one per RGB channel), got [0.5, 0.5]"),
        (dict(image_mean=[0.5, float("nan"), 0.5]), "image_mean must be 3 finite numbers (one per RGB channel), got [0.5, nan"),
        (dict(image_std="0.27"), "image_std must be 3 finite numbers (one per RGB channel), got '0.27'"),
        (dict(image_std=[0.27, 0, 0.27]), "image_std [0.27, 0, 0.27] must be positive (a zero std divides by zero"),
        (dict(rescale_factor=0), "rescale_factor 0 must be a positive number (1/255 for 8-bit images)"),
        (dict(rescale_factor="1/255"), "rescale_factor '1/255' must be a positive number"),
        (dict(rescale_factor=float("inf")), "rescale_factor inf must be a positive number"),
        (
            dict(rescale_factor=1e300),
            "rescale_factor, image_mean and image_std map 8-bit pixels as far as 9.76e+302 from 0, past 1000 (OpenAI's",
        ),
        (dict(image_mean=[1e6, 0, 0]), "map 8-bit pixels as far as 3.72e+06 from 0, past 1000"),
        (dict(image_std=[1e-320, 1, 1]), "map 8-bit pixels as far as inf from 0, past 1000"),
        (dict(image_mean=[0, 0, 0], image_std=[0.000999] * 3), "map 8-bit pixels as far as 1e+03 from 0, past 1000"),
    ],
    ids=lambda value: str(value)[:32] if isinstance(value, dict) else None,
)
def test_load_image_processor_refuses_each_bad_field_naming_the_file(settings_file, changes, message):
    path = settings_file(**changes)
    with pytest.raises(ValueError) as error:
        load_image_processor(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value), str(error.value)
    assert "\n" not in str(error.value)


def test_load_image_processor_refuses_a_file_that_is_not_a_json_object(tmp_path):
    path = tmp_path / "preprocessor_config.json"
    with pytest.raises(ValueError, match=f"^{path} is missing$"):
        load_image_processor(path)
    path.write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="holds a JSON list, not an object"):
        load_image_processor(path)


def test_load_image_processor_never_follows_an_auto_map(copied_folder):
    """A folder's repo code is never offered or run: the processor is built from the values alone."""
    make_evil(copied_folder)
    assert type(load_image_processor(copied_folder / "preprocessor_config.json")) is CLIPImageProcessorPil
    assert not (copied_folder / "marker").exists()
