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
    from .hub import hub_timeout, push_folder

    if args.push_to_hub:
        hub_timeout()  # a bad $VIT_ZOO_HUB_TIMEOUT is refused before the conversion, not after it
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
    from .folder_check import check_folder

    check_folder(args.folder)  # before huggingface_hub's import (half a second): a hostile folder is refused at once
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
    parser.add_argument(
        "images",
        metavar="IMAGE_OR_DIR",
        nargs="+",
        help="image files, folders of images (recursive), path lists (.txt one per line, .csv/.parquet column) or "
        "webdataset .tar shards (local, brace patterns like data/{000..099}.tar, or fsspec URLs)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="one embeddings file for small jobs: .safetensors (file names in its metadata) or .npy (names in "
        "FILE.files.txt); default: embeddings.safetensors",
    )
    where.add_argument(
        "--output-dir",
        metavar="DIR",
        help="sharded, resumable output in clip-retrieval's layout: DIR/img_emb/img_emb_N.npy, "
        "DIR/metadata/metadata_N.parquet (rerun the same command to resume)",
    )
    parser.add_argument("--shard-size", type=int, default=10_000, metavar="N", help="images per output shard (default 10000)")
    parser.add_argument("--shard-index", type=int, metavar="I", help="job arrays: write only the shards of job I of --num-shards")
    parser.add_argument("--num-shards", type=int, metavar="K", help="job arrays: how many independent jobs share the shards")
    parser.add_argument("--path-column", default="image_path", metavar="NAME", help="column of .csv/.parquet path lists")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass (default 32)")
    parser.add_argument(
        "--num-workers", type=int, metavar="N", help="processes decoding and preprocessing images (default: the cores)"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda or cuda:N (default cpu; under torchrun cuda is cuda:LOCAL_RANK)"
    )
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="compute dtype (default float32)")
    parser.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    parser.add_argument(
        "--engine",
        default="torch",
        choices=ENGINES,
        help="torch (default), or onnxruntime: the model exported to ONNX once (cached) and run by onnxruntime "
        "(CPU, float32; faster on CPUs; needs the [export] extra)",
    )
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings (clip-retrieval's output is)")
    parser.add_argument(
        "--embedding-dtype", default="float32", choices=("float32", "float16"), help="dtype of the written embeddings"
    )
    parser.add_argument(
        "--attention-map",
        action="store_true",
        help="also keep each image's attention map, the CLS token's attention over the patches (float16 arrays: "
        "DIR/attention/attention_N.npy, or tensor attention_map of a .safetensors --output)",
    )
    parser.add_argument("--layer", type=int, help="layer of the map, negative from the last (default -1)")
    parser.add_argument("--heads", help="head reduction: mean, max or indices like 0,3 (default mean)")
    parser.add_argument("--all-layers", action="store_true", help="keep every layer's map (and draw a grid of them)")
    parser.add_argument("--overlays", metavar="DIR", help="also draw each image's attention over it as PNGs here")
    parser.add_argument("--overlay-size", type=int, default=512, metavar="PX", help="longest edge of overlays (default 512)")
    parser.add_argument("--cache-dir", metavar="DIR", help="where zoo names are downloaded and converted")


ENGINES = ("torch", "onnxruntime")


def _check_onnxruntime_engine(args: argparse.Namespace) -> None:
    import importlib.util

    for option, value, only in (("--device", args.device, "cpu"), ("--dtype", args.dtype, "float32")):
        if value != only:
            raise CliError(f"--engine onnxruntime runs on {only} alone ({option} {value}); use --engine torch for it")
    if args.compile:
        raise CliError("--compile applies to --engine torch; onnxruntime optimises the exported graph itself")
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise CliError(f"--engine onnxruntime needs {', '.join(missing)}: pip install 'vit-zoo-clip[export]'")


def _check_embed_arguments(args: argparse.Namespace) -> None:
    """Every refusal that needs neither torch nor the model: option values, combinations, inputs and outputs."""
    from .embed_inputs import check_device, parse_heads

    for option, value, least in (
        ("--batch-size", args.batch_size, 1),
        ("--shard-size", args.shard_size, 1),
        ("--num-workers", args.num_workers, 0),
        ("--overlay-size", args.overlay_size, 16),
        ("--num-shards", args.num_shards, 1),
        ("--shard-index", args.shard_index, 0),
    ):
        if value is not None and value < least:
            raise CliError(f"{option} must be at least {least}, got {value}")
    if (args.shard_index is None) != (args.num_shards is None):
        raise CliError("--shard-index and --num-shards go together (job I of K); give both or neither")
    if args.num_shards is not None and args.shard_index >= args.num_shards:
        raise CliError(f"--shard-index {args.shard_index} must be below --num-shards {args.num_shards}")
    if not (args.attention_map or args.overlays):
        for option, given in (
            ("--layer", args.layer is not None),
            ("--heads", args.heads is not None),
            ("--all-layers", args.all_layers),
        ):
            if given:
                raise CliError(f"{option} chooses an attention map, but none is asked for; add --attention-map or --overlays")
    args.heads = parse_heads(args.heads or "mean")
    args.layer = -1 if args.layer is None else args.layer
    check_device(args.device)
    if args.engine == "onnxruntime":
        _check_onnxruntime_engine(args)
    if args.output_dir is None:
        sharded = [
            option
            for option, given in (("--shard-index", args.shard_index is not None), ("--shard-size", args.shard_size != 10_000))
            if given
        ]
        if sharded or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            raise CliError(f"{' and '.join(sharded) or 'several processes (WORLD_SIZE)'} need --output-dir; --output is one file")
        args.output = args.output or "embeddings.safetensors"
        _check_single_output(Path(args.output), args.attention_map)


def _check_single_output(output: Path, attention_map: bool) -> None:
    from .embed_inputs import OUTPUT_SUFFIXES

    if output.suffix not in OUTPUT_SUFFIXES:
        raise CliError(f"--output must end in {' or '.join(OUTPUT_SUFFIXES)}, got {output.name}")
    if attention_map and output.suffix == ".npy":
        raise CliError("--attention-map needs a .safetensors --output (tensor attention_map) or --output-dir, not .npy")


def _embed_outputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(option, path) of everything the run writes into, for the location checks."""
    outputs = []
    if args.output_dir is not None:
        outputs.append(("--output-dir", Path(args.output_dir)))
    else:
        outputs.append(("--output", Path(args.output)))
        if args.output.endswith(".npy"):
            outputs.append(("--output", Path(args.output + ".files.txt")))
    if args.overlays is not None:
        outputs.append(("--overlays", Path(args.overlays)))
    return outputs


def _run_embed(args: argparse.Namespace) -> int:
    """Embed images with a vit_zoo model (one file, or sharded and resumable); optionally keep or draw attention maps."""
    from .embed_inputs import (
        FileInputs,
        check_head_and_layer,
        check_not_inside,
        check_output_location,
        collect_inputs,
        resolve_model_folder,
    )

    _check_embed_arguments(args)
    inputs = collect_inputs(args.images, args.path_column)
    if args.output_dir is None and not isinstance(inputs, FileInputs):
        raise CliError("webdataset .tar inputs are written shard by shard: give --output-dir")
    outputs = _embed_outputs(args)
    for option, path in outputs:
        check_output_location(path, option, folder=option != "--output")
    if args.output is not None and args.output.endswith(".npy") and any("\n" in p or "\r" in p for p in inputs.paths):
        raise CliError(
            "an image's file name holds a line break, which the one-name-per-line .npy.files.txt cannot pair; "
            "use a .safetensors --output (names in its metadata)"
        )
    if args.output is not None and args.output.endswith(".safetensors"):
        _check_names_fit_a_header(inputs.paths)
    from .folder_check import read_geometry

    # a local folder is checked here, before torch: a hostile one costs milliseconds to refuse, not the import
    folder = resolve_model_folder(args.model, args.cache_dir)
    check_not_inside(outputs, folder, inputs if isinstance(inputs, FileInputs) else None)
    if args.attention_map or args.overlays is not None:
        geometry = read_geometry(folder / "config.json")
        check_head_and_layer(args.layer, args.heads, geometry.layers, geometry.heads)
    return _embed(args, folder, inputs)


SAFETENSORS_MAX_HEADER = 100_000_000  # safetensors refuses to read (or write) a longer header


def _check_names_fit_a_header(paths: Sequence[str]) -> None:
    """The file names go into the .safetensors header (JSON): past its cap the write would fail after all the work."""
    import json

    size = len(json.dumps(list(paths)))
    if size > SAFETENSORS_MAX_HEADER - (1 << 20):  # a megabyte left for the rest of the header
        raise CliError(
            f"the {len(paths)} file names take {size} bytes, more than a .safetensors header holds "
            f"({SAFETENSORS_MAX_HEADER} bytes); use a .npy --output (names in <output>.files.txt) or --output-dir"
        )


def _embed(args: argparse.Namespace, folder: Path, inputs) -> int:
    """The heavy part of ``vit-zoo embed``: the model, the loader and the writers (torch imported here)."""
    import json

    import torch

    from .embed import AttentionChoice, RunOptions, distributed_environment, print_skipped

    rank, world_size, local_rank, local_world_size = distributed_environment()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    maps_wanted = args.attention_map or args.overlays is not None
    cores = max(1, (os.cpu_count() or 1) // local_world_size)
    torch.set_num_threads(cores)
    device = f"cuda:{local_rank}" if args.device == "cuda" and "LOCAL_RANK" in os.environ else args.device
    options = RunOptions(
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        dtype=args.dtype,
        normalize=args.normalize,
        embedding_dtype=args.embedding_dtype,
        compile=args.compile,
        engine=args.engine,
        attention=AttentionChoice(args.layer, args.heads, args.all_layers) if maps_wanted else None,
        overlays=Path(args.overlays) if args.overlays is not None else None,
        overlay_size=args.overlay_size,
        overlay_note=note[:200] if isinstance(note := config.get("provenance_note"), str) else None,
        num_workers=cores if args.num_workers is None else args.num_workers,
        device=device,
    )
    embedder = _embedder(args, folder, device, options, cores)
    if args.output_dir is None:
        from .embed import embed_to_file

        summary, result, overlays = embed_to_file(embedder, inputs, Path(args.output), args.model, options, args.progress)
        print_skipped(result.skipped)
        line = f"embedded {_count(summary.embedded, 'image')} into {args.output} ({summary.skipped} skipped)"
        if options.overlays is not None:
            line += f"; wrote {_count(len(overlays), 'attention overlay')} into {options.overlays}"
        print(line)
        return 0
    return _embed_sharded(args, embedder, inputs, folder, options, rank, world_size)


def _embedder(args: argparse.Namespace, folder: Path, device: str, options, cores: int):
    """The ``Embedder`` of the checked ``folder`` (resolve_model_folder checked it) on the chosen engine."""
    from .embed import Embedder

    settings = dict(normalize=args.normalize, embedding_dtype=args.embedding_dtype, attention=options.attention)
    if args.engine == "torch":
        return Embedder.from_folder(folder, device=device, dtype=args.dtype, compile=args.compile, check=False, **settings)
    from .exporter import OnnxRuntimeModel, cached_onnx
    from .image_processing import load_image_processor

    maps = options.attention is not None
    model = OnnxRuntimeModel(cached_onnx(folder, maps, args.cache_dir), threads=cores, output_attention_map=maps)
    return Embedder(model, load_image_processor(folder / "preprocessor_config.json"), **settings)


def _embed_sharded(args: argparse.Namespace, embedder, inputs, folder: Path, options, rank: int, world_size: int) -> int:
    from .embed import embed_to_folder, manifest_for, num_shards, process_shards
    from .shards import ShardWriter

    total = num_shards(inputs, options.shard_size)
    shards = process_shards(total, rank, world_size, args.shard_index or 0, args.num_shards or 1)
    manifest = manifest_for(folder, args.model, embedder.preprocess.processor, inputs, options)
    writer = ShardWriter(args.output_dir, manifest, total)
    summary = embed_to_folder(embedder, inputs, writer, shards, options, args.progress)
    counts = [summary.embedded, summary.skipped, summary.shards_written, summary.shards_complete]
    if world_size > 1 and "MASTER_ADDR" in os.environ:
        counts = _sum_over_ranks(counts)
        if rank != 0:
            return 0
    embedded, skipped, written, complete = counts
    rate = f"; {embedded / summary.seconds:.1f} images/s" if embedded and summary.seconds > 0 else ""
    where = f", reasons in {Path(args.output_dir) / 'skipped'}" if skipped else ""
    print(
        f"embedded {_count(embedded, 'image')} into {args.output_dir} ({skipped} skipped{where}): "
        f"{_count(written, 'shard')} written, {complete} already complete of {total}{rate}"
    )
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


def _sum_over_ranks(counts: list[int]) -> list[int]:
    """The counts summed over every torchrun rank (a gloo group, set up and torn down here)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        totals = torch.tensor(counts, dtype=torch.int64)
        dist.all_reduce(totals)
        return totals.tolist()
    finally:
        dist.destroy_process_group()


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
