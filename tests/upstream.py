"""The test suites of the installed timm and transformers, as their source distributions on PyPI ship them.

``upstream_tests("timm")`` downloads the sdist of exactly the installed version with pip (``pip download --no-deps
--no-binary :all: timm==<installed>``), unpacks its ``tests/`` folder, licence and ``pyproject.toml`` (timm's pytest
markers) into a cache and returns that folder; later calls reuse the cache. Nothing in the unpacked files is edited.

transformers' sdist ships ``tests/test_modeling_common.py`` and ``tests/test_configuration_common.py`` but not the
three modules they import from sub-packages its sdist leaves out (``exporters/test_export.py``,
``generation/test_utils.py``, ``utils/test_configuration_utils.py``); ``transformers_test_package`` adds vit_zoo's
own versions of those (``tests/upstream_transformers/``, documented there) beside the unpacked files and makes the
folder an importable package, ``transformers_tests``.

The cache lives in ``$VIT_ZOO_UPSTREAM_TESTS`` (default ``~/.cache/vit_zoo/upstream-tests``), one folder per
package and version, filled atomically so parallel test runs can share it.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

SUPPLEMENTS = Path(__file__).resolve().parent / "upstream_transformers"
KEPT_TOP_LEVEL = ("tests", "LICENSE", "pyproject.toml")


def cache_root() -> Path:
    return Path(os.environ.get("VIT_ZOO_UPSTREAM_TESTS") or Path.home() / ".cache" / "vit_zoo" / "upstream-tests")


def upstream_tests(package: str) -> Path:
    """The unpacked ``tests/``, ``LICENSE`` and ``pyproject.toml`` of the installed ``package``'s sdist."""
    version = importlib.metadata.version(package)
    target = cache_root() / f"{package}-{version}"
    if (target / "tests").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{package}-") as staging:
        sdist = _download_sdist(package, version, Path(staging))
        unpacked = Path(staging) / "unpacked"
        _extract(sdist, unpacked)
        try:
            unpacked.rename(target)
        except OSError:  # another run filled the cache first
            if not (target / "tests").is_dir():
                raise
    return target


def _download_sdist(package: str, version: str, folder: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--dest",
        str(folder),
        f"{package}=={version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    sdists = sorted(folder.glob("*.tar.gz"))
    if result.returncode != 0 or not sdists:
        raise RuntimeError(
            f"could not download the {package} {version} sdist for its test suite ({' '.join(command)}):\n{result.stderr[-2000:]}"
        )
    return sdists[0]


def _extract(sdist: Path, destination: Path) -> None:
    """``tests/**``, ``LICENSE`` and ``pyproject.toml`` of the sdist's top folder, into ``destination``."""
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            parts = PurePosixPath(member.name).parts
            if len(parts) < 2 or parts[1] not in KEPT_TOP_LEVEL or not (member.isfile() or member.isdir()):
                continue
            member.name = str(PurePosixPath(*parts[1:]))
            archive.extract(member, destination, filter="data")


def transformers_test_package() -> Path:
    """A folder holding the package ``transformers_tests``: the installed transformers' sdist tests plus
    vit_zoo's versions of the modules its sdist leaves out. Put the folder on ``sys.path`` to import it."""
    source = upstream_tests("transformers")
    version = source.name.removeprefix("transformers-")
    target = cache_root() / f"transformers-package-{version}"
    if (target / "transformers_tests" / "__init__.py").is_file():
        return target
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".transformers-package-") as staging:
        package = Path(staging) / "root" / "transformers_tests"
        shutil.copytree(source / "tests", package)
        shutil.copy2(source / "LICENSE", package / "LICENSE")
        shutil.copytree(SUPPLEMENTS, package, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        try:
            (Path(staging) / "root").rename(target)
        except OSError:
            if not (target / "transformers_tests" / "__init__.py").is_file():
                raise
    return target
