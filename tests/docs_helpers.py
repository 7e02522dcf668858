"""Shared by the docs tests: build the site, and find the fenced code blocks of the pages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from helpers import REPO_ROOT

DOCS_DIR = REPO_ROOT / "docs"
RUNNABLE = "runnable"  # run with the page's other runnable blocks, in order, in one interpreter
STANDALONE = "standalone"  # run alone, as a user who copied just this block would, next to the folders it loads
REMOTE_CODE = "remote-code"  # run alone where vit_zoo cannot be imported: transformers' remote code only
NETWORK = "network"  # downloads OpenAI's real weights: compiled, not run (no test downloads weights)
GPU = "gpu"  # needs a CUDA device: compiled, not run by the CPU suite
TAGS = (RUNNABLE, STANDALONE, REMOTE_CODE, NETWORK, GPU)
FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)[ \t]*(?P<attrs>\{[^}]*\})?[ \t]*$")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block of a page; ``line`` is the 1-based line of its first code line in the file."""

    page: Path
    line: int
    language: str
    classes: tuple[str, ...]
    source: str

    @property
    def runnable(self) -> bool:
        return RUNNABLE in self.classes

    @property
    def tag(self) -> str | None:
        """The one tag of ``TAGS`` the block carries (None when it carries none or several)."""
        tags = [c for c in self.classes if c in TAGS]
        return tags[0] if len(tags) == 1 else None

    def padded_source(self) -> str:
        """The code preceded by blank lines, so line numbers in tracebacks are the Markdown file's."""
        return "\n" * (self.line - 1) + self.source


def code_blocks(page: Path) -> list[CodeBlock]:
    """Every fenced code block of a Markdown page, in order (indented fences included)."""
    blocks, lines, index = [], page.read_text(encoding="utf-8").splitlines(), 0
    while index < len(lines):
        opening = FENCE_OPEN.match(lines[index])
        index += 1
        if not opening:
            continue
        indent, fence = opening["indent"], opening["fence"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        start, body = index, []
        while index < len(lines) and not closing.match(lines[index]):
            body.append(lines[index][len(indent) :] if lines[index].startswith(indent) else lines[index].lstrip())
            index += 1
        index += 1
        classes = tuple(re.findall(r"\.([\w-]+)", opening["attrs"] or ""))
        blocks.append(CodeBlock(page, start + 1, opening["lang"], classes, "\n".join(body) + "\n"))
    return blocks


def doc_pages() -> list[Path]:
    return sorted(DOCS_DIR.rglob("*.md"))


def user_pages() -> list[Path]:
    """Every page a user copies code from: the README and the docs."""
    return [REPO_ROOT / "README.md", *doc_pages()]


def python_blocks(page: Path) -> list[CodeBlock]:
    return [block for block in code_blocks(page) if block.language == "python"]


def nav_pages(items: list | None = None) -> Iterator[str]:
    """Every page (``docs/``-relative path) in mkdocs.yml's ``nav``, sections flattened."""
    if items is None:
        items = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    for item in items:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        yield from nav_pages(value) if isinstance(value, list) else [value]


def page_url(page: str) -> str:
    """The site-relative URL of a page: ``zoo.md`` -> ``zoo/``, ``reference/index.md`` -> ``reference/``."""
    stem = page.removesuffix(".md")
    return stem.removesuffix("index") if stem == "index" or stem.endswith("/index") else stem + "/"


def build_site(site_dir: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of this checkout into ``site_dir`` with the test's interpreter."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
