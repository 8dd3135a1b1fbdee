"""The settings of a cascade and their checks: :class:`CascadeOptions` (validated when made) and
:func:`check_cascade`, which checks them against the stage sizes, the model's geometry, the
ControlNet inputs and the files a run writes, before any work, into a :class:`CascadePlan`.

Every message names the API's argument (``runtime.errors.InvalidValue``); the command
line prints the same message with its flags.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import Tensor

from common_kernels.runtime.batch import ImageListing, InputImage, check_not_inputs
from common_kernels.runtime.errors import InvalidValue, literal
from pixelsmith.checkpoint import check_checkpoint_dir
from pixelsmith.config import PixelsmithConfig, require_int, validate_cascade
from pixelsmith.control import ConditionImage, check_control
from pixelsmith.io import MAX_PIL_PIXELS, TIFF_SUFFIXES, check_compression, check_output_path
from pixelsmith.memory import check_memory, check_patch_batch_memory, check_vae_tile_memory
from pixelsmith.parallel import check_parallel
from pixelsmith.sources import ModelShape

if TYPE_CHECKING:  # diffusers is not imported to check options
    from diffusers import ControlNetModel

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes seeds in [0, 2**64)
SWITCHES = (
    "keep_checkpoint", "restart", "save_intermediate", "allow_large", "in_place", "progress"
)  # fmt: skip


@dataclass(frozen=True)
class CascadeOptions:
    """How a cascade runs: steps, guidance, seed, output, checkpoints, sampler settings.

    Validated when made (each message names the field); the checks that need the stage sizes,
    the model or the files on disk are :func:`check_cascade`'s.

    Args:
        num_inference_steps: denoising steps of every stage, an int >= 1 (at most the
            scheduler's training timesteps).
        guidance_scale: classifier-free guidance scale, a finite number.
        seed: seed of the CPU generator behind every random draw, in [0, 2**64 - 1];
            ``None`` draws one (and a resumed run reuses the checkpoint's).
        output: write the final image here (.tif/.tiff: streamed BigTIFF; .png/.jpg/.webp/.bmp:
            PIL); ``None`` returns a PIL image (at most 16384^2 px).
        config: sampler, tiling and hand-over settings (``None``: the defaults).
        checkpoint_dir: checkpoint folder; default ``<output>.pixelsmith`` when ``output`` is
            given, else no checkpoints. An existing checkpoint of the same run is resumed.
        checkpoint_every: save the latent state every this many steps, an int >= 1.
        keep_checkpoint: keep the checkpoint folder after success (deleted otherwise).
        restart: delete an existing checkpoint folder first instead of resuming it.
        save_intermediate: also write every earlier stage's image next to ``output``
            (``<stem>_<H>x<W><suffix>``).
        compression: TIFF compression of a ``.tif`` output passed to tifffile (``"zlib"``).
        controlnet_conditioning_scale: the ControlNet residuals are multiplied by it.
        allow_large: skip the checks that the full-size latent maps of the largest stage, one
            UNet call on a patch batch and one VAE tile's decoding fit in the memory available
            on the device.
        in_place: allow ``output`` to be the ``control_image`` file (replaced atomically once
            the image is complete); without it such an output is refused before any work.
        progress: show progress bars (stages, steps, VAE tiles).
    """

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    seed: int | None = 0
    output: str | os.PathLike | None = None
    config: PixelsmithConfig | None = field(default_factory=PixelsmithConfig)
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int = 1
    keep_checkpoint: bool = False
    restart: bool = False
    save_intermediate: bool = False
    compression: str | None = None
    controlnet_conditioning_scale: float = 1.0
    allow_large: bool = False
    in_place: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.num_inference_steps, bool) or not isinstance(
            self.num_inference_steps, int
        ):
            raise TypeError(f"num_inference_steps must be an int, got {self.num_inference_steps!r}")
        check_finite("guidance_scale", self.guidance_scale)
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not 0 <= seed <= MAX_SEED):
            raise InvalidValue(
                "seed", f"{{seed}} must be an int in [0, {MAX_SEED}], got {literal(seed)}"
            )
        if self.config is None:  # as generate_cascade(config=None) always took it
            object.__setattr__(self, "config", PixelsmithConfig())
        if not isinstance(self.config, PixelsmithConfig):
            raise TypeError(f"config must be a PixelsmithConfig, got {type(self.config).__name__}")
        require_int("checkpoint_every", self.checkpoint_every, 1)
        check_finite("controlnet_conditioning_scale", self.controlnet_conditioning_scale)
        for switch in SWITCHES:
            if not isinstance(getattr(self, switch), bool):
                raise TypeError(f"{switch} must be a bool, got {getattr(self, switch)!r}")

    def replace(self, **changes: object) -> CascadeOptions:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def check_finite(argument: str, value: object) -> float:
    """``value`` as a float when it is a finite number, else an :class:`InvalidValue`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidValue(
            argument, f"{{{argument}}} must be a finite number, got {literal(repr(value))}"
        )
    return float(value)


@dataclass(frozen=True)
class CascadePlan:
    """A cascade checked before any work (:func:`check_cascade`): what
    :func:`pixelsmith.cascade.run_cascade` runs.

    Args:
        sizes: stage sizes as (height, width) px.
        sliders: one slider per stage after the first.
        options: the run's settings.
        shape: the model geometry the plan was checked against.
        output: the output file, or ``None`` (a PIL image is returned).
        checkpoint_dir: the checkpoint folder, or ``None`` (no checkpoints).
        control_image: the opened ControlNet condition image, or ``None``.
        controlnet: the checked ControlNet (a model, or its local folder or hub id), or ``None``.
        device: the device of the memory check, or ``None`` (no check).
    """

    sizes: list[tuple[int, int]]
    sliders: list[int]
    options: CascadeOptions
    shape: ModelShape = field(default_factory=ModelShape)
    output: Path | None = None
    checkpoint_dir: Path | None = None
    control_image: ConditionImage | None = None
    controlnet: ControlNetModel | Path | str | None = None
    device: torch.device | None = None

    def check_model(self, shape: ModelShape, device: torch.device) -> None:
        """Check the plan again against a loaded model's ``shape`` when it differs from the one
        it was made for (a hub model's geometry is known once loaded)."""
        if shape != self.shape:
            check_stages(self.sizes, self.sliders, self.options, shape)
            if self.device is not None and not self.options.allow_large:
                check_stage_memory(self.sizes[-1], device, shape, self.options)


def check_stages(
    sizes: Sequence[int | tuple[int, int] | str],
    sliders: Sequence[int],
    options: CascadeOptions,
    shape: ModelShape,
) -> list[tuple[int, int]]:
    """Steps, stage sizes, sliders and patch size against the model's geometry; the sizes as
    (height, width) px."""
    if not 1 <= options.num_inference_steps <= shape.train_timesteps:
        raise InvalidValue(
            "num_inference_steps",
            f"{{num_inference_steps}} must be an int in [1, {shape.train_timesteps}] (the "
            f"scheduler's training timesteps), got {options.num_inference_steps}",
        )
    stages = validate_cascade(
        sizes,
        sliders,
        options.num_inference_steps,
        vae_scale_factor=shape.vae_scale_factor,
        patch_size=options.config.patch_size,
    )
    if len(stages) > 1 and options.config.patch_size % shape.unet_factor:
        raise InvalidValue(
            "patch_size",
            "{patch_size} must be a multiple of the UNet downsampling factor "
            f"{shape.unet_factor}, got {options.config.patch_size}",
        )
    return stages


def check_stage_memory(
    size: tuple[int, int], device: torch.device, shape: ModelShape, options: CascadeOptions
) -> None:
    """The memory checks of the largest stage ``size`` on ``device`` for a model of ``shape``:
    its full-size latent maps, one UNet call on a patch batch, one VAE tile's decoding."""
    check_memory(
        size,
        device,
        vae_scale_factor=shape.vae_scale_factor,
        latent_channels=shape.latent_channels,
    )
    latent = (size[0] // shape.vae_scale_factor, size[1] // shape.vae_scale_factor)
    config = options.config
    guided = options.guidance_scale > 1  # the pipeline batches negative prompts then (CFG)
    check_patch_batch_memory(
        latent, config.patch_size, config.batch_limit, guided, device, shape.unet_widths
    )
    check_vae_tile_memory(latent, config.vae_tile, device, shape.vae_widths)


def check_cascade(
    sizes: Sequence[int | tuple[int, int] | str],
    sliders: Sequence[int],
    options: CascadeOptions | None = None,
    *,
    controlnet: ControlNetModel | str | os.PathLike | None = None,
    control_image: str | os.PathLike | Image.Image | Tensor | None = None,
    shape: ModelShape | None = None,
    device: torch.device | None = None,
    world_size: int = 1,
    writes: bool = True,
) -> CascadePlan:
    """A cascade checked before any work (nothing is loaded, nothing written).

    Args:
        sizes: stage sizes in px (int = square, ``"HxW"`` or (height, width)).
        sliders: one slider per stage after the first, each in [1, num_inference_steps].
        options: the run's settings (default ``CascadeOptions()``).
        controlnet: a ``ControlNetModel``, a folder or hub id, or ``None``.
        control_image: its condition image (read, and its aspect ratio checked).
        shape: the model's geometry (default SDXL's).
        device: where the stages run, for the memory check (``None``: no check).
        world_size: processes sharing the patches.
        writes: this process writes the output and the checkpoints (rank 0).

    Raises:
        InvalidValue: the first bad input, naming its argument, with its accepted range.
        TypeError: an argument of the wrong type.
        MissingPath: a ControlNet path where nothing is (a ``FileNotFoundError``).
    """
    options = options or CascadeOptions()
    shape = shape or ModelShape()
    stages = check_stages(sizes, sliders, options, shape)
    check_parallel(world_size, faithful=options.config.faithful)
    controlnet, control = check_control(controlnet, control_image, stages[-1])
    output, checkpoint_dir = check_outputs(stages, options, writes)
    if writes and output is not None and isinstance(control_image, (str, os.PathLike)):
        intermediates = [intermediate_path(output, size) for size in stages[:-1]]
        check_inputs_kept(
            {"control_image": Path(control_image)},
            output,
            intermediates if options.save_intermediate else [],
            checkpoint_dir,
            in_place=options.in_place,
        )
    if device is not None and not options.allow_large:
        check_stage_memory(stages[-1], device, shape, options)
    return CascadePlan(
        stages, list(sliders), options, shape, output, checkpoint_dir, control, controlnet, device
    )


def intermediate_path(output: Path, size: tuple[int, int]) -> Path:
    """Where the image of an intermediate stage goes: ``<stem>_<H>x<W><suffix>``."""
    return output.with_name(f"{output.stem}_{size[0]}x{size[1]}{output.suffix}")


def check_outputs(
    stages: list[tuple[int, int]], options: CascadeOptions, writes: bool
) -> tuple[Path | None, Path | None]:
    """The output file, intermediate files, compression and checkpoint folder of a cascade;
    ``(output, checkpoint folder)`` as paths.

    Args:
        stages: the checked stage sizes.
        options: the run's settings.
        writes: check what this process writes (rank 0); others only resolve the paths.
    """
    final = stages[-1]
    output, checkpoint_dir = options.output, options.checkpoint_dir
    if output is None:
        if final[0] * final[1] > MAX_PIL_PIXELS:
            raise InvalidValue(
                "output",
                f"a {final[0]}x{final[1]} image is too large to return in RAM (at most "
                f"{MAX_PIL_PIXELS} px); pass output='image.tif' to stream it to disk",
            )
        if options.save_intermediate:
            raise InvalidValue("save_intermediate", "{save_intermediate=True} needs an output path")
        if options.compression is not None:
            raise InvalidValue("compression", "{compression} needs a .tif/.tiff output")
        return None, None if checkpoint_dir is None else Path(checkpoint_dir)
    output = Path(output)
    if writes:
        output = check_output_path(output, *final)
        for size in stages[:-1] if options.save_intermediate else ():
            check_output_path(intermediate_path(output, size), *size, "save_intermediate")
        if options.compression is not None:
            if output.suffix.lower() not in TIFF_SUFFIXES:
                raise InvalidValue(
                    "compression",
                    "{compression} applies to .tif/.tiff outputs only, got {output} "
                    f"{literal(output)}",
                )
            check_compression(options.compression)
    chosen = checkpoint_dir is not None
    default = output.with_name(f"{output.name}.pixelsmith")
    checkpoint_dir = Path(checkpoint_dir) if chosen else default
    if writes:
        check_checkpoint_dir(checkpoint_dir, chosen=chosen)
    return output, checkpoint_dir


def check_inputs_kept(
    inputs: Mapping[str, Path],
    output: Path,
    intermediates: Sequence[Path],
    checkpoint_dir: Path | None,
    *,
    in_place: bool = False,
) -> None:
    """Refuse, before any work, what a run would write over its input files.

    The final ``output`` may replace an input only with ``in_place`` (it is written atomically
    after the last read of the input); an intermediate file never may (later stages still read
    the input), nor may an input lie in the checkpoint folder (deleted when the run ends).

    Args:
        inputs: the input files by the argument that names them (``control_image``).
        output: the output file.
        intermediates: the intermediate files that will be written (``save_intermediate``).
        checkpoint_dir: the checkpoint folder, or ``None``.
        in_place: allow ``output`` to replace an input.

    Raises:
        InvalidArgument: naming the output and the input, and how to go on.
    """
    files = {argument: path for argument, path in inputs.items() if path.is_file()}
    if files and not in_place:
        listing = ImageListing(tuple(InputImage(path, Path(path.name)) for path in files.values()))
        check_not_inputs([output], listing, argument="output")
    folder = checkpoint_dir.resolve() if checkpoint_dir is not None else None
    for argument, path in files.items():
        for intermediate in intermediates:
            if intermediate.exists() and intermediate.samefile(path):
                raise InvalidValue(
                    "save_intermediate",
                    "{save_intermediate}: "
                    f"the intermediate image {literal(intermediate)} would replace the input "
                    f"{literal(path)} ({{{argument}}}), which later stages still read; choose "
                    "another {output} name",
                )
        if folder is not None and folder in path.resolve().parents:
            raise InvalidValue(
                "checkpoint_dir",
                "{checkpoint_dir}: "
                f"{literal(checkpoint_dir)} holds the input {literal(path)} ({{{argument}}}), "
                "and the checkpoint folder is deleted when the run ends; move the input or "
                "choose another {checkpoint_dir}",
            )
