"""Hub transport: vit_zoo folders (``vit_zoo.folder``) pushed to and pulled from the Hugging Face Hub.

A push is one commit, so a failed upload leaves the repo as it was. The endpoint and token come from the
usual places (``HF_ENDPOINT``, ``HF_TOKEN``, ``hf auth login``); pulls go through the HF cache and honour
``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_session
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .card import REPO_ID_PLACEHOLDER
from .errors import FolderError, HubError, OutputError, OutputExistsError, first_line
from .folder_check import FORMAT_FILES, WEIGHT_FILES, check_folder, check_model_type, folder_files, weight_files
from .outputs import write_atomically

if TYPE_CHECKING:  # torch: a push or pull of a folder needs none of it
    from .model import VisionTransformer
    from .modeling import VitZooPreTrainedModel
    from .zoo import ZooEntry

__all__ = ["pull", "push_folder", "push_to_hub"]


HUB_TIMEOUT_ENV = "VIT_ZOO_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT_S = 60.0


def hub_timeout() -> float:
    """Seconds any one wait on the Hub may take (connecting, each read, each write): ``$VIT_ZOO_HUB_TIMEOUT``, else 60."""
    raw = os.environ.get(HUB_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_HUB_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ValueError(f"${HUB_TIMEOUT_ENV}={raw!r} is not a number of seconds > 0; unset it for {DEFAULT_HUB_TIMEOUT_S:g} s")
    return seconds


_bounded_session: Any = None  # the client _bound_waits gave a timeout


def _bound_waits() -> None:
    """Give the HTTP client that huggingface_hub shares a timeout (``hub_timeout()``) on every wait when it has none:
    its default has none, so a Hub that accepts a connection and never answers would hold a push for ever. A client
    the program gave its own timeouts (``huggingface_hub.set_client_factory``) is left as it is."""
    global _bounded_session
    session = get_session()
    unbounded = type(session.timeout)(None)  # httpx's Timeout (huggingface_hub's own httpx: not imported by name)
    if session is _bounded_session or session.timeout == unbounded:
        session.timeout = hub_timeout()  # read at each push and pull: $VIT_ZOO_HUB_TIMEOUT may change
        _bounded_session = session


def push_to_hub(
    model: VisionTransformer | VitZooPreTrainedModel,
    repo_id: str,
    *,
    entry: ZooEntry | None = None,
    **push_options: Any,
) -> str:
    """Save ``model`` with ``vit_zoo.folder.save_model_folder`` into a temporary folder and push it
    (``push_folder`` options: ``token``, ``private``, ``revision``, ``commit_message``); returns the commit id."""
    from .folder import save_model_folder

    with tempfile.TemporaryDirectory(prefix="vit-zoo-push-") as staging:
        folder = save_model_folder(model, Path(staging) / repo_id.rpartition("/")[2], entry=entry)
        return push_folder(folder, repo_id, **push_options)


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
        if isinstance(cause, TimeoutError) or type(cause).__name__.endswith("Timeout"):  # httpx's ReadTimeout...
            return HubError(
                f"the Hub at {constants.ENDPOINT} did not answer within {hub_timeout():g} s for {where}; check the "
                f"network (or HF_ENDPOINT) and try again, or allow longer waits with ${HUB_TIMEOUT_ENV}"
            )
        if isinstance(cause, ConnectionError) or type(cause).__module__.startswith("httpx"):
            return HubError(
                f"cannot reach the Hub at {constants.ENDPOINT} for {where} ({first_line(cause)}); check the network "
                "(or HF_ENDPOINT) and try again"
            )
    if isinstance(error, EntryNotFoundError):
        return HubError(f"{where}: {first_line(error)}")
    return None  # not the Hub's doing (e.g. a local disk error): its own message says it best


def _causes(error: BaseException | None) -> Iterator[BaseException]:
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
    return HubError(f"the Hub answered {status} for {where}: {first_line(error)}{retry}")


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

    Only the folder format's files go up (``vit_zoo.folder.folder_files``: no dotfiles, notes or symlinks out of
    the folder), after ``check_folder`` found the folder sound. Creates the repo (``private`` if asked) and the
    ``revision`` branch when missing; ``private`` onto an existing public repo is refused before any upload. Each
    wait on the Hub takes at most ``$VIT_ZOO_HUB_TIMEOUT`` seconds (default 60).
    """
    folder = check_folder(folder)
    operations = _commit_operations(folder, folder_files(folder), repo_id)
    _bound_waits()
    api = HfApi(endpoint=constants.ENDPOINT, token=token)
    with _hub_errors(repo_id, revision, writing=True):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if private and not api.repo_info(repo_id).private:
            raise HubError(
                f"{repo_id} exists and is public; --private only makes a new repo private. Make it private on the Hub "
                "first, or push without --private"
            )
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload {folder.name} with vit-zoo",
            revision=revision,
        )
    return commit.oid


