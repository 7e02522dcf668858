"""``vit_zoo.hub``: push and pull through the real huggingface_hub client against the local Hub-protocol server.

Revisions, branches, private repos and the CLI; pull fetches the format's files (and the shards its index names),
nothing else, and never onto an existing path; the Hub failing (401/403/404/500, refused connections, a Hub that
never answers, dropped uploads, a malformed file listing, offline mode) leaves the repo and the output as they were;
push and pull move only sound vit_zoo folders (``hostile.HOSTILE_FOLDERS``, corrupt weights, files outside the
format) and never into a read-only or full disk.
"""

import errno
import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers import assert_cli_error, call_main, listing, run_cli, tmpfs
from hostile import CORRUPT_SAFETENSORS, HOSTILE_FOLDERS
from hub_server import READ_TOKEN, WRITE_TOKEN
from reference import TINY
from safetensors.torch import load_file, save_file

from vit_zoo import FolderError, HubError, OutputExistsError, VisionTransformer, VitZooConfig, pull, push_folder
from vit_zoo.image_processing import image_processor_for

pytestmark = [pytest.mark.hub, pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")]


def write_plain_folder(folder, seed=0):
    """A minimal vit_zoo folder: config.json, preprocessor_config.json and model.safetensors of random core weights."""
    torch.manual_seed(seed)
    VitZooConfig(**TINY).save_pretrained(folder)
    image_processor_for(VitZooConfig(**TINY)).save_pretrained(folder)
    save_file(VisionTransformer(**TINY).state_dict(), folder / "model.safetensors")
    return folder


def test_push_then_pull_each_revision(hub_server, tmp_path):
    first = push_folder(write_plain_folder(tmp_path / "v1", seed=0), "org/tiny", token=WRITE_TOKEN)
    second = push_folder(write_plain_folder(tmp_path / "v2", seed=1), "org/tiny", token=WRITE_TOKEN)
    assert first != second
    assert [c.id for c in hub_server.list_commits("org/tiny")][:2] == [second, first]
    for commit, source in [(first, "v1"), (second, "v2"), (None, "v2")]:
        folder = pull("org/tiny", revision=commit)
        pulled, expected = load_file(folder / "model.safetensors"), load_file(tmp_path / source / "model.safetensors")
        assert all(torch.equal(pulled[k], expected[k]) for k in expected)


def test_push_to_branch_private_with_message(hub_server, tmp_path):
    folder = write_plain_folder(tmp_path / "model")
    commit = push_folder(folder, "org/private", token=WRITE_TOKEN, private=True, revision="dev", commit_message="first")
    assert hub_server.list_commits("org/private", branch="dev")[0].id == commit
    assert hub_server.list_commits("org/private", branch="dev")[0].title == "first"
    assert "model.safetensors" not in hub_server.files("org/private", rev="main")
    with pytest.raises(HubError, match="not found .* private"):
        pull("org/private", revision="dev")
    assert (pull("org/private", revision="dev", token=READ_TOKEN) / "model.safetensors").is_file()


def test_pull_into_output_folder(hub_server, tmp_path):
    push_folder(write_plain_folder(tmp_path / "model"), "org/tiny", token=WRITE_TOKEN)
    output = pull("org/tiny", output=tmp_path / "pulled")
    assert output == tmp_path / "pulled" and (output / "model.safetensors").is_file()
    with pytest.raises(OutputExistsError, match="already exists"):
        pull("org/tiny", output=tmp_path / "pulled")


def test_bad_tokens_are_refused_without_commits(hub_server, tmp_path):
    folder = write_plain_folder(tmp_path / "model")
    with pytest.raises(HubError, match="401"):
        push_folder(folder, "org/tiny", token="hf_wrong")
    push_folder(folder, "org/tiny", token=WRITE_TOKEN)
    commits = hub_server.list_commits("org/tiny")
    with pytest.raises(HubError, match="403"):
        push_folder(write_plain_folder(tmp_path / "v2", seed=1), "org/tiny", token=READ_TOKEN)
    assert hub_server.list_commits("org/tiny") == commits


def test_missing_repo_and_revision(hub_server, tmp_path):
    with pytest.raises(HubError, match="repository org/missing not found"):
        pull("org/missing")
    push_folder(write_plain_folder(tmp_path / "model"), "org/tiny", token=WRITE_TOKEN)
    with pytest.raises(HubError, match="revision 'nope' not found"):
        pull("org/tiny", revision="nope")


def test_failed_commit_leaves_repo_unchanged(hub_server, tmp_path):
    push_folder(write_plain_folder(tmp_path / "v1"), "org/tiny", token=WRITE_TOKEN)
    before = hub_server.files("org/tiny")
    hub_server.fail_next("/commit/", status=500)
    with pytest.raises(HubError, match="500"):
        push_folder(write_plain_folder(tmp_path / "v2", seed=1), "org/tiny", token=WRITE_TOKEN)
    assert hub_server.files("org/tiny") == before


def test_connection_dropped_mid_upload(hub_server, tmp_path):
    push_folder(write_plain_folder(tmp_path / "v1"), "org/tiny", token=WRITE_TOKEN)
    before = hub_server.list_commits("org/tiny")
    hub_server.drop_connection_on("/commit/")
    with pytest.raises(HubError, match="cannot reach the Hub|answered"):
        push_folder(write_plain_folder(tmp_path / "v2", seed=1), "org/tiny", token=WRITE_TOKEN)
    assert hub_server.list_commits("org/tiny") == before


def test_server_down(hub_server, tmp_path):
    folder = write_plain_folder(tmp_path / "model")
    hub_server.stop()
    with pytest.raises(HubError, match="cannot reach the Hub"):
        push_folder(folder, "org/tiny", token=WRITE_TOKEN)


def test_repo_of_another_model_type_is_refused(hub_server, tmp_path):
    folder = write_plain_folder(tmp_path / "model")
    push_folder(folder, "org/tiny", token=WRITE_TOKEN)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_server.endpoint, token=WRITE_TOKEN)
    api.create_repo("org/clip")
    api.upload_folder(repo_id="org/clip", folder_path=other)
    with pytest.raises(FolderError, match="'clip_vision_model' model, not a 'vit_zoo' one"):
        pull("org/clip")
    with pytest.raises(FolderError, match="not 'vit_zoo'|not a 'vit_zoo'"):
        push_folder(other, "org/clip2", token=WRITE_TOKEN)


