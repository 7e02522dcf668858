"""``vit_zoo.outputs``: every file or folder vit_zoo writes appears complete or not at all.

``write_atomically``: a failed write leaves neither its staging path nor the parent folders made for it, and a disk
error becomes one ``OutputError`` line; an existing output is replaced only when asked; what appears has the modes
the umask gives. What a killed run staged is removed by the next write into the folder, a run still writing keeps its
staging path, and nothing a user made (``.photos.20240101.partial/``, ``.x.abcdef12.partial``) is ever taken for
staging: an earlier sweep removed every ``.*.partial`` beside the output.

``StagedFiles``: files staged together are committed together, a failed move puts the previous files back, and what
a killed run left (staged files, outputs moved aside) is cleared by the next write into the folder, each replaced
output put back where the new one is missing.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import REPO_ROOT, listing

from vit_zoo.errors import OutputError
from vit_zoo.outputs import StagedFiles, write_atomically


def write_text(text: str):
    """A ``write(staging)`` that creates a file holding ``text``."""
    return lambda staging: staging.write_text(text)


def write_folder(staging: Path) -> None:
    (staging / "sub").mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"weights")
    (staging / "sub" / "notes.txt").write_text("notes")


def test_a_file_and_a_folder_appear_whole_with_nothing_beside_them(tmp_path):
    assert write_atomically(tmp_path / "out.txt", write_text("done")) == tmp_path / "out.txt"
    assert write_atomically(tmp_path / "nested" / "folder", write_folder) == tmp_path / "nested" / "folder"
    assert (tmp_path / "out.txt").read_text() == "done"
    assert listing(tmp_path) == [
        "nested",
        "nested/folder",
        "nested/folder/model.safetensors",
        "nested/folder/sub",
        "nested/folder/sub/notes.txt",
        "out.txt",
    ]


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("staged", [write_text("half"), write_folder], ids=["file", "folder"])
def test_a_failed_write_leaves_nothing_not_even_the_parents_made_for_it(tmp_path, staged):
    def write_then_fail(staging: Path) -> None:
        staged(staging)
        raise Interrupted("the writer failed halfway")

    (tmp_path / "mine.txt").write_text("kept")
    with pytest.raises(Interrupted):  # not a disk error: raised as it is
        write_atomically(tmp_path / "a" / "b" / "out", write_then_fail)
    assert listing(tmp_path) == ["mine.txt"]


def test_a_disk_error_is_one_output_error_line(tmp_path):
    def fill_the_disk(staging: Path) -> None:
        staging.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging))

    target = tmp_path / "new" / "out.npy"
    with pytest.raises(OutputError) as error:
        write_atomically(target, fill_the_disk)
    assert str(error.value) == (
        f"cannot write {target} (No space left on device); choose an output folder on a writable disk with free space"
    )
    assert isinstance(error.value.__cause__, OSError) and listing(tmp_path) == []


def test_an_existing_output_is_replaced_only_when_asked(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("before")
    with pytest.raises(OutputError, match=f"output {target} appeared while writing it; nothing was written"):
        write_atomically(target, write_text("after"))
    assert target.read_text() == "before" and listing(tmp_path) == ["out.txt"]
    write_atomically(target, write_text("after"), replace=True)
    assert target.read_text() == "after" and listing(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077], ids=oct)
def test_what_appears_has_the_modes_the_umask_gives(tmp_path, umask):
    """safetensors writes its files 0600; an output is shared like any other file the user makes."""

    def write_private(staging: Path) -> None:
        write_folder(staging)
        for path in (staging / "model.safetensors", staging / "sub" / "notes.txt"):
            path.chmod(0o600)
        (staging / "sub").chmod(0o700)

    previous = os.umask(umask)
    try:
        folder = write_atomically(tmp_path / "folder", write_private)
        file = write_atomically(tmp_path / "file.txt", lambda staging: (staging.write_text("x"), staging.chmod(0o600)))
    finally:
        os.umask(previous)
    modes = {str(path.relative_to(tmp_path)): stat.S_IMODE(path.stat().st_mode) for path in [folder, *folder.rglob("*"), file]}
    folders, files = 0o777 & ~umask, 0o666 & ~umask
    assert modes == {
        "folder": folders,
        "folder/sub": folders,
        "folder/model.safetensors": files,
        "folder/sub/notes.txt": files,
        "file.txt": files,
    }


KILLED_WRITE = """
import sys, time
from pathlib import Path
from vit_zoo.outputs import StagedFiles, write_atomically
def write(staging):
    staging.mkdir()
    (staging / "half.bin").write_bytes(b"half")
    print("staged", flush=True)
    time.sleep(300)
