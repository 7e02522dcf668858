"""The docs never drift from the code: runnable examples run, the site builds strictly, generated pages are right."""

from __future__ import annotations

import argparse
import html
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from docs_helpers import (
    DOCS_DIR,
    REMOTE_CODE,
    REPO_ROOT,
    STANDALONE,
    TAGS,
    CodeBlock,
    build_site,
    code_blocks,
    doc_pages,
    nav_pages,
    page_url,
    python_blocks,
    user_pages,
)
from hub_server import WRITE_TOKEN, HubServer

from conversion.offline_demo import BLOCK_VIT_ZOO
from vit_zoo.cli import COMMANDS, build_parser
from vit_zoo.zoo import get_entry

# Runs one page's blocks in order in one namespace and names the page, block and line of a failure.
RUNNER = """
import json, sys, traceback
namespace = {"__name__": "__main__"}
for block in json.load(sys.stdin):
    try:
        exec(compile(block["source"], block["page"], "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"{block['page']}: runnable block {block['number']} (line {block['line']}) failed")
"""
RUN_ONE = """
import sys
exec(compile(sys.stdin.read(), sys.argv[1], "exec"), {"__name__": "__main__"})
"""
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "NO_MKDOCS_2_WARNING": "1"}
PAGES_WITH_RUNNABLE_BLOCKS = [page for page in user_pages() if any(b.runnable for b in python_blocks(page))]
# What the standalone blocks load, as a user would have them after `vit-zoo convert` / `vit-zoo push`.
USER_FOLDERS = ("vit-b-16", "vit-b-32")
USER_REPO = "your-name/vit-b-16"


def _page_id(page: Path) -> str:
    return page.relative_to(DOCS_DIR).as_posix() if page.is_relative_to(DOCS_DIR) else page.name


def _block_id(block: CodeBlock) -> str:
    return f"{_page_id(block.page)}:{block.line}"


STANDALONE_BLOCKS = [b for page in user_pages() for b in python_blocks(page) if b.tag in (STANDALONE, REMOTE_CODE)]


