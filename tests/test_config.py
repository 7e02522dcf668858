"""``vit_zoo.config``: VitZooConfig. Every invalid field refused with a ValueError naming it (at construction, from a
config.json, through AutoModel), the names generic tooling reads (``attribute_map``), ``intermediate_size`` and
``geometry``, ``from_dict`` refusing another model type or a non-object, and a save/load round trip."""

import json

import pytest
from reference import TINY
from transformers import AutoConfig, AutoModel

from vit_zoo import Geometry, VitZooConfig

ALIASES = {  # the name generic tooling reads -> the field it stands for
    "hidden_size": "width",
    "num_attention_heads": "heads",
    "num_hidden_layers": "layers",
    "image_size": "input_resolution",
    "num_channels": "in_channels",
    "projection_dim": "output_dim",
    "hidden_act": "activation",
}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(input_resolution=None), "input_resolution must be a positive int, got None (NoneType)"),
        (dict(input_resolution=30), "input_resolution (30) must be divisible by patch_size (8)"),
        (dict(patch_size=0), "patch_size must be a positive int, got 0"),
        (dict(width=-64), "width must be a positive int, got -64"),
        (dict(width="64"), "width must be a positive int, got '64' (str)"),
        (dict(layers=2.0), "layers must be a positive int, got 2.0 (float)"),
        (dict(heads=3), "width (64) must be divisible by heads (3)"),
        (dict(output_dim=0), "output_dim must be a positive int, got 0"),
        (dict(in_channels=True), "in_channels must be a positive int, got True (bool)"),
        (dict(mlp_ratio=-1), "mlp_ratio must be a positive number (finite), got -1"),
        (dict(mlp_ratio=0.001), "width * mlp_ratio must give at least one hidden unit, got 64 * 0.001"),
        (dict(activation="relu"), "activation must be one of ('quick_gelu', 'gelu'), got 'relu'"),
        (dict(layer_norm_eps=0), "layer_norm_eps must be a positive number (finite), got 0"),
    ],
    ids=lambda value: str(value)[:24] if isinstance(value, dict) else None,
)
def test_invalid_config_values_raise_value_error(overrides, message):
    with pytest.raises(ValueError) as error:
        VitZooConfig(**{**TINY, **overrides})
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


@pytest.mark.parametrize(
    "edit, message",  # the message of VitZooConfig.from_pretrained and AutoModel.from_pretrained alike
    [
        (dict(width="big"), "width must be a positive int, got 'big' (str)"),
        (dict(layers=0), "layers must be a positive int, got 0"),
        (dict(patch_size=8.5), "patch_size must be a positive int, got 8.5 (float)"),
        (dict(heads=5), "width (64) must be divisible by heads (5)"),
        (dict(mlp_ratio=float("inf")), "mlp_ratio must be a positive number (finite), got inf"),
        (dict(mlp_ratio="4"), "mlp_ratio must be a positive number (finite), got '4'"),
        (dict(activation="relu"), "activation must be one of ('quick_gelu', 'gelu'), got 'relu'"),
        (dict(layer_norm_eps=-1), "layer_norm_eps must be a positive number (finite), got -1"),
    ],
    ids=lambda value: str(value)[:24] if isinstance(value, dict) else None,
)
def test_config_json_with_wrong_values(copied_folder, edit, message):
    config_path = copied_folder / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, **edit}))
    for loader in (VitZooConfig, AutoModel):
        with pytest.raises(ValueError) as error:
            loader.from_pretrained(copied_folder)
        assert message in str(error.value) and "\n" not in str(error.value), (loader, str(error.value))


def test_config_json_that_is_not_a_json_object(copied_folder):
    (copied_folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="a config must be a JSON object of fields, got a list; the config.json"):
        VitZooConfig.from_pretrained(copied_folder)
    with pytest.raises(ValueError, match="Should have a `model_type` key in its config.json"):  # transformers' message
        AutoModel.from_pretrained(copied_folder)
    (copied_folder / "config.json").write_text("{not json")
    for loader in (VitZooConfig, AutoModel):
        with pytest.raises(OSError, match="config.json' is not a valid JSON file"):  # transformers' message
            loader.from_pretrained(copied_folder)


def test_from_dict_refuses_another_model_type_and_a_non_object(clip_vision_folder):
    with pytest.raises(ValueError, match="describes a 'clip_vision_model' model, not 'vit_zoo'"):
        VitZooConfig.from_pretrained(clip_vision_folder)
    with pytest.raises(ValueError, match="this config describes a 'clip' model, not 'vit_zoo'; load it with its own class"):
        VitZooConfig.from_dict({**TINY, "model_type": "clip"})
    with pytest.raises(ValueError, match="a config must be a JSON object of fields, got a list"):
        VitZooConfig.from_dict([TINY])
    assert VitZooConfig.from_dict(dict(TINY)).geometry == Geometry(**TINY)  # no model_type: this class's


def test_aliases_read_and_write_the_fields():
    config = VitZooConfig(**TINY)
    for alias, field in ALIASES.items():
        assert getattr(config, alias) == getattr(config, field), alias
    built = VitZooConfig(
        hidden_size=96,
        num_attention_heads=3,
        num_hidden_layers=2,
        image_size=16,
        patch_size=4,
        projection_dim=8,
        num_channels=1,
        hidden_act="gelu",
    )
    assert built.geometry == Geometry(16, 4, 96, 2, 3, 8, in_channels=1, activation="gelu")
    config.hidden_size = 128
    assert config.width == 128 and config.geometry.width == 128


@pytest.mark.parametrize("mlp_ratio", [4.0, 2.5])
def test_intermediate_size_is_the_geometrys_hidden_width(mlp_ratio):
    config = VitZooConfig(**TINY, mlp_ratio=mlp_ratio)
    assert config.intermediate_size == config.geometry.hidden == int(TINY["width"] * mlp_ratio)
    assert config.geometry == Geometry(**TINY, mlp_ratio=mlp_ratio)


def test_save_and_load_round_trip_of_the_config_alone(tmp_path):
    config = VitZooConfig(**TINY, activation="gelu", layer_norm_eps=1e-6, mlp_ratio=2.0)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "vit_zoo" and {key: saved[key] for key in TINY} == TINY
    for loaded in (VitZooConfig.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert type(loaded) is VitZooConfig
        assert loaded.geometry == config.geometry
        assert {**loaded.to_dict(), "_name_or_path": ""} == config.to_dict()  # where it came from aside
