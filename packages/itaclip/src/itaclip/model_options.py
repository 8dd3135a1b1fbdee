"""The flags that choose the model and how it runs, shared by ``itaclip segment`` and ``itaclip
eval`` (argparse only: ``--help`` imports nothing heavy). Their values are checked by the API
(:class:`itaclip.config.SegmenterConfig`, :func:`itaclip.segmenter.check_from_pretrained`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Add the model and window options of ``segment`` and ``eval`` to ``parser``."""
    parser.add_argument(
        "--model",
        default="ViT-B-16-quickgelu",
        help="open_clip model name, a hub id (owner/name or hf-hub:owner/name), or a folder "
        "holding open_clip_config.json (./DIR or local-dir:DIR; `itaclip tiny-model DIR` "
        "writes one) (default: %(default)s)",
    )
    parser.add_argument(
        "--pretrained",
        default="openai",
        help="weights tag of a built-in --model, or a weights file ('' = random weights) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--stride",
        type=int,
        default=None,
        help="sliding-window step in px, in [1, 224] (the crop) (default: the preset's, 28)",
    )
    parser.add_argument(
        "--short-side",
        type=int,
        default=None,
        help="resize the image's short side to this many px, in [1, 2048], the long side kept "
        "<= 2048 (default: the preset's, 336; coco_stuff 448, cityscapes 560)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per ViT pass (crops x 5 variants), >= 1 (default: 20 on a GPU, 5 on the CPU)",
    )
    parser.add_argument(
        "--allow-large",
        action="store_true",
        help="run even when an image's memory estimate (ViT pass, windows, output maps) exceeds "
        "the memory available",
    )
    parser.add_argument("--no-pamr", action="store_true", help="skip PAMR refinement")
    parser.add_argument("--faithful", action="store_true", help="official quirks on")
    parser.add_argument(
        "--no-img-engineering",
        action="store_true",
        help="encode the original crops only (no gray, blur or flips; official switch off)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="text-embedding cache folder (default: ~/.cache/itaclip/text)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress (default: bars on a terminal, a line every 10 s in a log)",
    )
