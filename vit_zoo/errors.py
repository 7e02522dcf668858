"""Every exception vit_zoo raises on purpose, and the one way to quote another exception in one line.

Each message is one line naming the file or field at fault and the fix; the CLI prints it as is. Bad input (a
file, folder, config or argument that cannot be used) is a ``ValueError``; what the environment did (a disk, the
network, the Hub) is an ``OSError`` or ``HubError``. This file travels as remote code with ``spec.py``.
"""

from __future__ import annotations

import shutil
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the one-line message says what the file is not and what is expected."""


class ZooConfigError(ValueError):
    """A zoo YAML file or dict is malformed; the message names the file and the field."""


class UnknownVariantError(KeyError):
    """No zoo variant has that name; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class DownloadError(OSError):
    """A download failed; the message says why and what to do."""


class OutputError(OSError):
    """An output file or folder cannot be written (read-only, disk full); nothing was left."""


class OutputExistsError(ValueError):
    """An output file or folder is already there; nothing was written."""


class HubError(RuntimeError):
    """A push or pull failed on the Hub's side (network, token, repo); the message says why and what to do."""


class FolderError(ValueError):
    """A folder is not a complete vit_zoo folder (what push, pull and embed trust)."""

    @classmethod
    def not_a_folder(cls, path: object) -> FolderError:
        return cls(f"{path} is not a folder; give the --output folder of `vit-zoo convert`")


class CliError(Exception):
    """A user-facing error of the command line: its message is printed as is."""


def first_line(error: BaseException) -> str:
    """The first non-blank line of ``error``'s message, or its type's name when it has none (``OSError()``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def shown(value: Any, width: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``width`` characters: what a message may quote of a hostile file."""
    return " ".join(repr(value).split())[:width]


def os_reason(error: OSError) -> str:
    """``No space left on device`` rather than ``[Errno 28] ...: 'path'``; ``shutil.copytree``'s collected
    errors by the first file's reason."""
    if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list) and error.args[0]:
        return str(error.args[0][0][-1])
    return getattr(error, "strerror", None) or first_line(error)
