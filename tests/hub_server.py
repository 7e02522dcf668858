"""A small, self-contained Hugging Face Hub-protocol server for tests.

`HubServer` speaks enough of the Hub HTTP protocol for the *real* `huggingface_hub` client (2.4) to create repos,
upload files (regular and LFS "basic" transfers), commit, branch, list and download, all on ``127.0.0.1`` with no
internet. Storage lives in a directory: every commit is a full snapshot manifest ``{path: FileEntry}`` pointing at
content-addressed blobs (named by sha256), and branches map a name to a commit id.

Only the standard library is used by the server itself; the `hub_server` pytest fixture at the bottom additionally
patches the already-imported `huggingface_hub` module so the client talks to the server.

Protocol shortcuts (deliberate): model repos only, no pull requests, no tags, no pagination, no Xet, `.gitignore`
is never applied (``shouldIgnore`` is always false), and `expand=True` listings carry no extra metadata.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

logger = logging.getLogger(__name__)

WRITE_TOKEN = "hf_writer"
READ_TOKEN = "hf_reader"
DEFAULT_TOKENS = {WRITE_TOKEN: "write", READ_TOKEN: "read"}
DEFAULT_USER = "tester"

LFS_SIZE_THRESHOLD = 10 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack", ".npz")
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()

_REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_COMMIT_ID_RE = re.compile(r"[0-9a-f]{40}")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


# --------------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------------


class HubError(Exception):
    """An HTTP error answered the way the Hub does: status, ``X-Error-Code``/``X-Error-Message`` and a JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra: dict[str, Any] = {}  # additional JSON body fields


def _repo_not_found(repo_id: str) -> HubError:
    return HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")


