"""One folder that timm, transformers and remote code all load; pushed to and pulled from the Hub.

``save_for_hub`` writes it: ``model.safetensors`` with the bare tower names (``conv1.weight``...; sharded
with an index past ``max_shard_size``), one ``config.json`` holding both transformers' keys (``model_type``,
``architectures``, ``auto_map``, geometry) and timm's (``architecture``, ``num_classes``, ``num_features``,
``pretrained_cfg``, ``model_args``), ``preprocessor_config.json`` (for RGB models), the remote-code files and a
model card.

A push is one commit, so a failed upload leaves the repo as it was. The endpoint and token come from the
usual places (``HF_ENDPOINT``, ``HF_TOKEN``, ``hf auth login``); pulls go through the HF cache and honour
``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_download, save_torch_state_dict, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError, safe_open
from transformers.dynamic_module_utils import custom_object_save

from . import __version__
from .vision_transformer import GEOMETRY_KWARGS, TimmVisionTransformer, timm_config_dict
from .config import VitZooConfig
from .image_processing import image_processor_for
from .model import VisionTransformer
from .modeling import VitZooModel, VitZooPreTrainedModel, remote_auto_map
from .zoo import PretrainedSource, ZooEntry, list_entries

if TYPE_CHECKING:
    from .convert import ConversionRecord

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
DEFAULT_MAX_SHARD_SIZE = "5GB"
REPO_ID_PLACEHOLDER = "YOUR-NAME/REPO"


class HubError(RuntimeError):
    """A push or pull failed; the message says why and what to do."""


def save_for_hub(
    state_dict: Mapping[str, torch.Tensor],
    config: VitZooConfig,
    folder: str | os.PathLike,
    *,
    entry: ZooEntry | None = None,
    provenance: ConversionRecord | None = None,
    timm_keys: Mapping[str, Any] | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Write the one folder that timm, transformers (installed or remote code) and vit_zoo all load.

    Args:
        state_dict: the tower's tensors with bare names (``conv1.weight``...; ``head.*`` for a timm classifier),
            saved in their own dtype.
        config: the geometry; ``config.json`` also gets ``architectures``, ``auto_map``, ``dtype`` and timm's keys.
        folder: an empty or missing folder.
        entry: the zoo variant the weights belong to (preprocessing, license, timm pretrained cfg).
        provenance: what the model card says about the source (``vit_zoo.convert.ConversionRecord``).
        timm_keys: timm's ``config.json`` keys (default: from ``entry``, else the closest zoo variant, with
            ``config``'s geometry as ``model_args``).
        max_shard_size: size past which ``model.safetensors`` is split into shards with an index.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise HubError(f"{folder} is not empty; save into a new folder")
    save_torch_state_dict(dict(state_dict), folder, max_shard_size=max_shard_size, metadata={"format": "pt"})
    combined = VitZooConfig.from_dict(config.to_dict())
    combined.architectures = [VitZooModel.__name__]
    combined.auto_map = remote_auto_map()
    combined.dtype = _storage_dtype(state_dict)
    # timm's pretrained_cfg in config.json would otherwise make AutoImageProcessor ignore preprocessor_config.json
    combined.image_processor_type = "CLIPImageProcessor"
    for key, value in (timm_keys or _timm_keys(config, entry)).items():
        setattr(combined, key, value)
    combined.save_pretrained(folder)  # config.json, and config.py + model.py for remote code
    custom_object_save(VitZooModel, folder)  # modeling.py
    if config.in_channels == 3:  # CLIPImageProcessor prepares RGB images; other inputs bring their own pixel_values
        image_processor_for(entry if entry is not None else config).save_pretrained(folder)
    (folder / "README.md").write_text(model_card(config, entry, provenance), encoding="utf-8")
    return folder


def save_model_for_hub(
    model: VisionTransformer | VitZooPreTrainedModel,
    folder: str | os.PathLike,
    *,
    entry: ZooEntry | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """``save_for_hub`` for a model in memory: a timm model (``timm.create_model("vit_zoo_...")``), a
    ``VitZooModel`` or a core ``VisionTransformer``."""
    if isinstance(model, VitZooPreTrainedModel):
        config = model.config
        prefix = f"{model.base_model_prefix}."
        state_dict = {k.removeprefix(prefix): v for k, v in model.state_dict().items() if k.startswith(prefix)}
    elif isinstance(model, VisionTransformer):
        config = _config_of(model)
        state_dict = model.state_dict()
    else:
        raise TypeError(f"expected a vit_zoo model (timm, transformers or core), got {type(model).__name__}")
    timm_keys = timm_config_dict(model) if isinstance(model, TimmVisionTransformer) else None
    if entry is None and isinstance(model, TimmVisionTransformer):
        entry = next((e for e in list_entries() if e.name == model.pretrained_cfg.get("architecture")), None)
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    return save_for_hub(tensors, config, folder, entry=entry, timm_keys=timm_keys, max_shard_size=max_shard_size)


def push_to_hub(
    model: VisionTransformer | VitZooPreTrainedModel,
    repo_id: str,
    *,
    entry: ZooEntry | None = None,
    **push_options: Any,
) -> str:
    """Save ``model`` with ``save_model_for_hub`` into a temporary folder and push it (``push_folder``
    options: ``token``, ``private``, ``revision``, ``commit_message``); returns the commit id."""
    with tempfile.TemporaryDirectory(prefix="vit-zoo-push-") as staging:
        folder = save_model_for_hub(model, Path(staging) / repo_id.rpartition("/")[2], entry=entry)
        return push_folder(folder, repo_id, **push_options)


def _config_of(model: VisionTransformer) -> VitZooConfig:
    block = model.transformer.resblocks[0]
    return VitZooConfig(
        input_resolution=model.input_resolution,
        patch_size=model.patch_size,
        width=model.transformer.width,
        layers=model.transformer.layers,
        heads=block.attn.heads,
        output_dim=model.output_dim,
        in_channels=model.in_channels,
        mlp_ratio=block.mlp.c_fc.out_features / model.transformer.width,
        activation="gelu" if isinstance(block.mlp.gelu, torch.nn.GELU) else "quick_gelu",
        layer_norm_eps=block.ln_1.eps,
    )


def _storage_dtype(state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    dtypes = {tensor.dtype for tensor in state_dict.values() if tensor.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _closest_entry(config: VitZooConfig) -> ZooEntry:
    """The zoo variant sharing most of ``config``'s geometry: timm's ``architecture`` for weights of unknown origin
    (``model_args`` then carry the exact geometry)."""
    geometry = config.geometry
    return max(list_entries(), key=lambda entry: sum(entry.config().geometry[k] == v for k, v in geometry.items()))


def _timm_keys(config: VitZooConfig, entry: ZooEntry | None) -> dict[str, Any]:
    base = entry if entry is not None else _closest_entry(config)
    keys = timm_config_dict(base, next(iter(base.pretrained), None) if entry is not None else None)
    model_args = {timm_name: getattr(config, name) for timm_name, name in GEOMETRY_KWARGS.items()}
    keys["model_args"] = dict(model_args, num_classes=config.output_dim)
    keys["num_classes"], keys["num_features"] = config.output_dim, config.width
    keys["pretrained_cfg"].update(
        num_classes=config.output_dim, input_size=(config.in_channels, config.input_resolution, config.input_resolution)
    )
    if entry is None:
        keys["pretrained_cfg"].pop("tag", None)
    return keys


def model_card(config: VitZooConfig, entry: ZooEntry | None = None, provenance: ConversionRecord | None = None) -> str:
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
    return "\n".join([*metadata, "", f"# {title}", "", _CARD_INTRO, "", *_provenance_lines(config, entry, provenance),
                      "", _usage(config, entry), ""])


def _first_release(entry: ZooEntry | None) -> PretrainedSource | None:
    return next(iter(entry.pretrained.values()), None) if entry else None


_CARD_INTRO = (
    "OpenAI CLIP's image tower in [vit-zoo](https://pypi.org/project/vit-zoo/)'s layout (OpenAI's `visual` "
    "parameter names, as safetensors). One repo for timm, transformers (with or without vit-zoo installed) and "
    "vit-zoo itself. Besides the projected CLS embedding it gives every patch token and each layer's "
    "CLS-to-patch attention map `[layers, batch, heads, grid, grid]`."
)


def _provenance_lines(config: VitZooConfig, entry: ZooEntry | None, provenance: ConversionRecord | None) -> list[str]:
    lines = ["## Provenance", ""]
    if provenance is not None:
        weights = (
            f"{provenance.dtype}, converted from the source's {provenance.source_dtype}"
            if provenance.converted
            else f"{provenance.dtype}, as in the source (not converted)"
        )
        lines += [
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

With timm (`pip install vit-zoo`; importing it registers the `vit_zoo_*` models):

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


def check_vit_zoo_folder(folder: str | os.PathLike) -> Path:
    """Raise ``HubError`` unless ``folder`` holds a vit_zoo ``config.json`` and readable safetensors weights
    (each file's header is parsed and checked against the file's size; the tensors are not read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"{folder} is not a folder; give the --output folder of `vit-zoo convert`")
    _check_model_type(folder / "config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise HubError(f"{folder} has no model.safetensors; convert a checkpoint into it first")
    for path in _weight_files(folder):
        try:
            with safe_open(path, "pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise HubError(
                f"{path} is not a readable safetensors file ({_first_line(error)}); convert or pull the model again"
            ) from None
    return folder


def _weight_files(folder: Path) -> list[Path]:
    """``model.safetensors``, or the shards its index names."""
    index = folder / WEIGHT_FILES[1]
    if not index.is_file():
        return [folder / WEIGHT_FILES[0]]
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise HubError(f"{index} is not a readable shard index; convert or pull the model again") from None
    return [folder / shard for shard in sorted(map(str, shards))]


def _check_model_type(config_path: Path) -> None:
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        folder = config_path.parent
        raise HubError(f"{folder} has no readable config.json; convert a checkpoint into it first") from None
    if model_type != VitZooConfig.model_type:
        raise HubError(
            f"{config_path} describes a {model_type!r} model, not a {VitZooConfig.model_type!r} one; "
            "use a repo written by vit-zoo"
        )


@contextmanager
def _hub_errors(repo_id: str, revision: str | None = None, *, writing: bool = False) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line ``HubError``s naming the repo and the fix.

    An error huggingface_hub wraps (a failed LFS upload is a ``RuntimeError``, a failed look-up with nothing
    cached a ``LocalEntryNotFoundError``) is explained by its cause. ``writing`` says a 403 refused a write.
    """
    try:
        yield
    except HubError:
        raise
    except Exception as error:
        explained = _explain(error, repo_id, revision, writing)
        if explained is None:
            raise
        raise explained from error


def _explain(error: Exception, repo_id: str, revision: str | None, writing: bool) -> HubError | None:
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    for cause in _causes(error):
        if isinstance(cause, RevisionNotFoundError):
            return HubError(f"revision {revision!r} not found in {repo_id}; check the branch, tag or commit id")
        if isinstance(cause, RepositoryNotFoundError):
            return HubError(
                f"repository {repo_id} not found on {constants.ENDPOINT}, or it is private and your token cannot "
                "read it; check the id and log in (`hf auth login` or HF_TOKEN)"
            )
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            return _http_error(cause, where, writing)
        if isinstance(cause, OfflineModeIsEnabled) or (constants.HF_HUB_OFFLINE and isinstance(cause, EntryNotFoundError)):
            return HubError(f"{where} is not in the local cache and HF_HUB_OFFLINE is set; pull it once online")
        if isinstance(cause, (ConnectionError, TimeoutError)) or type(cause).__module__.startswith("httpx"):
            return HubError(
                f"cannot reach the Hub at {constants.ENDPOINT} for {where} ({_first_line(cause)}); check the network "
                "(or HF_ENDPOINT) and try again"
            )
    if isinstance(error, EntryNotFoundError):
        return HubError(f"{where}: {_first_line(error)}")
    return None  # not the Hub's doing (e.g. a local disk error): its own message says it best


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error``, then the error it was raised from (``raise ... from cause``), and so on."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__


def _http_error(error: HfHubHTTPError, where: str, writing: bool) -> HubError:
    status = error.response.status_code
    if status == 401:
        return HubError(f"the Hub refused the token (401) for {where}; log in again (`hf auth login` or HF_TOKEN)")
    if status == 403 and writing:
        return HubError(f"the token may not write to {where} (403); use a token with write access")
    if status == 403:
        return HubError(
            f"access to {where} was refused (403): the repo is gated or your token may not read it; accept its "
            "conditions on the Hub or use a token with read access"
        )
    retry = "; try again later" if status >= 500 else ""
    return HubError(f"the Hub answered {status} for {where}: {_first_line(error)}{retry}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a vit_zoo folder to ``repo_id`` as one commit; returns the commit id.

    Creates the repo (``private`` if asked) and the ``revision`` branch when missing.
    """
    folder = check_vit_zoo_folder(folder)
    api = HfApi(endpoint=constants.ENDPOINT, token=token)
    operations = _commit_operations(folder, repo_id)
    with _hub_errors(repo_id, revision, writing=True):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload {folder.name} with vit-zoo",
            revision=revision,
        )
    return commit.oid


