"""``vit_zoo.errors``: the exception classes and the one way to quote an exception in one line.

Bad input is a ``ValueError`` (what a caller catching ``ValueError`` expects of a wrong argument or file), what the
environment did an ``OSError`` or ``HubError``; ``first_line``, ``shown`` and ``os_reason`` keep every message on one
line however hostile the text quoted; the CLI prints any of these exceptions as one ``vit-zoo CMD: error:`` line.
"""

from __future__ import annotations

import errno
import os
import shutil

import pytest
from helpers import assert_cli_error, call_main

from vit_zoo import cli
from vit_zoo.errors import (
    CheckpointError,
    CliError,
    DownloadError,
    FolderError,
    HubError,
    OutputError,
    OutputExistsError,
    UnknownVariantError,
    ZooConfigError,
    first_line,
    os_reason,
    shown,
)

BAD_INPUT = (CheckpointError, ZooConfigError, OutputExistsError, FolderError)
ENVIRONMENT = (DownloadError, OutputError, HubError)


@pytest.mark.parametrize("error_class", BAD_INPUT, ids=lambda cls: cls.__name__)
def test_bad_input_is_a_value_error(error_class):
    assert issubclass(error_class, ValueError) and not issubclass(error_class, OSError)
    with pytest.raises(ValueError, match="the file at fault; the fix"):
        raise error_class("the file at fault; the fix")


def test_environment_errors_are_os_errors_or_hub_errors():
    assert issubclass(DownloadError, OSError) and issubclass(OutputError, OSError)
    assert issubclass(HubError, RuntimeError) and not issubclass(HubError, ValueError)
    for error_class in ENVIRONMENT:
        assert not issubclass(error_class, ValueError), error_class


def test_an_unknown_variant_is_a_key_error_shown_without_quotes():
    error = UnknownVariantError("unknown zoo variant 'ViT-X/1'; known: ViT-B/32")
    assert isinstance(error, KeyError)
    assert str(error) == "unknown zoo variant 'ViT-X/1'; known: ViT-B/32"  # a KeyError would show its repr


@pytest.mark.parametrize(
    "error, line",
    [
        (ValueError("one line"), "one line"),
        (ValueError("\n  \nfirst\nsecond\n"), "first"),
        (ValueError("  padded  "), "padded"),
        (OSError(), "OSError"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (ValueError(" \n\t\n"), "ValueError"),
        (CheckpointError("a.pt is empty\nTraceback (most recent call last):"), "a.pt is empty"),
    ],
    ids=["one-line", "blank-lines-first", "padded", "no-message", "base-exception", "only-blanks", "subclass"],
)
def test_first_line_is_the_first_non_blank_line_or_the_type_name(error, line):
    assert first_line(error) == line


def test_shown_quotes_a_value_on_one_line_cut_to_its_width():
    assert shown("big") == "'big'"
    assert shown(None) == "None" and shown([0, 0, 0]) == "[0, 0, 0]"
    assert shown("X" * 5000) == "'" + "X" * 59
    assert len(shown("X" * 5000, width=10)) == 10
    assert shown({"a": 1, "b": [1, 2]}) == "{'a': 1, 'b': [1, 2]}"
    multiline = shown("line one\nline two\r\n\tthree")
    assert "\n" not in multiline and multiline == repr("line one\nline two\r\n\tthree")
    structure = shown({"key": "a\nb", "other": ["x\n"] * 3}, width=1000)
    assert "\n" not in structure and "  " not in structure


def test_os_reason_is_the_reason_without_errno_or_path():
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out.npy")
    assert str(full).startswith("[Errno 28]") and os_reason(full) == "No space left on device"
    assert os_reason(PermissionError(errno.EACCES, "Permission denied", "/root/x")) == "Permission denied"
    assert os_reason(OSError("the disk went away\ndetails")) == "the disk went away"
    assert os_reason(OSError()) == "OSError"


def test_os_reason_of_copytree_is_the_first_files_reason(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "a-dangling").symlink_to(tmp_path / "gone")
    (source / "b-dangling").symlink_to(tmp_path / "also-gone")
    with pytest.raises(shutil.Error) as error:  # copytree collects one error per file, then raises them together
        shutil.copytree(source, tmp_path / "copy")
    reasons = [reason for _, _, reason in error.value.args[0]]
    assert len(reasons) == 2 and os_reason(error.value) == reasons[0]
    assert os_reason(error.value).startswith("[Errno 2] No such file or directory")
    assert os_reason(shutil.Error("not a list of files")) == "not a list of files"


@pytest.mark.parametrize(
    "error",
    [
        CheckpointError("x.pt is empty; expected an OpenAI CLIP .pt archive\nsecond line"),
        ZooConfigError("zoo.yaml: patch_size must be a positive int\n  in 'model'"),
        OutputExistsError("out already exists; choose a new folder\n"),
        FolderError("\nfolder has no model.safetensors; convert a checkpoint into it first"),
        UnknownVariantError("unknown zoo variant 'ViT-X/1'\nknown: ..."),
        DownloadError("cannot reach the mirror\n(details)"),
        OutputError("cannot write out (No space left on device)\n"),
        HubError("the Hub answered 500 for org/x\n<html>...</html>"),
        CliError("none of the 2 files could be read as an image\n"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_the_cli_prints_each_as_one_line(error, capsys, monkeypatch):
    def fail():
        raise error

    monkeypatch.setattr(cli, "list_entries", fail)
    assert_cli_error(call_main(capsys, "list"), "list", first_line(error))
