"""MkDocs hooks: pages hold markers such as ``<!-- vit-zoo:zoo-table -->`` that are replaced at build time.

A marker counts only on a line of its own outside code fences, so a page can name one in inline code or in
a code block (the Contributing page does) without the generated content landing there.

Everything a marker stands for is computed from the code and data in the repository (the zoo YAML files,
the CLI parser, the benchmark results), so the site cannot drift from them. An unknown marker fails the
build.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import sys
from collections.abc import Callable
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # build the docs of this checkout, installed or not
    sys.path.insert(0, str(ROOT))

BENCHMARKS = ROOT / "benchmarks"
BENCHMARK_ASSET_SUFFIXES = {".png", ".svg", ".jpg", ".jpeg", ".json", ".csv"}
MARKER = re.compile(r"^[ \t]*<!--\s*vit-zoo:([a-z-]+)\s*-->[ \t]*$")
HELP_COLUMNS = "88"


def format_params(num_params: int) -> str:
    """``86_192_640`` -> ``"86.2M"``: the zoo table's parameter column."""
    return f"{num_params / 1e6:.1f}M"


def format_gflops(gmacs: float) -> str:
    """GFLOPs (twice the multiply-accumulates) with one decimal, more digits for tiny models."""
    gflops = 2 * gmacs
    return f"{gflops:.1f}" if gflops >= 0.1 else f"{gflops:.2g}"


def _builtin_entries() -> list:
    from vit_zoo.zoo import builtin_config_dir, list_entries

    builtin = builtin_config_dir().resolve()
    return [entry for entry in list_entries() if entry.path is not None and entry.path.resolve().parent == builtin]


def _pretrained_cell(entry) -> str:
    tags = [f"`{tag}` (`{source.openai_name}`)" if source.openai_name else f"`{tag}`" for tag, source in entry.pretrained.items()]
    return ", ".join(tags) or "— (random init)"


def _license_cell(entry) -> str:
    licenses = sorted({source.license for source in entry.pretrained.values() if source.license})
    return ", ".join(licenses) or "—"


def zoo_table() -> str:
    """The zoo as a Markdown table plus the source of every pretrained checkpoint."""
    header = "| Name | Resolution | Patch | Width | Layers | Heads | Output dim | Params | GFLOPs | Pretrained | License |"
    lines = [header, "|" + "---|" * 3 + "--:|" * 6 + "---|---|"]
    for entry in _builtin_entries():
        g = entry.model
        lines.append(
            f"| `{entry.name}` | {g['input_resolution']} | {g['patch_size']} | {g['width']} | {g['layers']} | "
            f"{g['heads']} | {g['output_dim']} | {format_params(entry.num_params)} | {format_gflops(entry.gmacs)} | "
            f"{_pretrained_cell(entry)} | {_license_cell(entry)} |"
        )
    lines += ["", "### Weight sources", ""]
    for entry in _builtin_entries():
        for tag, source in entry.pretrained.items():
            lines.append(f"- `{entry.name}.{tag}`: {source.openai_name or tag}, license `{source.license or 'unknown'}`")
            if source.url:
                lines.append(f"    - URL: <{source.url}>")
            if source.sha256:
                lines.append(f"    - SHA-256: `{source.sha256}`")
            if source.paper:
                lines.append(f"    - Paper: <{source.paper}>")
    return "\n".join(lines) + "\n"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for subcommands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help_text(parser: argparse.ArgumentParser) -> str:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS  # argparse wraps to the terminal width; fix it for stable pages
    try:
        return parser.format_help()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def cli_reference() -> str:
    """``vit-zoo --help`` and every subcommand's ``--help``, straight from ``vit_zoo.cli.build_parser()``."""
    from vit_zoo.cli import build_parser

    parser = build_parser()
    sections = ["## `vit-zoo`", "", "```text", _help_text(parser).rstrip(), "```", ""]
    for name, subparser in _subparsers(parser).items():
        summary = subparser.description or ""
        sections += [f"## `vit-zoo {name}`", "", summary, "", "```text", _help_text(subparser).rstrip(), "```", ""]
    return "\n".join(sections)


