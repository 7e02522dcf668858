"""The main job, offline: make an OpenAI-format CLIP archive, convert it, load it everywhere, check agreement.

1. Builds a ViT-B/32-shaped CLIP (2 blocks instead of 12, random weights) the way OpenAI ships theirs: an
   fp16 TorchScript archive holding the whole model (image tower ``visual.*``, a text tower, the scalars).
2. Converts it with ``vit_zoo.convert_checkpoint`` (what ``vit-zoo convert FILE`` runs) to float32.
3. Loads the folder through timm (``local-dir:``), transformers (``AutoModel``), transformers' remote code
   (a fresh interpreter where vit_zoo cannot be imported) and the core ``VisionTransformer``, and checks
   every embedding against the original model's.

Usage: ``python conversion/offline_demo.py [--workdir DIR]``; exits 1 if any loader disagrees. Kept in ``DIR``
(default ``./vit-zoo-demo``; a rerun replaces the demo's own files there): the archive, the converted folder (its
card and ``config.json`` say that its weights are random) and an example image. The last line is the next
command to try on the converted folder, written to run as pasted from the current folder.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel
from transformers.utils import logging as transformers_logging

from vit_zoo import VisionTransformer, VitZooConfig, convert_checkpoint

GEOMETRY = dict(input_resolution=224, patch_size=32, width=768, layers=2, heads=12, output_dim=512)
TOLERANCE = 1e-5
DEFAULT_WORKDIR = Path("vit-zoo-demo")
NOTE = "random weights (vit-zoo's offline demo): its embeddings and attention maps mean nothing"

# Prepended to a script run with `python -c`: vit_zoo cannot be imported there, as where it is not installed.
BLOCK_VIT_ZOO = """
import importlib.abc, sys
class BlockVitZoo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "vit_zoo":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: this run shows transformers' remote code alone)")
sys.meta_path.insert(0, BlockVitZoo())
"""
REMOTE_CODE = (
    BLOCK_VIT_ZOO
    + """
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel
source, work = sys.argv[1], sys.argv[2]
model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
with torch.no_grad():
    embeds = model(load_file(work + "/images.safetensors")["images"]).image_embeds
save_file({"embeds": embeds.contiguous()}, work + "/remote.safetensors")
"""
)


class OpenAIStyleClip(nn.Module):
    """Parameter names and dtypes of OpenAI's released CLIP; the text tower is only there to be skipped."""

    def __init__(self, text_width: int = 64, context_length: int = 8, vocab_size: int = 128) -> None:
        super().__init__()
        self.visual = VisionTransformer(**GEOMETRY)
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, text_width) * 0.01)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList([nn.Linear(text_width, text_width)])
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.randn(text_width, GEOMETRY["output_dim"]) * text_width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))
        scalars = dict(input_resolution=GEOMETRY["input_resolution"], context_length=context_length, vocab_size=vocab_size)
        for name, value in scalars.items():
            self.register_buffer(name, torch.tensor(value))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)[0]


def write_openai_archive(path: Path, seed: int = 0) -> OpenAIStyleClip:
    torch.manual_seed(seed)
    clip = OpenAIStyleClip().half().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warnings; OpenAI's archives were traced too
        torch.jit.save(torch.jit.trace(clip, torch.zeros(1, 3, 224, 224, dtype=torch.half)), str(path))
    return clip


def remote_code_embeddings(source: str | Path, images: torch.Tensor) -> torch.Tensor:
    """``images`` embedded by ``AutoModel.from_pretrained(source, trust_remote_code=True)`` (a folder or a Hub
    repo) in a fresh interpreter where vit_zoo cannot be imported; the tensors pass through a temporary folder."""
    source = str(source.resolve()) if isinstance(source, Path) else source
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    with tempfile.TemporaryDirectory(prefix="vit-zoo-remote-code-") as work:
        save_file({"images": images}, Path(work) / "images.safetensors")
        command = [sys.executable, "-c", REMOTE_CODE, source, work]
        result = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"transformers' remote code failed on {source}:\n{result.stderr[-3000:]}")
        return load_file(Path(work) / "remote.safetensors")["embeds"]


def write_example_image(path: Path) -> Path:
    """A 320x240 gradient: something for ``vit-zoo embed`` to look at."""
    Image.linear_gradient("L").convert("RGB").resize((320, 240)).save(path)
    return path


@torch.no_grad()
def run(workdir: Path) -> bool:
    archive = workdir / "ViT-B-32-2blocks.pt"
    clip = write_openai_archive(archive)
    print(f"1. wrote {archive}: an fp16 TorchScript archive of a whole CLIP ({archive.stat().st_size / 1e6:.1f} MB)")

    shutil.rmtree(workdir / "converted", ignore_errors=True)  # a rerun replaces the previous run's folder
    folder = convert_checkpoint(archive, workdir / "converted", dtype="float32", note=NOTE)
    print(f"2. converted it to {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")

    torch.manual_seed(1)
    images = torch.randn(4, 3, 224, 224)
    expected = clip.visual.float()(images)[0]  # the original model, fp32 compute on its fp16 weights
    core = VisionTransformer(**VitZooConfig.from_pretrained(folder).geometry).eval()
    core.load_state_dict(load_file(folder / "model.safetensors"))
    embeddings = {
        "vit_zoo.VisionTransformer": core(images)[0],
        "timm local-dir:": timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(images),
        "transformers AutoModel": AutoModel.from_pretrained(folder).eval()(images).image_embeds,
        "transformers remote code": remote_code_embeddings(folder, images),
    }
    print("3. embeddings of 4 images, against the original model's:")
    agree = True
    for loader, embedding in embeddings.items():
        error = ((embedding - expected).norm() / expected.norm()).item()
        agree &= error <= TOLERANCE
        print(f"   {loader:<28} shape {tuple(embedding.shape)}  relative error {error:.1e}")
    identical = all(torch.equal(e, embeddings["vit_zoo.VisionTransformer"]) for e in embeddings.values())
    print(f"   all loaders bit-identical to each other: {identical}")
    if not (agree and identical):
        print("MISMATCH")
        return False
    image = write_example_image(workdir / "example.png")
    next_command = [
        *vit_zoo_command(),
        "embed",
        str(folder),
        str(image),
        "--output",
        str(workdir / "embeddings.safetensors"),
        "--overlays",
        str(workdir / "attention"),
    ]
    print(f"OK: timm and transformers load the converted folder and agree; it is kept in {folder}")
    print(f"Next, embed images with it and draw its attention maps:\n  {shlex.join(next_command)}")
    return True


def vit_zoo_command() -> list[str]:
    """The ``vit-zoo`` command of this interpreter as it runs when pasted in the current folder: the console script
    beside it (``.venv/bin/vit-zoo`` in the README's flow, where a bare ``vit-zoo`` is not on the PATH), else
    ``python -m vit_zoo``."""
    interpreter = Path(sys.executable)
    script = interpreter.with_name("vit-zoo")
    chosen = script if script.is_file() and os.access(script, os.X_OK) else interpreter
    try:
        shown = chosen.relative_to(Path.cwd())
        shown_text = str(shown) if shown.parent != Path(".") else f"./{shown}"
    except ValueError:
        shown_text = str(chosen)
    return [shown_text] if chosen == script else [shown_text, "-m", "vit_zoo"]


def main(argv: list[str] | None = None) -> int:
    transformers_logging.disable_progress_bar()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"where the archive, the converted folder and an example image are kept (default: ./{DEFAULT_WORKDIR})",
    )
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    return 0 if run(args.workdir) else 1


if __name__ == "__main__":
    sys.exit(main())
