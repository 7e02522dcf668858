"""MkDocs hooks: pages hold markers such as ``<!-- vit-zoo:zoo-table -->`` that are replaced at build time.

Two kinds of marker, both counted only outside code blocks and inline code (so a page can name one, as the
Contributing page does, without the generated content landing there):

- a *block* marker stands on a line of its own and becomes Markdown: ``zoo-table`` (from ``configs/*.yaml``),
  ``cli-reference`` (from ``vit_zoo.cli.build_parser()``), ``benchmark-results`` (every file of
  ``benchmarks/results``: where it was measured, its tables and its plot) and ``<!-- vit-zoo:results FILE -->``
  (one of them);
- a *value* marker sits in a sentence or a table cell and becomes one number of a results file, formatted as
  the tables format it: ``<!-- vit-zoo:ratio FILE MODEL CASE -->`` (× the file's baseline: timm eager for
  ``bench_speed.py``, the hand-written timm script for ``bench_embed.py``, eager torch for ``bench_export.py``),
  ``rate`` (images/s), ``overhead`` (the extra time of a case with attention maps), ``export-time`` (seconds of
  a whole export process), ``<!-- vit-zoo:scale FILE QUANTITY -->`` (``bench_embed.py``'s run over many small
  images: ``images``, ``rate``, ``peak-memory``, ``resumed-output``), ``<!-- vit-zoo:fidelity FILE LIBRARY -->``
  (relative L2 error) and ``<!-- vit-zoo:measured-on FILE -->`` (machine, commit, date, load). Arguments with
  spaces are quoted (``"vit_zoo compiled"``); MODEL is a zoo name, or ``MODEL/DTYPE/BATCH`` (speed) and
  ``MODEL/LAYERS`` (embed) where a file holds several runs of one model.

Everything a marker stands for is computed from the code and data in the repository, so the site cannot
drift from them; the plots are drawn from the results files at build time. An unknown marker, or one naming
a file, model or case that does not exist, fails the build.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
for path in (ROOT, BENCHMARKS):  # build the docs of this checkout, installed or not; results_report is a script
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import results_report  # noqa: E402

SITE_RESULTS = "benchmarks/results/"  # where the site carries the results files and their plots
BLOCK_MARKER = re.compile(r"^[ \t]*<!--\s*vit-zoo:([a-z-]+)(.*?)-->[ \t]*$")
ANY_MARKER = re.compile(r"<!--\s*vit-zoo:([a-z-]+)(.*?)-->")
CODE_SPAN = re.compile(r"(`+).+?\1")
TABLE = re.compile(r"<table\b.*?</table>", re.S)
PLAIN_CODE = re.compile(r"(<code\b[^>]*>)([^<]*)(</code>)")
MESSAGE = re.compile(r'<div class="vz-message\b.*?</div>', re.S)
TEXT_BETWEEN_TAGS = re.compile(r">([^<]+)<")
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


def benchmark_results(results_dir: Path = BENCHMARKS / "results") -> str:
    """Every results file of ``benchmarks/results`` as a section, or a note when there is none."""
    paths = results_report.results_files(results_dir) if results_dir.is_dir() else []
    if not paths:
        return (
            '!!! note "Not yet measured"\n'
            "    This build found no results files in `benchmarks/results/`. The tables appear here once the\n"
            "    benchmarks have been run and their results committed.\n"
        )
    return "\n".join(results_report.section(path, SITE_RESULTS, heading="###", page_links=False) for path in paths)


def results_section(file: str) -> str:
    """One results file as a section: where it was measured, its tables (and plot)."""
    return results_report.section(BENCHMARKS / "results" / file, SITE_RESULTS, heading="###", page_links=False)


BLOCK_GENERATORS: dict[str, Callable[..., str]] = {
    "zoo-table": zoo_table,
    "cli-reference": cli_reference,
    "benchmark-results": benchmark_results,
    "results": results_section,
}


def _speed(quantity: str) -> Callable[[str, str, str], str]:
    def value(file: str, model: str, case: str) -> str:
        return results_report.speed_value(BENCHMARKS / "results" / file, quantity, model, case)

    return value


def _scale(file: str, quantity: str) -> str:
    return results_report.scale_value(BENCHMARKS / "results" / file, quantity)


def _fidelity(file: str, library: str) -> str:
    return results_report.fidelity_value(BENCHMARKS / "results" / file, library)


def _measured_on(file: str) -> str:
    return results_report.source(results_report.load(BENCHMARKS / "results" / file)["environment"])


VALUE_GENERATORS: dict[str, Callable[..., str]] = {
    "ratio": _speed("ratio"),
    "rate": _speed("rate"),
    "overhead": _speed("overhead"),
    "export-time": _speed("export-time"),
    "scale": _scale,
    "fidelity": _fidelity,
    "measured-on": _measured_on,
}


def expand_value(name: str, arguments: str, where: str) -> str:
    """The text a value marker stands for; ``PluginError`` naming the page when it cannot be computed."""
    if name in BLOCK_GENERATORS:
        raise PluginError(f"{where}: vit-zoo:{name} makes a block; put it on a line of its own")
    return _generate(VALUE_GENERATORS, name, arguments, where)


def _generate(generators: dict[str, Callable[..., str]], name: str, arguments: str, where: str) -> str:
    """What the marker ``name`` with ``arguments`` stands for; ``PluginError`` naming the page when it is unknown,
    has the wrong arguments or cannot be computed."""
    if name not in generators:
        known = sorted([*BLOCK_GENERATORS, *VALUE_GENERATORS])
        raise PluginError(f"{where}: unknown marker vit-zoo:{name}; known: {known}")
    generator, values = generators[name], shlex.split(arguments)
    try:
        inspect.signature(generator).bind(*values)
    except TypeError:
        wanted = " ".join(inspect.signature(generator).parameters).upper()
        raise PluginError(f"{where}: vit-zoo:{name} takes {wanted}, got {arguments.strip()!r}") from None
    try:
        return generator(*values)
    except results_report.ReportError as error:
        raise PluginError(f"{where}: vit-zoo:{name}: {error}") from None


def expand_line(line: str, where: str) -> str:
    """A line with every value marker outside inline code replaced by its value."""
    parts, position = [], 0
    for span in CODE_SPAN.finditer(line):
        parts += [_expand_values(line[position : span.start()], where), span.group(0)]
        position = span.end()
    return "".join([*parts, _expand_values(line[position:], where)])


def _expand_values(text: str, where: str) -> str:
    return ANY_MARKER.sub(lambda match: expand_value(match.group(1), match.group(2), where), text)


def on_files(files: Files, config) -> Files:
    """Carry the results files into the site, with each speed results file's plot drawn from it."""
    results_dir = BENCHMARKS / "results"
    for path in results_report.results_files(results_dir) if results_dir.is_dir() else []:
        files.append(File.generated(config, SITE_RESULTS + path.name, abs_src_path=str(path)))
        report = results_report.load(path)
        if report["benchmark"] == results_report.SPEED:
            files.append(File.generated(config, f"{SITE_RESULTS}{path.stem}.png", content=results_report.png(report)))
    return files


