"""Tests of the local Hub-protocol server, driven by the real `huggingface_hub` client (no mocking)."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest
from hub_server import DEFAULT_USER, READ_TOKEN, WRITE_TOKEN, HubServer
from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

pytestmark = [
    pytest.mark.hub,
    # Emitted by the client's own LFS PUT (`data=fileobj`) inside httpx2, nothing the tests can act on.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"),
]

REPO = "org/vit-tiny"
CONFIG = b'{"model_type": "vit", "hidden_size": 192}'
WEIGHTS = bytes(range(256)) * 80  # 20 KiB: above the LFS threshold
NOTES = b"nested regular file\n"


def _model_folder(root: Path) -> Path:
    folder = root / "model"
    (folder / "nested").mkdir(parents=True)
    (folder / "config.json").write_bytes(CONFIG)
    (folder / "weights.bin").write_bytes(WEIGHTS)
    (folder / "nested" / "notes.txt").write_bytes(NOTES)
    return folder


def _upload_model(api: HfApi, tmp_path: Path, private: bool = False) -> str:
    api.create_repo(REPO, private=private)
    return api.upload_folder(repo_id=REPO, folder_path=_model_folder(tmp_path)).oid


def _raw_request(url: str, method: str, body: bytes = b"", token: str | None = WRITE_TOKEN) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_upload_folder_then_list_and_download(hub_server: HubServer, tmp_path: Path) -> None:
    api = HfApi(token=WRITE_TOKEN)  # endpoint comes from the patched huggingface_hub constants
    commit_id = _upload_model(api, tmp_path)

    assert hub_server.list_commits(REPO)[0].id == commit_id
    assert sorted(api.list_repo_files(REPO)) == [".gitattributes", "config.json", "nested/notes.txt", "weights.bin"]
    tree = {entry.path: entry for entry in api.list_repo_tree(REPO, recursive=True)}
    assert tree["weights.bin"].lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert tree["config.json"].lfs is None
    assert any(r.method == "PUT" and "/lfs-upload/" in r.path for r in hub_server.requests)

    info = api.model_info(REPO)
    assert (info.sha, info.config) == (commit_id, json.loads(CONFIG))
    expected = {"config.json": CONFIG, "weights.bin": WEIGHTS, "nested/notes.txt": NOTES}
    for name, content in expected.items():
        assert Path(hf_hub_download(REPO, name)).read_bytes() == content
    snapshot = Path(snapshot_download(REPO))
    assert {name: (snapshot / name).read_bytes() for name in expected} == expected
    assert {k: v for k, v in hub_server.files(REPO).items() if k != ".gitattributes"} == expected


def test_new_commit_keeps_old_revision_downloadable(hub_server: HubServer, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub_server.endpoint, token=WRITE_TOKEN)
    old_id = _upload_model(api, tmp_path)

    new_id = api.upload_file(path_or_fileobj=b'{"v": 2}', path_in_repo="config.json", repo_id=REPO).oid

    assert new_id != old_id
    history = [c.commit_id for c in api.list_repo_commits(REPO)]
    assert history[:2] == [new_id, old_id]
    assert len(history) == 3
    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == b'{"v": 2}'
    assert Path(hf_hub_download(REPO, "config.json", revision=old_id)).read_bytes() == CONFIG


def test_stale_parent_commit_is_rejected(hub_server: HubServer, tmp_path: Path) -> None:
    api = HfApi(token=WRITE_TOKEN)
    old_id = _upload_model(api, tmp_path)
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="notes.md", repo_id=REPO)
    operation = CommitOperationAdd(path_in_repo="notes.md", path_or_fileobj=b"v3")

    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_commit(REPO, [operation], commit_message="stale", parent_commit=old_id)

    assert excinfo.value.response.status_code == 412
    assert hub_server.files(REPO)["notes.md"] == b"v2"


def test_private_repo_is_hidden_without_token(hub_server: HubServer, tmp_path: Path) -> None:
    _upload_model(HfApi(token=WRITE_TOKEN), tmp_path, private=True)

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, "config.json")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(REPO)
    assert HfApi(token=READ_TOKEN).model_info(REPO).private is True
    assert Path(hf_hub_download(REPO, "config.json", token=READ_TOKEN)).read_bytes() == CONFIG


@pytest.mark.parametrize(("token", "status"), [("hf_bogus", 401), (False, 401), (READ_TOKEN, 403)], ids=["bad", "none", "read"])
def test_writes_need_a_write_token(hub_server: HubServer, token: str | bool, status: int) -> None:
    hub_server.create_repo(REPO)
    api = HfApi(token=token)

    with pytest.raises(HfHubHTTPError) as create_error:
        api.create_repo("org/other")
    with pytest.raises(HfHubHTTPError) as upload_error:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)

    assert create_error.value.response.status_code == upload_error.value.response.status_code == status
    assert len(hub_server.list_commits(REPO)) == 1


def test_whoami(hub_server: HubServer) -> None:
    assert HfApi(token=WRITE_TOKEN).whoami()["name"] == DEFAULT_USER
    with pytest.raises(HfHubHTTPError) as excinfo:
        HfApi(token="hf_bogus").whoami()
    assert excinfo.value.response.status_code == 401


def test_missing_repo_file_and_revision_raise_typed_errors(hub_server: HubServer) -> None:
    hub_server.create_repo(REPO)

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("org/missing")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, ".gitattributes", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        HfApi().model_info(REPO, revision="0" * 40)


@pytest.mark.parametrize(
    ("inject", "error"),
    [
        (lambda server: server.fail_next("/lfs-upload/", status=403), RuntimeError),
        (lambda server: server.fail_next("/commit/", status=500), HfHubHTTPError),
        (lambda server: server.drop_connection_on("/commit/"), httpx2.TransportError),
    ],
    ids=["lfs-put-rejected", "commit-500", "commit-connection-dropped"],
)
def test_failed_upload_leaves_no_commit(
    hub_server: HubServer, tmp_path: Path, inject: Callable[[HubServer], None], error: type[Exception]
) -> None:
    api = HfApi(token=WRITE_TOKEN)
    api.create_repo(REPO)
    before = (hub_server.list_commits(REPO), hub_server.files(REPO))
    inject(hub_server)

    with pytest.raises(error):
        api.upload_folder(repo_id=REPO, folder_path=_model_folder(tmp_path))

    assert (hub_server.list_commits(REPO), hub_server.files(REPO)) == before


def test_dropped_lfs_upload_is_retried(hub_server: HubServer, tmp_path: Path) -> None:
    api = HfApi(token=WRITE_TOKEN)
    api.create_repo(REPO)
    hub_server.drop_connection_on("/lfs-upload/", method="PUT")

    api.upload_folder(repo_id=REPO, folder_path=_model_folder(tmp_path))

    assert sum(r.method == "PUT" for r in hub_server.requests) == 2
    assert len(hub_server.list_commits(REPO)) == 2
    assert hub_server.files(REPO)["weights.bin"] == WEIGHTS


def test_lfs_upload_verifies_size_and_checksum(hub_server: HubServer) -> None:
    hub_server.create_repo(REPO)
    oid = hashlib.sha256(WEIGHTS).hexdigest()
    batch = json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": len(WEIGHTS)}]}).encode()
    batch_url = f"{hub_server.endpoint}/{REPO}.git/info/lfs/objects/batch"

    _, answer = _raw_request(batch_url, "POST", batch)
    href = json.loads(answer)["objects"][0]["actions"]["upload"]["href"]

    assert _raw_request(href, "PUT", WEIGHTS[:-1], token=None)[0] == 400
    assert _raw_request(href, "PUT", WEIGHTS[:-1] + b"!", token=None)[0] == 400
    assert _raw_request(href, "PUT", WEIGHTS, token=None)[0] == 200
    assert "actions" not in json.loads(_raw_request(batch_url, "POST", batch)[1])["objects"][0]


def test_commit_referencing_unknown_lfs_object_is_rejected_atomically(hub_server: HubServer) -> None:
    hub_server.create_repo(REPO)
    before = hub_server.list_commits(REPO)
    lines = [
        {"key": "header", "value": {"summary": "bad", "description": ""}},
        {"key": "file", "value": {"path": "ok.txt", "content": "b2s=", "encoding": "base64"}},
        {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "a" * 64, "size": 3}},
    ]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)

    status, _ = _raw_request(f"{hub_server.endpoint}/api/models/{REPO}/commit/main", "POST", body)

    assert status == 400
    assert hub_server.list_commits(REPO) == before


def test_interrupted_download_resumes_with_range(hub_server: HubServer) -> None:
    # The client only keeps whole DOWNLOAD_CHUNK_SIZE chunks of an interrupted body, so cut after the first one.
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    big = WEIGHTS * (chunk // len(WEIGHTS) + 8)
    api = HfApi(token=WRITE_TOKEN)
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=big, path_in_repo="big.safetensors", repo_id=REPO)
    hub_server.drop_connection_on("/resolve/main/big.safetensors", method="GET", after_bytes=chunk + 1000)

    path = hf_hub_download(REPO, "big.safetensors")

    assert Path(path).read_bytes() == big
    ranges = [r.headers.get("range") for r in hub_server.requests if r.method == "GET" and "/resolve/" in r.path]
    assert ranges == [None, f"bytes={chunk}-"]


def test_range_request_returns_partial_content(hub_server: HubServer, tmp_path: Path) -> None:
    _upload_model(HfApi(token=WRITE_TOKEN), tmp_path)
    url = f"{hub_server.endpoint}/{REPO}/resolve/main/weights.bin"
    request = urllib.request.Request(url, headers={"Range": "bytes=100-"})

    with urllib.request.urlopen(request) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 100-{len(WEIGHTS) - 1}/{len(WEIGHTS)}"
        assert response.read() == WEIGHTS[100:]


def test_download_failing_on_connection_drop_succeeds_on_retry(hub_server: HubServer, tmp_path: Path) -> None:
    _upload_model(HfApi(token=WRITE_TOKEN), tmp_path)
    hub_server.drop_connection_on("/resolve/main/weights.bin")

    with pytest.raises(httpx2.TransportError):
        hf_hub_download(REPO, "weights.bin")
    path = hf_hub_download(REPO, "weights.bin")

    assert Path(path).read_bytes() == WEIGHTS
    assert not list(Path(path).parents[2].rglob("*.incomplete"))


def test_branches_refs_and_repo_lifecycle(hub_server: HubServer) -> None:
    api = HfApi(token=WRITE_TOKEN)
    api.create_repo(REPO)
    api.create_repo(REPO, exist_ok=True)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(REPO)
    assert excinfo.value.response.status_code == 409

    api.create_branch(REPO, branch="dev")
    dev_id = api.upload_file(path_or_fileobj=NOTES, path_in_repo="notes.txt", repo_id=REPO, revision="dev").oid

    refs = {ref.name: ref.target_commit for ref in api.list_repo_refs(REPO).branches}
    assert refs == hub_server.branches(REPO)
    assert refs["dev"] == dev_id
    assert Path(hf_hub_download(REPO, "notes.txt", revision="dev")).read_bytes() == NOTES
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "notes.txt")

    assert api.create_repo("solo").repo_id == f"{DEFAULT_USER}/solo"
    api.delete_repo(REPO)
    assert not api.repo_exists(REPO)
    api.delete_repo(REPO, missing_ok=True)