def _git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob holding `data` (what the Hub reports as a regular file's oid/ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _validate_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def upload_mode(path: str, size: int) -> str:
    """Decide how the client must upload a file: ``"lfs"`` for big or weight files, else ``"regular"``."""
    if size > 0 and (size > LFS_SIZE_THRESHOLD or path.endswith(LFS_SUFFIXES)):
        return "lfs"
    return "regular"


# --------------------------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit snapshot: its blob (sha256), size, whether it is LFS-tracked and its git oid."""

    sha256: str
    size: int
    lfs: bool
    oid: str

    @classmethod
    def regular(cls, data: bytes) -> FileEntry:
        return cls(hashlib.sha256(data).hexdigest(), len(data), False, _git_blob_sha1(data))

    @classmethod
    def large(cls, sha256: str, size: int) -> FileEntry:
        return cls(sha256, size, True, _git_blob_sha1(_lfs_pointer(sha256, size)))

    @property
    def etag(self) -> str:
        """What the Hub returns as ETag: sha256 for LFS files, git blob oid otherwise."""
        return self.sha256 if self.lfs else self.oid

    @property
    def pointer_size(self) -> int:
        return len(_lfs_pointer(self.sha256, self.size))

    def tree_json(self, path: str) -> dict[str, Any]:
        """Entry as listed by the tree and paths-info endpoints."""
        data: dict[str, Any] = {"type": "file", "path": path, "size": self.size, "oid": self.oid}
        if self.lfs:
            data["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return data

    def sibling_json(self, path: str) -> dict[str, Any]:
        """Entry as listed in the ``siblings`` of the model info endpoint."""
        data: dict[str, Any] = {"rfilename": path, "size": self.size, "blobId": self.oid}
        if self.lfs:
            data["lfs"] = {"size": self.size, "sha256": self.sha256, "pointerSize": self.pointer_size}
        return data


@dataclass(frozen=True)
class Commit:
    """A commit: full snapshot of the repo files plus history metadata."""

    id: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry]

    @classmethod
    def create(cls, parent: str | None, title: str, message: str, author: str, files: dict[str, FileEntry]) -> Commit:
        """Build a commit whose id is the sha1 of its manifest, parent and message."""
        manifest = {path: asdict(entry) for path, entry in sorted(files.items())}
        digest_input = json.dumps({"files": manifest, "parent": parent, "message": f"{title}\n\n{message}"})
        commit_id = hashlib.sha1(digest_input.encode()).hexdigest()
        return cls(commit_id, parent, title, message, author, _now(), dict(files))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Commit:
        data = json.loads(raw)
        data["files"] = {path: FileEntry(**entry) for path, entry in data["files"].items()}
        return cls(**data)


@dataclass(frozen=True)
class Addition:
    """Commit operation adding a file; `content` is set for regular files, None for already-uploaded LFS blobs."""

    path: str
    entry: FileEntry
    content: bytes | None = None


@dataclass(frozen=True)
class Deletion:
    """Commit operation deleting a file, or every file under a folder."""

    path: str
    folder: bool = False


class _Store:
    """On-disk repos: ``blobs/<sha256>``, ``repos/<ns>/<name>/{meta.json,commits/<id>.json}``.

    All mutations happen under `lock`, and a commit becomes visible only when its branch pointer is rewritten
    (atomically) as the very last step, so a failed commit never leaves anything reachable behind.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.RLock()
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "repos").mkdir(exist_ok=True)

    # Blobs ------------------------------------------------------------------------------------------------------

    def _blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def blob_size(self, sha256: str) -> int | None:
        path = self._blob_path(sha256)
        return path.stat().st_size if path.is_file() else None

    def put_blob(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        if self.blob_size(sha256) is None:
            _atomic_write(self._blob_path(sha256), data)
        return sha256

    def read_blob(self, sha256: str) -> bytes:
        return self._blob_path(sha256).read_bytes()

    # Repos ------------------------------------------------------------------------------------------------------

    def _repo_dir(self, repo_id: str) -> Path:
        return self.root / "repos" / repo_id

    def exists(self, repo_id: str) -> bool:
        return bool(_REPO_ID_RE.fullmatch(repo_id)) and (self._repo_dir(repo_id) / "meta.json").is_file()

    def meta(self, repo_id: str) -> dict[str, Any]:
        if not self.exists(repo_id):
            raise _repo_not_found(repo_id)
        return json.loads((self._repo_dir(repo_id) / "meta.json").read_bytes())

    def _write_meta(self, repo_id: str, meta: dict[str, Any]) -> None:
        _atomic_write(self._repo_dir(repo_id) / "meta.json", json.dumps(meta, indent=1).encode())

    def _write_commit(self, repo_id: str, commit: Commit) -> None:
        _atomic_write(self._repo_dir(repo_id) / "commits" / f"{commit.id}.json", commit.to_json())

    def create_repo(self, repo_id: str, private: bool) -> None:
        """Create a repo whose "main" branch holds an initial commit with a `.gitattributes` file."""
        if not _REPO_ID_RE.fullmatch(repo_id):
            raise HubError(400, f"Invalid repo id: {repo_id!r}")
        with self.lock:
            if self.exists(repo_id):
                raise HubError(409, "You already created this model repo")
            files = {".gitattributes": FileEntry.regular(GITATTRIBUTES)}
            initial = Commit.create(None, "initial commit", "", "system", files)
            self.put_blob(GITATTRIBUTES)
            self._write_commit(repo_id, initial)
            self._write_meta(repo_id, {"private": private, "createdAt": _now(), "branches": {"main": initial.id}})

    def delete_repo(self, repo_id: str) -> None:
        """Remove a repo: moved out of sight atomically, then deleted (blobs are kept, they may be shared)."""
        with self.lock:
            self.meta(repo_id)
            trash = self.root / "trash" / uuid.uuid4().hex
            trash.parent.mkdir(exist_ok=True)
            os.replace(self._repo_dir(repo_id), trash)
            shutil.rmtree(trash)

    def branches(self, repo_id: str) -> dict[str, str]:
        return self.meta(repo_id)["branches"]

    def load_commit(self, repo_id: str, commit_id: str) -> Commit:
        return Commit.from_json((self._repo_dir(repo_id) / "commits" / f"{commit_id}.json").read_bytes())

    def resolve(self, repo_id: str, revision: str) -> Commit:
        """Resolve a branch name or full commit id to a commit (404 RevisionNotFound otherwise)."""
        with self.lock:
            branches = self.branches(repo_id)
            if revision in branches:
                return self.load_commit(repo_id, branches[revision])
            commit_file = self._repo_dir(repo_id) / "commits" / f"{revision}.json"
            if _COMMIT_ID_RE.fullmatch(revision) and commit_file.is_file():
                return self.load_commit(repo_id, revision)
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def history(self, repo_id: str, revision: str) -> list[Commit]:
        """Commits reachable from `revision`, newest first."""
        commits = [self.resolve(repo_id, revision)]
        while commits[-1].parent is not None:
            commits.append(self.load_commit(repo_id, commits[-1].parent))
        return commits

    def create_branch(self, repo_id: str, branch: str, starting_point: str) -> None:
        with self.lock:
            meta = self.meta(repo_id)
            if branch in meta["branches"]:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            meta["branches"][branch] = self.resolve(repo_id, starting_point).id
            self._write_meta(repo_id, meta)

    def commit(
        self,
        repo_id: str,
        branch: str,
        operations: list[Addition | Deletion],
        header: dict[str, Any],
        author: str,
    ) -> Commit:
        """Apply `operations` on top of `branch` and publish the result as one new commit, or change nothing."""
        with self.lock:
            if branch not in self.branches(repo_id):
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = self.resolve(repo_id, branch)
            parent = header.get("parentCommit")
            if parent is not None and parent != head.id:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = _apply_operations(head.files, operations)
            for op in operations:
                if isinstance(op, Addition) and op.content is not None:
                    self.put_blob(op.content)
            commit = Commit.create(head.id, header.get("summary", ""), header.get("description", ""), author, files)
            self._write_commit(repo_id, commit)
            meta = self.meta(repo_id)
            meta["branches"][branch] = commit.id
            self._write_meta(repo_id, meta)
            return commit


def _apply_operations(files: dict[str, FileEntry], operations: list[Addition | Deletion]) -> dict[str, FileEntry]:
    """New snapshot after applying `operations` in order; deleting something missing is a 404 EntryNotFound."""
    result = dict(files)
    for op in operations:
        if isinstance(op, Addition):
            result[op.path] = op.entry
            continue
        prefix = op.path.rstrip("/") + "/"
        doomed = [path for path in result if path.startswith(prefix)] if op.folder else [op.path]
        if not doomed or any(path not in result for path in doomed):
            raise HubError(404, f"A file with this name doesn't exist: {op.path}", "EntryNotFound")
        for path in doomed:
            del result[path]
    return result


def _tree_entries(files: dict[str, FileEntry], folder: str, recursive: bool) -> list[dict[str, Any]]:
    """Tree listing of `folder` ("" = root): files and directories, like `GET /api/models/{id}/tree/{rev}`."""
    prefix = f"{folder}/" if folder else ""
    below = {path[len(prefix) :]: entry for path, entry in files.items() if path.startswith(prefix)}
    if folder and not below:
        raise HubError(404, f"Entry not found: {folder}", "EntryNotFound")
    directories: set[str] = set()
    entries = []
    for relative, entry in sorted(below.items()):
        parts = relative.split("/")
        depth = len(parts) - 1 if recursive else min(len(parts) - 1, 1)
        directories.update("/".join(parts[: i + 1]) for i in range(depth))
        if recursive or len(parts) == 1:
            entries.append(entry.tree_json(prefix + relative))
    return [_directory_json(files, prefix + d) for d in sorted(directories)] + entries


def _directory_json(files: dict[str, FileEntry], path: str) -> dict[str, Any]:
    content = sorted((p, e.oid) for p, e in files.items() if p.startswith(path + "/"))
    return {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(json.dumps(content).encode()).hexdigest()}


def _byte_range(header: str | None, total: int) -> tuple[int, int] | None:
    """Inclusive (start, end) for a single ``bytes=`` Range header; None when absent. Unsatisfiable → 416."""
    if not header:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    unsatisfiable = HubError(416, f"Range not satisfiable: {header}", headers={"Content-Range": f"bytes */{total}"})
    if match is None or match.groups() == ("", ""):
        raise unsatisfiable
    first, last = match.groups()
    if first == "":
        start, end = max(total - int(last), 0), total - 1
    else:
        start, end = int(first), min(int(last), total - 1) if last else total - 1
    if start > end or start >= total:
        raise unsatisfiable
    return start, end


# --------------------------------------------------------------------------------------------------------------------
# Fault injection and request log
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Fault:
    substring: str
    method: str | None
    remaining: int
    status: int | None = None
    drop_after: int | None = None
    body: bytes | None = None
    hang: bool = False

    def matches(self, method: str, path: str) -> bool:
        return self.remaining > 0 and self.substring in path and self.method in (None, method)


@dataclass(frozen=True)
class RequestRecord:
    """One request the server received (recorded before any fault is applied); header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]


