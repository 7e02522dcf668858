"""CLIP checkpoints -> vit_zoo: safe loading, one key map per foreign format, geometry, and back to HF CLIP.

Formats read (``to_vit_zoo_state_dict`` tells them apart by their keys):

* OpenAI / open_clip full CLIP: ``visual.*`` next to the text tower (open_clip training checkpoints also
  wrap it in ``state_dict`` and prefix ``module.``; ``load_checkpoint`` removes both).
* A bare image tower with vit_zoo's (= OpenAI's visual) names: ``conv1.weight``, ``transformer.resblocks.N.*``...
* transformers CLIP (``CLIPVisionModelWithProjection``, ``CLIPModel``): ``vision_model.*`` + ``visual_projection``.

``convert_checkpoint`` turns any of them (or an OpenAI model name, downloaded) into a folder of safetensors.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import CLIPVisionConfig

from .readers import CheckpointError, _first_line, load_checkpoint
from .config import VitZooConfig
from .download import download_pretrained, pretrained_source, sha256_of
from .model import ACTIVATIONS, VisionTransformer
from .zoo import PretrainedSource, ZooEntry, get_entry, list_entries, openai_names

__all__ = [
    "CheckpointError",
    "check_state_dict",
    "convert_checkpoint",
    "infer_geometry",
    "load_checkpoint",
    "to_hf_clip_state_dict",
    "to_hf_clip_vision_config",
    "to_vit_zoo_state_dict",
]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_MAX_SHARD_SIZE = "5GB"
OPENAI_HEAD_WIDTH = 64  # OpenAI's build_model: heads = width // 64
OBSERVABLE_FIELDS = ("input_resolution", "patch_size", "width", "layers", "output_dim", "in_channels", "mlp_ratio")
_GEOMETRY_DEFAULTS = dict(in_channels=3, mlp_ratio=4.0)
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")

# --- key maps -----------------------------------------------------------------------------------------------

_TEXT_KEYS = ("token_embedding.weight", "text_projection", "ln_final.", "text_model.", "text.")
_RESNET_KEYS = ("layer1.", "attnpool.")
_HF_IGNORED = ("text_model.", "text_projection.", "logit_scale", "vision_model.embeddings.position_ids")
# (HF CLIP name, vit_zoo name); {i} is a block index, {p} weight or bias. The attention's q/k/v and the
# projection are not renames (concatenated, transposed) and are handled apart.
_HF_CLIP_NAMES = (
    ("vision_model.embeddings.class_embedding", "class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight", "conv1.weight"),
    ("vision_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("vision_model.pre_layrnorm.{p}", "ln_pre.{p}"),
    ("vision_model.post_layernorm.{p}", "ln_post.{p}"),
    ("vision_model.encoder.layers.{i}.layer_norm1.{p}", "transformer.resblocks.{i}.ln_1.{p}"),
    ("vision_model.encoder.layers.{i}.self_attn.out_proj.{p}", "transformer.resblocks.{i}.attn.out_proj.{p}"),
    ("vision_model.encoder.layers.{i}.layer_norm2.{p}", "transformer.resblocks.{i}.ln_2.{p}"),
    ("vision_model.encoder.layers.{i}.mlp.fc1.{p}", "transformer.resblocks.{i}.mlp.c_fc.{p}"),
    ("vision_model.encoder.layers.{i}.mlp.fc2.{p}", "transformer.resblocks.{i}.mlp.c_proj.{p}"),
)
_HF_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_IN_PROJ = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
_HF_PROJECTION = "visual_projection.weight"


def _pattern(template: str) -> re.Pattern:
    return re.compile(
        "^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)") + "$"
    )


_HF_TO_VIT_ZOO = [(_pattern(hf), vz) for hf, vz in _HF_CLIP_NAMES]
_VIT_ZOO_TO_HF = [(_pattern(vz), hf) for hf, vz in _HF_CLIP_NAMES]


def _rename(key: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in table:
        match = pattern.match(key)
        if match:
            return template.format(**match.groupdict())
    return None


def to_vit_zoo_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower of a CLIP state dict under vit_zoo's names (OpenAI's ``visual`` names, no prefix).

    Accepts OpenAI/open_clip full CLIP (``visual.*``), a bare image tower, and transformers CLIP
    (``vision_model.*`` + ``visual_projection.weight``, transposed into ``proj [width, output_dim]``).
    Text-tower tensors are dropped, never copied. Shapes are checked later (``check_state_dict``).

    Raises:
        CheckpointError: a ResNet CLIP, a text-only checkpoint, or keys of no known CLIP layout.
    """
    keys = list(state_dict)
    if any(key.startswith("vision_model.") for key in keys):
        return _from_hf_clip(state_dict)
    if any(key.startswith("visual.") for key in keys):
        tower = {key.removeprefix("visual."): value for key, value in state_dict.items() if key.startswith("visual.")}
    elif "conv1.weight" in state_dict or any(key.startswith(_RESNET_KEYS) for key in keys):
        tower = dict(state_dict)
    elif any(key.startswith(_TEXT_KEYS) for key in keys):
        raise CheckpointError(
            "text-only checkpoint: it holds a CLIP text tower (token_embedding, ...) but no image tower "
            "(visual.* or vision_model.*); convert the full CLIP checkpoint instead"
        )
    else:
        raise CheckpointError(
            f"not a CLIP checkpoint: keys like {keys[:3]} match no known layout; expected OpenAI/open_clip "
            "visual.*, transformers CLIP vision_model.* or vit_zoo's conv1.weight, transformer.resblocks.N.*"
        )
    if any(key.startswith(_RESNET_KEYS) for key in tower):
        raise CheckpointError(
            "ResNet CLIP checkpoint (layer1.*, attnpool.*): vit_zoo holds OpenAI's ViT image towers only "
            "(ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14@336px)"
        )
    return tower


