"""Files read safely: what vit_zoo reads is a regular file of a bounded size (``vit_zoo.outputs`` writes them).

It travels flat inside saved folders (remote code reads weight indexes through it), so it imports nothing but the
standard library and vit_zoo's ``errors``.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import first_line, os_reason

MAX_JSON_BYTES = 16 << 20  # a sharded index of a 20 000-layer tower is ~7 MB; configs are a few KB


def regular_file_size(path: Path) -> int:
    """The size of the regular file ``path``; ``ValueError`` naming it when it is missing, unreadable, or a folder,
    pipe, socket or device (a FIFO blocks a reader forever, ``/dev/zero`` never ends), before anything is opened."""
    try:
        mode, size = (status := path.stat()).st_mode, status.st_size
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({os_reason(error)})") from None
    if stat.S_ISREG(mode):
        return size
    raise ValueError(f"{path} is {file_kind(mode)}, not a regular file")


def file_kind(mode: int) -> str:
    """What a ``st_mode`` that is not a regular file's holds, for a message: ``a folder``, ``a FIFO (named pipe)``..."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    return "a socket" if stat.S_ISSOCK(mode) else "a device"


def read_json_object(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON file holding an object; ``ValueError`` naming the file when it is not a regular file of at most
    ``max_bytes``, not UTF-8, not JSON (too deeply nested included) or not an object."""
    path = Path(path)
    size = regular_file_size(path)
    if size > max_bytes:
        raise ValueError(f"{path} holds {size} bytes, more than {max_bytes} for a JSON settings file")
    try:
        settings = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON (nested too deeply)") from None
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({first_line(error)})") from None
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({os_reason(error)})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path} holds a JSON {type(settings).__name__}, not an object")
    return settings
