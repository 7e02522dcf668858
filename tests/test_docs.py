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
from hub_server import READ_TOKEN, WRITE_TOKEN, HubServer

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
    rows = re.findall(r"<tr\b[^>]*>(.*?)</tr>", html_page, flags=re.S)
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


RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
PAGES_WITH_MEASURED_NUMBERS = ("comparison.md", "performance.md", "embed.md", "export.md")
# A number typed into a page next to a unit of speed, time, memory or error: it belongs in a results file.
TYPED_MEASUREMENT = re.compile(r"\d[\d.,\u202f ]*\s?(×|%|images/s|img/s|s\b|MB\b)|\d\.\de-\d")


def _results(name: str) -> dict:
    return json.loads((RESULTS_DIR / name).read_text())


def _result(report: dict, model: str) -> dict:
    (result,) = [r for r in report["results"] if r["model"] == model]
    return result


def _error(relative_l2: float) -> str:
    return f"{relative_l2:.1e}".replace("e-0", "e-")


def _page_text(site: Path, page: str) -> str:
    return _text((site / page_url(page) / "index.html").read_text())


def _table_row(site: Path, page: str, first_cell: str) -> list[str]:
    rows = [row for row in _table_rows((site / page_url(page) / "index.html").read_text()) if row and row[0] == first_cell]
    assert len(rows) == 1, f"{page} has {len(rows)} rows starting with {first_cell!r}"
    return rows[0]


@pytest.mark.parametrize("page", PAGES_WITH_MEASURED_NUMBERS)
def test_measured_numbers_are_not_typed_into_the_pages(page: str):
    """Speeds, times and errors on these pages come from value markers, so they cannot drift from the results."""
    source = "\n".join(line for line, outside in _load_hooks()._lines_outside_fences((DOCS_DIR / page).read_text()) if outside)
    typed = [match.group(0) for match in TYPED_MEASUREMENT.finditer(re.sub(r"<!--.*?-->", "", source))]
    assert not typed, (
        f"docs/{page} types measured numbers by hand: {typed}; use <!-- vit-zoo:ratio|rate|overhead|fidelity ... -->"
    )


def test_comparison_table_shows_the_numbers_of_the_results_files(site: Path):
    cpu = _result(_results("speed_cpu.json"), "vit_zoo_base_patch32_clip_224")["cases"]
    speed = _table_row(site, "comparison.md", "Speed vs timm eager (B/32, CPU, fp32, batch 8)")
    expected = [f"{cpu[case]['ratio_vs_timm']:.2f}×" for case in ("vit_zoo", "timm", "hf_sdpa")]
    assert speed[1:] == expected
    errors = _results("fidelity_cpu.json")["errors"]
    fidelity = _table_row(site, "comparison.md", "Embedding vs OpenAI's architecture, fp32 (relative L2 error)")
    gelu = "timm vit_base_patch16_clip_224 (the .openai tag's model, GELU)"
    assert fidelity[1] == _error(errors["vit_zoo.VisionTransformer"]) and fidelity[2].startswith(_error(errors[gelu]))
    overhead = _result(_results("speed_cpu.json"), "vit_zoo_base_patch32_clip_224")["attention_map_overheads"]
    maps = _table_row(site, "comparison.md", "Attention maps")
    assert f"{(overhead['vit_zoo+attention_map / vit_zoo'] - 1) * 100:+.1f}\u202f% time" in maps[1]
    gpu = _result(_results("h200_2026-11-30_e331799.json"), "vit_zoo_base_patch16_clip_224")["cases"]
    rates = [f"{gpu[case]['images_per_s']:,.0f}".replace(",", "\u202f") for case in ("hf_eager+attentions", "hf_sdpa")]
    assert f"{rates[0]} images/s instead of {rates[1]}" in maps[3]


