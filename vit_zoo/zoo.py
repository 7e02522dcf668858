"""The model zoo as data: one YAML file per variant, validated on load.

Built-in variants live in ``configs/`` (shipped inside the wheel as ``vit_zoo/configs``). Users add their
own with ``register_config(path_or_dict)`` (and remove them with ``unregister_config(name)``) or by pointing
``VIT_ZOO_CONFIGS`` at folders of YAML files (``os.pathsep``-separated). Adapters (timm) subscribe with
``on_register`` so a registered variant appears everywhere the built-ins do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import UnknownVariantError, ZooConfigError, first_line, os_reason
from .spec import GEOMETRY_FIELDS, Geometry

if TYPE_CHECKING:
    from .config import VitZooConfig

CONFIGS_ENV = "VIT_ZOO_CONFIGS"
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
REQUIRED_MODEL_KEYS = tuple(field.name for field in fields(Geometry) if field.default is MISSING)
TOP_KEYS = ("name", "description", "model", "preprocessing", "pretrained")
SOURCE_KEYS = ("openai_name", "url", "sha256", "license", "paper", "hf_hub_id")


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared: resize the shortest edge, center-crop, normalise. A ``mean`` or ``std`` of ``None`` is
    OpenAI's CLIP statistics, as timm (``OPENAI_CLIP_MEAN``) and transformers ship them."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bicubic"
    crop_pct: float = 1.0


@dataclass(frozen=True)
class PretrainedSource:
    """Where a variant's released weights come from (``tag`` is timm's pretrained tag, e.g. ``openai``)."""

    tag: str
    url: str | None = None
    sha256: str | None = None
    license: str | None = None
    openai_name: str | None = None
    paper: str | None = None
    hf_hub_id: str | None = None


@dataclass(frozen=True)
class ZooEntry:
    """One variant of the zoo: geometry, preprocessing and pretrained sources."""

    name: str
    model: Mapping[str, Any]
    preprocessing: Preprocessing = Preprocessing()
    pretrained: Mapping[str, PretrainedSource] = field(default_factory=dict)
    description: str = ""
    path: Path | None = None

    def config(self, **overrides: Any) -> VitZooConfig:
        """A ``VitZooConfig`` of this geometry; ``overrides`` replace geometry fields."""
        from .config import VitZooConfig  # transformers: not for `vit-zoo list`, which reads the zoo at once

        return VitZooConfig(**{**self.model, **overrides})

    @property
    def geometry(self) -> Geometry:
        return Geometry(**self.model)

    @property
    def input_resolution(self) -> int:
        return self.model["input_resolution"]

    @property
    def num_params(self) -> int:
        """Parameter count, computed from the geometry."""
        return self.geometry.num_params

    @property
    def gmacs(self) -> float:
        """Multiply-accumulates of one forward pass, in billions (GFLOPs are twice this)."""
        return self.geometry.gmacs


def _fail(origin: str, message: str) -> ZooConfigError:
    return ZooConfigError(f"{origin}: {message}")


def _check_keys(origin: str, section: str, data: Mapping, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise _fail(origin, f"unknown key(s) {unknown} in {section}; allowed: {list(allowed)}")


def _mapping(origin: str, section: str, value: Any) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(origin, f"{section} must be a mapping, got {type(value).__name__}")
    return value


def _parse_model(origin: str, data: Any) -> dict[str, Any]:
    model = dict(_mapping(origin, "model", data))
    _check_keys(origin, "model", model, GEOMETRY_FIELDS)
    missing = [key for key in REQUIRED_MODEL_KEYS if key not in model]
    if missing:
        raise _fail(origin, f"model is missing {missing}; every variant needs {list(REQUIRED_MODEL_KEYS)}")
    try:
        Geometry(**model)
    except ValueError as error:
        raise _fail(origin, f"model: {error}") from None
    return model


def _parse_preprocessing(origin: str, data: Any) -> Preprocessing:
    values = dict(_mapping(origin, "preprocessing", data))
    _check_keys(origin, "preprocessing", values, ("mean", "std", "interpolation", "crop_pct"))
    for key in ("mean", "std"):
        if key in values:
            stats = values[key]
            if not isinstance(stats, list) or not stats or not all(isinstance(v, (int, float)) for v in stats):
                raise _fail(origin, f"preprocessing.{key} must be a list of numbers, got {stats!r}")
            if key == "std" and any(v <= 0 for v in stats):
                raise _fail(origin, f"preprocessing.std must be positive, got {stats!r}")
            values[key] = tuple(float(v) for v in stats)
    if values.get("interpolation", "bicubic") not in INTERPOLATIONS:
        raise _fail(origin, f"preprocessing.interpolation must be one of {INTERPOLATIONS}, got {values['interpolation']!r}")
    crop_pct = values.get("crop_pct", 1.0)
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
        raise _fail(origin, f"preprocessing.crop_pct must be a number in (0, 1], got {crop_pct!r}")
    return Preprocessing(**values)


def _parse_pretrained(origin: str, data: Any) -> dict[str, PretrainedSource]:
    sources = {}
    for tag, values in _mapping(origin, "pretrained", data).items():
        values = _mapping(origin, f"pretrained.{tag}", values)
        _check_keys(origin, f"pretrained.{tag}", values, SOURCE_KEYS)
        sha256 = values.get("sha256")
        if sha256 is not None and (not isinstance(sha256, str) or len(sha256) != 64 or set(sha256) - set("0123456789abcdef")):
            raise _fail(origin, f"pretrained.{tag}.sha256 must be 64 lowercase hex digits, got {sha256!r}")
        sources[str(tag)] = PretrainedSource(tag=str(tag), **values)
    return sources


def parse_entry(data: Mapping[str, Any], origin: str = "<dict>", path: Path | None = None) -> ZooEntry:
    """Validate one variant given as a mapping (the contents of a YAML file)."""
    if not isinstance(data, Mapping):
        raise _fail(origin, f"expected a mapping with keys {list(TOP_KEYS)}, got {type(data).__name__}")
    _check_keys(origin, "the top level", data, TOP_KEYS)
    name = data.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise _fail(origin, f"name must be a Python-identifier-like string (timm entry name), got {name!r}")
    return ZooEntry(
        name=name,
        model=_parse_model(origin, data.get("model")),
        preprocessing=_parse_preprocessing(origin, data.get("preprocessing")),
        pretrained=_parse_pretrained(origin, data.get("pretrained")),
        description=str(data.get("description", "")),
        path=path,
    )


def load_entry(path: str | os.PathLike) -> ZooEntry:
    """Read and validate one variant's YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ZooConfigError(f"{path}: cannot read zoo config ({os_reason(error)})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ZooConfigError(f"{path}: not valid YAML ({first_line(error)})") from None
    return parse_entry(data, origin=str(path), path=path)


