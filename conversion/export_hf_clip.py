#!/usr/bin/env python
"""Write a vit_zoo folder back out as a transformers ``CLIPVisionModelWithProjection`` folder.

    python conversion/export_hf_clip.py vit-b32 --output vit-b32-hf-clip

The result loads with ``CLIPVisionModelWithProjection.from_pretrained`` and gives the same ``image_embeds``;
``vit-zoo convert`` of its ``model.safetensors`` gives the vit_zoo weights back bit for bit.
"""

import argparse
import sys
from pathlib import Path

from safetensors.torch import load_file
from transformers import CLIPVisionModelWithProjection

from vit_zoo import VitZooConfig
from vit_zoo.state_dicts import to_hf_clip_state_dict, to_hf_clip_vision_config


def export(folder: Path, output: Path) -> None:
    if output.exists():
        raise SystemExit(f"export_hf_clip: error: output {output} already exists; choose a new folder or remove it")
    config = VitZooConfig.from_pretrained(folder)
    weights = to_hf_clip_state_dict(load_file(folder / "model.safetensors"))
    hf_config = to_hf_clip_vision_config(config)
    hf_config.dtype = config.dtype
    model = CLIPVisionModelWithProjection(hf_config)
    model.load_state_dict(weights, strict=True, assign=True)
    model.save_pretrained(output)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder written by vit-zoo convert")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder to create")
    args = parser.parse_args(argv)
    export(args.folder, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