def _prose(site: Path, page: str) -> str:
    """The visible text of a page outside its tables and code, whitespace collapsed: the sentences."""
    page_html = (site / page_url(page) / "index.html").read_text()
    article = page_html[page_html.index("<article") : page_html.index("</article>")]
    article = re.sub(r"<(table|pre)\b.*?</\1>", "", article, flags=re.S)
    return re.sub(r"[ \t\n]+", " ", _text(article))  # not \s: the narrow spaces in numbers stay


def _ratio(value: float) -> str:
    return f"{value:.2f}×"


def test_export_page_states_the_numbers_of_its_results_file(site: Path):
    report = _results("export_cpu.json")
    b32, b16 = (_result(report, model) for model in ("vit_zoo_base_patch32_clip_224", "vit_zoo_base_patch16_clip_224"))
    text = _prose(site, "export.md")
    onnx = [_ratio(result["cases"]["onnxruntime"]["vs_eager"]) for result in (b32, b16)]
    assert f"{onnx[0]} eager torch's speed for ViT-B/32 and {onnx[1]} for ViT-B/16" in text
    aoti = [_ratio(result["cases"]["AOTInductor"]["vs_eager"]) for result in (b32, b16)]
    assert f"({aoti[0]} for ViT-B/32, {aoti[1]} for ViT-B/16)" in text
    seconds = [f"{b16['exports'][case]['process_s']:.0f} s" for case in ("onnxruntime", "torch.export (pt2)", "AOTInductor")]
    assert f"took {seconds[0]} to ONNX, {seconds[1]} to pt2 and {seconds[2]} to an AOTInductor package" in text
    environment = report["environment"]
    load = environment["load_average_start"][0]
    assert f"commit {environment['commit']}, {environment['date']}, load average {load:.1f}" in text
    onnx_row = [row for row in _table_rows((site / "export" / "index.html").read_text()) if row and row[0] == "onnxruntime"]
    low, high = b32["cases"]["onnxruntime"]["vs_eager_quartiles"]
    assert onnx_row[0][2] == f"{onnx[0]} [{low:.2f}–{high:.2f}]"  # the table of the results file, B/32 first


def test_embed_numbers_on_the_pages_are_those_of_the_results_files(site: Path):
    speed, scale = _results("embed_cpu.json"), _results("embed_cpu_resume-scale.json")["scale"]
    full, shallow = (next(r for r in speed["results"] if r["layers"] == layers) for layers in (12, 2))
    ratio = _ratio(full["cases"]["vit_zoo"]["ratio_vs_timm"])
    images = f"{scale['images']:,}".replace(",", "\u202f")
    memory = f"{scale['peak_memory_mb']:,.0f} MB".replace(",", "\u202f")
    embed_page = _prose(site, "embed.md")
    assert f"ran at {ratio} the script's speed with ViT-B/32, and embedded {images} small images at" in embed_page
    assert f"{scale['images_per_s']:.0f} images/s using at most {memory} with its loader workers" in embed_page
    performance = _prose(site, "performance.md")
    overhead = f"{(full['attention_map_overheads']['vit_zoo+attention / vit_zoo'] - 1) * 100:+.1f}\u202f%"
    assert f"it ran at {ratio} the script's speed with ViT-B/32" in performance
    assert f"and at {_ratio(shallow['cases']['vit_zoo']['ratio_vs_timm'])} with 2 of its 12 blocks" in performance
    assert f"--attention-map added {overhead} time" in performance
    assert scale["resume"]["bit_identical_to_uninterrupted"]
    assert "started again, wrote output bit for bit identical to the uninterrupted run's" in performance


def test_the_claims_in_the_prose_hold_for_the_results_files():
    """What the pages say in words of the numbers they quote; a new results file that contradicts one fails here,
    and the sentence is rewritten with it."""
    export = {r["model"]: r["cases"] for r in _results("export_cpu.json")["results"]}
    for cases in export.values():
        assert cases["onnxruntime"]["vs_eager"] > 1, "export.md: onnxruntime is faster than eager torch"
        assert 0.9 < cases["AOTInductor"]["vs_eager"] < 1.1, "export.md: AOTInductor runs at about eager torch's speed"
    b32 = export["vit_zoo_base_patch32_clip_224"]
    maps = b32["onnxruntime + attention map"]["images_per_s"] / b32["onnxruntime"]["images_per_s"]
    assert maps > 0.9, "export.md: the maps cost onnxruntime little"
    embed = [r["cases"]["vit_zoo"]["ratio_vs_timm"] for r in _results("embed_cpu.json")["results"]]
    assert min(embed) > 0.95, "performance.md: vit-zoo embed is as fast as the hand-written script"