def _lines_outside_fences(markdown: str) -> list[tuple[str, bool]]:
    """Every line of ``markdown`` with whether it lies outside fenced code blocks."""
    lines, in_fence = [], False
    for line in markdown.splitlines():
        fence = line.lstrip().startswith(("```", "~~~"))
        in_fence ^= fence
        lines.append((line, not (in_fence or fence)))
    return lines


def _demote_headings(markdown: str) -> str:
    """Shift ATX headings down one level (outside code fences) so an included file sits under the page title."""
    return "\n".join(
        "#" + line if outside and re.match(r"#{1,5} ", line) else line for line, outside in _lines_outside_fences(markdown)
    )


def _benchmark_assets(benchmarks: Path = BENCHMARKS) -> list[Path]:
    if not benchmarks.is_dir():
        return []
    return sorted(p for p in benchmarks.rglob("*") if p.is_file() and p.suffix.lower() in BENCHMARK_ASSET_SUFFIXES)


def _relink(markdown: str, benchmarks: Path = BENCHMARKS) -> str:
    """Point RESULTS.md's relative links at the copies of ``benchmarks/`` files in the site; unlink the rest."""
    assets = {path.relative_to(benchmarks).as_posix() for path in _benchmark_assets(benchmarks)}

    def replace(match: re.Match) -> str:
        label, target = match.group(1), match.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:|#|/", target):
            return match.group(0)
        path, _, fragment = target.partition("#")
        asset = posixpath.normpath(path)
        if asset in assets:
            return f"{label}(benchmarks/{asset}{'#' + fragment if fragment else ''})"
        return label.lstrip("!")[1:-1]  # a file the site does not carry: keep the text only

    return re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", replace, markdown)


def _records_table(records: list[dict]) -> str:
    columns = list(dict.fromkeys(key for record in records for key in record))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in records:
        lines.append("| " + " | ".join(_cell(record.get(column, "")) for column in columns) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def _json_results(path: Path) -> str:
    data = json.loads(path.read_text(encoding="utf-8"))
    records = data.get("results") if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise PluginError(f"{path}: expected a list of records (or {{'results': [...]}}) to render as a table")
    meta = {k: v for k, v in data.items() if k != "results" and not isinstance(v, (dict, list))} if isinstance(data, dict) else {}
    lines = [f"### `{path.name}`", ""]
    lines += [f"- **{key}**: {value}" for key, value in meta.items()]
    return "\n".join([*lines, "", _records_table(records), ""])


def benchmark_results(benchmarks: Path = BENCHMARKS) -> str:
    """``benchmarks/RESULTS.md`` if present, else tables of ``benchmarks/results/*.json``, else a note."""
    results_md, results_dir = benchmarks / "RESULTS.md", benchmarks / "results"
    if results_md.is_file():
        return _relink(_demote_headings(results_md.read_text(encoding="utf-8")), benchmarks) + "\n"
    json_files = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    if json_files:
        return "\n".join(_json_results(path) for path in json_files)
    return (
        '!!! note "Not yet measured"\n'
        "    This build found no benchmark results (`benchmarks/RESULTS.md` or `benchmarks/results/*.json`).\n"
        "    The tables appear here once the benchmarks have been run and their results committed.\n"
    )


GENERATORS: dict[str, Callable[[], str]] = {
    "zoo-table": zoo_table,
    "cli-reference": cli_reference,
    "benchmark-results": benchmark_results,
}


def on_files(files: Files, config) -> Files:
    """Carry the benchmark plots and data into the site so the performance page can link them."""
    for path in _benchmark_assets():
        files.append(File.generated(config, path.relative_to(ROOT).as_posix(), abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace every ``<!-- vit-zoo:NAME -->`` marker with what ``GENERATORS[NAME]`` computes."""

    def generate(line: str, outside: bool) -> str:
        match = MARKER.match(line) if outside else None
        if match is None:
            return line
        name = match.group(1)
        if name not in GENERATORS:
            raise PluginError(f"{page.file.src_uri}: unknown marker vit-zoo:{name}; known: {sorted(GENERATORS)}")
        return GENERATORS[name]()

    return "\n".join(generate(line, outside) for line, outside in _lines_outside_fences(markdown)) + "\n"
