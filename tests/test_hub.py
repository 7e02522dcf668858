"""Push and pull through the real huggingface_hub client against the local Hub-protocol server."""

import json

import pytest
import torch
from helpers import assert_cli_error, call_main, run_cli
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


@pytest.fixture
def one_second_hub_waits(monkeypatch):
    """``VIT_ZOO_HUB_TIMEOUT=1``; huggingface_hub's client factory as it was afterwards (the CLI replaces it)."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    monkeypatch.setenv("VIT_ZOO_HUB_TIMEOUT", "1")
    previous = _http._GLOBAL_CLIENT_FACTORY
    yield
    set_client_factory(previous)


@pytest.mark.parametrize("command", ["pull", "push"])
def test_a_hub_that_never_answers_is_named_after_the_timeout(hub_server, one_second_hub_waits, tmp_path, command, capsys):
    """A Hub that accepted connections and never answered held `pull` for minutes and `push` for ever."""
    folder = write_plain_folder(tmp_path / "model")
    push_folder(folder, "org/tiny", token=WRITE_TOKEN)
    hub_server.hang_next("/", count=100)
    args = ["pull", "org/tiny"] if command == "pull" else ["push", folder, "org/tiny", "--token", WRITE_TOKEN]
    assert_cli_error(call_main(capsys, *args), command, f"the Hub at {hub_server.endpoint} did not answer within 1 s")


def test_the_hub_timeout_setting_is_checked(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("VIT_ZOO_HUB_TIMEOUT", "soon")
    assert_cli_error(call_main(capsys, "pull", "org/tiny"), "pull", "$VIT_ZOO_HUB_TIMEOUT='soon' is not a number of seconds")


def test_pull_onto_a_dangling_symlink_says_it_exists(hub_server, tmp_path):
    push_folder(write_plain_folder(tmp_path / "model"), "org/tiny", token=WRITE_TOKEN)
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputExistsError, match="link already exists; choose a new --output folder"):
        pull("org/tiny", output=tmp_path / "link")
    assert not (tmp_path / "nowhere").exists()