def _text(html_page: str) -> str:
    """The visible text of an HTML page, tags removed and entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_page))


def _table_rows(html_page: str) -> list[list[str]]:
    """The cell texts of every table row of an HTML page."""
    rows = re.findall(r"<tr>(.*?)</tr>", html_page, flags=re.S)
    return [[_text(cell).strip() for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, flags=re.S)] for row in rows]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    result = build_site(site_dir)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return site_dir


def test_there_are_runnable_examples():
    assert {_page_id(page) for page in PAGES_WITH_RUNNABLE_BLOCKS} >= {"index.md", "zoo.md", "attention-maps.md"}
    assert {_page_id(b.page) for b in STANDALONE_BLOCKS} >= {"README.md", "index.md", "convert.md", "hub.md"}
    assert any(b.tag == REMOTE_CODE for b in STANDALONE_BLOCKS)


def _write_openai_checkpoint(path: Path, seed: int) -> None:
    """A one-block ViT-B-shaped tower with random weights under OpenAI's ``visual.`` names."""
    import torch

    from vit_zoo import VisionTransformer

    torch.manual_seed(seed)
    patch_size = int(path.stem.rsplit("-", 1)[1])
    tower = VisionTransformer(input_resolution=224, patch_size=patch_size, width=768, layers=1, heads=12, output_dim=512)
    torch.save({f"visual.{name}": value for name, value in tower.state_dict().items()}, path)


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A folder holding what the standalone blocks load (converted folders, ``cat.jpg``) and the environment
    that points huggingface_hub at a local Hub-protocol server holding ``USER_REPO``."""
    from PIL import Image

    from vit_zoo.convert import convert_checkpoint

    work = tmp_path_factory.mktemp("user")
    for seed, folder in enumerate(USER_FOLDERS):
        _write_openai_checkpoint(work / f"{folder}.pt", seed)
        convert_checkpoint(work / f"{folder}.pt", work / folder)
    Image.new("RGB", (320, 240), color=(200, 120, 40)).save(work / "cat.jpg")
    with HubServer(tmp_path_factory.mktemp("hub")) as server:
        env = {
            **os.environ,
            "HF_ENDPOINT": server.endpoint,
            "HF_TOKEN": WRITE_TOKEN,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(work / "hf-home"),
            "NO_PROXY": "127.0.0.1",
            "no_proxy": "127.0.0.1",
            "PYTHONPATH": str(REPO_ROOT),
        }
        push = [sys.executable, "-m", "vit_zoo", "push", USER_FOLDERS[0], USER_REPO]
        subprocess.run(push, cwd=work, env=env, check=True, capture_output=True, timeout=300)
        yield work, env


@pytest.mark.parametrize("block", STANDALONE_BLOCKS, ids=_block_id)
def test_standalone_examples_run_on_their_own(block: CodeBlock, user_files, tmp_path: Path):
    """A block users copy on its own runs as written, in a fresh interpreter, next to the folders it names."""
    work, env = user_files
    for name in (*USER_FOLDERS, "cat.jpg"):
        (tmp_path / name).symlink_to(work / name)
    env = {**env, "HF_HOME": str(tmp_path / "hf-home")}
    runner = RUN_ONE
    if block.tag == REMOTE_CODE:
        env["PYTHONPATH"], runner = "", BLOCK_VIT_ZOO + RUN_ONE  # nor can the repository be found on the path
    result = subprocess.run(
        [sys.executable, "-c", runner, str(block.page)],
        input=block.padded_source(),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{_block_id(block)} failed:\n{result.stderr}"


@pytest.mark.parametrize("page", PAGES_WITH_RUNNABLE_BLOCKS, ids=_page_id)
def test_runnable_examples_run(page: Path, tmp_path: Path):
    blocks = [
        dict(page=str(page), number=number, line=block.line, source=block.padded_source())
        for number, block in enumerate((b for b in python_blocks(page) if b.runnable), start=1)
    ]
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(REPO_ROOT), "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(blocks),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("page", user_pages(), ids=_page_id)
def test_every_python_block_compiles_and_says_how_it_is_tested(page: Path):
    for block in python_blocks(page):
        where = f"{_page_id(page)} line {block.line}"
        assert block.tag is not None and set(block.classes) <= set(TAGS), (
            f"{where}: tag the block with exactly one of {', '.join('{.' + tag + '}' for tag in TAGS)} "
            f"(has {list(block.classes)})"
        )
        compile(block.padded_source(), str(page), "exec")  # a SyntaxError names the Markdown line


def test_a_failing_example_is_reported_with_page_block_and_line(tmp_path: Path):
    page = tmp_path / "broken.md"
    page.write_text("# Broken\n\n```python {.runnable}\nx = 1\n```\n\ntext\n\n```python {.runnable}\nassert x == 2\n```\n")
    blocks = [
        dict(page=str(page), number=number, line=block.line, source=block.padded_source())
        for number, block in enumerate(python_blocks(page), start=1)
    ]
    result = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks), capture_output=True, text=True)
    assert result.returncode != 0
    assert f"{page}: runnable block 2 (line 10) failed" in result.stderr
    assert f'File "{page}", line 10' in result.stderr


def test_mkdocs_build_strict_builds_every_nav_page(site: Path):
    for page in nav_pages():
        built = site / page_url(page) / "index.html"
        assert built.is_file(), f"{page} was not built to {built}"
    assert (site / "assets" / "attention-map.png").is_file()


def _openai_entry_names() -> list[str]:
    """The zoo variants whose YAML file names an OpenAI checkpoint, read straight from configs/."""
    names = []
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if any(source.get("openai_name") for source in (data.get("pretrained") or {}).values()):
            names.append(data["name"])
    return names


def test_zoo_table_lists_every_config_with_numbers_computed_from_it(site: Path):
    rows = {row[0]: row for row in _table_rows((site / "zoo" / "index.html").read_text()) if row}
    config_names = [yaml.safe_load(p.read_text())["name"] for p in (REPO_ROOT / "configs").glob("*.yaml")]
    assert set(config_names) <= set(rows)
    openai_names = _openai_entry_names()
    assert len(openai_names) == 4
    for name in config_names:
        entry = get_entry(name)
        g = entry.model
        expected = [name, *(str(g[k]) for k in ("input_resolution", "patch_size", "width", "layers", "heads", "output_dim"))]
        assert rows[name][:7] == expected
        assert rows[name][7] == f"{entry.num_params / 1e6:.1f}M"
        if name in openai_names:
            source = entry.pretrained["openai"]
            assert rows[name][8] == f"{2 * entry.gmacs:.1f}"
            assert rows[name][9] == f"openai ({source.openai_name})"
            assert rows[name][10] == source.license


def test_zoo_table_has_vit_b16_size(site: Path):
    entry = get_entry("ViT-B/16")
    params = f"{entry.num_params / 1e6:.1f}M"
    assert params == "86.2M"  # OpenAI's ViT-B/16 image tower, as published
    assert params in _text((site / "zoo" / "index.html").read_text())


def test_cli_reference_documents_every_subcommand_and_option(site: Path):
    text = _text((site / "cli" / "index.html").read_text())
    assert build_parser().format_usage().split("\n")[0].strip() in text
    for name, add_arguments, _ in COMMANDS:
        assert f"usage: vit-zoo {name}" in text, f"vit-zoo {name} is missing from the CLI reference"
        probe = argparse.ArgumentParser()
        add_arguments(probe)
        for option in re.findall(r"(?<![\w-])--[\w-]+", probe.format_help()):
            assert option in text, f"vit-zoo {name} {option} is missing from the CLI reference"


# The guide page that must document every option of a subcommand.
GUIDE_FOR_COMMAND = {
    "convert": "convert.md",
    "push": "hub.md",
    "pull": "hub.md",
    "embed": "embed.md",
    "export": "export.md",
}


def _long_options(add_arguments) -> set[str]:
    probe = argparse.ArgumentParser(add_help=False)
    add_arguments(probe)
    return {option for action in probe._actions for option in action.option_strings if option.startswith("--")}


@pytest.mark.parametrize("command", sorted(GUIDE_FOR_COMMAND))
def test_guide_documents_every_option_of_its_command(command: str):
    add_arguments = {name: add for name, add, _ in COMMANDS}.get(command)
    assert add_arguments is not None, f"docs/{GUIDE_FOR_COMMAND[command]} documents vit-zoo {command}, which does not exist"
    guide = (DOCS_DIR / GUIDE_FOR_COMMAND[command]).read_text(encoding="utf-8")
    missing = sorted(option for option in _long_options(add_arguments) if option not in guide)
    assert not missing, f"docs/{GUIDE_FOR_COMMAND[command]} does not document vit-zoo {command} {missing}"


@pytest.mark.parametrize("page", doc_pages(), ids=_page_id)
def test_command_lines_in_the_docs_use_existing_options(page: Path):
    options = {name: _long_options(add) for name, add, _ in COMMANDS}
    top_level = {option for action in build_parser()._actions for option in action.option_strings}
    for block in code_blocks(page):
        for number, line in enumerate(block.source.splitlines(), start=block.line):
            words = line.removeprefix("$ ").split()
            if len(words) < 2 or words[0] != "vit-zoo" or words[1] not in options:
                continue
            unknown = sorted({w.split("=")[0] for w in words if w.startswith("--")} - options[words[1]] - top_level)
            assert not unknown, f"{_page_id(page)} line {number}: vit-zoo {words[1]} has no option {unknown}"


def _load_hooks():
    spec = importlib.util.spec_from_file_location("vit_zoo_docs_hooks", DOCS_DIR / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks


def test_performance_page_says_not_yet_measured_without_results(tmp_path: Path):
    assert "Not yet measured" in _load_hooks().benchmark_results(tmp_path / "benchmarks")


def test_performance_page_includes_results_md_with_links_to_the_site_copies(tmp_path: Path):
    benchmarks = tmp_path / "benchmarks"
    (benchmarks / "results").mkdir(parents=True)
    (benchmarks / "results" / "cpu.json").write_text("[]")
    (benchmarks / "plot.png").write_bytes(b"png")
    (benchmarks / "RESULTS.md").write_text(
        "# Results\n\n![plot](plot.png) [raw](results/cpu.json) [script](bench.py) [up](../README.md)\n\n"
        "```bash\n# a comment, not a heading\n```\n\n## CPU\n| model | img/s |\n|---|---|\n| vit_zoo | 19.5 |\n"
    )
    markdown = _load_hooks().benchmark_results(benchmarks)
    assert markdown.startswith("## Results")
    assert "### CPU" in markdown and "# a comment, not a heading" in markdown
    assert "![plot](benchmarks/plot.png)" in markdown and "[raw](benchmarks/results/cpu.json)" in markdown
    assert "script" in markdown and "(bench.py)" not in markdown and "(../README.md)" not in markdown
    assert "| vit_zoo | 19.5 |" in markdown


def test_performance_page_renders_json_results_as_tables(tmp_path: Path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    records = [{"model": "vit_zoo", "images_per_s": 19.53}, {"model": "timm", "images_per_s": 19.1, "mfu": 0.5}]
    (results / "cpu.json").write_text(json.dumps({"device": "2-core CPU", "results": records}))
    markdown = _load_hooks().benchmark_results(tmp_path / "benchmarks")
    assert "- **device**: 2-core CPU" in markdown
    assert "| model | images_per_s | mfu |" in markdown
    assert "| vit_zoo | 19.53 |  |" in markdown and "| timm | 19.1 | 0.5 |" in markdown


def test_unknown_marker_fails_the_build():
    hooks = _load_hooks()
    page = type("Page", (), {"file": type("F", (), {"src_uri": "x.md"})()})()
    with pytest.raises(Exception, match="unknown marker vit-zoo:nope"):
        hooks.on_page_markdown("<!-- vit-zoo:nope -->", page, None, None)