def _commit_operations(folder: Path, names: list[str], repo_id: str) -> list[CommitOperationAdd]:
    """The files ``names`` of ``folder``; the model card's usage gets the real repo id."""
    operations = []
    for name in names:
        content: Path | bytes = folder / name
        if name == "README.md":
            try:
                content = (folder / name).read_text(encoding="utf-8").replace(REPO_ID_PLACEHOLDER, repo_id).encode()
            except UnicodeDecodeError:
                raise FolderError(f"{folder / name} is not UTF-8 text; save the model card as UTF-8") from None
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
    refused. The folder format's files then come from the same commit, one by one (nothing else the repo holds),
    so a Hub that fails mid-way raises its own error (``snapshot_download`` would hand back whatever part the
    cache holds), and the result must pass ``check_folder`` - offline too, where the cache may hold part of a
    repo. ``output`` copies the folder into a new folder (written atomically) instead of returning the cache path.
    Each wait on the Hub takes at most ``$VIT_ZOO_HUB_TIMEOUT`` seconds (default 60); a cache without room for the
    repo raises ``OutputError`` naming it.
    """
    _bound_waits()
    api = HfApi(token=token, endpoint=constants.ENDPOINT)
    with _hub_errors(repo_id, revision), _cache_space(repo_id):
        if not constants.HF_HUB_OFFLINE:
            # One request without huggingface_hub's retries: an unreachable Hub is reported at once, not after ~25 s
            api.model_info(repo_id, revision=revision, timeout=hub_timeout())
        config_path = Path(api.hf_hub_download(repo_id, "config.json", revision=revision))
        check_model_type(config_path)
        snapshot, commit = config_path.parent, config_path.parent.name  # the cache's snapshots/<commit>/
        if constants.HF_HUB_OFFLINE:
            snapshot = Path(api.snapshot_download(repo_id, revision=commit))
        else:
            listed = set(_repo_files(api, repo_id, commit))
            for name in (*FORMAT_FILES, *WEIGHT_FILES):
                if name in listed:
                    api.hf_hub_download(repo_id, name, revision=commit)
            if WEIGHT_FILES[1] in listed:  # the shards its index names, and no other .safetensors the repo holds
                for shard in weight_files(snapshot):
                    if shard.name in listed:
                        api.hf_hub_download(repo_id, shard.name, revision=commit)
    try:
        folder = check_folder(snapshot)
    except FolderError as error:
        if not constants.HF_HUB_OFFLINE:
            raise
        raise FolderError(
            f"the Hugging Face cache holds part of {repo_id} at {commit} ({first_line(error)}); pull it again online"
        ) from None
    if output is None:
        return folder
    if Path(output).exists() or Path(output).is_symlink():  # a dangling link too: the folder would land where it points
        raise OutputExistsError(f"{output} already exists; choose a new --output folder or remove it")
    return write_atomically(output, lambda staging: _copy_files(folder, folder_files(folder), staging))


_CACHE_TOO_SMALL = "Not enough free disk space"  # how huggingface_hub's warning before a download starts


@contextmanager
def _cache_space(repo_id: str) -> Iterator[None]:
    """A Hugging Face cache too small for the repo: one ``OutputError`` naming the cache and the fix, raised before
    the download that would not fit (huggingface_hub only warns, then fails with ``[Errno 28]`` and no path)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=_CACHE_TOO_SMALL, category=UserWarning)
        try:
            yield
        except (UserWarning, OSError) as error:
            full = error.errno == errno.ENOSPC if isinstance(error, OSError) else str(error).startswith(_CACHE_TOO_SMALL)
            if not full:
                raise
            cache = Path(constants.HF_HUB_CACHE)
            disk = os.statvfs(next(path for path in (cache, *cache.parents) if path.is_dir()))
            raise OutputError(
                f"the Hugging Face cache at {cache} has no room for {repo_id} ({disk.f_bavail * disk.f_frsize / 1e6:.1f} MB "
                f"and {disk.f_favail} file entries free); free some space there, or set HF_HUB_CACHE to a folder on a "
                "larger disk"
            ) from None


def _repo_files(api: HfApi, repo_id: str, commit: str) -> list[str]:
    """The repo's file list, or one line saying the Hub answered with something else."""
    try:
        names = api.list_repo_files(repo_id, revision=commit)
    except (ValueError, TypeError, KeyError, AttributeError):  # not JSON, or JSON of another shape
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise HubError(
            f"the Hub at {constants.ENDPOINT} answered the file listing of {repo_id} with something that is not a JSON "
            "list of files; check HF_ENDPOINT points at a Hugging Face Hub"
        )
    return names


def _copy_files(source: Path, names: list[str], target: Path) -> None:
    target.mkdir()
    for name in names:
        shutil.copyfile(source / name, target / name)