def test_every_results_file_is_on_the_performance_page_with_commit_machine_and_load(site: Path):
    text = _page_text(site, "performance.md")
    for path in sorted(RESULTS_DIR.glob("*.json")):
        environment = json.loads(path.read_text())["environment"]
        start = environment.get("load_average_start")
        load = f"Load: {start[0]:.1f} at start" if start else "Load: not recorded"
        for fact in (f"{environment['device_name']} (", f"commit {environment['commit']}", load, environment["date"]):
            assert fact in text, f"the performance page does not say {fact!r} of {path.name}"
    assert "Not yet measured" not in text


def test_the_site_draws_each_speed_plot_from_its_results_file(site: Path):
    for path in sorted(RESULTS_DIR.glob("*.json")):
        if json.loads(path.read_text())["benchmark"] != "speed":
            continue
        plot = site / "benchmarks" / "results" / f"{path.stem}.png"
        assert plot.read_bytes().startswith(b"\x89PNG"), plot
        assert f'src="../benchmarks/results/{path.stem}.png"' in (site / "performance" / "index.html").read_text()


def test_performance_page_says_not_yet_measured_without_results(tmp_path: Path):
    assert "Not yet measured" in _load_hooks().benchmark_results(tmp_path / "results")


def _page(src_uri: str = "x.md"):
    return type("Page", (), {"file": type("F", (), {"src_uri": src_uri})()})()


def test_a_results_marker_becomes_that_files_section_with_its_provenance():
    hooks = _load_hooks()
    expanded = hooks.on_page_markdown("# Speed\n\n<!-- vit-zoo:results export_cpu.json -->\n", _page(), None, None)
    environment = _results("export_cpu.json")["environment"]
    assert f"- **Machine**: {environment['device_name']} (CPU, 2 threads); commit {environment['commit']};" in expanded
    assert "### Exported files against eager torch:" in expanded and "#### vit_zoo_base_patch16_clip_224" in expanded


def test_value_markers_become_numbers_outside_code_only():
    hooks = _load_hooks()
    marker = "<!-- vit-zoo:ratio speed_cpu.json vit_zoo_base_patch32_clip_224 timm -->"
    page = f"Speed: {marker}.\n\nIn code: `{marker}`\n\n```text\n{marker}\n```\n"
    expanded = hooks.on_page_markdown(page, _page(), None, None)
    assert expanded.startswith("Speed: 1.00×.\n")
    assert expanded.count(marker) == 2  # the inline code and the fenced block keep it as written


@pytest.mark.parametrize(
    "marker, message",
    [
        ("<!-- vit-zoo:nope -->", "x.md: unknown marker vit-zoo:nope"),
        ("a <!-- vit-zoo:zoo-table --> b", "x.md: vit-zoo:zoo-table makes a block; put it on a line of its own"),
        ("<!-- vit-zoo:ratio speed_cpu.json vit_zoo -->", "x.md: vit-zoo:ratio takes FILE MODEL CASE"),
        ('<!-- vit-zoo:ratio speed_cpu.json vit_zoo_base_patch32_clip_224 "timm compiled" -->', "has no case 'timm compiled'"),
        ("<!-- vit-zoo:rate speed_cpu.json vit_zoo_huge timm -->", "'vit_zoo_huge' matches 0 of the results"),
        ("<!-- vit-zoo:fidelity missing.json vit_zoo -->", "missing.json: not a readable results file"),
        ("<!-- vit-zoo:results missing.json -->", "x.md: vit-zoo:results: "),
        ("<!-- vit-zoo:results -->", "x.md: vit-zoo:results takes FILE"),
        ("<!-- vit-zoo:export-time speed_cpu.json vit_zoo_base_patch32_clip_224 timm -->", "speed results: no 'export-time'"),
        ('<!-- vit-zoo:ratio export_cpu.json vit_zoo_base_patch32_clip_224 "torch eager" -->', "it has no ratio"),
        ("<!-- vit-zoo:ratio embed_cpu.json vit_zoo_base_patch32_clip_224 vit_zoo -->", "name one as MODEL/LAYERS"),
        ("<!-- vit-zoo:scale speed_cpu.json rate -->", "holds speed results, not embed results"),
        ("<!-- vit-zoo:scale embed_cpu.json speed -->", "unknown quantity 'speed'"),
    ],
)
def test_a_marker_that_cannot_be_computed_fails_the_build(marker: str, message: str):
    with pytest.raises(Exception, match=re.escape(message)):
        _load_hooks().on_page_markdown(marker, _page(), None, None)


