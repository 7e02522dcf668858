"""Push vit_zoo folders to the Hugging Face Hub and pull them back, with one-line errors.

A push is one commit (``upload_folder``), so a failed upload leaves the repo as it was. The endpoint and
token come from the usual places (``HF_ENDPOINT``, ``HF_TOKEN``, ``hf auth login``); pulls go through the
HF cache and honour ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .config import VitZooConfig

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


class HubError(RuntimeError):
    """A push or pull failed; the message says why and what to do."""


def check_vit_zoo_folder(folder: str | os.PathLike) -> Path:
    """Raise ``HubError`` unless ``folder`` holds a vit_zoo ``config.json`` and safetensors weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"{folder} is not a folder; give the --output folder of `vit-zoo convert`")
    _check_model_type(folder / "config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise HubError(f"{folder} has no model.safetensors; convert a checkpoint into it first")
    return folder


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
def _hub_errors(repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line ``HubError``s naming the repo and the fix."""
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        yield
    except RevisionNotFoundError:
        raise HubError(f"revision {revision!r} not found in {repo_id}; check the branch, tag or commit id") from None
    except RepositoryNotFoundError:
        raise HubError(
            f"repository {repo_id} not found on {constants.ENDPOINT}, or it is private and your token cannot "
            "read it; check the id and log in (`hf auth login` or HF_TOKEN)"
        ) from None
    except (EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        if constants.HF_HUB_OFFLINE:
            message = f"{where} is not in the local cache and HF_HUB_OFFLINE is set; pull it once online"
            raise HubError(message) from None
        raise HubError(f"{where}: {_first_line(error)}") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            message = f"the Hub refused the token (401) for {where}; log in again (`hf auth login` or HF_TOKEN)"
            raise HubError(message) from None
        if status == 403:
            raise HubError(f"the token may not write to {repo_id} (403); use a token with write access") from None
        raise HubError(f"the Hub answered {status} for {where}: {_first_line(error)}") from None
    except (ConnectionError, TimeoutError, OSError) as error:
        raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} for {where}: {_first_line(error)}") from None
    except Exception as error:  # httpx transport errors are not OSErrors
        if type(error).__module__.split(".")[0].startswith("httpx"):
            raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} for {where}: {_first_line(error)}") from None
        raise


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
    with _hub_errors(repo_id, revision):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message or f"Upload {folder.name} with vit-zoo",
        )
    return commit.oid


def pull(
    repo_id: str,
    *,
    revision: str | None = None,
    output: str | os.PathLike | None = None,
    token: str | None = None,
) -> Path:
    """Download a vit_zoo repo through the HF cache and return its folder.

    The repo's ``config.json`` is checked before any weights are fetched: a repo of another model type is
    refused. ``output`` copies the snapshot into a new folder (written atomically) instead of returning
    the cache path.
    """
    download = dict(revision=revision, token=token, endpoint=constants.ENDPOINT)
    with _hub_errors(repo_id, revision):
        config_path = hf_hub_download(repo_id, "config.json", **download)
        _check_model_type(Path(config_path))
        snapshot = Path(snapshot_download(repo_id, **download))
    folder = check_vit_zoo_folder(snapshot)
    return folder if output is None else _copy_new_folder(folder, Path(output))


def _copy_new_folder(source: Path, output: Path) -> Path:
    if output.exists():
        raise HubError(f"{output} already exists; choose a new --output folder or remove it")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output
