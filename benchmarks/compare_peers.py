"""The fidelity numbers of docs/comparison.md: one OpenAI-style ViT-B/16, every library's loader, one table.

The same random weights (OpenAI's key names, QuickGELU, as OpenAI's release) go through vit_zoo, timm's
``vit_base_patch16_clip_224`` (the architecture behind ``vit_base_patch16_clip_224.openai``: GELU), timm's
``vit_base_patch16_clip_quickgelu_224``, transformers' ``CLIPVisionModelWithProjection`` (as
``openai/clip-vit-base-patch16``: quick_gelu) and open_clip's QuickGELU model, the reference: it is OpenAI's
architecture under OpenAI's names. Prints the relative L2 error of each projected CLS embedding in fp32.

    python benchmarks/compare_peers.py [--batch-size 4] [--output benchmarks/results/fidelity_cpu.json]

``--output`` writes the errors with the commit, machine, date and load of the run (``results_report.py`` shows
them in RESULTS.md and the docs' comparison page).

Random weights, not OpenAI's (which cannot be downloaded where this was written): with real weights the
activations, and so the GELU/QuickGELU gap, differ.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import hf_model, open_clip_model, relative_error, run_environment, timm_model  # noqa: E402
from results_report import FIDELITY  # noqa: E402

from vit_zoo import VisionTransformer, get_entry  # noqa: E402


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--output", type=Path, help="also write the errors and where they were measured to this JSON file")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/compare_peers.py", *(sys.argv[1:] if argv is None else argv)])
    environment = run_environment("cpu", command)
    geometry = {"in_channels": 3, "mlp_ratio": 4.0, "activation": "quick_gelu", "layer_norm_eps": 1e-5}
    geometry |= get_entry("ViT-B/16").model
    torch.manual_seed(0)
    ours = VisionTransformer(**geometry).eval()
    visual = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    images = torch.randn(args.batch_size, 3, geometry["input_resolution"], geometry["input_resolution"])
    reference = open_clip_model(geometry, visual).eval()(images)
    embeddings = {
        "vit_zoo.VisionTransformer": ours(images)[0],
        "timm vit_base_patch16_clip_224 (the .openai tag's model, GELU)": timm_model(
            {**geometry, "activation": "gelu"}, visual
        ).eval()(images),
        "timm vit_base_patch16_clip_quickgelu_224": timm_model(geometry, visual).eval()(images),
        "transformers CLIPVisionModelWithProjection (sdpa)": hf_model(geometry, visual, "sdpa")
        .eval()(pixel_values=images)
        .image_embeds,
    }
    errors = {name: relative_error(embedding, reference) for name, embedding in embeddings.items()}
    description = (
        f"ViT-B/16 with the same random OpenAI-style weights in every library, fp32, batch {args.batch_size}: relative L2 "
        "error of the projected CLS embedding against open_clip's QuickGELU model, which is OpenAI's architecture."
    )
    print(description)
    for name, error in errors.items():
        print(f"  {name:<66} {error:.1e}")
    if args.output:
        environment["load_average_end"] = os.getloadavg()
        report = {"benchmark": FIDELITY, "environment": environment, "description": description, "errors": errors}
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return errors


if __name__ == "__main__":
    main()