@pytest.mark.parametrize("page", [page for page in nav_pages() if page.startswith("reference/")])
def test_api_reference_shows_no_raw_markdown(site: Path, page: str):
    """Docstrings render: no backticks or *emphasis* left as characters (transformers' `(`torch.FloatTensor` of
    shape ...)`, *optional*` style did, in the type column)."""
    html_page = re.sub(r"<pre\b.*?</pre>", "", (site / page_url(page) / "index.html").read_text(), flags=re.S)
    text = _text(html_page[html_page.index("<article") : html_page.index("</article>")])
    raw = [match.group(0) for match in re.finditer(r".{0,30}(`|\*\w[\w ]*\*).{0,30}", text)]
    assert not raw, f"{page} shows raw Markdown: {raw}"


def test_model_output_reference_gives_each_field_its_shape(site: Path):
    rows = {row[0]: row for row in _table_rows((site / "reference" / "modeling" / "index.html").read_text()) if row}
    assert rows["image_embeds"][1] == "Tensor | None"
    assert rows["image_embeds"][2].startswith("[batch, output_dim], the projected CLS embedding")
    assert rows["attention_map"][2].startswith("[layers, batch, heads, grid_h, grid_w]")


def test_table_code_is_wrapped_token_by_token_with_its_text_unchanged():
    cell = '<td><code class="x">f(a=1, b="x-y")</code> <code><a>T</a></code></td>'
    html_page = f"<p><code>a b</code></p><table><tr>{cell}</tr></table>"
    wrapped = _load_hooks().keep_code_tokens_whole(html_page)
    assert '<code class="x"><span class="vz-token">f(a=1,</span> <span class="vz-token">b="x-y")</span></code>' in wrapped
    assert wrapped.startswith("<p><code>a b</code></p>") and "<code><a>T</a></code>" in wrapped
    assert _text(wrapped) == _text(html_page)
    message = (
        '<div class="vz-message highlight"><pre><span></span><code><a id="l1"></a>run `pip uninstall -y x`</code></pre></div>'
    )
    wrapped = _load_hooks().keep_code_tokens_whole(message)
    assert '<span class="vz-token">-y</span> <span class="vz-token">x`</span></code>' in wrapped
    assert _text(wrapped) == _text(message)


def _documented_hub_messages() -> dict[str, str]:
    """hub.md's error table: situation -> message as quoted (``...`` stands for a repo, path or detail)."""
    rows = re.findall(r"^\| ([^|`]+?) \| (`+)(.+?)\2 \|$", (DOCS_DIR / "hub.md").read_text(), flags=re.M)
    return {situation: message for situation, _, message in rows}


