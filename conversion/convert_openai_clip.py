#!/usr/bin/env python
"""Convert OpenAI CLIP weights into a vit_zoo folder; the same as ``vit-zoo convert``.

    python conversion/convert_openai_clip.py ViT-B/32 --output vit-b32
    python conversion/convert_openai_clip.py ~/Downloads/ViT-L-14.pt --output vit-l14 --dtype float32

SRC is an OpenAI model name (downloaded into the cache with its SHA-256 checked) or a checkpoint file.
See ``python conversion/convert_openai_clip.py --help`` for the options.
"""

import sys

from vit_zoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
