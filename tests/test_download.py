"""``vit_zoo.download``: downloads against a local HTTP server. Verified, resumable, atomic, capped in size, taking
turns; nothing wrong or partial under a real name, also when ``vit-zoo convert NAME`` is interrupted or its mirror
is down."""

import hashlib
import os
from collections.abc import Iterator

import pytest
from file_server import FileServer
from helpers import assert_cli_error, call_main, listing
from limits import twice_at_once

from vit_zoo.download import (
    ATTEMPTS,
    DownloadError,
    default_cache_dir,
    download_pretrained,
    fetch_verified,
)
from vit_zoo.zoo import UnknownVariantError, get_entry

PAYLOAD = os.urandom(300_000)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    with FileServer() as server:
        server.files["/models/clip.pt"] = PAYLOAD
        yield server


def files_under(folder):
    """The files under ``folder`` but the lock files that let concurrent downloads of one name take turns."""
    files = folder.rglob("*") if folder.exists() else []
    return sorted(str(p.relative_to(folder)) for p in files if p.is_file() and p.suffix != ".lock")


def test_good_file_is_verified_cached_and_reused(server, tmp_path):
    target = tmp_path / "cache" / "clip.pt"
    assert fetch_verified(f"{server.url}/models/clip.pt", SHA256, target, progress=False) == target
    assert target.read_bytes() == PAYLOAD
    assert files_under(tmp_path / "cache") == ["clip.pt"]
    server.files.clear()  # a second call must not need the network
    assert fetch_verified(f"{server.url}/models/clip.pt", SHA256, target, progress=False) == target
    assert len(server.requests) == 1


def test_wrong_hash_leaves_nothing_in_the_cache(server, tmp_path):
    sha = get_entry("ViT-B/32").pretrained["openai"].sha256
    server.files[f"/{sha}/ViT-B-32.pt"] = PAYLOAD  # served through the mirror URL, but not OpenAI's file
    with pytest.raises(DownloadError, match=f"has SHA-256 {SHA256}, expected {sha}; the file was discarded"):
        download_pretrained("ViT-B/32", tmp_path / "cache", base_url=server.url, progress=False)
    assert server.requests == [(f"/{sha}/ViT-B-32.pt", None)]
    assert files_under(tmp_path / "cache") == []


def test_mirror_comes_from_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_ZOO_OPENAI_BASE_URL", server.url + "/")
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_pretrained("ViT-L/14@336px", tmp_path / "cache", progress=False)
    sha = get_entry("ViT-L/14@336px").pretrained["openai"].sha256
    assert server.requests == [(f"/{sha}/ViT-L-14-336px.pt", None)]


def test_dropped_connection_resumes_with_a_range_request(server, tmp_path):
    server.drops["/models/clip.pt"] = [1000, 50_000]
    target = fetch_verified(f"{server.url}/models/clip.pt", SHA256, tmp_path / "clip.pt", progress=False)
    assert target.read_bytes() == PAYLOAD
    assert server.requests == [
        ("/models/clip.pt", None),
        ("/models/clip.pt", "bytes=1000-"),
        ("/models/clip.pt", "bytes=51000-"),
    ]
    assert files_under(tmp_path) == ["clip.pt"]