def _hub_failure(situation: str, server, folder: Path, monkeypatch) -> Exception:
    """Bring about one situation of hub.md's error table against the local Hub-protocol server; the error raised."""
    from huggingface_hub import HfApi, constants

    from vit_zoo import FolderError, HubError, pull, push_folder

    def push(token=WRITE_TOKEN):
        return push_folder(folder, "org/tiny", token=token)

    def pull_other_model_type():
        api = HfApi(endpoint=server.endpoint, token=WRITE_TOKEN)
        api.create_repo("org/clip")
        api.upload_file(path_or_fileobj=b'{"model_type": "clip"}', path_in_repo="config.json", repo_id="org/clip")
        pull("org/clip")

    def damage_and_push():
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
        push()

    def refuse_reading():
        push()
        server.fail_next("/api/models/org/tiny", status=403)
        pull("org/tiny")

    def fail_commit():
        server.fail_next("/commit/", status=500)
        push()

    def go_offline():
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        pull("org/tiny")

    def unknown_revision():
        push()
        pull("org/tiny", revision="v9")

    def push_to_a_stopped_hub():
        server.stop()
        push()

    def pull_from_a_hub_that_never_answers():
        from huggingface_hub import close_session

        push()
        monkeypatch.setenv("VIT_ZOO_HUB_TIMEOUT", "1")
        server.hang_next("/", count=100)
        try:
            pull("org/tiny")
        finally:
            close_session()  # the next test's client waits as long as its own default

    actions = {
        "bad or missing token": lambda: push(token="hf_wrong"),
        "token without write access (push)": lambda: (push(), push(token=READ_TOKEN)),
        "the Hub refuses the token read access (pull)": refuse_reading,
        "Hub down or unreachable": push_to_a_stopped_hub,
        "the Hub accepts the connection but never answers": pull_from_a_hub_that_never_answers,
        "Hub error": fail_commit,
        "unknown or private repo": lambda: pull("org/missing"),
        "unknown revision": unknown_revision,
        "offline and not cached": go_offline,
        "not a vit_zoo folder or repo": pull_other_model_type,
        "damaged or truncated weights": damage_and_push,
    }
    assert situation in actions, f"hub.md documents {situation!r}: add how to bring it about to this test"
    with pytest.raises((HubError, FolderError)) as raised:
        actions[situation]()
    return raised.value


@pytest.mark.hub
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
@pytest.mark.parametrize("situation", sorted(_documented_hub_messages()))
def test_hub_page_quotes_the_messages_the_code_prints(situation, hub_server, tmp_path, monkeypatch):
    """Each row of hub.md's error table, brought about for real: the message is the one quoted, word for word
    apart from the parts shown as ``...`` (with the local server's address read as huggingface.co's)."""
    from vit_zoo import VisionTransformer, save_model_folder

    geometry = dict(input_resolution=32, patch_size=8, width=64, layers=1, heads=4, output_dim=32)
    folder = save_model_folder(VisionTransformer(**geometry), tmp_path / "model")
    endpoint = hub_server.endpoint
    message = str(_hub_failure(situation, hub_server, folder, monkeypatch)).replace(endpoint, "https://huggingface.co")
    quoted = _documented_hub_messages()[situation]
    pattern = ".+?".join(map(re.escape, quoted.split("...")))
    assert re.fullmatch(pattern, message), f"hub.md quotes\n{quoted}\nthe code says\n{message}"


def test_hub_page_documents_the_messages():
    assert len(_documented_hub_messages()) == 11


@pytest.mark.parametrize("page", ["architecture.md", "contributing.md"])
def test_pages_name_every_file_that_travels_as_remote_code(page: str):
    from vit_zoo.folder_check import REMOTE_CODE_FILES

    text = (DOCS_DIR / page).read_text()
    missing = [name for name in REMOTE_CODE_FILES if f"`{name}`" not in text]
    assert not missing, f"docs/{page} does not name {missing} among the files copied into saved folders"


@pytest.mark.parametrize("page", user_pages(), ids=_page_id)
def test_install_lines_name_the_distribution_vit_zoo_clip(page: Path):
    """`vit-zoo` on the package index is an unrelated (GPL) project: never send users there."""
    text = page.read_text(encoding="utf-8")
    assert "pypi.org/project/vit-zoo/" not in text
    requirements = [word.strip("\"'") for line in re.findall(r"pip install([^\n`]*)", text) for word in line.split()]
    wrong = [word for word in requirements if re.match(r"vit[-_]zoo(?![\w-])", word, flags=re.I)]
    assert not wrong, f"{_page_id(page)} installs vit-zoo, not vit-zoo-clip: {wrong}"


