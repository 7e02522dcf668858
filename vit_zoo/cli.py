"""The ``vit-zoo`` command line. Each subcommand is a ``(add_arguments, run)`` pair in ``COMMANDS``.

Errors end the command with one line on stderr and a non-zero exit code; ``--debug`` shows the traceback.
A subcommand imports what it needs when it runs (torch, timm, transformers take seconds to import), so
``--help``, ``list`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ._version import DISTRIBUTION, __version__, check_no_namesake
from .download import BASE_URL_ENV, CACHE_ENV
from .errors import CliError, first_line
from .exporter import DEFAULT_OPSET, EXPORT_DTYPES, FORMATS, export, output_names
from .spec import ACTIVATIONS, DTYPE_NAMES
from .zoo import list_entries, openai_names

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


def _add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--names-only", action="store_true", help="print only the variant names")


def _run_list(args: argparse.Namespace) -> int:
    """Show the zoo: every variant with its geometry, size and pretrained sources."""
    entries = list_entries()
    if args.names_only:
        print("\n".join(entry.name for entry in entries))
        return 0
    header = ("name", "res", "patch", "width", "layers", "heads", "out", "params (M)", "GFLOPs", "pretrained")
    rows = [
        (
            entry.name,
            entry.model["input_resolution"],
            entry.model["patch_size"],
            entry.model["width"],
            entry.model["layers"],
            entry.model["heads"],
            entry.model["output_dim"],
            f"{entry.num_params / 1e6:.1f}",
            f"{2 * entry.gmacs:.1f}",
            ", ".join(f"{tag} ({source.openai_name})" if source.openai_name else tag for tag, source in entry.pretrained.items())
            or "-",
        )
        for entry in entries
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="SRC",
        help=f"OpenAI model name ({', '.join(openai_names())}), downloaded and SHA-256 checked, or a checkpoint "
        "file: OpenAI .pt archive, open_clip or transformers CLIP state dict (.pt/.bin/.safetensors)",
    )
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="folder to create; must not exist")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, help="convert the weights to this dtype (default: keep the source's)")
    parser.add_argument(
        "--name", metavar="ZOO_NAME", help="zoo variant the checkpoint must match; its heads and activation are used"
    )
    parser.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        help="MLP activation, invisible in the weights: quick_gelu (OpenAI, default) or gelu (open_clip non-QuickGELU)",
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help=f"download cache (default ${CACHE_ENV} or ~/.cache/vit_zoo; mirror: ${BASE_URL_ENV})",
    )
    parser.add_argument(
        "--note", metavar="TEXT", help="one line every user of the folder must see (e.g. 'random weights'), atop its card"
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="then push the folder to this Hub repo (one commit)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    parser.add_argument("--token", help="with --push-to-hub: Hub token (default: HF_TOKEN or `hf auth login`)")


def _run_convert(args: argparse.Namespace) -> int:
    """Convert CLIP weights (an OpenAI name or a local file) into a vit_zoo folder of safetensors."""
    from .convert import convert_checkpoint
    from .hub import push_folder

    output = convert_checkpoint(
        args.source,
        args.output,
        dtype=args.dtype,
        name=args.name,
        activation=args.activation,
        cache_dir=args.cache_dir,
        note=args.note,
    )
    print(f"wrote {output}: " + ", ".join(sorted(path.name for path in output.iterdir())))
    if args.push_to_hub:
        commit = push_folder(output, args.push_to_hub, token=args.token, private=args.private)
        print(f"pushed {output} to {args.push_to_hub} (commit {commit})")
    return 0


def _add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="a folder written by `vit-zoo convert`")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repo to push to, e.g. your-name/vit-zoo-b32")
    parser.add_argument("--private", action="store_true", help="create the repo private (if it does not exist yet)")
    parser.add_argument("--revision", help="branch to push to (created from main when missing)")
    parser.add_argument("--commit-message", help="commit title (default: 'Upload DIR with vit-zoo')")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the token saved by `hf auth login`)")


def _run_push(args: argparse.Namespace) -> int:
    """Upload a converted folder to the Hugging Face Hub as one commit."""
    from .hub import push_folder

    commit = push_folder(
        args.folder,
        args.repo_id,
        token=args.token,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
    )
    print(f"pushed {args.folder} to {args.repo_id} (commit {commit})")
    return 0


def _add_pull_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repo written by vit-zoo")
    parser.add_argument("--revision", help="branch, tag or commit id to pin (default: main)")
    parser.add_argument("--output", metavar="DIR", help="copy the files into this new folder (default: HF cache only)")
    parser.add_argument("--token", help="Hub token for private repos")


def _run_pull(args: argparse.Namespace) -> int:
    """Download a vit_zoo repo from the Hub (through the HF cache) and print its local folder."""
    from .hub import pull

    print(pull(args.repo_id, revision=args.revision, output=args.output, token=args.token))
    return 0


def _add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="vit_zoo folder, zoo or OpenAI name (ViT-B/32...), or Hub repo id")
    parser.add_argument("images", metavar="IMAGE_OR_DIR", nargs="+", help="image files and folders of images")
    parser.add_argument(
        "--output",
        "-o",
        default="embeddings.safetensors",
        metavar="FILE",
        help="embeddings file, .safetensors (with file names in its metadata) or .npy "
        "(names in FILE.files.txt); default: embeddings.safetensors",
    )
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass (default 32)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="compute dtype (default float32)")
    parser.add_argument("--attention-map", metavar="DIR", help="also write CLS->patch attention overlays (PNG) here")
    parser.add_argument("--layer", type=int, default=-1, help="layer of the overlay, negative from the last (default -1)")
    parser.add_argument("--heads", default="mean", help="head reduction: mean, max or indices like 0,3 (default mean)")
    parser.add_argument("--all-layers", action="store_true", help="also write a grid of every layer's overlay")
    parser.add_argument("--cache-dir", metavar="DIR", help="where zoo names are downloaded and converted")


def _run_embed(args: argparse.Namespace) -> int:
    """Embed images with a vit_zoo model; optionally draw its attention maps over them."""
    from .embed import check_outputs, collect_images, embed_images, load_model, resolve_model_folder, save_embeddings

    files = collect_images(args.images)
    folder = resolve_model_folder(args.model, args.cache_dir)
    check_outputs(args.output, args.attention_map, folder, files)
    model, processor = load_model(folder, args.device, args.dtype)
    crop_pct = processor.crop_size["height"] / processor.size["shortest_edge"]
    attention_dir = Path(args.attention_map) if args.attention_map else None
    result = embed_images(
        model,
        processor,
        files,
        batch_size=args.batch_size,
        attention_dir=attention_dir,
        layer=args.layer,
        heads=args.heads,
        all_layers=args.all_layers,
        crop_pct=crop_pct,
        progress=args.progress,
    )
    for path, reason in result.skipped.items():
        print(f"vit-zoo embed: skipped {path}: {reason}", file=sys.stderr)
    if not result.files:
        raise CliError(f"none of the {len(files)} files could be read as an image")
    output = save_embeddings(args.output, result, args.model)
    print(f"embedded {_count(len(result.files), 'image')} into {output} ({len(result.skipped)} skipped)")
    if attention_dir is not None:
        print(f"wrote {_count(len(result.overlays), 'attention overlay')} into {attention_dir}")
    return 0


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="vit_zoo folder, zoo or OpenAI name (ViT-B/32...), or Hub repo id")
    parser.add_argument(
        "--format",
        default="onnx",
        choices=FORMATS,
        help="onnx (for onnxruntime; the default), pt2 (torch.export.save) or aoti (an AOTInductor package for this CPU)",
    )
    parser.add_argument(
        "--output", "-o", required=True, metavar="FILE", help="file to create, .onnx or .pt2 (pt2, aoti); must not exist"
    )
    parser.add_argument(
        "--attention-map", action="store_true", help="also output attention_map [layers, batch, heads, grid, grid]"
    )
    parser.add_argument("--patch-tokens", action="store_true", help="also output patch_tokens [batch, grid*grid, width]")
    parser.add_argument(
        "--dtype", default="float32", choices=EXPORT_DTYPES, help="of the weights, the input and the outputs (default float32)"
    )
    parser.add_argument("--opset", type=int, help=f"ONNX opset, --format onnx only (default {DEFAULT_OPSET})")
    parser.add_argument("--cache-dir", metavar="DIR", help="where zoo names are downloaded and converted")


def _run_export(args: argparse.Namespace) -> int:
    """Export a model to ONNX, torch.export or AOTInductor, with its attention map if asked; batch size dynamic."""
    output = export(
        args.model,
        args.output,
        format=args.format,
        attention_map=args.attention_map,
        patch_tokens=args.patch_tokens,
        dtype=args.dtype,
        opset=args.opset,
        cache_dir=args.cache_dir,
    )
    outputs = ", ".join(output_names(args.patch_tokens, args.attention_map))
    print(f"wrote {output} ({args.format}, {args.dtype}; pixel_values -> {outputs}; checked against eager torch)")
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: list[Command] = [
    ("list", _add_list_arguments, _run_list),
    ("convert", _add_convert_arguments, _run_convert),
    ("push", _add_push_arguments, _run_push),
    ("pull", _add_pull_arguments, _run_pull),
    ("embed", _add_embed_arguments, _run_embed),
    ("export", _add_export_arguments, _run_export),
]


def _add_common_arguments(parser: argparse.ArgumentParser, default: object) -> None:
    """Options accepted before and after the subcommand (``default`` SUPPRESS keeps a subparser from resetting them)."""
    parser.add_argument("--debug", action="store_true", default=default, help="show the full traceback on errors")
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        default=default,
        help="no progress bars (they are shown only when stderr is a terminal anyway)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vit-zoo", description="OpenAI CLIP vision towers for timm and transformers: convert, push, pull, embed, export."
    )
    parser.add_argument("--version", action="version", version=f"{DISTRIBUTION} {__version__}")
    _add_common_arguments(parser, default=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_common_arguments(common, default=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add_arguments, run in COMMANDS:
        summary = (run.__doc__ or "").strip().splitlines()[0] if run.__doc__ else None
        sub = subparsers.add_parser(name, help=summary, description=summary, parents=[common])
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def _disable_progress_bars() -> None:
    """Progress bars off, for the libraries not imported yet (their environment switches) and those already imported."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # huggingface_hub, and transformers' "Loading weights"
    os.environ["TQDM_DISABLE"] = "1"
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vit-zoo`` console script; returns the exit code."""
    try:
        check_no_namesake()  # again: the namesake's __init__.py may be the one that ran
    except ImportError as error:
        print(f"vit-zoo: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    args = build_parser().parse_args(argv)
    args.progress = sys.stderr.isatty() and not args.quiet
    if not args.progress:
        _disable_progress_bars()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("vit-zoo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as error:
        if error.code == EXIT_TERMINATED:
            print("vit-zoo: terminated", file=sys.stderr)
        raise
    except Exception as error:  # noqa: BLE001 - every failure becomes one line unless --debug
        if args.debug:
            raise
        print(f"vit-zoo {args.command}: error: {first_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame) -> None:
    """SIGTERM unwinds like Ctrl-C: every staging file and folder is removed on the way out."""
    raise SystemExit(EXIT_TERMINATED)


if __name__ == "__main__":
    sys.exit(main())