def _token_spans(text: str) -> str:
    """Each whitespace-separated token of ``text`` (HTML without tags) in a ``<span class="vz-token">``, which the
    stylesheet keeps on one line: browsers break code after ``-`` and ``/`` too, the spans only between tokens."""
    return re.sub(r"\S+", lambda token: f'<span class="vz-token">{token.group(0)}</span>', text)


def keep_code_tokens_whole(html: str) -> str:
    """Inline code in tables, and the code of quoted messages (``{.text .vz-message}`` blocks), wraps between
    tokens, never inside a name, a path or an option like ``-y``: a table cell too narrow for its longest name
    scrolls instead of breaking it. The text is unchanged."""
    html = TABLE.sub(
        lambda table: PLAIN_CODE.sub(lambda code: code.group(1) + _token_spans(code.group(2)) + code.group(3), table.group(0)),
        html,
    )
    return MESSAGE.sub(lambda block: TEXT_BETWEEN_TAGS.sub(lambda text: f">{_token_spans(text.group(1))}<", block.group(0)), html)


def on_page_content(html: str, page, config, files) -> str:
    return keep_code_tokens_whole(html)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace every block marker with what ``BLOCK_GENERATORS[NAME]`` computes and every value marker with
    its number."""
    where = page.file.src_uri

    def generate(line: str, outside: bool) -> str:
        if not outside:
            return line
        block = BLOCK_MARKER.match(line)
        if block and block.group(1) in BLOCK_GENERATORS:
            return _generate(BLOCK_GENERATORS, block.group(1), block.group(2), where)
        return expand_line(line, where)

    return "\n".join(generate(line, outside) for line, outside in _lines_outside_fences(markdown)) + "\n"