def _from_hf_clip(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if _HF_PROJECTION not in state_dict:
        raise CheckpointError(
            "transformers CLIP checkpoint without visual_projection.weight (a CLIPVisionModel?): vit_zoo needs "
            "the projection; use the CLIPVisionModelWithProjection or CLIPModel checkpoint"
        )
    tower, qkv, unknown = {"proj": state_dict[_HF_PROJECTION].t()}, {}, []
    for key, value in state_dict.items():
        if key == _HF_PROJECTION or key.startswith(_HF_IGNORED):
            continue
        name, split = _rename(key, _HF_TO_VIT_ZOO), _HF_QKV.match(key)
        if name is not None:
            tower[name] = value
        elif split is not None:
            block, part, kind = split.groups()
            qkv.setdefault((block, kind), {})[part] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"transformers CLIP checkpoint with unknown vision keys {unknown[:3]}")
    for (block, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise CheckpointError(
                f"layer {block} of the transformers CLIP checkpoint lacks self_attn.{missing}_proj.{kind}"
            )
        tower[f"transformer.resblocks.{block}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return tower


def to_hf_clip_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A vit_zoo state dict under transformers ``CLIPVisionModelWithProjection``'s names (the reverse map).

    ``attn.in_proj_*`` is split into ``self_attn.{q,k,v}_proj``; ``proj [width, output_dim]`` becomes
    ``visual_projection.weight [output_dim, width]``. ``to_vit_zoo_state_dict`` of the result gives the
    input back bit for bit.
    """
    hf = {}
    for key, value in state_dict.items():
        name, fused = _rename(key, _VIT_ZOO_TO_HF), _IN_PROJ.match(key)
        if key == "proj":
            hf[_HF_PROJECTION] = value.t().contiguous()
        elif name is not None:
            hf[name] = value
        elif fused is not None:
            block, kind = fused.groups()
            for part, tensor in zip("qkv", value.chunk(3), strict=True):
                hf[f"vision_model.encoder.layers.{block}.self_attn.{part}_proj.{kind}"] = tensor.contiguous()
        else:
            raise CheckpointError(f"{key} is not a vit_zoo parameter name")
    return hf


def to_hf_clip_vision_config(config: VitZooConfig) -> CLIPVisionConfig:
    """The transformers ``CLIPVisionConfig`` of the same model (for ``to_hf_clip_state_dict``'s weights)."""
    return CLIPVisionConfig(
        hidden_size=config.width,
        intermediate_size=int(config.width * config.mlp_ratio),
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_channels=config.in_channels,
        image_size=config.input_resolution,
        patch_size=config.patch_size,
        projection_dim=config.output_dim,
        hidden_act=config.activation,
        layer_norm_eps=config.layer_norm_eps,
    )


# --- geometry and checks ------------------------------------------------------------------------------------


def infer_geometry(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """The geometry of a vit_zoo state dict, as OpenAI's ``build_model`` infers it from shapes.

    Returns ``input_resolution, patch_size, width, layers, heads, output_dim, in_channels, mlp_ratio``;
    ``heads = width // 64`` (OpenAI's rule: heads cannot be seen in the weights).

    Raises:
        CheckpointError: a tensor that defines the geometry is missing or malformed, or blocks are missing.
    """
    missing = [key for key in ("conv1.weight", "positional_embedding", "proj") if key not in state_dict]
    if missing:
        raise CheckpointError(f"not a ViT image tower in OpenAI's layout: {', '.join(missing)} missing")
    conv, positions, proj = state_dict["conv1.weight"], state_dict["positional_embedding"], state_dict["proj"]
    if conv.ndim != 4 or conv.shape[-1] != conv.shape[-2] or positions.ndim != 2 or proj.ndim != 2:
        raise CheckpointError(
            f"conv1.weight {list(conv.shape)}, positional_embedding {list(positions.shape)} and proj "
            f"{list(proj.shape)} do not have the shapes of a ViT ([width, channels, patch, patch], [tokens, width], "
            "[width, output_dim])"
        )
    empty = [
        name
        for name, tensor in (("conv1.weight", conv), ("positional_embedding", positions), ("proj", proj))
        if not tensor.numel()
    ]
    if empty:
        raise CheckpointError(f"{', '.join(empty)} empty (a zero-size dimension); the checkpoint is damaged")
    width, in_channels, patch_size = conv.shape[0], conv.shape[1], conv.shape[-1]
    grid = math.isqrt(max(positions.shape[0] - 1, 0))
    if grid == 0 or grid * grid + 1 != positions.shape[0]:
        raise CheckpointError(f"positional_embedding has {positions.shape[0]} rows; a ViT needs 1 + grid * grid")
    if width % OPENAI_HEAD_WIDTH:
        raise CheckpointError(
            f"width {width} is not a multiple of 64, so heads cannot be inferred (OpenAI: heads = width // 64); "
            "give the zoo variant name (--name) of this geometry"
        )
    return dict(
        input_resolution=patch_size * grid,
        patch_size=patch_size,
        width=width,
        layers=_count_layers(state_dict),
        heads=width // OPENAI_HEAD_WIDTH,
        output_dim=proj.shape[1],
        in_channels=in_channels,
        mlp_ratio=_mlp_ratio(state_dict, width),
    )


def _count_layers(state_dict: Mapping[str, torch.Tensor]) -> int:
    blocks = sorted({int(match.group(1)) for key in state_dict if (match := _BLOCK.match(key))})
    if not blocks:
        raise CheckpointError("no transformer blocks (transformer.resblocks.N.*) in the image tower")
    missing = sorted(set(range(blocks[-1] + 1)) - set(blocks))
    if missing:
        raise CheckpointError(
            f"transformer block(s) {_ranges(missing)} missing: the checkpoint has blocks {_ranges(blocks)}, "
            "a complete one numbers them 0..N-1"
        )
    return len(blocks)


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    spans, start = [], numbers[0]
    for previous, current in zip(numbers, numbers[1:] + [None], strict=True):
        if current != previous + 1:
            spans.append(str(start) if start == previous else f"{start}-{previous}")
            start = current
    return ", ".join(spans)


def _mlp_ratio(state_dict: Mapping[str, torch.Tensor], width: int) -> float:
    hidden_weight = state_dict.get("transformer.resblocks.0.mlp.c_fc.weight")
    if hidden_weight is None or hidden_weight.ndim != 2:
        return _GEOMETRY_DEFAULTS["mlp_ratio"]  # check_state_dict reports the missing/malformed tensor
    hidden = hidden_weight.shape[0]
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise CheckpointError(f"MLP width {hidden} is not expressible as width {width} * mlp_ratio")
    return ratio


def check_state_dict(state_dict: Mapping[str, torch.Tensor], geometry: Mapping) -> None:
    """Raise ``CheckpointError`` unless ``state_dict`` has exactly the tensors, shapes and (floating) dtypes
    of a ``VisionTransformer(**geometry)``; the message lists what is missing, extra or misshapen."""
    with torch.device("meta"):
        expected = {name: tensor.shape for name, tensor in VisionTransformer(**geometry).state_dict().items()}
    missing = [name for name in expected if name not in state_dict]
    extra = [name for name in state_dict if name not in expected]
    misshapen = [
        f"{name} {list(state_dict[name].shape)} (expected {list(shape)})"
        for name, shape in expected.items()
        if name in state_dict and state_dict[name].shape != shape
    ]
    not_float = [
        f"{name} ({t.dtype})" for name, t in state_dict.items() if name in expected and not t.is_floating_point()
    ]
    problems = [
        f"{label}: {_listed(items)}"
        for label, items in (
            ("missing", missing),
            ("unexpected", extra),
            ("wrong shape", misshapen),
            ("not floating point", not_float),
        )
        if items
    ]
    if problems:
        described = ", ".join(
            f"{k}={geometry[k]}" for k in ("input_resolution", "patch_size", "width", "layers", "output_dim")
        )
        raise CheckpointError(f"the image tower does not fit a ViT with {described}: " + "; ".join(problems))


def _listed(items: list[str], shown: int = 4) -> str:
    """``a, b, c, d and 3 more``."""
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _refuse_non_finite(tensors: Mapping[str, torch.Tensor], why: str) -> None:
    """Raise ``CheckpointError`` naming the tensors that hold NaN or Inf (a NaN weight makes every embedding NaN)."""
    non_finite = [name for name, tensor in tensors.items() if not torch.isfinite(tensor).all()]
    if non_finite:
        raise CheckpointError(f"NaN or Inf values in {_listed(non_finite)}: {why}")


def _fit_entry(geometry: Mapping, entry: ZooEntry) -> None:
    expected = {**_GEOMETRY_DEFAULTS, **entry.model}
    differences = [
        f"{field} is {geometry[field]} in the checkpoint but {expected[field]} in the zoo"
        for field in OBSERVABLE_FIELDS
        if geometry[field] != expected[field]
    ]
    if differences:
        raise CheckpointError(f"the checkpoint is not a {entry.name}: " + "; ".join(differences))


# --- conversion ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConversionRecord:
    """What the model card says about where the weights come from and what was done to them."""

    source: str  # URL, or the file name of a local checkpoint
    sha256: str
    command: str
    folder: str
    source_dtype: str
    dtype: str
    entry: ZooEntry | None = None
    release: PretrainedSource | None = None

    @property
    def converted(self) -> bool:
        return self.source_dtype != self.dtype


def convert_checkpoint(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    name: str | None = None,
    activation: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Convert a CLIP checkpoint (a file, or an OpenAI name that is downloaded) into a vit_zoo folder.

    The image tower is extracted (text-tower tensors are never read), checked against the inferred
    geometry (and the zoo variant ``name`` when given, or implied by an OpenAI name / a file with the
    SHA-256 of an OpenAI release), loaded into a ``VisionTransformer`` with ``strict=True``, and written
    atomically: into a temporary folder beside ``output_dir``, then renamed. Nothing is left on failure.

    Args:
        source: checkpoint file (any format ``load_checkpoint`` reads) or OpenAI model name (``ViT-B/32``...).
        output_dir: folder to create; must not exist.
        dtype: ``float32``/``float16``/``bfloat16`` to convert to; default keeps the source dtype.
        name: zoo variant the checkpoint must match (its heads, eps and activation are used).
        activation: ``quick_gelu`` (OpenAI) or ``gelu`` (open_clip non-QuickGELU models); weights cannot tell.
            Default: the zoo variant's, else ``quick_gelu``.
        cache_dir: download cache (see ``vit_zoo.download``).
        max_shard_size: size past which ``model.safetensors`` is split into shards with an index.

    Returns:
        ``output_dir`` as a ``Path``.

    Raises:
        CheckpointError: bad source, geometry, dtype or activation; NaN or Inf weights (in the source, or made by
            converting to a narrower ``dtype``); ``output_dir`` exists or cannot be written (read-only, disk full).
    """
    output = Path(output_dir)
    if output.exists() or output.is_symlink():
        raise CheckpointError(f"output {output} already exists; choose a new folder or remove it")
    target_dtype = _parse_dtype(dtype)
    if activation is not None and activation not in ACTIVATIONS:
        raise CheckpointError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    named_entry = get_entry(name) if name else None
    path, entry, release = _resolve_source(source, cache_dir)
    sha256 = release.sha256 if release else sha256_of(path)
    if release is None:
        entry, release = _release_with_sha256(sha256)
    entry = named_entry or entry

    tower = to_vit_zoo_state_dict(load_checkpoint(path))
    geometry = infer_geometry(tower)
    if entry is not None:
        _fit_entry(geometry, entry)
    overrides = {} if activation is None else {"activation": activation}
    config = entry.config(**overrides) if entry else VitZooConfig(**geometry, **overrides)
    check_state_dict(tower, config.geometry)
    _refuse_non_finite(tower, "the checkpoint is damaged (a diverged training run or a corrupt file); convert an intact copy")
    source_dtype = _dtype_name(tower)
    if target_dtype is not None:
        tower = {key: value.to(target_dtype) for key, value in tower.items()}
        _refuse_non_finite(
            tower,
            f"values beyond the range of {_dtype_name(tower)} became Inf in the conversion; convert to float32 or bfloat16",
        )
    _verify_loads(tower, config)
    config.dtype = _storage_dtype(tower)
    record = ConversionRecord(
        source=release.url if release else path.name,
        sha256=sha256,
        command=_command(source, output, dtype, name, activation),
        folder=output.name,
        source_dtype=source_dtype,
        dtype=_dtype_name(tower),
        entry=entry,
        release=release,
    )
    _write_atomically(output, lambda folder: _write_folder(tower, config, record, folder, max_shard_size))
    return output


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _releases() -> list[tuple[ZooEntry, PretrainedSource]]:
    """Every downloadable release of the zoo with its variant."""
    return [(e, s) for e in list_entries() for s in e.pretrained.values() if s.url and s.sha256]


def _resolve_source(source: str | os.PathLike, cache_dir) -> tuple[Path, ZooEntry | None, PretrainedSource | None]:
    """A local file as is; an OpenAI or zoo name downloaded, with its variant and release."""
    path = Path(source)
    if path.exists():
        return path, None, None
    names = {s.openai_name for _, s in _releases()} | {e.name for e, _ in _releases()}
    if source not in names:
        raise CheckpointError(
            f"{source}: no such file, and not a model name; give a checkpoint file or one of "
            + ", ".join(openai_names())
        )
    return download_pretrained(str(source), cache_dir), get_entry(str(source)), pretrained_source(str(source))


def _release_with_sha256(sha256: str) -> tuple[ZooEntry | None, PretrainedSource | None]:
    return next(((e, s) for e, s in _releases() if s.sha256 == sha256), (None, None))


def _dtype_name(tensors: Mapping[str, torch.Tensor]) -> str:
    names = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    return names[0] if len(names) == 1 else "mixed (" + ", ".join(names) + ")"


def _storage_dtype(tensors: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype a loader should use: the tensors' own, or float32 when they mix (upcasting loses nothing)."""
    dtypes = {t.dtype for t in tensors.values()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _verify_loads(tower: Mapping[str, torch.Tensor], config: VitZooConfig) -> None:
    """Load into a ``VisionTransformer`` with ``strict=True`` without copying (meta model, ``assign=True``)."""
    with torch.device("meta"):
        model = VisionTransformer(**config.geometry)
    model.load_state_dict(tower, strict=True, assign=True)


def _command(source, output: Path, dtype, name, activation) -> str:
    shown_source = str(source) if not Path(source).exists() else Path(source).name
    words = ["vit-zoo", "convert", shown_source, "--output", output.name]
    for flag, value in (("--dtype", dtype), ("--name", name), ("--activation", activation)):
        if value is not None:
            words += [flag, str(value).removeprefix("torch.")]
    return shlex.join(words)


def _write_atomically(output: Path, write) -> None:
    """``write(staging)`` into a hidden folder beside ``output``, renamed to ``output`` once complete; on any
    failure the staging folder and the parent folders made for it are removed."""
    new_parents = [folder for folder in output.parents if not folder.exists()]
    staging = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        staging.mkdir(parents=True)
        write(staging)
        if output.exists():
            raise CheckpointError(f"output {output} appeared while converting; nothing was written")
        os.rename(staging, output)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in new_parents:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(error, (OSError, SafetensorError)):
            raise CheckpointError(
                f"cannot write {output} ({getattr(error, 'strerror', None) or _first_line(error)}); choose an output "
                "folder on a writable disk with free space"
            ) from error
        raise


# --- output folder -------------------------------------------------------------------------------------------


def _write_folder(
    tower: dict[str, torch.Tensor], config: VitZooConfig, record: ConversionRecord, folder: Path, max_shard_size
) -> None:
    """The one folder timm, transformers and remote code all load (see ``vit_zoo.hub.save_for_hub``)."""
    from .hub import save_for_hub  # hub builds on the timm and transformers adapters, which build on this module

    save_for_hub(tower, config, folder, entry=record.entry, provenance=record, max_shard_size=max_shard_size)
