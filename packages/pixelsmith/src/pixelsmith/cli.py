"""The ``pixelsmith`` command.

pixelsmith generate "prompt" --sizes 1024 2048 4096 --slider 20 30 --seed 0 -o out.tif
           [--model HUB_ID_OR_DIR] [--vae auto|none|HUB_ID_OR_DIR] [--steps 50] [--guidance 7.5]
           [--scheduler grid|random] [--faithful] [--patch-size 128] [--band 10] ...
pixelsmith tiny-model DIR [--seed 0]     # a tiny random SDXL-shaped model folder (offline runs)
pixelsmith app [--model M] [-o OUT] [--port 7860]   # a local Gradio page (pixelsmith[app])
pixelsmith --version

Sizes are px, an int for a square or HEIGHTxWIDTH (1536x2048 is 2048 px wide). The first size
is plain SDXL.

The checks are the API's (``check_from_pretrained``, ``PixelsmithConfig``, ``CascadeOptions``,
``check_lora_options``, ``check_devices``, ``check_cascade``), each run once, before any model is
loaded and before anything is written; what they return (the checked plans) is what the command
then loads and runs. Their errors name the API's arguments and are printed with this command's
flags (``FLAGS``): a bad input ends with one line ``pixelsmith COMMAND: error: ...`` naming the
flag and exit status 2; a failure while working (disk full, a model that cannot
be loaded, a hub that cannot be reached) exits 1; Ctrl-C exits 130 and SIGTERM 143 with one line
(``common_kernels.runtime.cli.run_main``; running the same command again resumes). ``-o`` naming the
``--control-image`` is refused unless ``--in-place``; library chatter is off unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from common_kernels.runtime.cli import (
    Parser,
    WorkError,
    check_device,
    check_folder_writable,
    command_prog,
    one_line,
    run_main,
    usage_errors,
    version_line,
)
from common_kernels.runtime.hub import HubUnreachableError
from common_kernels.runtime.quiet import quiet_libraries
from pixelsmith.config import BLENDS, HANDOVERS, PATCH_SCHEDULERS, POSTERIORS, PixelsmithConfig
from pixelsmith.control import load_controlnet
from pixelsmith.lora import LoraPlan, check_lora_options
from pixelsmith.options import CascadeOptions, CascadePlan, check_cascade
from pixelsmith.parallel import RankGroup, check_devices, init_from_env, run_on_ranks
from pixelsmith.sources import DEFAULT_MODEL, LoadPlan, check_from_pretrained, check_source_hub

if TYPE_CHECKING:  # diffusers (seconds to import) loads after the parsing and the checks
    from pixelsmith.pipelines.pixelsmith import PixelsmithPipeline
DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}  # fmt: skip
# the API's argument -> this command's flag: run_main prints the API's errors with the flags
FLAGS = {
    "pretrained_model_name_or_path": "--model",
    "vae": "--vae",
    "sizes": "--sizes",
    "sliders": "--slider",
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "seed": "--seed",
    "output": "-o/--output",
    "output_dir": "-o/--output",
    "port": "--port",
    "in_place": "--in-place",
    "checkpoint_dir": "--checkpoint-dir",
    "checkpoint_every": "--checkpoint-every",
    "save_intermediate": "--save-intermediate",
    "compression": "--compression",
    "controlnet": "--controlnet",
    "control_image": "--control-image",
    "controlnet_conditioning_scale": "--control-scale",
    "allow_large": "--allow-large",
    "faithful": "--faithful",
    "patch_size": "--patch-size",
    "band": "--band",
    "patch_scheduler": "--scheduler",
    "patch_batch_size": "--patch-batch",
    "grid_min_overlap": "--grid-min-overlap",
    "guidance_posterior": "--posterior",
    "handover": "--handover",
    "vae_tile": "--vae-tile",
    "vae_overlap": "--vae-overlap",
    "vae_blend": "--vae-blend",
    "loras": "--lora",
    "lora_scales": "--lora-scale",
    "devices": "--devices",
    "device": "--device",
}
BAD_INPUT = (ValueError, TypeError, FileNotFoundError)
# numeric options of generate: flag, type, default, help (units and range; the default is added)
NUMBERS = (
    ("--seed", int, 0, "seed of every random draw, in [0, 2**64 - 1]"),
    ("--steps", int, 50, "denoising steps per stage, in [1, 1000] (the scheduler's training "
     "timesteps)"),
    ("--guidance", float, 7.5, "classifier-free guidance scale, a finite number"),
    ("--control-scale", float, 1.0, "ControlNet residual scale, a finite number"),
    ("--patch-size", int, 128, "patch side in latent px (128 = 1024 px), >= 1, a multiple of "
     "the UNet downsampling (4)"),
    ("--band", int, 10, "seam band in latent px, >= 0"),
    ("--patch-batch", int, 4, "disjoint patches per UNet call (x2 with CFG), >= 1; more than "
     "the disjoint patches of the largest stage are clamped to them"),
    ("--grid-min-overlap", int, 0, "least overlap of grid neighbours in latent px, in "
     "[0, --patch-size - 1]"),
    ("--vae-tile", int, 128, "VAE tile side in latent px, >= 1; tiles are clipped to the "
     "latent"),
    ("--vae-overlap", int, 16, "VAE tile overlap in latent px, in [0, --vae-tile - 1]"),
    ("--checkpoint-every", int, 1, "steps between checkpoints, >= 1"),
    ("--devices", int, 1, "processes (one per GPU) sharing each step's patches, >= 1"),
)  # fmt: skip
# the options of ``app``: flags (``-o/--output``: both), argparse keywords
APP_OPTIONS: dict[str, dict[str, Any]] = {
    "--model": {"default": None, "help": "SDXL hub id or diffusers folder (default: "
                f"{DEFAULT_MODEL} with the fp16-fix VAE; offline, the tiny model)"},
    "--vae": {"default": "auto", "help": "as generate's --vae"},
    "-o/--output": {"type": Path, "default": Path("pixelsmith-app"), "help": "folder of the "
                    "final images, pixelsmith_NNNN.png (default: %(default)s, created)"},
    "--device": {"default": None, "help": "as generate's --device"},
    "--dtype": {"choices": sorted(DTYPES), "default": "auto", "help": "as generate's --dtype"},
    "--host": {"default": "127.0.0.1", "help": "address to serve on (default: %(default)s)"},
    "--port": {"type": int, "default": 7860, "help": "TCP port, in [1, 65535] (default: 7860)"},
    "--share": {"action": "store_true", "help": "also open a public Gradio link"},
}  # fmt: skip
RESUME_HINT = "; run the same command again to resume from the last saved step"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pixelsmith", description=__doc__.split("\n\n")[0])
    version = version_line("pixelsmith", "pixelsmith")
    parser.add_argument("--version", action="version", version=version, help="print it, exit")
    commands = parser.add_subparsers(dest="command", required=True)
    shared = argparse.ArgumentParser(add_help=False)
    chatter = "the libraries' progress bars, deprecation notices and tips (off by default)"
    shared.add_argument("--verbose", action="store_true", help=f"keep {chatter}")
    gen = commands.add_parser(
        "generate", parents=[shared], help="generate an image through a cascade of sizes"
    )
    gen.add_argument("prompt")
    gen.add_argument(
        "--sizes",
        nargs="+",
        required=True,
        metavar="SIZE",
        help="stage sizes in px: an int (square) or HEIGHTxWIDTH (1536x2048 is 2048 px wide); "
        "multiples of 8 (the VAE scale factor), growing stage by stage; the first is plain SDXL "
        "(required)",
    )
    gen.add_argument(
        "--slider",
        nargs="*",
        type=int,
        default=[],
        help="steps guided by the upsampled previous stage: one per stage after the first, each "
        "an int in [1, --steps] (default: none, for one size)",
    )
    gen.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help=".tif/.tiff (BigTIFF, streamed) or .png/.jpg/.jpeg/.webp/.bmp (in RAM); never an "
        "input file (--control-image) unless --in-place",
    )
    gen.add_argument("--in-place", action="store_true", help="-o may replace --control-image")
    gen.add_argument("--negative", default=None, help="negative prompt")
    gen.add_argument("--model", default=DEFAULT_MODEL, help="SDXL hub id or diffusers folder")
    gen.add_argument(
        "--vae",
        default="auto",
        help="VAE hub id or folder; 'auto' = sdxl-vae-fp16-fix for the SDXL base id, the model's "
        "own otherwise; 'none' = the model's own",
    )
    gen.add_argument("--no-ddim", action="store_true", help="keep the model's own scheduler")
    gen.add_argument(
        "--lora", action="append", default=[], help="SDXL LoRA file/folder/hub id (repeatable)"
    )
    gen.add_argument(
        "--lora-scale",
        type=float,
        nargs="+",
        default=None,
        help="LoRA weight, finite numbers: one for all LoRAs or one each (default: 1)",
    )
    gen.add_argument("--controlnet", default=None, help="SDXL ControlNet hub id or folder")
    gen.add_argument("--control-image", default=None, help="its condition image (.tif: by tile)")
    gen.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available)"
    )
    gen.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="auto",
        help="weights dtype ('auto': float16 on CUDA, float32 otherwise)",
    )
    gen.add_argument("--scheduler", choices=PATCH_SCHEDULERS, default=None, help="patch placement")
    gen.add_argument("--faithful", action="store_true", help="reproduce the official sampler")
    gen.add_argument(
        "--no-grid-stagger",
        action="store_true",
        help="keep the minimum grid at every step (no half-patch shift on odd steps)",
    )
    gen.add_argument("--posterior", choices=POSTERIORS, default="sample", help="guidance latent")
    gen.add_argument("--handover", choices=HANDOVERS, default=None, help="stage hand-over")
    gen.add_argument("--vae-blend", choices=BLENDS, default="linear")
    gen.add_argument(
        "--checkpoint-dir", type=Path, default=None, help="default <output>.pixelsmith"
    )
    gen.add_argument("--keep-checkpoint", action="store_true")
    gen.add_argument(
        "--restart",
        action="store_true",
        help="discard an existing checkpoint folder instead of resuming it",
    )
    gen.add_argument("--save-intermediate", action="store_true", help="write every stage")
    gen.add_argument(
        "--compression",
        default=None,
        help="TIFF compression of a .tif output, e.g. zlib or lzma (others need imagecodecs)",
    )
    gen.add_argument(
        "--allow-large",
        action="store_true",
        help="skip the memory checks: --sizes' latent maps, a --patch-batch UNet call and a "
        "--vae-tile decoding on --device, the model copies of --devices on cpu",
    )
    gen.add_argument("--quiet", action="store_true", help="no progress bars")
    for flag, kind, default, text in NUMBERS:
        gen.add_argument(flag, type=kind, default=default, help=f"{text} (default: %(default)s)")
    app = commands.add_parser(
        "app", parents=[shared], help="a local Gradio page: a prompt, each stage as it finishes"
    )
    for flags, options in APP_OPTIONS.items():
        app.add_argument(*flags.split("/"), **options)
    tiny = commands.add_parser(
        "tiny-model", parents=[shared], help="write a tiny random SDXL-shaped model folder"
    )
    tiny.add_argument("directory", type=Path, metavar="DIR")
    tiny.add_argument(
        "--seed",
        type=int,
        default=0,
        help="torch seed of the random weights, in [0, 2**64 - 1] (default: %(default)s)",
    )
    return parser


# PixelsmithConfig fields of command-line options (--no-grid-stagger is the negated field)
CONFIG_OPTIONS = ("patch_size", "band", "patch_scheduler", "patch_batch_size",
    "grid_min_overlap", "faithful", "guidance_posterior", "handover", "vae_tile", "vae_overlap",
    "vae_blend")  # fmt: skip


@dataclass(frozen=True)
class GeneratePlan:
    """Every ``generate`` input, checked by the API's checks before the model is loaded."""

    device: torch.device
    models: LoadPlan
    loras: LoraPlan
    cascade: CascadePlan