def test_repeated_drops_keep_the_part_file_and_the_next_run_resumes(server, tmp_path):
    server.drops["/models/clip.pt"] = [10_000] * ATTEMPTS
    url, target = f"{server.url}/models/clip.pt", tmp_path / "clip.pt"
    with pytest.raises(DownloadError, match=f"interrupted {ATTEMPTS} times .* run again to resume from the 30000 bytes"):
        fetch_verified(url, SHA256, target, progress=False)
    assert files_under(tmp_path) == ["clip.pt.part"]  # never under the real name
    assert fetch_verified(url, SHA256, target, progress=False).read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/models/clip.pt", "bytes=30000-")
    assert files_under(tmp_path) == ["clip.pt"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    (tmp_path / "clip.pt.part").write_bytes(b"stale bytes from elsewhere")
    server.ranges = False
    assert fetch_verified(f"{server.url}/models/clip.pt", SHA256, tmp_path / "clip.pt", progress=False).read_bytes() == PAYLOAD
    assert files_under(tmp_path) == ["clip.pt"]


def test_complete_part_file_is_finished_without_new_bytes(server, tmp_path):
    (tmp_path / "clip.pt.part").write_bytes(PAYLOAD)  # the rename was all that was left to do
    assert fetch_verified(f"{server.url}/models/clip.pt", SHA256, tmp_path / "clip.pt", progress=False).read_bytes() == PAYLOAD
    assert server.requests == [("/models/clip.pt", f"bytes={len(PAYLOAD)}-")]


def test_damaged_cached_file_is_fetched_again(server, tmp_path):
    (tmp_path / "clip.pt").write_bytes(PAYLOAD[:-1] + b"\0")
    assert fetch_verified(f"{server.url}/models/clip.pt", SHA256, tmp_path / "clip.pt", progress=False).read_bytes() == PAYLOAD


def test_404_creates_nothing(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_verified(f"{server.url}/models/missing.pt", SHA256, tmp_path / "cache" / "missing.pt", progress=False)
    assert files_under(tmp_path / "cache") == []


def test_unreachable_server(tmp_path):
    with FileServer() as server:
        url = f"{server.url}/models/clip.pt"
    with pytest.raises(DownloadError, match="cannot reach .* set \\$VIT_ZOO_OPENAI_BASE_URL to a mirror"):
        fetch_verified(url, SHA256, tmp_path / "clip.pt", progress=False)
    assert files_under(tmp_path) == []


def test_names_without_downloads(tmp_path):
    with pytest.raises(UnknownVariantError, match="unknown zoo variant 'ViT-X/1'"):
        download_pretrained("ViT-X/1", tmp_path)
    with pytest.raises(DownloadError, match="vit_zoo_tiny_patch8_test_32 has no downloadable weights"):
        download_pretrained("vit_zoo_tiny_patch8_test_32", tmp_path)


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("VIT_ZOO_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "vit_zoo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "vit_zoo"
    monkeypatch.setenv("VIT_ZOO_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_endless_download_stops_at_the_size_cap(server, tmp_path):
    """A mirror that never stops sending wrote 13 GB in 40 s; the download now ends past ``max_bytes``."""
    server.endless.add("/models/endless.pt")
    with pytest.raises(DownloadError, match="sent more than 1048576 bytes, more than any CLIP release; the file was"):
        fetch_verified(f"{server.url}/models/endless.pt", SHA256, tmp_path / "clip.pt", progress=False, max_bytes=1 << 20)
    assert files_under(tmp_path) == []


def test_content_length_past_the_cap_is_refused_before_downloading(server, tmp_path):
    with pytest.raises(DownloadError, match=rf"clip.pt is {len(PAYLOAD)} bytes, more than any CLIP release \(1000\)"):
        fetch_verified(f"{server.url}/models/clip.pt", SHA256, tmp_path / "clip.pt", progress=False, max_bytes=1000)
    assert files_under(tmp_path) == []


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown(server, tmp_path):
    url = server.url.replace("http://", "http://user:s3cret@")
    assert fetch_verified(f"{url}/models/clip.pt", SHA256, tmp_path / "clip.pt", progress=False).read_bytes() == PAYLOAD
    assert server.authorizations == ["Basic dXNlcjpzM2NyZXQ="]
    with pytest.raises(DownloadError) as error:
        fetch_verified(f"{url}/models/missing.pt", SHA256, tmp_path / "missing.pt", progress=False)
    assert str(error.value) == f"{server.url}/models/missing.pt: HTTP 404 Not Found"
    with FileServer() as down:
        url = down.url.replace("http://", "http://user:s3cret@")
    with pytest.raises(DownloadError) as error:
        fetch_verified(f"{url}/models/clip.pt", SHA256, tmp_path / "other.pt", progress=False)
    assert "s3cret" not in str(error.value) and str(error.value).startswith(f"cannot reach {down.url}/models/clip.pt (")


def test_credentials_never_follow_a_redirect_to_another_host(server, tmp_path):
    """A mirror's password went along a 302 to any host (urllib copies request headers onto redirects)."""
    with FileServer() as other:
        other.files["/models/clip.pt"] = PAYLOAD
        mirror = server.url.replace("http://", "http://user:s3cret@")
        server.redirects["/models/away.pt"] = f"{other.url.replace('127.0.0.1', 'localhost')}/models/clip.pt"
        server.redirects["/models/here.pt"] = "/models/clip.pt"
        assert fetch_verified(f"{mirror}/models/away.pt", SHA256, tmp_path / "away.pt", progress=False).read_bytes() == PAYLOAD
        assert other.authorizations == [None] and server.authorizations == ["Basic dXNlcjpzM2NyZXQ="]
        fetch_verified(f"{mirror}/models/here.pt", SHA256, tmp_path / "here.pt", progress=False)
    assert server.authorizations[1:] == ["Basic dXNlcjpzM2NyZXQ="] * 2  # the same host keeps them, redirect included


def test_locks_are_kept_out_of_sight(server, tmp_path):
    with pytest.raises(DownloadError):
        fetch_verified(f"{server.url}/models/missing.pt", SHA256, tmp_path / "missing.pt", progress=False)
    fetch_verified(f"{server.url}/models/clip.pt", SHA256, tmp_path / "clip.pt", progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == [".locks", "clip.pt"]


def test_concurrent_downloads_of_one_name_take_turns(server, tmp_path):
    """Two downloads shared ``clip.pt.part``: both failed. Now the second waits and reuses the first's file."""
    server.drops["/models/clip.pt"] = [100_000]  # slow the first down with a resume
    url = f"{server.url}/models/clip.pt"
    results, errors = twice_at_once(lambda: fetch_verified(url, SHA256, tmp_path / "clip.pt", progress=False))
    assert errors == [] and results == [tmp_path / "clip.pt"] * 2
    assert [path for path, _ in server.requests] == ["/models/clip.pt"] * 2  # one download, resumed once
    assert files_under(tmp_path) == ["clip.pt"]


# --- downloads by name, through ``vit-zoo convert`` --------------------------------------------------------------


@pytest.fixture
def mirror(monkeypatch) -> Iterator[tuple[FileServer, str]]:
    """A local mirror of OpenAI's download folder serving a stand-in for ViT-B/32's file, and its URL path."""
    with FileServer() as server:
        path = f"/{get_entry('ViT-B/32').pretrained['openai'].sha256}/ViT-B-32.pt"
        server.files[path] = os.urandom(10_000)
        monkeypatch.setenv("VIT_ZOO_OPENAI_BASE_URL", server.url)
        yield server, path


def test_interrupted_download_by_name(mirror, tmp_path, capsys):
    server, path = mirror
    server.drops[path] = [1000] * ATTEMPTS
    assert_cli_error(
        call_main(capsys, "convert", "ViT-B/32", "--output", tmp_path / "out", "--cache-dir", tmp_path / "cache"),
        "convert",
        f"was interrupted {ATTEMPTS} times (connection closed after {1000 * ATTEMPTS} of 10000 bytes); run again to "
        f"resume from the {1000 * ATTEMPTS} bytes kept in",
    )
    assert listing(tmp_path) == [
        "cache",
        "cache/checkpoints",
        "cache/checkpoints/.locks",
        "cache/checkpoints/.locks/ViT-B-32.pt.lock",
        "cache/checkpoints/ViT-B-32.pt.part",
    ]
    assert [request[1] for request in server.requests] == [None, "bytes=1000-", "bytes=2000-"]


def test_download_by_name_from_a_mirror_that_is_down(mirror, tmp_path, capsys):
    server, _ = mirror
    server.shutdown()
    server.server_close()
    assert_cli_error(
        call_main(capsys, "convert", "ViT-B/32", "--output", tmp_path / "out", "--cache-dir", tmp_path / "cache"),
        "convert",
        "cannot reach ",
        "check the network or set $VIT_ZOO_OPENAI_BASE_URL to a mirror",
    )
    assert listing(tmp_path) == [  # no data
        "cache",
        "cache/checkpoints",
        "cache/checkpoints/.locks",
        "cache/checkpoints/.locks/ViT-B-32.pt.lock",
    ]