def _commit_operations(folder: Path, repo_id: str) -> list[CommitOperationAdd]:
    """Every file of ``folder``; the model card's usage gets the real repo id."""
    operations = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name.startswith((".git/", ".cache/")):
            continue
        content = path
        if name == "README.md":
            content = path.read_text(encoding="utf-8").replace(REPO_ID_PLACEHOLDER, repo_id).encode()
        operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
    return operations


def pull(
    repo_id: str,
    *,
    revision: str | None = None,
    output: str | os.PathLike | None = None,
    token: str | None = None,
) -> Path:
    """Download a vit_zoo repo through the HF cache and return its folder.

    The repo's ``config.json`` is checked before any weights are fetched: a repo of another model type is
    refused. The other files then come from the same commit, one by one, so a Hub that fails mid-way
    raises its own error (``snapshot_download`` would hand back whatever part the cache holds). ``output``
    copies the snapshot into a new folder (written atomically) instead of returning the cache path.
    """
    download = dict(token=token, endpoint=constants.ENDPOINT)
    with _hub_errors(repo_id, revision):
        config_path = Path(hf_hub_download(repo_id, "config.json", revision=revision, **download))
        _check_model_type(config_path)
        snapshot, commit = config_path.parent, config_path.parent.name  # the cache's snapshots/<commit>/
        if constants.HF_HUB_OFFLINE:
            snapshot = Path(snapshot_download(repo_id, revision=commit, **download))
        else:
            for name in HfApi(**download).list_repo_files(repo_id, revision=commit):
                hf_hub_download(repo_id, name, revision=commit, **download)
    folder = check_vit_zoo_folder(snapshot)
    return folder if output is None else _copy_new_folder(folder, Path(output))


def _copy_new_folder(source: Path, output: Path) -> Path:
    if output.exists():
        raise HubError(f"{output} already exists; choose a new --output folder or remove it")
    staging = None
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
        shutil.copytree(source, staging, dirs_exist_ok=True)
        staging.rename(output)
    except BaseException as error:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            raise HubError(
                f"cannot write {output} ({_os_reason(error)}); choose an --output folder on a writable disk with free space"
            ) from error
        raise
    return output


def _os_reason(error: OSError) -> str:
    """``No space left on device``; for ``shutil.copytree``'s collected errors, the first file's."""
    if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list) and error.args[0]:
        return str(error.args[0][0][-1])
    return error.strerror or _first_line(error)