def option(args: argparse.Namespace, argument: str) -> Any:
    """The value of the option whose flag ``FLAGS`` gives for the API's ``argument``."""
    return getattr(args, FLAGS[argument].split("/")[-1][2:].replace("-", "_"))


def cascade_options(args: argparse.Namespace) -> CascadeOptions:
    """The run's ``CascadeOptions`` (validated when made) of the command-line options."""
    fields = {field: option(args, field) for field in CONFIG_OPTIONS}
    config = PixelsmithConfig(**fields, grid_stagger=not args.no_grid_stagger)
    return CascadeOptions(
        num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
        output=args.output, config=config, checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every, keep_checkpoint=args.keep_checkpoint,
        restart=args.restart, save_intermediate=args.save_intermediate,
        compression=args.compression, controlnet_conditioning_scale=args.control_scale,
        allow_large=args.allow_large, in_place=args.in_place, progress=not args.quiet,
    )  # fmt: skip


def check_generate(args: argparse.Namespace) -> GeneratePlan:
    """Every ``generate`` input checked by the API's checks before the model is loaded and
    anything is written; the hub ids of the adapters reachable (or cached)."""
    device = check_device(args.device)
    launched = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's processes
    with usage_errors(BAD_INPUT):
        models = check_from_pretrained(args.model, None if args.vae == "none" else args.vae)
        loras = check_lora_options(args.lora, args.lora_scale)
        check_devices(args.devices, device, launched=launched, weight_bytes=models.weight_bytes,
                      allow_large=args.allow_large)  # fmt: skip
        plan = check_cascade(
            args.sizes,
            args.slider,
            cascade_options(args),
            controlnet=args.controlnet,
            control_image=args.control_image,
            shape=models.shape,
            device=device,
            world_size=max(args.devices, launched),
            writes=os.environ.get("RANK", "0") == "0",  # under torchrun rank 0 alone writes
        )
    loras.check_hub()
    if args.controlnet is not None:
        check_source_hub(plan.controlnet, "the ControlNet")
    return GeneratePlan(device, models, loras, plan)


