"""The ``pixelsmith`` command.

pixelsmith generate "prompt" --sizes 1024 2048 4096 --slider 20 30 --seed 0 -o out.tif
           [--model HUB_ID_OR_DIR] [--vae auto|none|HUB_ID_OR_DIR] [--steps 50] [--guidance 7.5]
           [--scheduler grid|random] [--faithful] [--patch-size 128] [--band 10] ...
pixelsmith tiny-model DIR [--seed 0]     # a tiny random SDXL-shaped model folder (offline runs)

Sizes are px, an int for a square or HEIGHTxWIDTH. The first size is plain SDXL.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from pixelsmith.cascade import generate_cascade
from pixelsmith.config import (
    BLENDS,
    HANDOVERS,
    PATCH_SCHEDULERS,
    POSTERIORS,
    PixelsmithConfig,
    parse_size,
)
from pixelsmith.pipelines.pixelsmith import DEFAULT_MODEL, PixelsmithPipeline
from pixelsmith.tiny import save_tiny_model

DTYPES = {
    "auto": None,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelsmith", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate an image through a cascade of sizes")
    gen.add_argument("prompt")
    gen.add_argument("--sizes", nargs="+", required=True, help="stage sizes in px: 1024 or HxW")
    gen.add_argument(
        "--slider", nargs="*", type=int, default=[], help="one slider per stage after the first"
    )
    gen.add_argument("-o", "--output", type=Path, required=True, help=".tif (BigTIFF) or .png/...")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=50, help="denoising steps per stage")
    gen.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    gen.add_argument("--negative", default=None, help="negative prompt")
    gen.add_argument("--model", default=DEFAULT_MODEL, help="SDXL hub id or diffusers folder")
    gen.add_argument(
        "--vae",
        default="auto",
        help="VAE hub id or folder; 'auto' = sdxl-vae-fp16-fix for the SDXL base id, the model's "
        "own otherwise; 'none' = the model's own",
    )
    gen.add_argument("--no-ddim", action="store_true", help="keep the model's own scheduler")
    gen.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    gen.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="auto",
        help="weights dtype ('auto': float16 on CUDA, float32 otherwise)",
    )
    gen.add_argument("--scheduler", choices=PATCH_SCHEDULERS, default=None, help="patch placement")
    gen.add_argument("--faithful", action="store_true", help="reproduce the official sampler")
    gen.add_argument("--patch-size", type=int, default=128, help="latent px (128 = 1024 px)")
    gen.add_argument("--band", type=int, default=10, help="seam band in latent px")
    gen.add_argument("--patch-batch", type=int, default=4, help="disjoint patches per UNet call")
    gen.add_argument("--grid-min-overlap", type=int, default=0, help="latent px")
    gen.add_argument(
        "--no-grid-stagger",
        action="store_true",
        help="keep the minimum grid at every step (no half-patch shift on odd steps)",
    )
    gen.add_argument("--posterior", choices=POSTERIORS, default="sample", help="guidance latent")
    gen.add_argument("--handover", choices=HANDOVERS, default=None, help="stage hand-over")
    gen.add_argument("--vae-tile", type=int, default=128, help="VAE tile in latent px")
    gen.add_argument("--vae-overlap", type=int, default=16, help="VAE tile overlap, latent px")
    gen.add_argument("--vae-blend", choices=BLENDS, default="linear")
    gen.add_argument(
        "--checkpoint-dir", type=Path, default=None, help="default <output>.pixelsmith"
    )
    gen.add_argument("--checkpoint-every", type=int, default=1, help="steps between checkpoints")
    gen.add_argument("--keep-checkpoint", action="store_true")
    gen.add_argument(
        "--restart",
        action="store_true",
        help="discard an existing checkpoint folder instead of resuming it",
    )
    gen.add_argument("--save-intermediate", action="store_true", help="write every stage")
    gen.add_argument("--compression", default=None, help="TIFF compression, e.g. zlib")
    gen.add_argument("--quiet", action="store_true", help="no progress bars")
    tiny = commands.add_parser("tiny-model", help="write a tiny random SDXL-shaped model folder")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def load_pipeline(args: argparse.Namespace) -> PixelsmithPipeline:
    dtype = DTYPES[args.dtype]
    if dtype is None:
        dtype = torch.float16 if str(args.device).startswith("cuda") else torch.float32
    vae = None if args.vae == "none" else args.vae
    pipe = PixelsmithPipeline.from_pretrained(
        args.model, vae=vae, ddim=not args.no_ddim, torch_dtype=dtype
    )
    return pipe.to(args.device)


def run_generate(args: argparse.Namespace) -> int:
    config = PixelsmithConfig(
        patch_size=args.patch_size,
        band=args.band,
        patch_scheduler=args.scheduler,
        patch_batch_size=args.patch_batch,
        grid_min_overlap=args.grid_min_overlap,
        grid_stagger=not args.no_grid_stagger,
        faithful=args.faithful,
        guidance_posterior=args.posterior,
        handover=args.handover,
        vae_tile=args.vae_tile,
        vae_overlap=args.vae_overlap,
        vae_blend=args.vae_blend,
    )
    sizes = [parse_size(s) for s in args.sizes]
    pipe = load_pipeline(args)
    pipe.set_progress_bar_config(disable=args.quiet)
    path = generate_cascade(
        pipe,
        args.prompt,
        sizes,
        args.slider,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        output=args.output,
        negative_prompt=args.negative,
        config=config,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoint=args.keep_checkpoint,
        restart=args.restart,
        save_intermediate=args.save_intermediate,
        compression=args.compression,
        progress=not args.quiet,
    )
    print(f"wrote {path}")
    return 0


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that temporary files are cleaned up."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _log_to_stderr() -> None:
    """Show the package's info lines (resuming, stages loaded from a checkpoint) on stderr."""
    logger = logging.getLogger("pixelsmith")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("pixelsmith: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        if args.command == "tiny-model":
            print(f"wrote {save_tiny_model(args.directory, seed=args.seed)}")
            return 0
        return run_generate(args)
    except ValueError as error:
        print(f"pixelsmith: error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        what = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        print(
            f"pixelsmith: {what}; run the same command again to resume from the last saved step",
            file=sys.stderr,
        )
        return 130 if isinstance(stop, KeyboardInterrupt) else 143
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