# --------------------------------------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json(payload: Any, status: int = 200, content_type: str = "application/json") -> _Response:
    return _Response(status, json.dumps(payload).encode(), {"Content-Type": content_type})


_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_API = rf"/api/models/{_REPO}"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern), handler)
    for method, pattern, handler in [
        ("GET", r"/api/whoami-v2", "_whoami"),
        ("POST", r"/api/repos/create", "_create_repo"),
        ("DELETE", r"/api/repos/delete", "_delete_repo"),
        ("POST", r"/api/validate-yaml", "_validate_yaml"),
        ("GET", rf"{_API}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "_tree"),
        ("POST", rf"{_API}/paths-info/(?P<rev>[^/]+)", "_paths_info"),
        ("POST", rf"{_API}/preupload/(?P<rev>[^/]+)", "_preupload"),
        ("POST", rf"{_API}/commit/(?P<rev>[^/]+)", "_commit"),
        ("POST", rf"{_API}/branch/(?P<branch>[^/]+)", "_create_branch"),
        ("GET", rf"{_API}/refs", "_refs"),
        ("GET", rf"{_API}/commits/(?P<rev>[^/]+)", "_commits"),
        ("GET", rf"{_API}(?:/revision/(?P<rev>[^/]+))?", "_model_info"),
        ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", "_lfs_batch"),
        ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "_lfs_put"),
        ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "_resolve"),
        ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "_resolve"),
    ]
]


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: HubServer) -> None:
        super().__init__(("127.0.0.1", 0), _HubRequestHandler)
        self.hub = hub


