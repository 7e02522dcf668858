"""The distribution's name and version, in one place (pyproject.toml reads the version from here), and the check
that no namesake shares the ``vit_zoo`` folder."""

from pathlib import Path

__version__ = "0.1.0"
DISTRIBUTION = "vit-zoo-clip"  # `vit-zoo` on the package registry is an unrelated project that also installs vit_zoo
NAMESAKE = "vit-zoo"
_NAMESAKE_FOLDERS = ("components", "utils")  # vit_zoo/ subpackages of the namesake (0.2.1), none of them ours


def check_no_namesake() -> None:
    """Raise ``ImportError`` saying what to do when the unrelated ``vit-zoo`` package was installed into the same
    ``vit_zoo`` folder (pip lets both write it, and the second overwrites the first's ``__init__.py`` and
    ``model.py``). One ``stat`` per folder: cheap enough for every ``import vit_zoo``."""
    package = Path(__file__).parent
    found = [name for name in _NAMESAKE_FOLDERS if (package / name / "__init__.py").is_file()]
    if found:
        files = ", ".join(f"vit_zoo/{name}" for name in found)
        raise ImportError(
            f"{package} also holds files of the unrelated package {NAMESAKE!r} ({files}), which installs into the same "
            f"vit_zoo folder and overwrites this one's; run `pip uninstall -y {NAMESAKE} {DISTRIBUTION} && pip install "
            f"{DISTRIBUTION}`"
        )
