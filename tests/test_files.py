"""``vit_zoo.files``: what vit_zoo reads is a regular file of a bounded size. ``regular_file_size`` names a missing
path, a folder, a FIFO, a socket or a device before anything is opened (a FIFO would block a reader forever,
``/dev/zero`` never ends); ``read_json_object`` also refuses a file past its size cap, text that is not UTF-8, JSON
nested too deeply and JSON that is not an object, each in one line naming the file."""

import json
import os
import socket
from pathlib import Path

import pytest
from limits import budget

from vit_zoo.files import MAX_JSON_BYTES, read_json_object, regular_file_size


def refused(read, path: Path, message: str) -> None:
    """``read(path)`` raises a one-line ValueError holding ``message``, at once (a read of a pipe would hang)."""
    with budget(10), pytest.raises(ValueError) as error:
        read(path)
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_regular_files_give_their_size_symlinks_followed(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "data").write_bytes(b"x" * 1234)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    assert regular_file_size(tmp_path / "empty") == 0
    assert regular_file_size(tmp_path / "data") == regular_file_size(tmp_path / "link") == 1234


@pytest.mark.parametrize("read", [regular_file_size, read_json_object], ids=["regular_file_size", "read_json_object"])
def test_what_is_not_a_regular_file_is_named_before_it_is_opened(read, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "sock"))
        refused(read, tmp_path / "sock", f"{tmp_path / 'sock'} is a socket, not a regular file")
    (tmp_path / "file").write_text("{}")
    (tmp_path / "to-zero").symlink_to("/dev/zero")
    refused(read, tmp_path / "fifo", f"{tmp_path / 'fifo'} is a FIFO (named pipe), not a regular file")
    refused(read, tmp_path, f"{tmp_path} is a folder, not a regular file")
    refused(read, Path("/dev/zero"), "/dev/zero is a device, not a regular file")
    refused(read, tmp_path / "to-zero", f"{tmp_path / 'to-zero'} is a device, not a regular file")
    refused(read, tmp_path / "missing.json", f"{tmp_path / 'missing.json'} is missing")
    refused(read, tmp_path / "file" / "below", f"{tmp_path / 'file' / 'below'} cannot be read (Not a directory)")


def test_read_json_object_gives_the_object(tmp_path):
    settings = {"model_type": "vit_zoo", "size": {"shortest_edge": 32}, "mean": [0.5, 0.5, 0.5], "name": "caf\u00e9"}
    (tmp_path / "config.json").write_text(json.dumps(settings), encoding="utf-8")
    assert read_json_object(tmp_path / "config.json") == settings
    assert read_json_object(str(tmp_path / "config.json")) == settings


def test_read_json_object_caps_the_size_before_reading(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"key": "x" * 100}))
    size = path.stat().st_size
    refused(lambda p: read_json_object(p, max_bytes=size - 1), path, f"{path} holds {size} bytes, more than {size - 1}")
    assert read_json_object(path, max_bytes=size) == {"key": "x" * 100}
    with path.open("r+b") as file:  # sparse: the size is claimed, never written
        file.truncate(MAX_JSON_BYTES + 1)
    refused(read_json_object, path, f"holds {MAX_JSON_BYTES + 1} bytes, more than {MAX_JSON_BYTES} for a JSON settings file")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe{}", "is not UTF-8 text"),
        (b"[" * 100_000, "is not valid JSON (nested too deeply)"),
        (b'{"a": ' * 100_000, "is not valid JSON (nested too deeply)"),
        (b"{not json", "is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2"),
        (b"", "is not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        (b"[1, 2]", "holds a JSON list, not an object"),
        (b'"text"', "holds a JSON str, not an object"),
        (b"null", "holds a JSON NoneType, not an object"),
    ],
    ids=["not-utf8", "deep-list", "deep-object", "not-json", "empty", "list", "string", "null"],
)
def test_read_json_object_refuses_what_is_not_a_json_object(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    refused(read_json_object, path, f"{path} {message}")