class _HubRequestHandler(BaseHTTPRequestHandler):
    """Routes one request to a `_<name>` method returning a `_Response` (or raising `HubError`)."""

    server: _HubHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # Plumbing ---------------------------------------------------------------------------------------------------

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    @property
    def store(self) -> _Store:
        return self.hub._store

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.hub._record(RequestRecord(method, self.path, {k.lower(): v for k, v in self.headers.items()}))
        fault = self.hub._take_fault(method, self.path)
        if fault is not None and fault.hang:
            self.hub._released.wait()
            self._drop_connection()
            return
        if fault is not None and fault.drop_after == 0:
            self._drop_connection()
            return
        self.body = self._read_body()
        if fault is not None and fault.body is not None:
            self._send(_Response(200, fault.body, {"Content-Type": "application/json"}), method)
            return
        if fault is not None and fault.status is not None:
            self._send(self._error(HubError(fault.status, "Injected failure")), method)
            return
        self._send(self._route(method, url.path), method, fault.drop_after if fault else None)

    def _route(self, method: str, path: str) -> _Response:
        try:
            for route_method, pattern, handler in _ROUTES:
                if route_method == method and (match := pattern.fullmatch(path)):
                    args = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                    return getattr(self, handler)(**args)
            raise HubError(404, f"Not found: {method} {path}")
        except HubError as err:
            return self._error(err)
        except Exception:
            self.hub.errors.append(traceback.format_exc())
            return _json({"error": "Internal server error"}, 500)

    @staticmethod
    def _error(err: HubError) -> _Response:
        response = _json({**err.extra, "error": err.message}, err.status)
        response.headers.update({"X-Error-Message": err.message, **err.headers})
        if err.code:
            response.headers["X-Error-Code"] = err.code
        return response

    def _send(self, response: _Response, method: str, drop_after: int | None = None) -> None:
        self.send_response(response.status)
        headers = {"Content-Length": str(len(response.body)), **response.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        body = b"" if method == "HEAD" else response.body
        if drop_after is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:drop_after])
        self._drop_connection()

    def _drop_connection(self) -> None:
        """Close the socket abruptly: the client sees a reset/incomplete message instead of a response."""
        self.close_connection = True
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked_body()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked_body(self) -> bytes:
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _json_body(self) -> dict[str, Any]:
        try:
            payload = json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err
        if not isinstance(payload, dict):
            raise HubError(400, "JSON body must be an object")
        return payload

    # Auth -------------------------------------------------------------------------------------------------------

    def _role(self) -> str | None:
        """Role of the bearer token; None when anonymous; 401 for unknown tokens (like the Hub)."""
        authorization = self.headers.get("Authorization")
        if not authorization:
            return None
        role = self.hub.tokens.get(authorization.removeprefix("Bearer").strip())
        if role is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return role

    def _require_write(self) -> None:
        role = self._role()
        if role is None:
            raise HubError(401, "You must be authenticated to perform this action")
        if role != "write":
            raise HubError(403, "You don't have the rights to write with a read-only token")

    def _repo_id(self, raw: str) -> str:
        """Full repo id; a bare name is taken to live under the server's user namespace."""
        return raw if "/" in raw else f"{self.hub.user}/{raw}"

    def _readable_repo(self, raw: str) -> str:
        role = self._role()
        repo_id = self._repo_id(raw)
        if not self.store.exists(repo_id) or (self.store.meta(repo_id)["private"] and role is None):
            raise _repo_not_found(repo_id)
        return repo_id

    def _writable_repo(self, raw: str) -> str:
        self._require_write()
        repo_id = self._repo_id(raw)
        if not self.store.exists(repo_id):
            raise _repo_not_found(repo_id)
        return repo_id

    # Account and repo management ---------------------------------------------------------------------------------

    def _whoami(self) -> _Response:
        role = self._role()
        if role is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        access_token = {"displayName": f"{role}-token", "role": role}
        auth = {"type": "access_token", "accessToken": access_token}
        return _json({"type": "user", "name": self.hub.user, "fullname": self.hub.user, "orgs": [], "auth": auth})

    def _requested_repo_id(self, payload: dict[str, Any]) -> str:
        if payload.get("type", "model") != "model":
            raise HubError(400, "This test server only hosts model repos")
        return f"{payload.get('organization') or self.hub.user}/{payload.get('name')}"

    def _create_repo(self) -> _Response:
        self._require_write()
        payload = self._json_body()
        repo_id = self._requested_repo_id(payload)
        private = payload.get("visibility") == "private" or payload.get("private") is True
        url = f"{self.hub.endpoint}/{repo_id}"
        try:
            self.store.create_repo(repo_id, private)
        except HubError as err:
            err.extra["url"] = url  # like the Hub: a 409 carries the existing repo's URL (read by `exist_ok=True`)
            raise
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> _Response:
        self._require_write()
        self.store.delete_repo(self._requested_repo_id(self._json_body()))
        return _json({})

    def _validate_yaml(self) -> _Response:
        self._role()
        return _json({"errors": [], "warnings": []})

    def _create_branch(self, repo: str, branch: str) -> _Response:
        repo_id = self._writable_repo(repo)
        self.store.create_branch(repo_id, branch, self._json_body().get("startingPoint", "main"))
        return _json({})

    # Read API ---------------------------------------------------------------------------------------------------

    def _model_info(self, repo: str, rev: str = "main") -> _Response:
        repo_id = self._readable_repo(repo)
        meta = self.store.meta(repo_id)
        commit = self.store.resolve(repo_id, rev)
        return _json(
            {
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.id,
                "lastModified": commit.date,
                "createdAt": meta["createdAt"],
                "private": meta["private"],
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": [entry.sibling_json(path) for path, entry in sorted(commit.files.items())],
                "config": self._config_json(commit),
            }
        )

    def _config_json(self, commit: Commit) -> dict[str, Any] | None:
        """The parsed `config.json` of `commit`, as the Hub exposes in model info (None if absent or invalid)."""
        entry = commit.files.get("config.json")
        if entry is None:
            return None
        try:
            config = json.loads(self.store.read_blob(entry.sha256))
        except ValueError:
            return None
        return config if isinstance(config, dict) else None

    def _tree(self, repo: str, rev: str, path: str = "") -> _Response:
        repo_id = self._readable_repo(repo)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        return _json(_tree_entries(self.store.resolve(repo_id, rev).files, path.strip("/"), recursive))

    def _paths_info(self, repo: str, rev: str) -> _Response:
        repo_id = self._readable_repo(repo)
        files = self.store.resolve(repo_id, rev).files
        paths = parse_qs(self.body.decode()).get("paths", [])
        entries = [files[path].tree_json(path) for path in paths if path in files]
        entries += [_directory_json(files, path) for path in paths if any(p.startswith(f"{path}/") for p in files)]
        return _json(entries)

    def _refs(self, repo: str) -> _Response:
        repo_id = self._readable_repo(repo)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": commit_id}
            for name, commit_id in sorted(self.store.branches(repo_id).items())
        ]
        return _json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def _commits(self, repo: str, rev: str) -> _Response:
        repo_id = self._readable_repo(repo)
        return _json(
            [
                {"id": c.id, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": c.author}]}
                for c in self.store.history(repo_id, rev)
            ]
        )

    def _resolve(self, repo: str, rev: str, path: str) -> _Response:
        repo_id = self._readable_repo(repo)
        commit = self.store.resolve(repo_id, rev)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.id})
        headers = {
            "X-Repo-Commit": commit.id,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        content = self.store.read_blob(entry.sha256)
        byte_range = _byte_range(self.headers.get("Range"), len(content))
        if byte_range is None:
            return _Response(200, content, headers)
        start, end = byte_range
        headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        return _Response(206, content[start : end + 1], headers)

    # Upload API -------------------------------------------------------------------------------------------------

    def _preupload(self, repo: str, rev: str) -> _Response:
        repo_id = self._writable_repo(repo)
        commit = self.store.resolve(repo_id, rev)
        answers = []
        for item in self._json_body().get("files", []):
            path = str(item.get("path"))
            existing = commit.files.get(path)
            mode = upload_mode(path, int(item.get("size", 0)))
            answers.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": existing.etag if existing else None})
        return _json({"files": answers, "commitOid": commit.id})

    def _lfs_batch(self, repo: str) -> _Response:
        self._writable_repo(repo)
        payload = self._json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the LFS 'upload' operation is supported")
        objects = [self._lfs_batch_object(obj) for obj in payload.get("objects", [])]
        return _json({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _lfs_batch_object(self, obj: dict[str, Any]) -> dict[str, Any]:
        oid, size = str(obj.get("oid")), obj.get("size")
        if not isinstance(size, int) or size < 0 or not _SHA256_RE.fullmatch(oid):
            return {"oid": oid, "size": 0, "error": {"code": 422, "message": "Invalid oid or size"}}
        answer = {"oid": oid, "size": size}
        if self.store.blob_size(oid) == size:
            return answer
        self.hub._expect_upload(oid, size)
        href = f"{self.hub.endpoint}/lfs-upload/{oid}"
        return {**answer, "authenticated": True, "actions": {"upload": {"href": href, "header": {}}}}

    def _lfs_put(self, oid: str) -> _Response:
        expected_size = self.hub._pending_upload_size(oid)
        if expected_size is None:
            raise HubError(404, f"No upload was requested for object {oid}")
        if len(self.body) != expected_size:
            raise HubError(400, f"Size mismatch for {oid}: expected {expected_size}, got {len(self.body)}")
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"Checksum mismatch for {oid}")
        self.store.put_blob(self.body)
        self.hub._upload_done(oid)
        return _Response(200)

    def _commit(self, repo: str, rev: str) -> _Response:
        repo_id = self._writable_repo(repo)
        if self.query.get("create_pr"):
            raise HubError(400, "Pull requests are not supported by this test server")
        header, operations = self._parse_commit_payload()
        commit = self.store.commit(repo_id, rev, operations, header, author=self.hub.user)
        commit_url = f"{self.hub.endpoint}/{repo_id}/commit/{commit.id}"
        return _json({"commitUrl": commit_url, "commitOid": commit.id, "pullRequestUrl": None, "success": True})

    def _parse_commit_payload(self) -> tuple[dict[str, Any], list[Addition | Deletion]]:
        """Validate the whole NDJSON payload up front: header + operations, all-or-nothing."""
        try:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise HubError(400, f"Invalid NDJSON payload: {err}") from err
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        return lines[0]["value"], [self._parse_operation(line) for line in lines[1:]]

    def _parse_operation(self, line: dict[str, Any]) -> Addition | Deletion:
        key, value = line.get("key"), line.get("value") or {}
        parsers: dict[str, Callable[[str, dict[str, Any]], Addition | Deletion]] = {
            "file": self._parse_file,
            "lfsFile": self._parse_lfs_file,
            "deletedFile": lambda path, _: Deletion(path),
            "deletedFolder": lambda path, _: Deletion(path, folder=True),
        }
        if key not in parsers:
            raise HubError(400, f"Unsupported commit operation: {key!r}")
        path = str(value.get("path", ""))
        return parsers[key](_validate_path(path.rstrip("/") if key == "deletedFolder" else path), value)

    @staticmethod
    def _parse_file(path: str, value: dict[str, Any]) -> Addition:
        if value.get("encoding") != "base64":
            raise HubError(400, f"Unsupported encoding for {path}: {value.get('encoding')!r}")
        try:
            content = base64.b64decode(value.get("content", ""), validate=True)
        except ValueError as err:
            raise HubError(400, f"Invalid base64 content for {path}") from err
        return Addition(path, FileEntry.regular(content), content)

    def _parse_lfs_file(self, path: str, value: dict[str, Any]) -> Addition:
        oid = str(value.get("oid", ""))
        stored_size = self.store.blob_size(oid) if _SHA256_RE.fullmatch(oid) else None
        if stored_size is None:
            raise HubError(400, f"LFS pointer {path} points to an object that was never uploaded: {oid!r}")
        if value.get("size", stored_size) != stored_size:
            raise HubError(400, f"LFS object {oid} has size {stored_size}, not {value.get('size')}")
        return Addition(path, FileEntry.large(oid, stored_size))


# --------------------------------------------------------------------------------------------------------------------
# Public server
# --------------------------------------------------------------------------------------------------------------------


class HubServer:
    """A Hugging Face Hub-protocol HTTP server on 127.0.0.1, storing repos under `storage_dir`.

    Args:
        storage_dir: directory for blobs, commits and branch pointers (created if missing).
        tokens: bearer token -> role (``"write"`` or ``"read"``). Defaults to `DEFAULT_TOKENS`.
        user: user name reported by ``/api/whoami-v2`` and used as namespace for bare repo names.
    """

    def __init__(self, storage_dir: str | Path, tokens: dict[str, str] | None = None, user: str = DEFAULT_USER) -> None:
        self.tokens = dict(DEFAULT_TOKENS if tokens is None else tokens)
        self.user = user
        self.requests: list[RequestRecord] = []
        self.errors: list[str] = []
        self._store = _Store(Path(storage_dir))
        self._faults: list[_Fault] = []
        self._pending_uploads: dict[str, int] = {}
        self._lock = threading.Lock()
        self._released = threading.Event()  # set at stop: requests held by hang_next are let go
        self._httpd: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle --------------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        """Bind a free port on 127.0.0.1 and serve from a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("HubServer already started")
        self._httpd = _HubHTTPServer(self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._httpd is None:
            return
        self._released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Base URL to use as ``HF_ENDPOINT``, e.g. ``http://127.0.0.1:54321``."""
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # Fault injection ---------------------------------------------------------------------------------------------

    def fail_next(self, path_substring: str, status: int = 500, count: int = 1, method: str | None = None) -> None:
        """Answer the next `count` requests whose raw path contains `path_substring` with HTTP `status`.

        The request body is read first, so the client always receives the error response. Note the client retries
        408/429/5xx with backoff (1 s, 2 s, ...) on most endpoints, but not on the commit endpoint.
        """
        with self._lock:
            self._faults.append(_Fault(path_substring, method, count, status=status))

    def drop_connection_on(self, path_substring: str, count: int = 1, method: str | None = None, after_bytes: int = 0) -> None:
        """Close the socket of the next `count` matching requests.

        With ``after_bytes=0`` the connection is cut mid-request (request body unread, no response); otherwise the
        response headers and the first `after_bytes` body bytes are sent before the cut (a truncated download).
        """
        with self._lock:
            self._faults.append(_Fault(path_substring, method, count, drop_after=after_bytes))

    def hang_next(self, path_substring: str, count: int = 1, method: str | None = None) -> None:
        """Accept the next `count` matching requests and never answer them (until the server stops): a Hub that hangs."""
        with self._lock:
            self._faults.append(_Fault(path_substring, method, count, hang=True))

    def answer_next(self, path_substring: str, body: bytes, count: int = 1, method: str | None = None) -> None:
        """Answer the next `count` matching requests with 200 and `body` as JSON content (a Hub that misbehaves)."""
        with self._lock:
            self._faults.append(_Fault(path_substring, method, count, body=body))

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            fault = next((f for f in self._faults if f.matches(method, path)), None)
            if fault is not None:
                fault.remaining -= 1
            return fault

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    # Pending LFS uploads (announced by the batch endpoint, consumed by the PUT) -------------------------------------

    def _expect_upload(self, oid: str, size: int) -> None:
        with self._lock:
            self._pending_uploads[oid] = size

    def _pending_upload_size(self, oid: str) -> int | None:
        with self._lock:
            return self._pending_uploads.get(oid)

    def _upload_done(self, oid: str) -> None:
        with self._lock:
            self._pending_uploads.pop(oid, None)

    # Assertion helpers ------------------------------------------------------------------------------------------

    def create_repo(self, repo_id: str, private: bool = False) -> None:
        """Create a repo directly in storage (no HTTP), with the usual initial commit."""
        self._store.create_repo(repo_id, private)

    def list_commits(self, repo_id: str, branch: str = "main") -> list[Commit]:
        """Commits reachable from `branch` (or a commit id), newest first."""
        return self._store.history(repo_id, branch)

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        """Content of every file at `rev` (branch name or commit id)."""
        commit = self._store.resolve(repo_id, rev)
        return {path: self._store.read_blob(entry.sha256) for path, entry in sorted(commit.files.items())}

    def branches(self, repo_id: str) -> dict[str, str]:
        """Branch name -> commit id."""
        return dict(self._store.branches(repo_id))


# --------------------------------------------------------------------------------------------------------------------
# Pytest fixture
# --------------------------------------------------------------------------------------------------------------------


def _point_client_at(endpoint: str, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `huggingface_hub` (imported or not) use `endpoint` and a private cache under `hf_home`."""
    hub_cache, assets_cache = str(hf_home / "hub"), str(hf_home / "assets")
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": hub_cache,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "0",
        "NO_PROXY": ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"])),
        "no_proxy": ",".join(filter(None, [os.environ.get("no_proxy"), "127.0.0.1"])),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)

    constants = importlib.import_module("huggingface_hub.constants")
    overrides = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": hub_cache,
        "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": assets_cache,
        "HUGGINGFACE_ASSETS_CACHE": assets_cache,
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_PROGRESS_BARS": True,
        "HF_HUB_OFFLINE": False,
    }
    for name, value in overrides.items():
        monkeypatch.setattr(constants, name, value)
    # Values copied out of `constants` at import time by other modules.
    copies = {
        "huggingface_hub.utils.tqdm": ("HF_HUB_DISABLE_PROGRESS_BARS", True),
        "huggingface_hub.utils._cache_manager": ("HF_HUB_CACHE", hub_cache),
        "huggingface_hub.utils._cache_assets": ("HF_ASSETS_CACHE", assets_cache),
    }
    for module, (name, value) in copies.items():
        monkeypatch.setattr(importlib.import_module(module), name, value)
    monkeypatch.setattr(importlib.import_module("huggingface_hub.hf_api").api, "endpoint", endpoint)
    # transformers keeps one HfApi (push_to_hub's) made on first use, with the endpoint of that moment: a fresh one
    monkeypatch.setattr(importlib.import_module("transformers.utils.hub"), "_hf_api", None)
    # The shared HTTP client read proxy settings when it was created: start a fresh one with the env above.
    importlib.import_module("huggingface_hub").close_session()


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A started `HubServer` (function-scoped) that the real `huggingface_hub` client is pointed at.

    Tokens: `WRITE_TOKEN` ("hf_writer", write role) and `READ_TOKEN` ("hf_reader", read role); user `DEFAULT_USER`.

    Environment set via monkeypatch (for code that reads it, subprocesses, or a first import of huggingface_hub):
    ``HF_ENDPOINT``, ``HF_HUB_DISABLE_XET=1``, ``HF_HUB_DISABLE_TELEMETRY=1``, ``HF_HUB_DISABLE_PROGRESS_BARS=1``,
    ``HF_HUB_OFFLINE=0``, ``NO_PROXY``/``no_proxy`` += 127.0.0.1, and a fresh ``HF_HOME``/``HF_HUB_CACHE`` under
    `tmp_path`; ``HF_TOKEN`` and friends are removed so no real credential leaks in.

    huggingface_hub reads those variables once, at import, into `huggingface_hub.constants`, and modules look the
    constants up at call time (``constants.ENDPOINT``...). So the fixture also monkeypatches, in that module:
    ``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE`` (used by `hf_hub_url`), ``HF_URL_HOSTS``, the cache/home/token
    paths, ``HF_HUB_DISABLE_XET``, ``HF_HUB_DISABLE_TELEMETRY``, ``HF_HUB_DISABLE_PROGRESS_BARS`` and
    ``HF_HUB_OFFLINE``; plus the copies taken at import time: ``huggingface_hub.hf_api.api.endpoint`` (the module-level
    `HfApi` behind `create_repo`, `upload_folder`...), ``utils.tqdm.HF_HUB_DISABLE_PROGRESS_BARS``,
    ``utils._cache_manager.HF_HUB_CACHE`` and ``utils._cache_assets.HF_ASSETS_CACHE``; transformers' shared HfApi is dropped
    (``transformers.utils.hub._hf_api``, made on first use). Other `HfApi` objects created
    *before* the fixture ran keep their old endpoint: create them inside the test (or pass ``endpoint=``).
    Finally `huggingface_hub.close_session()` drops the shared HTTP client so a fresh one picks up the proxy settings.

    At teardown the server is stopped and the test fails if the server hit an unexpected internal error.
    """
    with HubServer(tmp_path / "hub-storage") as server:
        _point_client_at(server.endpoint, tmp_path / "hf-home", monkeypatch)
        yield server
    assert not server.errors, "hub server internal errors:\n" + "\n".join(server.errors)
