"""The ``pixelsmith`` command.

pixelsmith generate "prompt" --sizes 1024 2048 4096 --slider 20 30 --seed 0 -o out.tif
           [--model HUB_ID_OR_DIR] [--vae auto|none|HUB_ID_OR_DIR] [--steps 50] [--guidance 7.5]
           [--scheduler grid|random] [--faithful] [--patch-size 128] [--band 10] ...
pixelsmith tiny-model DIR [--seed 0]     # a tiny random SDXL-shaped model folder (offline runs)

Sizes are px, an int for a square or HEIGHTxWIDTH (1536x2048 is 2048 px wide). The first size
is plain SDXL.

Errors: a bad input ends with one line ``pixelsmith COMMAND: error: ...`` naming the flag and
exit status 2, found before any model is loaded and before anything is written; a failure while
working (disk full, a model that cannot be loaded) exits 1; Ctrl-C exits 130 and SIGTERM 143
with one line (running the same command again resumes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers.utils import logging as transformers_logging

from common_kernels.cli import (
    Parser,
    UsageError,
    WorkError,
    check_device,
    command_prog,
    one_line,
    run_main,
)
from pixelsmith.cascade import generate_cascade, intermediate_path
from pixelsmith.checkpoint import RUN_FILE
from pixelsmith.config import (
    BLENDS,
    HANDOVERS,
    PATCH_SCHEDULERS,
    POSTERIORS,
    PixelsmithConfig,
    latent_bytes_per_px,
    latent_maps_bytes,
    validate_cascade,
)
from pixelsmith.control import check_control_options, load_controlnet
from pixelsmith.io import TIFF_SUFFIXES, check_compression, check_output_path
from pixelsmith.lora import check_lora_options, load_loras
from pixelsmith.parallel import (
    RankGroup,
    check_devices,
    check_parallel,
    init_from_env,
    run_on_ranks,
)
from pixelsmith.pipelines.pixelsmith import DEFAULT_MODEL, DEFAULT_VAE, PixelsmithPipeline
from pixelsmith.tiny import save_tiny_model

DTYPES = {
    "auto": None,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# how validate_cascade names its arguments in the CLI's error messages
CASCADE_FLAGS = {
    "sizes": "--sizes",
    "sliders": "--slider",
    "num_inference_steps": "--steps",
    "patch_size": "--patch-size",
}
# the flags of the PixelsmithConfig fields whose errors can reach the user
CONFIG_FLAGS = {
    "patch_size": "--patch-size",
    "band": "--band",
    "patch_batch_size": "--patch-batch",
    "grid_min_overlap": "--grid-min-overlap",
    "vae_tile": "--vae-tile",
    "vae_overlap": "--vae-overlap",
}
LORA_FLAGS = ("--lora", "--lora-scale")
CONTROL_FLAGS = ("--controlnet", "--control-image", "--control-scale")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes seeds in [0, 2**64)


@dataclass(frozen=True)
class ModelShape:
    """What the checks need to know of a model before it is loaded (SDXL's values by default).

    Args:
        vae_scale_factor: px per latent px.
        latent_channels: channels of the VAE latent.
        unet_factor: downsampling of the UNet (patch sides are multiples of it).
        train_timesteps: the scheduler's training timesteps (the most inference steps).
    """

    vae_scale_factor: int = 8
    latent_channels: int = 4
    unet_factor: int = 4
    train_timesteps: int = 1000


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pixelsmith", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate an image through a cascade of sizes")
    gen.add_argument("prompt")
    gen.add_argument(
        "--sizes",
        nargs="+",
        required=True,
        metavar="SIZE",
        help="stage sizes in px: an int (square) or HEIGHTxWIDTH (1536x2048 is 2048 px wide); "
        "multiples of 8, growing stage by stage",
    )
    gen.add_argument(
        "--slider",
        nargs="*",
        type=int,
        default=[],
        help="one slider per stage after the first, each in [1, --steps]",
    )
    gen.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help=".tif/.tiff (BigTIFF, streamed) or .png/.jpg/.jpeg/.webp/.bmp (in RAM)",
    )
    gen.add_argument("--seed", type=int, default=0, help=f"in [0, {MAX_SEED}]")
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
    gen.add_argument(
        "--lora", action="append", default=[], help="SDXL LoRA file/folder/hub id (repeatable)"
    )
    gen.add_argument(
        "--lora-scale", type=float, nargs="+", default=None, help="one for all LoRAs or one each"
    )
    gen.add_argument("--controlnet", default=None, help="SDXL ControlNet hub id or folder")
    gen.add_argument("--control-image", default=None, help="its condition image (.tif: by tile)")
    gen.add_argument("--control-scale", type=float, default=1.0, help="ControlNet residual scale")
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
    gen.add_argument(
        "--compression",
        default=None,
        help="TIFF compression of a .tif output, e.g. zlib or lzma (others need imagecodecs)",
    )
    gen.add_argument(
        "--allow-large",
        action="store_true",
        help="skip the check that the full-size latent maps of the largest stage fit in the "
        "memory available on --device",
    )
    gen.add_argument(
        "--devices", type=int, default=1, help="processes (one per GPU) sharing each step's patches"
    )
    gen.add_argument("--quiet", action="store_true", help="no progress bars")
    tiny = commands.add_parser("tiny-model", help="write a tiny random SDXL-shaped model folder")
    tiny.add_argument("directory", type=Path, metavar="DIR")
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def check_model_source(value: str, flag: str, marker: str) -> Path | None:
    """A local diffusers folder holding ``marker`` (returned) or a hub id (None), offline.

    Args:
        value: the option's value.
        flag: the option, for messages.
        marker: the file such a folder holds (``model_index.json``; ``config.json`` for a VAE).
    """
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / marker).is_file():
            raise UsageError(f"{flag} {value}: no {marker} in the folder (not a diffusers folder)")
        return path
    if path.exists():
        raise UsageError(f"{flag} {value} is a file; expected a hub id (org/name) or a folder")
    if value.startswith((".", "/", "~")) or value.count("/") > 1 or "\\" in value:
        raise UsageError(f"{flag} {value}: the folder does not exist")
    try:
        validate_repo_id(value)
    except HFValidationError:
        raise UsageError(
            f"{flag} {value!r} is neither an existing folder nor a hub id (org/name)"
        ) from None
    return None


def read_config(path: Path) -> dict:
    """A diffusers JSON config, or {} when missing or unreadable (loading then says why)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def downsampling(config: dict, default: int) -> int:
    """``2 ** (levels - 1)`` of a diffusers UNet or VAE config, as diffusers computes it."""
    blocks = config.get("block_out_channels")
    return 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else default


def check_models(args: argparse.Namespace) -> ModelShape:
    """``--model`` and ``--vae`` checked offline; the geometry of local folders (else SDXL's)."""
    model = check_model_source(args.model, "--model", "model_index.json")
    vae_value = args.vae
    if vae_value == "auto":
        vae_value = DEFAULT_VAE if args.model == DEFAULT_MODEL else "none"
    if vae_value == "none":
        vae_config = read_config(model / "vae" / "config.json") if model else {}
    else:
        vae = check_model_source(vae_value, "--vae", "config.json")
        vae_config = read_config(vae / "config.json") if vae else {}
    unet_config = read_config(model / "unet" / "config.json") if model else {}
    scheduler_config = read_config(model / "scheduler" / "scheduler_config.json") if model else {}
    sdxl = ModelShape()
    return ModelShape(
        vae_scale_factor=downsampling(vae_config, sdxl.vae_scale_factor),
        latent_channels=int(vae_config.get("latent_channels", sdxl.latent_channels)),
        unet_factor=downsampling(unet_config, sdxl.unet_factor),
        train_timesteps=int(scheduler_config.get("num_train_timesteps", sdxl.train_timesteps)),
    )


def check_config(args: argparse.Namespace) -> PixelsmithConfig:
    """The sampler options as a :class:`PixelsmithConfig`, each error naming its flag."""
    if args.faithful and args.scheduler == "grid":
        raise UsageError(
            "--scheduler grid is not available with --faithful (the official sampler places "
            "patches at random centres); use --scheduler random or leave it out"
        )
    try:
        return PixelsmithConfig(
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
    except (TypeError, ValueError) as error:  # "<field> must be ..."
        field, _, rest = str(error).partition(" ")
        raise UsageError(f"{CONFIG_FLAGS.get(field, field)} {rest}") from None


def check_numbers(args: argparse.Namespace, shape: ModelShape) -> None:
    """``--steps``, ``--guidance``, ``--seed`` and ``--checkpoint-every`` in their ranges."""
    if not 1 <= args.steps <= shape.train_timesteps:
        raise UsageError(
            f"--steps must be an int in [1, {shape.train_timesteps}] (the scheduler's training "
            f"timesteps), got {args.steps}"
        )
    if not math.isfinite(args.guidance):
        raise UsageError(f"--guidance must be a finite number, got {args.guidance}")
    if not 0 <= args.seed <= MAX_SEED:
        raise UsageError(f"--seed must be an int in [0, {MAX_SEED}], got {args.seed}")
    if args.checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be an int >= 1, got {args.checkpoint_every}")


def check_sizes(
    args: argparse.Namespace, shape: ModelShape, config: PixelsmithConfig
) -> list[tuple[int, int]]:
    """``--sizes`` and ``--slider`` as the cascade checks them; the sizes as (h, w) px."""
    try:
        sizes = validate_cascade(
            args.sizes,
            args.slider,
            args.steps,
            vae_scale_factor=shape.vae_scale_factor,
            patch_size=config.patch_size,
            names=CASCADE_FLAGS,
        )
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    if len(sizes) > 1 and config.patch_size % shape.unet_factor:
        raise UsageError(
            f"--patch-size must be a multiple of the UNet downsampling factor "
            f"{shape.unet_factor}, got {config.patch_size}"
        )
    return sizes


def check_outputs(args: argparse.Namespace, sizes: list[tuple[int, int]]) -> None:
    """``-o/--output`` (and intermediate files), ``--compression``, the checkpoint folder."""
    output = check_output_path(args.output, *sizes[-1], name="-o/--output")
    if args.save_intermediate:
        for size in sizes[:-1]:
            path = intermediate_path(output, size)
            check_output_path(path, *size, name="--save-intermediate")
    if args.compression is not None:
        if output.suffix.lower() not in TIFF_SUFFIXES:
            raise UsageError(
                f"--compression applies to .tif/.tiff outputs only, got -o/--output {output}"
            )
        check_compression(args.compression, name="--compression")
    if args.checkpoint_dir is not None:
        check_checkpoint_dir(args.checkpoint_dir, f"--checkpoint-dir {args.checkpoint_dir}")
    else:
        folder = output.with_name(f"{output.name}.pixelsmith")
        check_checkpoint_dir(folder, f"the checkpoint folder {folder} (set with --checkpoint-dir)")


def check_checkpoint_dir(folder: Path, label: str) -> None:
    """A checkpoint folder that is absent, empty or a pixelsmith checkpoint, and can be made.

    A folder holding other files is refused: a finished run deletes its checkpoint folder.

    Args:
        folder: the checkpoint folder.
        label: how it is named in messages.
    """
    check_folder_writable(folder, label)
    if folder.is_dir() and any(folder.iterdir()) and not (folder / RUN_FILE).is_file():
        raise UsageError(
            f"{label} holds files but no {RUN_FILE}: not a pixelsmith checkpoint folder, and a "
            "finished run deletes its checkpoint folder; choose another --checkpoint-dir"
        )


def check_folder_writable(folder: Path, label: str) -> None:
    """Fail unless ``folder`` is a folder or can be created, and is writable.

    Args:
        folder: the folder.
        label: how it is named in messages (the flag and the value).
    """
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{label} is a file, not a folder")
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise UsageError(f"{label}: cannot create it, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{label}: cannot write to {existing} (permission denied)")


def available_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device, else the host's available RAM (MPS shares it), or None."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def gib(count: int) -> str:
    """Bytes as GiB with two decimals."""
    return f"{count / 2**30:,.2f} GiB"


def check_memory(size: tuple[int, int], shape: ModelShape, device: torch.device) -> None:
    """The full-size latent maps of the largest stage must fit in the memory of ``device``."""
    need = latent_maps_bytes(*size, shape.vae_scale_factor, shape.latent_channels)
    available = available_memory(device)
    if available is not None and need > available:
        per_px = latent_bytes_per_px(shape.latent_channels)
        raise UsageError(
            f"--sizes {size[0]}x{size[1]}: the full-size latent maps of this stage alone need "
            f"{need} bytes ({gib(need)}, {per_px} bytes per latent px), more than the "
            f"{available} bytes ({gib(available)}) available on {device}; use smaller --sizes, "
            "or --allow-large to try anyway"
        )


def check_generate(
    args: argparse.Namespace,
) -> tuple[torch.device, PixelsmithConfig, list[tuple[int, int]]]:
    """Every ``generate`` input checked before the model is loaded and anything is written."""
    device = check_device(args.device)
    shape = check_models(args)
    with usage_errors():
        check_lora_options(args.lora, args.lora_scale, names=LORA_FLAGS)
    config = check_config(args)
    check_numbers(args, shape)
    sizes = check_sizes(args, shape, config)
    with usage_errors():
        launched = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's processes
        check_devices(args.devices, device, names=("--devices", "--device"), launched=launched)
        check_parallel(max(args.devices, launched), faithful=config.faithful, name="--faithful")
    check_control_options(
        args.controlnet, args.control_image, args.control_scale, sizes[-1], names=CONTROL_FLAGS
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 alone writes (and checks)
        check_outputs(args, sizes)
    if not args.allow_large:
        check_memory(sizes[-1], shape, device)
    return device, config, sizes


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """An API check's ``ValueError``/``TypeError`` (whose message names the flag) as exit 2."""
    try:
        yield
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None


@contextlib.contextmanager
def quiet_loading(hide_bars: bool) -> Iterator[None]:
    """Model loading without library deprecation warnings, and without its progress bars
    (diffusers', transformers') when ``hide_bars``; both restored after the block."""
    modules = (diffusers_logging, transformers_logging) if hide_bars else ()
    shown = [module.is_progress_bar_enabled() for module in modules]
    for module in modules:
        module.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for module, was_shown in zip(modules, shown, strict=True):
            if was_shown:
                module.enable_progress_bar()


def load_pipeline(args: argparse.Namespace, device: torch.device) -> PixelsmithPipeline:
    """The pipeline of the (checked) ``--model``/``--vae`` on ``device``; failing exits 1."""
    dtype = DTYPES[args.dtype]
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    vae = None if args.vae == "none" else args.vae
    try:
        with quiet_loading(hide_bars=args.quiet):
            pipe = PixelsmithPipeline.from_pretrained(
                args.model, vae=vae, ddim=not args.no_ddim, torch_dtype=dtype
            )
        return pipe.to(device)
    except (OSError, RuntimeError, ValueError, KeyError, ImportError) as error:
        with_vae = "" if args.vae in ("auto", "none") else f" --vae {args.vae}"
        reason = f"missing entry {error}" if isinstance(error, KeyError) else one_line(error)
        raise WorkError(f"cannot load --model {args.model}{with_vae}: {reason}") from error


def run_generate(args: argparse.Namespace) -> int:
    device, config, _ = check_generate(args)
    if args.devices > 1:
        status = run_on_ranks(generate_worker, args.devices, device.type, args, device, config)
        if status == 0:
            print(f"wrote {args.output}")
        return status
    ranks = RankGroup.current()
    if ranks.world_size == 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun
        ranks = init_from_env(device.type)
    path = generate_on_rank(args, device, config, ranks)
    if ranks.main:
        print(f"wrote {path}")
    return 0


def generate_worker(
    args: argparse.Namespace, device: torch.device, config: PixelsmithConfig
) -> int:
    """One rank of ``generate --devices N``: errors and signals as in ``main``."""
    _log_to_stderr()

    def run() -> int:
        generate_on_rank(args, device, config, RankGroup.current())
        return 0

    return with_signals("pixelsmith generate", run)


def generate_on_rank(
    args: argparse.Namespace, device: torch.device, config: PixelsmithConfig, ranks: RankGroup
) -> Path | None:
    """Load the model (and LoRAs, ControlNet) and run the cascade as rank ``ranks.rank``."""
    if ranks.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    quiet = args.quiet or not ranks.main
    pipe = load_pipeline(args, device)
    pipe.set_progress_bar_config(disable=quiet)
    with usage_errors():  # a LoRA that does not fit the model is bad input
        load_loras(pipe, args.lora, args.lora_scale, names=LORA_FLAGS)
    controlnet = None
    if args.controlnet is not None:
        controlnet = load_controlnet(args.controlnet, torch_dtype=pipe.unet.dtype, device=device)
    return generate_cascade(
        pipe,
        args.prompt,
        args.sizes,
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
        progress=not quiet,
        controlnet=controlnet,
        control_image=args.control_image,
        controlnet_conditioning_scale=args.control_scale,
        ranks=ranks,
    )


def run_tiny_model(args: argparse.Namespace) -> int:
    check_folder_writable(args.directory, f"DIR {args.directory}")
    print(f"wrote {save_tiny_model(args.directory, seed=args.seed)}")
    return 0


COMMANDS = {"generate": run_generate, "tiny-model": run_tiny_model}
RESUME_HINT = "; run the same command again to resume from the last saved step"
EXIT_TERMINATED = 143  # 128 + SIGTERM


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
    """Entry point of the ``pixelsmith`` console script; returns the exit status.

    Bad inputs print ``pixelsmith COMMAND: error: ...`` (one line) and return 2, failures while
    working return 1, Ctrl-C returns 130 and SIGTERM 143, each with one line.

    Args:
        argv: command-line arguments without the program name (None = ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = command_prog("pixelsmith", argv, COMMANDS)

    def run() -> int:
        args = build_parser().parse_args(argv)
        _log_to_stderr()
        return COMMANDS[args.command](args)

    return with_signals(prog, run)


def with_signals(prog: str, run: Callable[[], int]) -> int:
    """``run_main`` of ``run`` with SIGTERM as one line and exit status 143 (and the hint to
    resume after an interruption for ``generate``)."""
    hint = RESUME_HINT if prog == "pixelsmith generate" else ""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return run_main(prog, run, interrupt_hint=hint)
    except Terminated:
        print(f"{prog}: terminated{hint}", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