def test_readme_and_home_page_give_the_same_install_commands():
    def install_commands(page: Path) -> list[str]:
        commands = [line.split("#")[0].strip() for line in page.read_text().splitlines() if line.startswith("pip install")]
        return sorted(command for command in commands if "vit-zoo-clip" in command and "[" not in command)

    home = install_commands(DOCS_DIR / "index.md")
    assert home == ['pip install "vit-zoo-clip @ git+https://github.com/vit-zoo/vit-zoo"', "pip install vit-zoo-clip"]
    assert install_commands(REPO_ROOT / "README.md") == home


@pytest.mark.parametrize("page", user_pages(), ids=_page_id)
def test_agreement_with_openai_is_claimed_as_tested(page: Path):
    """The embeddings agree with OpenAI's code to a relative error of 1e-5 (tests/test_model.py, test_convert.py),
    not bit for bit: no page may say they are bit-exact."""
    text = re.sub(r"\s+", " ", page.read_text(encoding="utf-8"))
    sentences = [s for s in re.split(r"(?<=[.:;])\s", text) if re.search(r"bit[- ]exact|bit for bit", s, flags=re.I)]
    claims = [s for s in sentences if re.search(r"OpenAI|encode_image", s)]
    assert not claims, f"{_page_id(page)} claims bit-exact agreement with OpenAI: {claims}"


def test_home_page_quotes_the_error_the_namesake_brings_about(tmp_path: Path):
    """index.md quotes what ``import vit_zoo`` and the command say when the unrelated ``vit-zoo`` shares the folder:
    the message of ``vit_zoo._version.check_no_namesake`` run in a folder holding the namesake's subpackages, word
    for word apart from the folder (``...``)."""
    section = (DOCS_DIR / "index.md").read_text().split("### Not beside the `vit-zoo` package", 1)[1]
    quoted = re.search(r"```\{\.text \.vz-message\}\n(.+?)\n```", section, flags=re.S).group(1)
    package = tmp_path / "site-packages" / "vit_zoo"
    for name in ("components", "utils"):  # what vit-zoo 0.2.1 installs there besides its own __init__.py
        (package / name).mkdir(parents=True)
        (package / name / "__init__.py").touch()
    (package / "_version.py").write_bytes((REPO_ROOT / "vit_zoo" / "_version.py").read_bytes())
    spec = importlib.util.spec_from_file_location("namesake_check", package / "_version.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ImportError) as raised:
        module.check_no_namesake()
    pattern = ".+?".join(map(re.escape, quoted.split("...")))
    assert re.fullmatch(pattern, str(raised.value)), f"index.md quotes\n{quoted}\nthe code says\n{raised.value}"
    assert str(raised.value).startswith(f"{package} also holds")


def test_changelog_has_one_unreleased_section_and_dated_releases():
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## (.+)$", changelog, flags=re.M)
    assert versions.count("[Unreleased]") == 1, versions
    for heading in versions:
        assert re.fullmatch(r"\[Unreleased\]|\[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}", heading), f"CHANGELOG.md: {heading!r}"
        assert re.search(rf"^{re.escape(heading)}: https://", changelog, flags=re.M), f"CHANGELOG.md: {heading} has no link"
    unlinked = re.findall(r"(?<!\[)\b(?:issue|PR|pull request)\s*#?\d+|(?<![\w/\[])#\d+\b", changelog, flags=re.I)
    assert not unlinked, f"CHANGELOG.md refers to {unlinked} without a link"


def test_changelog_names_every_command_and_timm_entry():
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text()
    missing = [f"vit-zoo {name}" for name, _, _ in COMMANDS if f"`vit-zoo {name}" not in changelog]
    missing += [name for name in _openai_entry_names() if f"`{name}`" not in changelog]
    assert not missing, f"CHANGELOG.md does not mention {missing}"
