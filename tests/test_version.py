"""The distribution's own name and version, and the namesake on the package registry that must not share the folder.

``vit-zoo`` on the package registry is an unrelated project (0.2.1, GPL-3.0) that also installs a ``vit_zoo``
package; pip lets both write ``site-packages/vit_zoo``, and the second overwrites the first's ``__init__.py`` and
``model.py``. The real wheel of the namesake is laid over a copy of this package both ways round.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO_ROOT, run_cli
from upstream import cache_root

import vit_zoo
from vit_zoo._version import DISTRIBUTION, NAMESAKE

FIX = f"pip uninstall -y {NAMESAKE} {DISTRIBUTION} && pip install {DISTRIBUTION}"


def test_the_distribution_is_vit_zoo_clip_and_the_cli_says_so():
    assert DISTRIBUTION == "vit-zoo-clip" and importlib.metadata.version(DISTRIBUTION) == vit_zoo.__version__
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout == f"vit-zoo-clip {vit_zoo.__version__}\n"
    card = (REPO_ROOT / "vit_zoo" / "card.py").read_text()
    assert "pypi.org/project/vit-zoo-clip/" in card and "pip install vit-zoo-clip" in card
    assert "pypi.org/project/vit-zoo/" not in card and "pip install vit-zoo`" not in card


@pytest.fixture(scope="module")
def namesake_wheel() -> Path:
    """The namesake's wheel as the package registry serves it (downloaded once into the upstream-tests cache)."""
    folder = cache_root() / "namesake"
    wheels = sorted(folder.glob("vit_zoo-0.2.1-*.whl"))
    if not wheels:
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(folder)]
        subprocess.run([*command, f"{NAMESAKE}==0.2.1"], check=True, capture_output=True)
        wheels = sorted(folder.glob("vit_zoo-0.2.1-*.whl"))
    return wheels[0]


def site_with_both(tmp_path: Path, wheel: Path, ours_last: bool) -> Path:
    """A site folder where pip installed both packages, in the given order, into one ``vit_zoo`` folder."""
    site = tmp_path / "site"
    ours = lambda: shutil.copytree(REPO_ROOT / "vit_zoo", site / "vit_zoo", dirs_exist_ok=True)  # noqa: E731
    theirs = lambda: zipfile.ZipFile(wheel).extractall(site)  # noqa: E731
    for install in (theirs, ours) if ours_last else (ours, theirs):
        install()
    shutil.copytree(REPO_ROOT / "configs", site / "vit_zoo" / "configs", dirs_exist_ok=True)
    return site


def run_in(site: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=site, env={"PYTHONPATH": str(site)})


def test_import_names_the_namesake_and_the_fix_when_installed_after_it(namesake_wheel, tmp_path):
    site = site_with_both(tmp_path, namesake_wheel, ours_last=True)
    result = run_in(site, "import vit_zoo")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and last.startswith("ImportError:") and f"unrelated package '{NAMESAKE}'" in last
    assert FIX in last


def test_the_command_names_the_namesake_when_it_was_installed_last(namesake_wheel, tmp_path):
    """The namesake's ``__init__.py`` then runs on ``import vit_zoo`` (and imports fine); the command still says why
    nothing works, in one line."""
    site = site_with_both(tmp_path, namesake_wheel, ours_last=False)
    assert run_in(site, "import vit_zoo; print(vit_zoo.ViTModel.__name__)").stdout == "ViTModel\n"  # theirs won
    result = run_in(site, "import sys; from vit_zoo.cli import main; sys.exit(main(['list']))")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("vit-zoo: error: ") and FIX in result.stderr


def test_a_clean_install_imports(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(REPO_ROOT / "vit_zoo", site / "vit_zoo")
    result = run_in(site, "import vit_zoo; print(vit_zoo.__version__)")
    assert result.returncode == 0 and result.stdout == f"{vit_zoo.__version__}\n"
