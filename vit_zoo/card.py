"""The model card (``README.md``) of a vit_zoo folder: Hub metadata, provenance, geometry and usage for every loader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._version import __version__
from .zoo import PretrainedSource, ZooEntry

if TYPE_CHECKING:
    from .config import VitZooConfig

__all__ = ["Provenance", "model_card"]

REPO_ID_PLACEHOLDER = "YOUR-NAME/REPO"


@dataclass(frozen=True)
class Provenance:
    """What the model card says about where the weights come from and what was done to them."""

    source: str  # URL, or the file name of a local checkpoint
    sha256: str
    command: str
    folder: str
    source_dtype: str
    dtype: str
    entry: ZooEntry | None = None
    release: PretrainedSource | None = None
    note: str | None = None  # what a user of the weights must know (e.g. that they are random)

    @property
    def converted(self) -> bool:
        return self.source_dtype != self.dtype


def model_card(config: VitZooConfig, entry: ZooEntry | None = None, provenance: Provenance | None = None) -> str:
    """The ``README.md`` of a vit_zoo folder: Hub metadata, provenance, geometry and usage for every loader.

    Usage snippets name the repo ``YOUR-NAME/REPO``; ``push_folder`` puts the real repo id in.
    """
    release = provenance.release if provenance else _first_release(entry)
    title = entry.description if entry and entry.description else "CLIP ViT image encoder"
    metadata = [
        "---",
        f"license: {release.license if release and release.license else 'other'}",
        "library_name: transformers",
        "pipeline_tag: image-feature-extraction",
        "tags:",
        *(f"- {tag}" for tag in ("vit_zoo", "timm", "clip", "vision", "image-feature-extraction")),
        *([f"base_model: {release.hf_hub_id}"] if release and release.hf_hub_id else []),
        "---",
    ]
    return "\n".join(
        [
            *metadata,
            "",
            f"# {title}",
            "",
            *([f"> **Note:** {provenance.note}", ""] if provenance and provenance.note else []),
            _CARD_INTRO,
            "",
            *_provenance_lines(config, entry, provenance),
            "",
            _usage(config, entry),
            "",
        ]
    )


def _first_release(entry: ZooEntry | None) -> PretrainedSource | None:
    return next(iter(entry.pretrained.values()), None) if entry else None


_CARD_INTRO = (
    "OpenAI CLIP's image tower in [vit-zoo](https://pypi.org/project/vit-zoo-clip/)'s layout (OpenAI's `visual` "
    "parameter names, as safetensors). One repo for timm, transformers (with or without vit-zoo installed) and "
    "vit-zoo itself. Besides the projected CLS embedding it gives every patch token and each layer's "
    "CLS-to-patch attention map `[layers, batch, heads, grid, grid]`."
)


def _provenance_lines(config: VitZooConfig, entry: ZooEntry | None, provenance: Provenance | None) -> list[str]:
    lines = ["## Provenance", ""]
    if provenance is not None:
        weights = (
            f"{provenance.dtype}, converted from the source's {provenance.source_dtype}"
            if provenance.converted
            else f"{provenance.dtype}, as in the source (not converted)"
        )
        lines += [
            *([f"- Note: {provenance.note}"] if provenance.note else []),
            f"- Source: {provenance.source}",
            f"- Source SHA-256: `{provenance.sha256}`",
            f"- Converted with: `{provenance.command}` (vit-zoo {__version__})",
            f"- Weights: {weights}",
        ]
    else:
        lines.append(f"- Saved from a model in memory with vit-zoo {__version__}")
    release = provenance.release if provenance else _first_release(entry)
    if entry is not None:
        lines.append(f"- Zoo variant: `{entry.name}`")
    if release is not None and release.paper:
        lines.append(f"- Paper: {release.paper}")
    lines += [f"- Activation: `{config.activation}`", "- Geometry: " + ", ".join(f"{k}={v}" for k, v in config.geometry.items())]
    return lines


def _usage(config: VitZooConfig, entry: ZooEntry | None) -> str:
    size = config.input_resolution
    repo = REPO_ID_PLACEHOLDER
    return f"""## Usage

With timm (`pip install vit-zoo-clip`; importing `vit_zoo` registers the `vit_zoo_*` models):

```python
import timm
import vit_zoo  # noqa: F401

model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()
config = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**config)
embedding = model(transform(image).unsqueeze(0))  # [1, {config.output_dim}], OpenAI's encode_image
```

With transformers and vit-zoo installed:

```python
import vit_zoo  # noqa: F401  (registers model_type "vit_zoo" with the Auto classes)
from transformers import AutoImageProcessor, AutoModel

processor = AutoImageProcessor.from_pretrained("{repo}")
model = AutoModel.from_pretrained("{repo}")
outputs = model(**processor(images=image, return_tensors="pt"), output_attention_map=True)
outputs.image_embeds  # [1, {config.output_dim}]
outputs.attention_map  # [{config.layers}, 1, {config.heads}, {size // config.patch_size}, {size // config.patch_size}]
```

With transformers alone (the repo carries its modeling code):

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)
```

From the command line: `vit-zoo pull {repo}` downloads it, `vit-zoo embed {repo} IMAGES...` embeds images.
"""
