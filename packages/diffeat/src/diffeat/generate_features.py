"""The flow of ``diffeat generate-features`` as API functions: features recorded while a
diffusers pipeline generates an image.

:func:`check_generation` checks a run before any weights load (the model's pipeline class, the
steps against the run's loop, the size against the model's factors); :func:`load_pipeline` loads
it; :func:`write_generation` generates once, recording the layers at the steps, and writes them
(and the image). PixArt's pipelines run with their resolution binning off, so the features are
of the size asked. Errors name the API's arguments, which the CLI prints with its flags.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common_kernels.runtime.cli import size_type
from common_kernels.runtime.errors import InvalidValue, literal
from diffeat import __version__
from diffeat.checks import DTYPES
from diffeat.errors import check_int_range
from diffeat.io import save_features, save_png
from diffeat.plan import LoadPlan

GENERATE_FLAGS = {"steps": "--steps", "branch": "--branch", "image": "--image",
                  "num_inference_steps": "--num-inference-steps"}  # fmt: skip


@dataclass(frozen=True)
class GenerationRun:
    """A checked ``generate-features`` run (config files read, no weights).

    Args:
        plan: the model and layers (:func:`diffeat.plan.check_from_pretrained`).
        pipeline: the diffusers pipeline class its ``model_index.json`` names.
        steps: the loop indices to record at, sorted.
        branch: the half of a guidance batch (:data:`diffeat.generation.BRANCHES`).
        seed: seed of the generator that draws the initial latents.
        call: the pipeline call's arguments (prompt, steps, guidance, size).
    """

    plan: LoadPlan
    pipeline: type
    steps: tuple[int, ...]
    branch: str
    seed: int
    call: dict[str, Any]


def parse_steps(text: str) -> list[int]:
    """``"0,10,19"`` as loop indices (their range is checked against the run's loop)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidValue(
            "steps", f"{{steps}} must be comma-separated integers, got {literal(repr(text))}"
        ) from None


def check_generation(model: str, layers, steps: Sequence[int], *, prompt: str = "",
                     num_inference_steps: int | None = None, guidance_scale: float | None = None,
                     image_size: tuple[int, int] | None = None, seed: int = 0,
                     branch: str = "cond", dtype: str = "fp32",
                     device: str | None = None) -> GenerationRun:  # fmt: skip
    """Every check of a ``generate-features`` run before any weights load.

    Args:
        model: hub id or folder of a diffusers text-to-image pipeline.
        layers: names, ``"all"`` or a preset name (None: the model family's paper preset).
        steps: loop indices to record at, each in ``[0, n - 1]`` for the run's ``n`` calls.
        prompt: the text prompt.
        num_inference_steps: the pipeline's steps, >= 1 (None: the pipeline's default).
        guidance_scale: the pipeline's guidance scale, finite (None: its default).
        image_size: (H, W) of the image (None: the pipeline's default).
        seed: seed of the initial latents, in [0, 2**64 - 1].
        branch: one of :data:`diffeat.generation.BRANCHES`.
        dtype: ``fp32`` / ``fp16`` / ``bf16``.
        device: torch device (None: cuda when available, else cpu).
    """
    import diffusers

    from diffeat.generation import BRANCHES, check_steps, loop_length
    from diffeat.plan import check_from_pretrained

    if branch not in BRANCHES:
        raise InvalidValue("branch", f"{{branch}} must be one of {BRANCHES}, got {branch!r}")
    check_int_range(seed, "seed", 0, 2**64 - 1)
    if guidance_scale is not None and not math.isfinite(guidance_scale):
        raise InvalidValue(
            "guidance_scale", f"{{guidance_scale}} must be finite, got {guidance_scale}"
        )
    plan = check_from_pretrained(model, layers=layers, dtype=dtype, device=device,
                                 image_size=image_size)  # fmt: skip
    if "vae-out" in plan.names:
        raise InvalidValue(
            "layers", "{layers}: 'vae-out' is the VAE latent, not recorded while generating"
        )
    name = str(diffusers.DiffusionPipeline.load_config(str(plan.source)).get("_class_name"))
    pipeline = getattr(diffusers, name, None)
    if not (isinstance(pipeline, type) and issubclass(pipeline, diffusers.DiffusionPipeline)):
        raise InvalidValue(
            "model", f"{{model}}'s model_index.json names no diffusers pipeline: {literal(name)}"
        )
    call: dict[str, Any] = {"prompt": prompt, "output_type": "pil"}
    if "use_resolution_binning" in inspect.signature(pipeline.__call__).parameters:
        # PixArt's pipelines snap the size to an aspect-ratio bin of its sample size and resize
        # the image back: the features were of the bin's size, not the image's (128 px asked,
        # 1024 px recorded), and a sample size without bins (the tiny models) was refused
        call["use_resolution_binning"] = False
    if num_inference_steps is not None:
        call["num_inference_steps"] = check_int_range(num_inference_steps, "num_inference_steps", 1)
    if guidance_scale is not None:
        call["guidance_scale"] = guidance_scale
    if image_size is not None:  # the extraction's rule: whole token grids at every level
        configs, (height, width) = plan.configs, image_size
        scale = 2 ** (len(configs.vae["block_out_channels"]) - 1)
        multiple = configs.backbone.size_multiple(configs.unet, scale)
        if height % multiple or width % multiple:
            factors = configs.backbone.factors(configs.unet, scale)
            raise InvalidValue("image_size", f"{{image_size}} {height}x{width} is not a "
                               f"multiple of {multiple} for this model ({factors})")  # fmt: skip
        call["height"], call["width"] = image_size
    length = loop_length(plan.configs.scheduler, pipeline, call)
    checked = check_steps(list(steps), length)
    return GenerationRun(plan, pipeline, checked, branch, seed, call)


