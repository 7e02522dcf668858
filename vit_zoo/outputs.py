"""Outputs written atomically: every file or folder vit_zoo writes appears complete, or not at all."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from safetensors import SafetensorError

from .errors import OutputError, first_line, os_reason

__all__ = ["write_atomically"]

_STAGING = re.compile(r"^\..+\.vit-zoo-[0-9a-f]{32}\.partial$")  # write_atomically's staging paths, and nothing else


def write_atomically(target: str | os.PathLike, write: Callable[[Path], Any], *, replace: bool = False) -> Path:
    """Make ``target`` (a file or a folder) appear complete or not at all.

    ``write(staging)`` creates the file or folder at ``staging``, a hidden path beside ``target``, which is then
    renamed to ``target`` (replacing an existing file if ``replace``). What is written gets the permissions the
    user's umask gives new files (safetensors writes its files ``0600``). On any failure the staging path and the
    parent folders made for it are removed; a disk error becomes one ``OutputError`` line. A lock file beside
    the staging path is held while it exists: what a killed run (SIGKILL, a power cut) left behind is unlocked,
    and the next write into the same folder removes it. Staging paths are named ``.<name>.vit-zoo-<32 hex>.partial``
    and come with their lock file, so nothing a user made is ever taken for one.
    """
    target = Path(target)
    new_parents = [folder for folder in target.parents if not folder.exists()]
    staging = target.with_name(f".{target.name}.vit-zoo-{uuid.uuid4().hex}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_staging(target.parent)
        with _staging_lock(staging):
            try:
                write(staging)
                _apply_umask(staging)
                if not replace and (target.exists() or target.is_symlink()):
                    raise OutputError(f"output {target} appeared while writing it; nothing was written")
                os.replace(staging, target)
            except BaseException:
                _remove(staging)
                raise
    except BaseException as error:
        for folder in new_parents:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(error, (OSError, SafetensorError)) and not isinstance(error, OutputError):
            reason = os_reason(error) if isinstance(error, OSError) else first_line(error)
            raise OutputError(
                f"cannot write {target} ({reason}); choose an output folder on a writable disk with free space"
            ) from error
        raise
    return target


def _lock_path(staging: Path) -> Path:
    return staging.with_name(staging.name + ".lock")


@contextlib.contextmanager
def _staging_lock(staging: Path) -> Iterator[None]:
    """Hold ``<staging>.lock`` while ``staging`` may exist; the lock file goes once it is released."""
    lock_path = _lock_path(staging)
    try:
        with FileLock(lock_path):
            yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink(missing_ok=True)


def sweep_stale_staging(folder: Path) -> None:
    """Remove the staging paths that killed runs left in ``folder``: those named as ``write_atomically`` names them,
    whose lock file is there and held by no live process. A run still writing holds its lock, so its staging path
    stays; a path without its lock file is not ours, so it stays too."""
    for lock_path in folder.glob(".*.vit-zoo-*.partial.lock"):
        staging = lock_path.with_name(lock_path.name.removesuffix(".lock"))
        if not _STAGING.match(staging.name):
            continue
        lock = FileLock(lock_path, timeout=0)
        try:
            lock.acquire()
        except (Timeout, OSError):  # still being written (or not ours to remove)
            continue
        try:
            _remove(staging)
        finally:
            lock.release()
            with contextlib.suppress(OSError):
                lock_path.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):  # on a read-only disk even removing a missing file fails
            path.unlink(missing_ok=True)


def _apply_umask(path: Path) -> None:
    """Give ``path`` (and what a folder holds) the modes ``open``/``mkdir`` would have given under the umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)