def load_pipeline(
    args: argparse.Namespace, models: LoadPlan, device: torch.device
) -> PixelsmithPipeline:
    """The pipeline of the checked ``--model``/``--vae`` on ``device``; failing exits 1."""
    from pixelsmith.pipelines.pixelsmith import PixelsmithPipeline

    dtype = DTYPES[args.dtype]
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        pipe = PixelsmithPipeline.from_pretrained(models, ddim=not args.no_ddim, torch_dtype=dtype)
        return pipe.to(device)
    except HubUnreachableError:
        raise  # says which model and why, as the API does
    except (OSError, RuntimeError, ValueError, KeyError, ImportError) as error:
        with_vae = "" if args.vae in ("auto", "none") else f" --vae {args.vae}"
        reason = f"missing entry {error}" if isinstance(error, KeyError) else one_line(error)
        raise WorkError(f"cannot load --model {args.model}{with_vae}: {reason}") from error


def run_generate(args: argparse.Namespace) -> int:
    plan = check_generate(args)
    if args.devices > 1:
        status = run_on_ranks(generate_worker, args.devices, plan.device.type, args, plan)
        if status == 0:
            print(f"wrote {args.output}")
        return status
    ranks = RankGroup.current()
    if ranks.world_size == 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun
        ranks = init_from_env(plan.device.type)
    path = generate_on_rank(args, plan, ranks)
    if ranks.main:
        print(f"wrote {path}")
    return 0


