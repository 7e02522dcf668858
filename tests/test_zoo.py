"""The YAML zoo: built-in variants, validation with path and field, user registration."""

import pytest
import yaml
from timm.data import OPENAI_CLIP_MEAN

from vit_zoo import zoo

BUILTIN = {
    "vit_zoo_base_patch32_clip_224": ("ViT-B/32", 224, 32, 768, 12, 12, 512),
    "vit_zoo_base_patch16_clip_224": ("ViT-B/16", 224, 16, 768, 12, 12, 512),
    "vit_zoo_large_patch14_clip_224": ("ViT-L/14", 224, 14, 1024, 24, 16, 768),
    "vit_zoo_large_patch14_clip_336": ("ViT-L/14@336px", 336, 14, 1024, 24, 16, 768),
}
GEOMETRY_KEYS = ("input_resolution", "patch_size", "width", "layers", "heads", "output_dim")


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_openai_variants(name):
    openai_name, *geometry = BUILTIN[name]
    entry = zoo.get_entry(name)
    assert zoo.get_entry(openai_name) is entry
    assert tuple(entry.model[k] for k in GEOMETRY_KEYS) == tuple(geometry)
    source = entry.pretrained["openai"]
    assert source.license == "mit" and source.sha256 in source.url and source.url.endswith(".pt")
    assert entry.preprocessing.mean == OPENAI_CLIP_MEAN and entry.preprocessing.interpolation == "bicubic"
    assert entry.config().width == entry.model["width"]


def test_every_yaml_file_loads_and_names_match_files():
    paths = sorted(zoo.builtin_config_dir().glob("*.yaml"))
    assert len(paths) == 5
    for path in paths:
        assert zoo.load_entry(path).name == path.stem


def write_variant(path, **changes):
    data = yaml.safe_load((zoo.builtin_config_dir() / "vit_zoo_tiny_patch8_test_32.yaml").read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = data
        for parent in parents:
            target = target[parent]
        target[key] = value
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(model__heads=5), r"model: width \(64\) must be divisible by heads \(5\)"),
        (dict(model__patch_size="8"), "patch_size must be a positive int, got '8'"),
        (dict(model__depth=3), r"unknown key\(s\) \['depth'\] in model"),
        (dict(preprocessing__std=[0.1, -1, 0.2]), "preprocessing.std must be positive"),
        (dict(preprocessing__interpolation="lanczos9"), "preprocessing.interpolation must be one of"),
        (dict(name="has space"), "name must be a Python-identifier-like string"),
        (dict(pretrained={"openai": {"sha256": "abc"}}), "pretrained.openai.sha256 must be 64 lowercase hex digits"),
    ],
)
def test_malformed_yaml_names_path_and_field(tmp_path, changes, message):
    path = write_variant(tmp_path / "bad.yaml", **changes)
    with pytest.raises(zoo.ZooConfigError, match=message) as error:
        zoo.load_entry(path)
    assert str(error.value).startswith(str(path))


def test_unreadable_and_non_yaml_files(tmp_path):
    with pytest.raises(zoo.ZooConfigError, match="cannot read zoo config"):
        zoo.load_entry(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    with pytest.raises(zoo.ZooConfigError, match="not valid YAML"):
        zoo.load_entry(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(zoo.ZooConfigError, match="expected a mapping"):
        zoo.load_entry(tmp_path / "list.yaml")


def test_register_config_and_listeners(tmp_path, scratch_zoo):
    seen = []
    stop_seeing = zoo.on_register(lambda entry: seen.append(entry.name))
    assert "vit_zoo_base_patch32_clip_224" in seen
    entry = zoo.register_config(write_variant(tmp_path / "mine.yaml", name="my_tiny_variant", model__layers=3))
    assert seen[-1] == "my_tiny_variant" and zoo.get_entry("my_tiny_variant") is entry
    assert entry.model["layers"] == 3
    with pytest.raises(zoo.ZooConfigError, match="already defined"):
        zoo.register_config({**yaml.safe_load((tmp_path / "mine.yaml").read_text()), "description": "other"})
    stop_seeing()
    zoo.register_config(write_variant(tmp_path / "unseen.yaml", name="unseen_variant"))
    assert seen[-1] == "my_tiny_variant"

    def refuse(entry):
        if entry.name == "refused_variant":
            raise ValueError(f"{entry.name} clashes")

    stop_refusing = zoo.on_register(refuse)
    try:
        with pytest.raises(ValueError, match="clashes"):
            zoo.register_config(write_variant(tmp_path / "other.yaml", name="refused_variant"))
    finally:
        stop_refusing()
    assert "refused_variant" not in [e.name for e in zoo.list_entries()]


def test_unregister_config(tmp_path, scratch_zoo):
    entry = zoo.register_config(write_variant(tmp_path / "mine.yaml", name="my_gone_variant"))
    assert zoo.unregister_config("my_gone_variant") is entry
    assert "my_gone_variant" not in [e.name for e in zoo.list_entries()]
    with pytest.raises(zoo.UnknownVariantError, match="cannot unregister 'my_gone_variant': no such variant"):
        zoo.unregister_config("my_gone_variant")
    with pytest.raises(zoo.ZooConfigError, match="cannot unregister 'vit_zoo_base_patch32_clip_224': it is built in"):
        zoo.unregister_config("vit_zoo_base_patch32_clip_224")
    assert zoo.register_config(tmp_path / "mine.yaml") == entry  # the same definition again is welcome


def test_unknown_name_lists_known_ones():
    with pytest.raises(KeyError) as error:
        zoo.get_entry("ViT-Q/7")
    assert "unknown zoo variant 'ViT-Q/7'" in str(error.value) and "ViT-B/32" in str(error.value)


def test_sizes_computed_from_geometry():
    import torch

    from vit_zoo import VisionTransformer

    entry = zoo.get_entry("vit_zoo_tiny_patch8_test_32")
    assert entry.num_params == sum(p.numel() for p in VisionTransformer(**entry.model).parameters())
    assert zoo.get_entry("ViT-B/16").gmacs == pytest.approx(17.56, abs=0.01)  # the published ViT-B/16 figure
    with torch.device("meta"):
        large = VisionTransformer(**zoo.get_entry("ViT-L/14").model)
    assert zoo.get_entry("ViT-L/14").num_params == sum(p.numel() for p in large.parameters())
