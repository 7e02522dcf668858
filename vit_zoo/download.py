"""Download released checkpoints by name: streamed with a progress bar, resumable, SHA-256 verified, cached.

The cache folder is ``$VIT_ZOO_CACHE``, else ``$XDG_CACHE_HOME/vit_zoo``, else ``~/.cache/vit_zoo``. A file
is written as ``<name>.part`` (an interrupted download resumes from it with an HTTP Range request) and
renamed into place only once its SHA-256 matches, so the cache never holds a wrong or partial checkpoint
under its real name; a lock file in ``.locks/`` beside it makes concurrent downloads of one name wait for each other. A
download that grows past ``MAX_DOWNLOAD_BYTES`` is discarded. ``$VIT_ZOO_OPENAI_BASE_URL`` points OpenAI's
downloads at a mirror of ``https://openaipublic.azureedge.net/clip/models``; credentials in it
(``https://user:pass@host``) are sent as HTTP basic authentication to that host and port only (never along a
redirect to another) and never shown in messages.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from filelock import FileLock

from .errors import DownloadError
from .zoo import PretrainedSource, get_entry

if TYPE_CHECKING:
    import tqdm

CACHE_ENV = "VIT_ZOO_CACHE"
BASE_URL_ENV = "VIT_ZOO_OPENAI_BASE_URL"
OPENAI_BASE_URL = "https://openaipublic.azureedge.net/clip/models"
ATTEMPTS = 3
TIMEOUT_S = 60
MAX_DOWNLOAD_BYTES = 2 << 30  # OpenAI's largest release (ViT-L/14@336px, text tower included) is under 1 GB
_CHUNK = 1 << 20
_HASH_CHUNK = 1 << 23


class _Interrupted(Exception):
    """The transfer stopped early; what arrived is kept in the ``.part`` file."""


def default_cache_dir() -> Path:
    """``$VIT_ZOO_CACHE``, else ``$XDG_CACHE_HOME/vit_zoo``, else ``~/.cache/vit_zoo``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vit_zoo"


def pretrained_source(name: str) -> PretrainedSource:
    """The downloadable source of a zoo variant, by OpenAI name (``ViT-B/32``) or zoo name."""
    entry = get_entry(name)
    sources = [s for s in entry.pretrained.values() if s.url and s.sha256]
    source = next((s for s in sources if s.openai_name == name), sources[0] if sources else None)
    if source is None:
        raise DownloadError(f"zoo variant {entry.name} has no downloadable weights (no pretrained url + sha256)")
    return source


def download_pretrained(
    name: str, cache_dir: str | os.PathLike | None = None, *, base_url: str | None = None, progress: bool | None = None
) -> Path:
    """Path of the cached checkpoint of ``name``, downloaded first when the cache lacks it.

    Args:
        name: OpenAI model name (``ViT-B/32``, ``ViT-B/16``, ``ViT-L/14``, ``ViT-L/14@336px``) or zoo name.
        cache_dir: where checkpoints are kept; default ``default_cache_dir()``.
        base_url: mirror of OpenAI's download folder; default ``$VIT_ZOO_OPENAI_BASE_URL``, else OpenAI's.
        progress: show a progress bar; ``None`` shows one when stderr is a terminal.

    Raises:
        DownloadError: HTTP error, network failure after ``ATTEMPTS`` resumed tries, or a SHA-256 mismatch.
    """
    source = pretrained_source(name)
    assert source.url and source.sha256  # pretrained_source returns downloadable sources only
    return download_url(source.url, source.sha256, cache_dir, base_url=base_url, progress=progress)


def download_url(
    url: str,
    sha256: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    progress: bool | None = None,
) -> Path:
    """``url`` (an OpenAI download is fetched from the mirror ``base_url`` / ``$VIT_ZOO_OPENAI_BASE_URL`` when one
    is set) cached as ``<cache_dir>/checkpoints/<file name>`` once its SHA-256 is ``sha256``."""
    url = _mirrored(url, base_url or os.environ.get(BASE_URL_ENV))
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return fetch_verified(url, sha256, folder / "checkpoints" / PurePosixPath(urlparse(url).path).name, progress)


def sha256_in_url(url: str) -> str | None:
    """The SHA-256 an OpenAI-style URL names in its folder (``.../<sha256>/<file>``), or ``None``."""
    folder = PurePosixPath(urlparse(url).path).parent.name
    return folder if re.fullmatch(r"[0-9a-f]{64}", folder) else None