def generate_worker(args: argparse.Namespace, plan: GeneratePlan) -> int:
    """One rank of ``generate --devices N``: errors and signals as in ``main``."""
    log_to_stderr()

    def run() -> int:
        with quiet_libraries(verbose=args.verbose):
            generate_on_rank(args, plan, RankGroup.current())
        return 0

    return run_main("pixelsmith generate", run, interrupt_hint=RESUME_HINT, flags=FLAGS)


def generate_on_rank(args: argparse.Namespace, plan: GeneratePlan, ranks: RankGroup) -> Path | None:
    """Load the model (and LoRAs, ControlNet) and run the checked cascade as rank
    ``ranks.rank``."""
    from pixelsmith.cascade import Prompts, run_cascade

    device = plan.device
    if ranks.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    cascade = plan.cascade
    if not ranks.main:
        cascade = dataclasses.replace(cascade, options=cascade.options.replace(progress=False))
    pipe = load_pipeline(args, plan.models, device)
    pipe.set_progress_bar_config(disable=not cascade.options.progress)
    with usage_errors(BAD_INPUT):  # a LoRA that does not fit the model is bad input
        plan.loras.load(pipe)
    controlnet = None
    if cascade.controlnet is not None:
        controlnet = load_controlnet(cascade.controlnet, torch_dtype=pipe.unet.dtype, device=device)
    prompts = Prompts(args.prompt, negative_prompt=args.negative)
    with usage_errors(BAD_INPUT):  # a ControlNet that does not fit the UNet is bad input
        return run_cascade(pipe, prompts, cascade, controlnet=controlnet, ranks=ranks)


def run_app(args: argparse.Namespace) -> int:
    """Check the options, load the model, serve the page (:mod:`pixelsmith.app`)."""
    from pixelsmith.app import serve

    vae = None if args.vae == "none" else args.vae
    with usage_errors(BAD_INPUT):  # without gradio: needs gradio: pip install 'pixelsmith[app]'
        serve(args.output, model=args.model, vae=vae, device=args.device, share=args.share,
              dtype=DTYPES[args.dtype], host=args.host, port=args.port)  # fmt: skip
    return 0


def run_tiny_model(args: argparse.Namespace) -> int:
    from pixelsmith.tiny import save_tiny_model

    check_folder_writable(args.directory, "DIR")
    print(f"wrote {save_tiny_model(args.directory, seed=args.seed)}")
    return 0


COMMANDS = {"generate": run_generate, "tiny-model": run_tiny_model, "app": run_app}


def log_to_stderr() -> None:
    """Show the package's info lines (resuming, stages loaded from a checkpoint) on stderr."""
    logger = logging.getLogger("pixelsmith")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("pixelsmith: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pixelsmith`` console script; returns the exit status.

    Bad inputs print ``pixelsmith COMMAND: error: ...`` (one line) and return 2, failures while
    working return 1, Ctrl-C returns 130 and SIGTERM 143, each with one line
    (``common_kernels.runtime.cli.run_main``; ``generate`` adds the hint that running it again
    resumes).

    Args:
        argv: command-line arguments without the program name (None = ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        print(version_line("pixelsmith", "pixelsmith"))
        return 0
    prog = command_prog("pixelsmith", argv, COMMANDS)

    def run() -> int:
        args = build_parser().parse_args(argv)
        log_to_stderr()
        with quiet_libraries(verbose=args.verbose):
            return COMMANDS[args.command](args)

    hint = RESUME_HINT if prog == "pixelsmith generate" else ""
    return run_main(prog, run, interrupt_hint=hint, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(main())