def test_offline_mode_uses_cache_only(hub_server, tmp_path, monkeypatch):
    from huggingface_hub import constants

    push_folder(write_plain_folder(tmp_path / "model"), "org/tiny", token=WRITE_TOKEN)
    online = pull("org/tiny")
    hub_server.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert pull("org/tiny") == online
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        pull("org/other")


def test_cli_push_and_pull(hub_server, tmp_path):
    folder = write_plain_folder(tmp_path / "model")
    pushed = run_cli("push", str(folder), "org/cli", "--token", WRITE_TOKEN, "--commit-message", "from the CLI")
    assert pushed.returncode == 0, pushed.stderr
    commit = hub_server.list_commits("org/cli")[0]
    assert commit.title == "from the CLI" and commit.id in pushed.stdout
    pulled = run_cli("pull", "org/cli", "--revision", commit.id, "--output", str(tmp_path / "pulled"))
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "pulled" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["push", "{tmp}/missing", "org/x"], "is not a folder"),
        (["push", "{tmp}/model", "org/x", "--token", "hf_wrong"], "refused the token (401)"),
        (["pull", "org/missing"], "repository org/missing not found"),
        (["pull", "org/x", "--revision", "v9"], "not found"),
    ],
)
def test_cli_errors_are_one_line(hub_server, tmp_path, args, message, capsys):
    write_plain_folder(tmp_path / "model")
    result = call_main(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert_cli_error(result, args[0], message)
    assert len(result[2].strip().splitlines()) == 1


def test_pull_fetches_the_folder_and_nothing_else(hub_server, tmp_path):
    """Any ``*.safetensors`` in a repo was downloaded (an optimizer state, say): now only the format's files, and the
    shards the index names."""
    from huggingface_hub import HfApi

    from vit_zoo import save_model_folder

    model = VisionTransformer(**TINY)
    folder = save_model_folder(model, tmp_path / "sharded", max_shard_size=100_000)
    shards = sorted(path.name for path in folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    push_folder(folder, "org/sharded", token=WRITE_TOKEN)
    save_file({"step": torch.zeros(1 << 16)}, tmp_path / "optimizer_state.safetensors")
    api = HfApi(endpoint=hub_server.endpoint, token=WRITE_TOKEN)
    api.upload_file(
        path_or_fileobj=tmp_path / "optimizer_state.safetensors",
        path_in_repo="optimizer_state.safetensors",
        repo_id="org/sharded",
    )
    hub_server.requests.clear()
    pulled = pull("org/sharded")
    fetched = {record.path.rpartition("/")[2] for record in hub_server.requests if "/resolve/" in record.path}
    assert "optimizer_state.safetensors" not in fetched and set(shards) <= fetched
    assert not (pulled / "optimizer_state.safetensors").exists()
    loaded = {name: tensor for shard in shards for name, tensor in load_file(pulled / shard).items()}
    assert all(torch.equal(loaded[name], tensor) for name, tensor in model.state_dict().items())


def test_pull_onto_a_dangling_symlink_says_it_exists(hub_server, tmp_path):
    push_folder(write_plain_folder(tmp_path / "model"), "org/tiny", token=WRITE_TOKEN)
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputExistsError, match="link already exists; choose a new --output folder"):
        pull("org/tiny", output=tmp_path / "link")
    assert not (tmp_path / "nowhere").exists()


# --- the Hub failing ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_backoff(monkeypatch):
    """huggingface_hub retries a failed request after 1, 2, 4, 8 and 8 s: the retries still happen, the waits not."""
    import huggingface_hub.utils._http as http

    monkeypatch.setattr(http.time, "sleep", lambda seconds: None)


@pytest.fixture
def one_second_hub_waits(monkeypatch):
    """``VIT_ZOO_HUB_TIMEOUT=1``; afterwards a fresh huggingface_hub client (push and pull bound the shared one)."""
    from huggingface_hub import close_session

    monkeypatch.setenv("VIT_ZOO_HUB_TIMEOUT", "1")
    close_session()
    yield
    close_session()


@pytest.mark.parametrize("command", ["pull", "push"])
def test_a_hub_that_never_answers_is_named_after_the_timeout(hub_server, one_second_hub_waits, tmp_path, command, capsys):
    """A Hub that accepted connections and never answered held `pull` for minutes and `push` for ever."""
    folder = write_plain_folder(tmp_path / "model")
    push_folder(folder, "org/tiny", token=WRITE_TOKEN)
    hub_server.hang_next("/", count=100)
    args = ["pull", "org/tiny"] if command == "pull" else ["push", folder, "org/tiny", "--token", WRITE_TOKEN]
    assert_cli_error(call_main(capsys, *args), command, f"the Hub at {hub_server.endpoint} did not answer within 1 s")


@pytest.mark.parametrize("function", ["pull", "push_folder"])
def test_python_push_and_pull_bound_their_waits_too(hub_server, one_second_hub_waits, tmp_path, function):
    """From Python, push_folder waited for ever on huggingface_hub's shared client (it has no timeout) unless the
    program bounded it; now both bound it."""
    folder = write_plain_folder(tmp_path / "model")
    push_folder(folder, "org/tiny", token=WRITE_TOKEN)
    hub_server.hang_next("/", count=100)
    started = time.monotonic()
    with pytest.raises(HubError, match=f"the Hub at {hub_server.endpoint} did not answer within 1 s"):
        pull("org/tiny") if function == "pull" else push_folder(folder, "org/tiny", token=WRITE_TOKEN)
    assert time.monotonic() - started < 30  # huggingface_hub retries some requests, each bounded


def test_a_client_with_timeouts_of_its_own_keeps_them(hub_server, one_second_hub_waits, tmp_path):
    from huggingface_hub import get_session

    own = get_session()
    own.timeout = 123.0  # as a program's client factory may set it
    push_folder(write_plain_folder(tmp_path / "model"), "org/tiny", token=WRITE_TOKEN)
    pull("org/tiny")
    assert get_session() is own and own.timeout.read == 123.0


def test_the_hub_timeout_setting_is_checked(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("VIT_ZOO_HUB_TIMEOUT", "soon")
    assert_cli_error(call_main(capsys, "pull", "org/tiny"), "pull", "$VIT_ZOO_HUB_TIMEOUT='soon' is not a number of seconds")


@pytest.mark.parametrize(
    "fault, token, message",
    [
        (None, READ_TOKEN, "the token may not write to org/tiny (403); use a token with write access"),
        (("/preupload/", 404), WRITE_TOKEN, "the Hub answered 404 for org/tiny"),
        (("/commit/", 500), WRITE_TOKEN, "the Hub answered 500 for org/tiny: "),
        (("/lfs-upload/", 403), WRITE_TOKEN, "the token may not write to org/tiny (403)"),
    ],
    ids=["403-read-token", "404", "500-commit", "403-lfs-upload"],
)
def test_cli_push_refused_by_the_hub(model_folder, hub_server, fault, token, message, capsys):
    hub_server.create_repo("org/tiny")
    before = hub_server.list_commits("org/tiny")
    if fault is not None:
        hub_server.fail_next(*fault)
    assert_cli_error(call_main(capsys, "push", model_folder, "org/tiny", "--token", token), "push", message)
    assert hub_server.list_commits("org/tiny") == before


@pytest.mark.parametrize(
    "fault, token, message",
    [
        (None, "hf_wrong", "the Hub refused the token (401) for org/tiny; log in again"),
        (("/resolve/main/config.json", 403), None, "access to org/tiny was refused (403): the repo is gated"),
        (("/model.safetensors", 500), None, "the Hub answered 500 for org/tiny: "),
        (("/tree/", 500), None, "the Hub answered 500 for org/tiny: "),
    ],
    ids=["401-wrong-token", "403-gated", "500-weights", "500-file-list"],
)
def test_cli_pull_refused_by_the_hub(model_folder, hub_server, no_backoff, fault, token, message, tmp_path, capsys):
    push_folder(model_folder, "org/tiny", token=WRITE_TOKEN)
    if fault is not None:  # on every try: a single 5xx is retried away by huggingface_hub
        hub_server.fail_next(*fault, count=10)
    token_args = ["--token", token] if token else []
    assert_cli_error(call_main(capsys, "pull", "org/tiny", "--output", tmp_path / "out", *token_args), "pull", message)
    assert not [path for path in tmp_path.iterdir() if "out" in path.name]  # no output, no staging folder


def test_hub_that_refuses_connections(model_folder, hub_server, no_backoff, capsys):
    endpoint = hub_server.endpoint
    hub_server.stop()
    expected = f"cannot reach the Hub at {endpoint} for org/tiny ("
    assert_cli_error(call_main(capsys, "pull", "org/tiny"), "pull", expected, "check the network (or HF_ENDPOINT)")
    assert_cli_error(call_main(capsys, "push", model_folder, "org/tiny", "--token", WRITE_TOKEN), "push", expected)


def weights_upload(folder: Path) -> str:
    """The LFS upload path of the folder's ``model.safetensors`` on the test Hub."""
    return f"/lfs-upload/{hashlib.sha256((folder / 'model.safetensors').read_bytes()).hexdigest()}"


def test_lfs_upload_dropped_once_is_retried_and_the_commit_is_whole(model_folder, hub_server, no_backoff):
    hub_server.drop_connection_on(weights_upload(model_folder), method="PUT")
    push_folder(model_folder, "org/tiny", token=WRITE_TOKEN)
    assert sum(r.path == weights_upload(model_folder) for r in hub_server.requests) == 2
    pushed = hub_server.files("org/tiny")
    assert pushed["model.safetensors"] == (model_folder / "model.safetensors").read_bytes()
    assert {name for name in pushed if name != ".gitattributes"} == {p.name for p in model_folder.iterdir()}


def test_lfs_upload_dropped_every_time_leaves_the_repo_as_it_was(model_folder, hub_server, no_backoff, capsys):
    hub_server.create_repo("org/tiny")
    before = hub_server.list_commits("org/tiny"), hub_server.files("org/tiny")
    hub_server.drop_connection_on(weights_upload(model_folder), method="PUT", count=100)
    assert_cli_error(
        call_main(capsys, "push", model_folder, "org/tiny", "--token", WRITE_TOKEN),
        "push",
        f"cannot reach the Hub at {hub_server.endpoint} for org/tiny (",
    )
    assert sum(r.path == weights_upload(model_folder) for r in hub_server.requests) == 6  # a try and five retries
    assert (hub_server.list_commits("org/tiny"), hub_server.files("org/tiny")) == before


@pytest.mark.parametrize(
    "body, message",
    [(b"<html>not json</html>", "is not a JSON list of files"), (b'{"path": "x"}', "is not a JSON list of files")],
    ids=["not-json", "object"],
)
def test_pull_of_a_malformed_file_listing(model_folder, hub_server, body, message, tmp_path, capsys):
    push_folder(model_folder, "org/tiny", token=WRITE_TOKEN)
    hub_server.answer_next("/tree/", body)
    assert_cli_error(call_main(capsys, "pull", "org/tiny", "--output", tmp_path / "out"), "pull", message)


def test_offline_pull_of_a_partly_cached_repo_is_refused(model_folder, hub_server, no_backoff, tmp_path, capsys, monkeypatch):
    """An offline pull exited 0 with no preprocessor_config.json in its output. The cache holds part of a repo after an
    interrupted pull (the weights come after the format's files) or after transformers loaded the model (its config
    and weights, no preprocessing)."""
    import huggingface_hub.constants as constants
    from transformers import AutoModel

    push_folder(model_folder, "org/tiny", token=WRITE_TOKEN)
    hub_server.fail_next("/preprocessor_config.json", 500, count=10)
    assert call_main(capsys, "pull", "org/tiny")[0] == 1
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    message = assert_cli_error(
        call_main(capsys, "pull", "org/tiny", "--output", tmp_path / "out"),
        "pull",
        "the Hugging Face cache holds part of org/tiny at ",
    )
    assert "has no model.safetensors" in message and message.endswith("; pull it again online")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    AutoModel.from_pretrained("org/tiny")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert_cli_error(
        call_main(capsys, "pull", "org/tiny", "--output", tmp_path / "out"), "pull", "preprocessor_config.json is missing"
    )
    assert not (tmp_path / "out").exists()


def test_pull_into_a_read_only_or_full_output(model_folder, hub_server, read_only_folder, tmp_path, capsys):
    push_folder(model_folder, "org/tiny", token=WRITE_TOKEN)
    message = assert_cli_error(call_main(capsys, "pull", "org/tiny", "--output", read_only_folder / "out"), "pull")
    assert message.startswith(f"vit-zoo pull: error: cannot write {read_only_folder / 'out'} (")
    assert listing(read_only_folder) == []
    with tmpfs(tmp_path / "full", "size=64k") as mounted:
        if mounted:
            message = assert_cli_error(call_main(capsys, "pull", "org/tiny", "--output", tmp_path / "full" / "out"), "pull")
            assert "No space left on device" in message and listing(tmp_path / "full") == []


@pytest.mark.parametrize("short_of", ["bytes", "file entries"])
def test_pull_into_a_full_cache_names_the_cache(model_folder, hub_server, tmp_path, monkeypatch, short_of, capsys):
    """A full Hugging Face cache gave huggingface_hub's warning with its source line, then [Errno 28] without a path.
    Too few bytes for a file is known before its download; too few file entries (inodes) only when one is made."""
    import huggingface_hub.file_download
    from huggingface_hub import constants

    push_folder(model_folder, "org/tiny", token=WRITE_TOKEN)
    cache = tmp_path / "cache"
    options = "size=64k" if short_of == "bytes" else "size=16m,nr_inodes=10"  # the tiny model's weights take 400 KiB
    with tmpfs(cache, options) as mounted:
        if not mounted and short_of == "bytes":  # a disk that says it is full, as a non-root user's test sees it
            monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(64 << 10, 64 << 10, 0))
        elif not mounted:  # a disk that runs out of entries once a download starts writing

            def no_entries_left(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(huggingface_hub.file_download, "http_get", no_entries_left)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert_cli_error(
                call_main(capsys, "pull", "org/tiny", "--output", tmp_path / "out"),
                "pull",
                f"the Hugging Face cache at {cache} has no room for org/tiny (",
                "file entries free); free some space there, or set HF_HUB_CACHE to a folder on a larger disk",
            )
        assert [str(warning.message) for warning in caught if "disk space" in str(warning.message)] == []
        if short_of == "bytes":
            assert not [path.name for path in cache.rglob("*") if path.name.startswith("model.safetensors")]
    assert not (tmp_path / "out").exists()


# --- push and pull move only sound vit_zoo folders ------------------------------------------------------------------


def test_push_and_pull_refuse_unsound_folders(copied_folder, hub_server, tmp_path, capsys):
    """push and pull checked only model_type: they moved width: "big", missing tensors and NaN weights."""
    from huggingface_hub import HfApi

    for case in ("width-big", "missing-proj", "nan-weight"):
        folder = Path(shutil.copytree(copied_folder, tmp_path / case))
        edit, *fragments = HOSTILE_FOLDERS[case]
        edit(folder)
        assert_cli_error(call_main(capsys, "push", folder, f"org/{case}", "--token", WRITE_TOKEN), "push", *fragments)
        hub_server.create_repo(f"org/{case}")
        HfApi(token=WRITE_TOKEN).upload_folder(repo_id=f"org/{case}", folder_path=folder, repo_type="model")
        assert_cli_error(call_main(capsys, "pull", f"org/{case}", "--output", tmp_path / f"{case}-out"), "pull", *fragments)
        assert not (tmp_path / f"{case}-out").exists()


def test_push_refuses_a_folder_with_corrupt_weights(corrupt_safetensors, copied_folder, hub_server, capsys):
    shutil.copyfile(corrupt_safetensors["truncated"], copied_folder / "model.safetensors")
    expected = f"{copied_folder / 'model.safetensors'}: {CORRUPT_SAFETENSORS['truncated']}"
    assert_cli_error(call_main(capsys, "push", copied_folder, "org/corrupt", "--token", WRITE_TOKEN), "push", expected)
    assert hub_server.requests == []


def test_push_uploads_exactly_the_folder_format(copied_folder, hub_server, tmp_path, capsys):
    """Dotfiles, stray files and symlinks leaving the folder went up to a repo that is public by default."""
    (tmp_path / "secret.txt").write_text("password")
    (copied_folder / ".env").write_text("HF_TOKEN=hf_secret")
    (copied_folder / "notes.txt").write_text("private notes")
    (copied_folder / "linked.txt").symlink_to(tmp_path / "secret.txt")
    expected = sorted(path.name for path in copied_folder.iterdir() if path.name not in (".env", "notes.txt", "linked.txt"))
    code, out, err = call_main(capsys, "push", copied_folder, "org/tiny", "--token", WRITE_TOKEN)
    assert code == 0, err
    assert sorted(name for name in hub_server.files("org/tiny") if name != ".gitattributes") == expected
    (copied_folder / "README.md").unlink()
    (copied_folder / "README.md").symlink_to(tmp_path / "secret.txt")
    assert_cli_error(
        call_main(capsys, "push", copied_folder, "org/tiny", "--token", WRITE_TOKEN),
        "push",
        f"README.md is a symlink to {tmp_path / 'secret.txt'}, outside the folder; copy the file into the folder",
    )


def test_push_private_onto_an_existing_public_repo_is_refused(model_folder, hub_server, capsys):
    hub_server.create_repo("org/public")
    before = hub_server.list_commits("org/public")
    assert_cli_error(
        call_main(capsys, "push", model_folder, "org/public", "--private", "--token", WRITE_TOKEN),
        "push",
        "org/public exists and is public; --private only makes a new repo private",
    )
    assert hub_server.list_commits("org/public") == before


def test_push_of_a_readme_that_is_not_utf8_names_it(copied_folder, hub_server, capsys):
    (copied_folder / "README.md").write_bytes(b"# caf\xe9\n")
    assert_cli_error(
        call_main(capsys, "push", copied_folder, "org/tiny", "--token", WRITE_TOKEN),
        "push",
        f"{copied_folder / 'README.md'} is not UTF-8 text",
    )