def _mirrored(url: str, base_url: str | None) -> str:
    if base_url and url.startswith(OPENAI_BASE_URL + "/"):
        return base_url.rstrip("/") + url[len(OPENAI_BASE_URL) :]
    return url


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file; the next chunk is read while the current one is hashed (both release the GIL)."""
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as file, ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(file.read, _HASH_CHUNK)
        while chunk := pending.result():
            pending = reader.submit(file.read, _HASH_CHUNK)
            digest.update(chunk)
    return digest.hexdigest()


def fetch_verified(
    url: str, sha256: str, target: Path, progress: bool | None = None, max_bytes: int = MAX_DOWNLOAD_BYTES
) -> Path:
    """``target``, reused when its SHA-256 matches, else downloaded from ``url`` (at most ``max_bytes``) and verified.
    Concurrent calls for one ``target`` take turns (a lock file beside it), so the second reuses the first's file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    locks = target.parent / ".locks"  # as huggingface_hub keeps them: out of sight, one per name, reused
    locks.mkdir(exist_ok=True)
    with FileLock(locks / (target.name + ".lock")):
        return _fetch_verified(url, sha256, target, progress, max_bytes)


def _fetch_verified(url: str, sha256: str, target: Path, progress: bool | None, max_bytes: int) -> Path:
    if target.is_file():
        if sha256_of(target) == sha256:
            return target
        target.unlink()  # damaged or stale: fetch it again
    partial = target.with_name(target.name + ".part")
    shown = shown_url(url)
    for _ in range(ATTEMPTS):
        try:
            _fetch(url, partial, progress, max_bytes)
            break
        except _Interrupted as error:
            interruption = error
    else:
        raise DownloadError(
            f"download of {shown} was interrupted {ATTEMPTS} times ({interruption}); run again to resume "
            f"from the {partial.stat().st_size} bytes kept in {partial}"
        )
    digest = sha256_of(partial)
    if digest != sha256:
        partial.unlink()
        raise DownloadError(
            f"{shown} has SHA-256 {digest}, expected {sha256}; the file was discarded (wrong URL or corrupted mirror?)"
        )
    os.replace(partial, target)
    return target


def shown_url(url: str) -> str:
    """``url`` without the ``user:password@`` part: what a message may say."""
    parsed = urlparse(url)
    return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl() if "@" in parsed.netloc else url


def _opener(url: str) -> urllib.request.OpenerDirector:
    """An opener for ``url`` whose ``user:password@`` (if any) travels as basic authentication to that scheme, host
    and port alone: a redirect elsewhere is followed without it (urllib copies plain request headers onto every
    redirect, wherever it points)."""
    parsed = urlparse(url)
    if parsed.username is None:
        return urllib.request.build_opener()
    passwords = urllib.request.HTTPPasswordMgrWithPriorAuth()
    origin = f"{parsed.scheme}://{parsed.netloc.rpartition('@')[2]}/"
    passwords.add_password(None, origin, unquote(parsed.username), unquote(parsed.password or ""), is_authenticated=True)
    return urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(passwords))


def _fetch(url: str, partial: Path, progress: bool | None, max_bytes: int) -> None:
    """Append the rest of ``url`` to ``partial`` (HTTP Range from its current size)."""
    from tqdm.auto import tqdm  # here, not at the top: `vit-zoo --help` reads this module's names

    start = partial.stat().st_size if partial.is_file() else 0
    shown = shown_url(url)
    try:
        request = urllib.request.Request(shown, headers={"Range": f"bytes={start}-"} if start else {})
        response = _opener(url).open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # nothing left past what we have: the hash check decides
            return
        raise DownloadError(f"{shown}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:  # ValueError: a malformed URL (http.client.InvalidURL)
        reason = getattr(error, "reason", error)
        raise DownloadError(f"cannot reach {shown} ({reason}); check the network or set ${BASE_URL_ENV} to a mirror") from None
    with response:
        if start and response.status != 206:  # the server ignored the Range header: start over
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None and length.isdigit() else None
        if total is not None and total > max_bytes:
            raise DownloadError(f"{shown} is {total} bytes, more than any CLIP release ({max_bytes}); not downloaded")
        partial.parent.mkdir(parents=True, exist_ok=True)
        with (
            partial.open("ab" if start else "wb") as file,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=partial.name[:-5],
                disable=None if progress is None else not progress,
            ) as bar,
        ):
            _copy(response, file, bar, max_bytes - start)
    received = partial.stat().st_size
    if received > max_bytes:
        partial.unlink()
        raise DownloadError(
            f"{shown} sent more than {max_bytes} bytes, more than any CLIP release; the file was discarded "
            "(wrong URL or a broken mirror?)"
        )
    if total is not None and received < total:
        raise _Interrupted(f"connection closed after {received} of {total} bytes")


def _copy(response: http.client.HTTPResponse, file, bar: tqdm.tqdm, limit: int) -> None:
    """Append the response to ``file``, stopping once more than ``limit`` bytes came."""
    written = 0
    try:
        while written <= limit and (chunk := response.read(_CHUNK)):
            file.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))
    except (http.client.IncompleteRead, ConnectionError, TimeoutError) as error:
        if isinstance(error, http.client.IncompleteRead) and error.partial:
            file.write(error.partial)
        raise _Interrupted(str(error) or type(error).__name__) from None
