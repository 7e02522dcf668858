"""Constants the test files share (fixtures live in conftest.py, reference models in reference.py)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_NAME = "vit_zoo_tiny_patch8_test_32"  # configs/ geometry == reference.TINY