write_atomically(Path(sys.argv[1]), write)
"""


def test_staging_of_a_killed_run_is_removed_by_the_next_write_into_the_folder(tmp_path):
    """SIGKILL (or a power cut) runs no cleanup: the staging folder and its lock file stay, unlocked."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-c", KILLED_WRITE, str(tmp_path / "out")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout.readline() == "staged\n", process.stderr.read()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
        process.communicate()
    staging = next(name for name in listing(tmp_path) if name.endswith(".partial"))
    assert staging.startswith(".out.vit-zoo-")
    assert listing(tmp_path) == sorted([staging, f"{staging}/half.bin", f"{staging}.lock"])
    write_atomically(tmp_path / "next.txt", write_text("next"))
    assert listing(tmp_path) == ["next.txt"]


def test_staging_of_a_run_still_writing_is_left_alone(tmp_path):
    staged, finish = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow_write(staging: Path) -> None:
        staging.write_text("slow")
        staged.set()
        assert finish.wait(60)

    def run_slow() -> None:
        try:
            write_atomically(tmp_path / "slow.txt", slow_write)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    writer = threading.Thread(target=run_slow)
    writer.start()
    try:
        assert staged.wait(60)
        write_atomically(tmp_path / "quick.txt", write_text("quick"))  # sweeps the folder while "slow" is staged
        assert [name for name in listing(tmp_path) if name.startswith(".slow.txt.vit-zoo-")]
    finally:
        finish.set()
        writer.join()
    assert errors == [] and listing(tmp_path) == ["quick.txt", "slow.txt"]
    assert (tmp_path / "slow.txt").read_text() == "slow"


def test_paths_a_user_made_are_never_taken_for_staging(tmp_path):
    """A sweep removed every ``.*.partial`` beside the output: a user's own folders and files among them."""
    mine = {
        ".photos.20240101.partial/holiday.jpg": b"photo",
        ".x.abcdef12.partial": b"draft",
        ".x.abcdef12.partial.lock": b"",
        f".y.vit-zoo-{'0' * 32}.partial": b"no lock file beside it: not a staging path",
        ".z.vit-zoo-short.partial": b"not 32 hex digits",
        ".z.vit-zoo-short.partial.lock": b"",
    }
    for name, content in mine.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    write_atomically(tmp_path / "out.txt", write_text("done"))
    write_atomically(tmp_path / "folder", write_folder)
    for name, content in mine.items():
        assert (tmp_path / name).is_file() and (tmp_path / name).read_bytes() == content, f"{name} was removed or changed"
    assert listing(tmp_path) == sorted(
        [*mine, ".photos.20240101.partial", "folder", "folder/model.safetensors", "folder/sub", "folder/sub/notes.txt", "out.txt"]
    )


def write_staged(text: str):
    """A ``write(hidden)`` for ``StagedFiles.stage`` that creates a file holding ``text``."""
    return lambda hidden: hidden.write_text(text)