def load_pipeline(run: GenerationRun):
    """The checked run's pipeline, loaded on its device (progress bar off)."""
    from common_kernels.runtime.quiet import quiet_loading

    plan = run.plan
    with quiet_loading():
        pipe = run.pipeline.from_pretrained(str(plan.source), torch_dtype=plan.dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(plan.device)


def write_generation(
    run: GenerationRun, pipe, output: Path, image: Path | None = None, model: str | None = None
) -> dict[str, torch.Tensor]:
    """Generate once with ``pipe``, recording the run's layers at its steps; write them to a
    safetensors file (keys ``step{k}/{name}``) and the image to a PNG.

    Args:
        run: from :func:`check_generation`.
        pipe: its pipeline (:func:`load_pipeline`).
        output: the ``.safetensors`` file.
        image: the generated image's ``.png`` (None: not written).
        model: the model as the caller named it (default: the plan's source).

    Returns:
        The written tensors.
    """
    from diffeat.generation import generate_with_features

    plan = run.plan
    generator = torch.Generator(device="cpu").manual_seed(run.seed)
    result = generate_with_features(
        pipe, list(plan.names), run.steps, branch=run.branch, output_device="cpu",
        generator=generator, **run.call,
    )  # fmt: skip
    tensors = {f"step{k}/{name}": value for k, features in result.features.items()
               for name, value in features.items()}  # fmt: skip
    picture = result.output.images[0].convert("RGB")
    metadata = {
        "diffeat": __version__,
        "model": str(plan.source if model is None else model),
        "layers": list(plan.names),
        "heads": result.features[run.steps[0]].heads,
        "steps": list(run.steps),
        "timesteps": [result.timesteps[k] for k in run.steps],
        "branch": run.branch,
        "prompt": run.call["prompt"],
        "num_inference_steps": run.call.get("num_inference_steps"),
        "guidance_scale": run.call.get("guidance_scale"),
        "image_size": [picture.height, picture.width],
        "dtype": {dtype: key for key, dtype in DTYPES.items()}[plan.dtype],
        "seed": run.seed,
    }
    save_features(output, tensors, metadata)
    if image is not None:
        save_png(image, np.asarray(picture))
    return tensors


GENERATE_OPTIONS: dict[str, dict[str, Any]] = {
    "--model": {"required": True, "help": "a diffusers text-to-image pipeline (SD/SDXL, PixArt, "
                "FLUX, SD3): hub id or folder"},
    "--prompt": {"default": "", "help": "the text prompt"},
    "--layers": {"default": None, "help": "comma-separated activation names, 'all' or a preset "
                 "(default: the model family's paper preset)"},
    "--steps": {"required": True, "help": "comma-separated loop indices to record at, each in "
                "[0, n - 1] for the run's n network calls (0: the first, noisiest)"},
    "--num-inference-steps": {"type": int, "default": None, "help": "the pipeline's steps, >= 1 "
                              "(default: the pipeline's own)"},
    "--guidance-scale": {"type": float, "default": None, "help": "the pipeline's guidance scale, "
                         "finite (default: the pipeline's own)"},
    "--image-size": {"type": size_type, "default": None, "metavar": "S|HxW", "help": "S or HxW "
                     "px, height first, multiples of the model's factor (default: the "
                     "pipeline's own)"},
    "--seed": {"type": int, "default": 0, "help": "seed of the initial latents, in "
               "[0, 2**64 - 1] (default: %(default)s)"},
    "--branch": {"choices": ("cond", "uncond", "both"), "default": "cond", "help": "with "
                 "guidance: the prompt's half of the network batch, the negative's, or both"},
    "--dtype": {"choices": sorted(DTYPES), "default": "fp32"},
    "--device": {"default": None, "help": "torch device (default: cuda when available, else cpu)"},
    "-o/--output": {"type": Path, "required": True, "help": ".safetensors file (keys "
                    "step{k}/{name})"},
    "--image": {"type": Path, "default": None, "help": "also write the generated image (.png)"},
}  # fmt: skip


def add_generate_parser(commands) -> None:
    """The ``generate-features`` command and its flags on the CLI's subparsers."""
    parser = commands.add_parser("generate-features", help="features while a pipeline generates")
    for flag, options in GENERATE_OPTIONS.items():
        parser.add_argument(*flag.split("/"), **options)  # "-o/--output": both spellings


def command_generate(args) -> None:
    """``diffeat generate-features``: every input checked, the pipeline loaded and run once,
    the features (and the image) written."""
    from common_kernels.runtime.cli import WorkError, check_file_writable, one_line, usage_errors
    from diffeat.presets import selection_names

    check_file_writable(args.output, "-o/--output", (".safetensors",))
    if args.image is not None:
        check_file_writable(args.image, "--image", (".png",))
    layers = args.layers
    if layers is not None:
        names = [n.strip() for n in layers.split(",") if n.strip()]
        layers = names[0] if len(names) == 1 and names[0] in selection_names() else names
    keys = ("prompt", "num_inference_steps", "guidance_scale", "image_size", "seed", "branch")
    options = {k: getattr(args, k) for k in (*keys, "dtype", "device")}
    with usage_errors():
        run = check_generation(args.model, layers, parse_steps(args.steps), **options)
    try:
        pipe = load_pipeline(run)
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise WorkError(f"cannot load --model {args.model}: {one_line(error)}") from error
    tensors = write_generation(run, pipe, args.output, args.image, model=args.model)
    for name, value in tensors.items():
        print(f"{name}: {tuple(value.shape)}")
    print(f"wrote {len(tensors)} features of {len(run.steps)} steps to {args.output}")
