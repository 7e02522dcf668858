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

__all__ = ["StagedFiles", "write_atomically"]

# The only paths this module ever removes: ``.<name>.vit-zoo-<32 hex>.<kind>``, each with its lock file beside it.
_MARKED = re.compile(r"^\.(?P<name>.+)\.vit-zoo-[0-9a-f]{32}\.(?P<kind>partial|staged|previous)$")


def _marked(target: Path, token: str, kind: str) -> Path:
    return target.with_name(f".{target.name}.vit-zoo-{token}.{kind}")


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
    staging = _marked(target, uuid.uuid4().hex, "partial")
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
    """Clear what killed runs left in ``folder``: the marked paths (``_MARKED``) whose lock file is there and held by
    no live process. A partial or staged file is removed; a previous file (a replaced output not yet deleted) is put
    back when its output is missing, else removed. A run still writing holds its lock, so its paths stay; a path
    without its lock file is not ours, so it stays too."""
    for lock_path in folder.glob(".*.vit-zoo-*.lock"):
        marked = lock_path.with_name(lock_path.name.removesuffix(".lock"))
        match = _MARKED.match(marked.name)
        if match is None:
            continue
        lock = FileLock(lock_path, timeout=0)
        try:
            lock.acquire()
        except (Timeout, OSError):  # still being written (or not ours to remove)
            continue
        try:
            target = folder / match["name"]
            if match["kind"] == "previous" and not (target.exists() or target.is_symlink()):
                with contextlib.suppress(OSError):
                    os.replace(marked, target)
            else:
                _remove(marked)
        finally:
            lock.release()
            with contextlib.suppress(OSError):
                lock_path.unlink(missing_ok=True)


class StagedFiles:
    """Files written now and put in place together later: ``stage(target, write)`` writes a marked hidden file
    beside ``target``; ``commit()`` moves every staged file onto its target, restoring the previous files if a move
    fails; leaving the ``with`` block without ``commit()`` (an error) removes what was staged. Every hidden path is
    locked while this object may still use it, so a run killed at any moment leaves only what the next write into
    the folder clears (``sweep_stale_staging``), the previous outputs restored where the new ones are missing."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.staged: list[tuple[Path, Path]] = []
        self._locks = contextlib.ExitStack()

    def stage(self, target: Path, write: Callable[[Path], Any]) -> None:
        if any(target == staged for staged, _ in self.staged):
            raise ValueError(f"{target} would be written twice in one run; give each output its own name")
        hidden = _marked(target, self.token, "staged")
        target.parent.mkdir(parents=True, exist_ok=True)
        self._locks.enter_context(_staging_lock(hidden))
        self.staged.append((target, hidden))
        write_atomically(hidden, write, replace=True)

    def commit(self) -> None:
        moved: list[tuple[Path, Path | None]] = []
        try:
            for target, hidden in self.staged:
                backup = None
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    backup = _marked(target, self.token, "previous")
                    self._locks.enter_context(_staging_lock(backup))
                    os.replace(target, backup)
                moved.append((target, backup))
                os.replace(hidden, target)
        except OSError as error:
            for output, backup in reversed(moved):  # ``target`` still names the output whose move failed
                with contextlib.suppress(OSError):
                    os.replace(backup, output) if backup is not None else output.unlink(missing_ok=True)
            raise OutputError(f"cannot write {target} ({os_reason(error)}); nothing was changed") from error
        for _, backup in moved:
            if backup is not None:
                backup.unlink(missing_ok=True)
        self.staged = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc_info) -> None:
        for _, hidden in self.staged:
            with contextlib.suppress(OSError):
                hidden.unlink(missing_ok=True)
        self.staged = []
        self._locks.close()


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