def test_files_staged_together_are_replaced_together_or_not_at_all(tmp_path):
    (tmp_path / "a").write_text("old a")
    (tmp_path / "b").write_text("old b")
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'b'} .*; nothing was changed"), StagedFiles() as staged:
        staged.stage(tmp_path / "a", write_staged("new a"))
        staged.stage(tmp_path / "b", write_staged("new b"))
        (tmp_path / "b").unlink()
        (tmp_path / "b").mkdir()  # the second move fails: a folder appeared in the way
        staged.commit()
    assert (tmp_path / "a").read_text() == "old a" and listing(tmp_path) == ["a", "b"]
    with StagedFiles() as staged:
        staged.stage(tmp_path / "a", write_staged("new a"))
        staged.stage(tmp_path / "c", write_staged("new c"))
        staged.commit()
    assert (tmp_path / "a").read_text() == "new a" and (tmp_path / "c").read_text() == "new c"
    assert listing(tmp_path) == ["a", "b", "c"]


def test_staged_files_not_committed_leave_nothing_and_an_output_is_staged_once(tmp_path):
    (tmp_path / "a").write_text("old a")
    with pytest.raises(Interrupted), StagedFiles() as staged:
        staged.stage(tmp_path / "a", write_staged("new a"))
        staged.stage(tmp_path / "sub" / "b", write_staged("new b"))
        raise Interrupted("the run failed before its commit")
    assert (tmp_path / "a").read_text() == "old a" and listing(tmp_path) == ["a", "sub"]
    with pytest.raises(ValueError, match=f"{tmp_path / 'a'} would be written twice in one run"), StagedFiles() as staged:
        staged.stage(tmp_path / "a", write_staged("first"))
        staged.stage(tmp_path / "a", write_staged("second"))
    assert (tmp_path / "a").read_text() == "old a" and listing(tmp_path) == ["a", "sub"]


def test_staged_files_of_a_run_still_writing_are_left_alone(tmp_path):
    with StagedFiles() as staged:
        staged.stage(tmp_path / "a", write_staged("new a"))
        write_atomically(tmp_path / "other.txt", write_text("other"))  # sweeps the folder while "a" is staged
        staged.commit()
    assert (tmp_path / "a").read_text() == "new a" and listing(tmp_path) == ["a", "other.txt"]


def test_staged_files_of_a_killed_run_are_swept_and_replaced_outputs_put_back(tmp_path):
    """SIGKILL during a run leaves its marked hidden files and their lock files, held by nobody: the next write into
    the folder removes what was staged and puts each output moved aside back where the new one is missing."""
    token = "0123456789abcdef" * 2
    left = {
        "kept": "old kept",  # killed after staging: the output was never touched
        f".kept.vit-zoo-{token}.staged": "new kept",
        f".moved.vit-zoo-{token}.previous": "old moved",  # killed mid-commit: moved aside, the new one not in yet
        f".moved.vit-zoo-{token}.staged": "new moved",
        "done": "new done",  # killed after the new output went in, before the previous one was deleted
        f".done.vit-zoo-{token}.previous": "old done",
    }
    mine = {  # a user's files that merely look like ours
        f".photo.vit-zoo-{token}.previous": "no lock file beside it: not ours",
        f".notes.vit-zoo-{token[:31]}.staged": "31 hex digits",
        f".notes.vit-zoo-{token.upper()}.staged": "not lowercase hex",
        f".notes.vit-zoo-{token}.backup": "another kind",
        f".notes.{token}.staged": "no vit-zoo mark",
    }
    for name, text in left.items():
        (tmp_path / name).write_text(text)
        if name.startswith("."):
            (tmp_path / f"{name}.lock").touch()
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
        if not name.startswith(".photo."):
            (tmp_path / f"{name}.lock").touch()
    write_atomically(tmp_path / "next.txt", write_text("next"))
    outputs = {name: (tmp_path / name).read_text() for name in ("kept", "moved", "done", "next.txt")}
    assert outputs == {"kept": "old kept", "moved": "old moved", "done": "new done", "next.txt": "next"}
    for name, text in mine.items():
        assert (tmp_path / name).read_text() == text, f"{name} was changed"
    locks = [f"{name}.lock" for name in mine if not name.startswith(".photo.")]
    assert listing(tmp_path) == sorted(["kept", "moved", "done", "next.txt", *mine, *locks])