def builtin_config_dir() -> Path:
    """``vit_zoo/configs`` in an installed wheel, else the repository's ``configs/``."""
    packaged = Path(__file__).with_name("configs")
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "configs"


def _config_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(CONFIGS_ENV, "").split(os.pathsep) if p]
    for folder in extra:
        if not folder.is_dir():
            raise ZooConfigError(f"{CONFIGS_ENV} names {folder}, which is not a folder of YAML files")
    return [builtin_config_dir(), *extra]


_registry: dict[str, ZooEntry] = {}
_listeners: list[Callable[[ZooEntry], None]] = []


def _add(entry: ZooEntry) -> ZooEntry:
    known = _registry.get(entry.name)
    if known is not None and known != entry:
        where = known.path or "a registered dict"
        raise ZooConfigError(f"{entry.path or '<dict>'}: variant {entry.name!r} is already defined by {where}; rename it")
    for listener in _listeners:  # a listener refusing the entry (e.g. a clashing timm name) keeps it out
        listener(entry)
    _registry[entry.name] = entry
    return entry


def _ensure_loaded() -> None:
    if _registry:
        return
    for folder in _config_dirs():
        for path in sorted(folder.glob("*.yaml")):
            _add(load_entry(path))


def register_config(source: str | os.PathLike | Mapping[str, Any]) -> ZooEntry:
    """Add a variant from a YAML file or a mapping; it then appears wherever the built-ins do."""
    _ensure_loaded()
    entry = parse_entry(source) if isinstance(source, Mapping) else load_entry(source)
    return _add(entry)


def unregister_config(name: str) -> ZooEntry:
    """Remove a variant added with ``register_config`` or ``VIT_ZOO_CONFIGS`` and return it; built-ins stay.

    timm keeps the entrypoint it was given (timm cannot forget a model): creating it then raises
    ``UnknownVariantError``, and registering the variant again brings it back.
    """
    _ensure_loaded()
    entry = _registry.get(name)
    if entry is None:
        raise UnknownVariantError(f"cannot unregister {name!r}: no such variant; known: {', '.join(sorted(_registry))}")
    if entry.path is not None and entry.path.parent == builtin_config_dir():
        raise ZooConfigError(f"cannot unregister {name!r}: it is built in ({entry.path})")
    del _registry[name]
    return entry


def on_register(listener: Callable[[ZooEntry], None]) -> Callable[[], None]:
    """Call ``listener`` for every variant, now and whenever one is registered later; returns the function that
    stops these calls."""
    _ensure_loaded()
    _listeners.append(listener)
    for entry in list(_registry.values()):
        listener(entry)
    return lambda: _listeners.remove(listener)


def list_entries() -> list[ZooEntry]:
    """Every variant, built-in and registered, sorted by name."""
    _ensure_loaded()
    return sorted(_registry.values(), key=lambda entry: entry.name)


def get_entry(name: str) -> ZooEntry:
    """A variant by its name (``vit_zoo_base_patch32_clip_224``) or OpenAI name (``ViT-B/32``)."""
    _ensure_loaded()
    if name in _registry:
        return _registry[name]
    for entry in _registry.values():
        if any(source.openai_name == name for source in entry.pretrained.values()):
            return entry
    known = ", ".join(sorted(_registry)) + " or " + ", ".join(openai_names())
    raise UnknownVariantError(f"unknown zoo variant {name!r}; known: {known}")


def openai_names() -> list[str]:
    """The OpenAI model names (``ViT-B/32`` ...) the zoo can download."""
    _ensure_loaded()
    return [s.openai_name for e in _registry.values() for s in e.pretrained.values() if s.openai_name]
