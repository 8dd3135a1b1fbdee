"""The Pixelsmith cascade: plain SDXL at the base size, then guided stages up to the target.

    image = generate_cascade(pipe, "a lighthouse", sizes=[1024, 2048, 4096], sliders=[20, 30])

Stages hand latents to each other: the previous latent is decoded tile by tile (floats, no
uint8 round trip unless ``handover="uint8"`` or faithful mode), Lanczos-resized region by
region and encoded tile by tile into the next guidance latent. With an output path the final
image is streamed to disk (BigTIFF for .tif) and the run is checkpointed after every step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import ControlNetModel
from PIL import Image
from torch import Tensor

from common_kernels.runtime.batch import ImageListing, InputImage, check_not_inputs
from common_kernels.runtime.errors import InvalidArgument, literal
from common_kernels.runtime.progress import progress as show_progress
from pixelsmith.checkpoint import CheckpointStore, check_checkpoint_dir
from pixelsmith.config import (
    API_NAMES,
    Names,
    PixelsmithConfig,
    named,
    setting,
    validate_cascade,
)
from pixelsmith.control import (
    ConditionImage,
    ControlCondition,
    check_aspect,
    check_control_scale,
    check_controlnet,
    open_control_image,
)
from pixelsmith.io import (
    MAX_PIL_PIXELS,
    TIFF_SUFFIXES,
    check_compression,
    check_output_path,
    collect_uint8,
    write_image,
)
from pixelsmith.lora import LORA_COMPONENTS, lora_identity
from pixelsmith.memory import check_memory
from pixelsmith.parallel import RankGroup, check_parallel
from pixelsmith.pipelines.pixelsmith import PixelsmithPipeline, StepPlan, TextConditioning
from pixelsmith.sources import CONFIG_MARKER, ModelShape, resolve_source

CascadeCallback = Callable[[int, int, Tensor, StepPlan], None]
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes seeds in [0, 2**64)
logger = logging.getLogger("pixelsmith")


def public_config(config: Mapping) -> dict:
    """A diffusers config as a canonical dict: private entries dropped, keys sorted.

    diffusers records bookkeeping such as ``_use_default_values`` (a list whose order follows
    set iteration, so it changes with PYTHONHASHSEED) and ``_class_name``/``_diffusers_version``;
    none of them changes what the model computes, and keeping them would make a checkpoint look
    foreign to the next process.
    """
    return {key: config[key] for key in sorted(config) if not str(key).startswith("_")}


def pipeline_identity(pipe: PixelsmithPipeline) -> dict:
    """What identifies the model of a run in its checkpoint (names, configs, a weight checksum)."""
    checksum = float(next(pipe.unet.parameters()).detach().double().sum())
    identity = {
        "name_or_path": str(getattr(pipe, "name_or_path", "") or ""),
        "unet": type(pipe.unet).__name__,
        "vae": public_config(pipe.vae.config),
        "scheduler": [type(pipe.scheduler).__name__, public_config(pipe.scheduler.config)],
        "unet_checksum": checksum,
    }
    components = {name: getattr(pipe, name, None) for name in LORA_COMPONENTS}
    loras = lora_identity({name: m for name, m in components.items() if m is not None})
    if loras["adapters"]:  # absent without LoRAs: checkpoints of earlier versions still match
        identity["lora"] = loras
    return identity


def tensor_digest(tensor: Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes: identifies precomputed embeddings in a run."""
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes())  # (bytes,)
    return digest.hexdigest()


def intermediate_path(output: Path, size: tuple[int, int]) -> Path:
    """Where the image of an intermediate stage goes: ``<stem>_<H>x<W><suffix>``."""
    return output.with_name(f"{output.stem}_{size[0]}x{size[1]}{output.suffix}")


@dataclass(frozen=True)
class CascadePlan:
    """The checked inputs of a cascade.

    Args:
        sizes: stage sizes as (height, width) px.
        output: the output file, or ``None`` (a PIL image is returned).
        checkpoint_dir: the checkpoint folder, or ``None`` (no checkpoints).
        control_image: the opened ControlNet condition image, or ``None``.
    """

    sizes: list[tuple[int, int]]
    output: Path | None = None
    checkpoint_dir: Path | None = None
    control_image: ConditionImage | None = None


def check_cascade(
    sizes: Sequence[int | tuple[int, int] | str],
    sliders: Sequence[int],
    *,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    seed: int | None = 0,
    output: str | os.PathLike | None = None,
    config: PixelsmithConfig | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    save_intermediate: bool = False,
    compression: str | None = None,
    controlnet: ControlNetModel | str | os.PathLike | None = None,
    control_image: str | os.PathLike | Image.Image | Tensor | None = None,
    controlnet_conditioning_scale: float = 1.0,
    shape: ModelShape | None = None,
    device: torch.device | None = None,
    allow_large: bool = False,
    world_size: int = 1,
    writes: bool = True,
    in_place: bool = False,
    names: Names | None = None,
) -> CascadePlan:
    """Every argument of :func:`generate_cascade` checked before any work (nothing is loaded,
    nothing written); the CLI runs it before it loads the model.

    Args:
        sizes: see :func:`generate_cascade` (and the other arguments up to
            ``controlnet_conditioning_scale``); ``controlnet`` may also be a folder or hub id.
        sliders: one slider per stage after the first.
        num_inference_steps: in [1, the scheduler's training timesteps].
        guidance_scale: a finite number.
        seed: in [0, 2**64 - 1], or ``None``.
        output: the output file (suffix, size, writable folder).
        config: the sampler settings (patch size against the UNet).
        checkpoint_dir: the checkpoint folder (default ``<output>.pixelsmith`` with an output).
        checkpoint_every: an int >= 1.
        save_intermediate: needs ``output``; every intermediate file must be writable.
        compression: TIFF compression of a ``.tif`` output, writable here.
        controlnet: a ``ControlNetModel``, a folder or hub id, or ``None``.
        control_image: its condition image (read, and its aspect ratio checked).
        controlnet_conditioning_scale: a finite number.
        shape: the model's geometry (default SDXL's).
        device: where the stages run, for the memory check (``None``: no check).
        allow_large: skip the memory check.
        world_size: processes sharing the patches.
        writes: this process writes the output and the checkpoints (rank 0).
        in_place: allow ``output`` to replace the ``control_image`` file (see
            :func:`check_inputs_kept`).
        names: how the caller spells each argument in messages (the CLI: its flags).

    Raises:
        ValueError: the first bad input, named as ``names`` spells it, with its accepted range
            (an output that would replace an input:
            :class:`~common_kernels.runtime.errors.InvalidArgument`).
        TypeError: an argument of the wrong type.
        FileNotFoundError: a ControlNet path where nothing is.
    """
    config = config or PixelsmithConfig()
    shape = shape or ModelShape()
    steps_name = named("num_inference_steps", names)
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
        raise TypeError(f"{steps_name} must be an int, got {num_inference_steps!r}")
    if not 1 <= num_inference_steps <= shape.train_timesteps:
        raise ValueError(
            f"{steps_name} must be an int in [1, {shape.train_timesteps}] (the scheduler's "
            f"training timesteps), got {num_inference_steps}"
        )
    if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
        raise ValueError(
            f"{named('guidance_scale', names)} must be a finite number, got {guidance_scale}"
        )
    if seed is not None and (isinstance(seed, bool) or not 0 <= seed <= MAX_SEED):
        raise ValueError(f"{named('seed', names)} must be an int in [0, {MAX_SEED}], got {seed}")
    if (
        isinstance(checkpoint_every, bool)
        or not isinstance(checkpoint_every, int)
        or checkpoint_every < 1
    ):
        raise ValueError(
            f"{named('checkpoint_every', names)} must be an int >= 1, got {checkpoint_every!r}"
        )
    stages = validate_cascade(
        sizes,
        sliders,
        num_inference_steps,
        vae_scale_factor=shape.vae_scale_factor,
        patch_size=config.patch_size,
        names={key: named(key, names) for key in API_NAMES},
    )
    if len(stages) > 1 and config.patch_size % shape.unet_factor:
        raise ValueError(
            f"{named('patch_size', names)} must be a multiple of the UNet downsampling factor "
            f"{shape.unet_factor}, got {config.patch_size}"
        )
    check_parallel(world_size, faithful=config.faithful, name=setting("faithful", True, names))
    control = check_control(
        controlnet, control_image, controlnet_conditioning_scale, stages[-1], names
    )
    output, checkpoint_dir = check_outputs(
        stages, output, checkpoint_dir, save_intermediate, compression, writes, names
    )
    if writes and output is not None and isinstance(control_image, (str, os.PathLike)):
        inputs = {named("control_image", names): Path(control_image)}
        intermediates = [intermediate_path(output, size) for size in stages[:-1]]
        check_inputs_kept(
            inputs,
            output,
            intermediates if save_intermediate else [],
            checkpoint_dir,
            in_place=in_place,
            names=names,
        )
    if device is not None and not allow_large:
        check_memory(
            stages[-1],
            device,
            vae_scale_factor=shape.vae_scale_factor,
            latent_channels=shape.latent_channels,
            names=names,
        )
    return CascadePlan(stages, output, checkpoint_dir, control)


def check_control(
    controlnet: ControlNetModel | str | os.PathLike | None,
    image: str | os.PathLike | Image.Image | Tensor | None,
    scale: float,
    final_size: tuple[int, int],
    names: Names | None = None,
) -> ConditionImage | None:
    """A ControlNet (model, folder or hub id), its condition image and scale, checked; the
    opened condition image (``None`` without a ControlNet).

    Args:
        controlnet: the ``controlnet`` argument.
        image: the ``control_image`` argument.
        scale: the ``controlnet_conditioning_scale`` argument.
        final_size: the final image's (height, width) in px.
        names: how the caller spells the three in messages.
    """
    controlnet_name, image_name = named("controlnet", names), named("control_image", names)
    if controlnet is None:
        if image is not None:
            raise ValueError(f"{image_name} needs {controlnet_name}")
        return None
    if image is None:
        raise ValueError(f"{controlnet_name} needs {image_name} (its condition image)")
    if isinstance(controlnet, (str, os.PathLike)):
        resolve_source(
            controlnet, name=controlnet_name, what="ControlNet folder", marker=CONFIG_MARKER
        )
    elif not isinstance(controlnet, ControlNetModel):
        raise TypeError(
            f"{controlnet_name} must be a diffusers ControlNetModel, a folder or a hub id, got "
            f"{type(controlnet).__name__}"
        )
    check_control_scale(scale, named("controlnet_conditioning_scale", names))
    opened = open_control_image(image, image_name)
    check_aspect(opened, *final_size, image_name)
    return opened


def check_outputs(
    stages: list[tuple[int, int]],
    output: str | os.PathLike | None,
    checkpoint_dir: str | os.PathLike | None,
    save_intermediate: bool,
    compression: str | None,
    writes: bool,
    names: Names | None = None,
) -> tuple[Path | None, Path | None]:
    """The output file, intermediate files, compression and checkpoint folder of a cascade;
    ``(output, checkpoint folder)`` as paths.

    Args:
        stages: the checked stage sizes.
        output: the ``output`` argument.
        checkpoint_dir: the ``checkpoint_dir`` argument.
        save_intermediate: the ``save_intermediate`` argument.
        compression: the ``compression`` argument.
        writes: check what this process writes (rank 0); others only resolve the paths.
        names: how the caller spells the arguments in messages.
    """
    final = stages[-1]
    output_name, checkpoint_name = named("output", names), named("checkpoint_dir", names)
    if output is None:
        if final[0] * final[1] > MAX_PIL_PIXELS:
            raise ValueError(
                f"a {final[0]}x{final[1]} image is too large to return in RAM (at most "
                f"{MAX_PIL_PIXELS} px); pass output='image.tif' to stream it to disk"
            )
        if save_intermediate:
            raise ValueError(f"{setting('save_intermediate', True, names)} needs an output path")
        if compression is not None:
            raise ValueError(f"{named('compression', names)} needs a .tif/.tiff output")
        return None, None if checkpoint_dir is None else Path(checkpoint_dir)
    output = Path(output)
    if writes:
        output = check_output_path(output, *final, name=output_name)
        for size in stages[:-1] if save_intermediate else ():
            check_output_path(
                intermediate_path(output, size), *size, name=named("save_intermediate", names)
            )
        if compression is not None:
            if output.suffix.lower() not in TIFF_SUFFIXES:
                raise ValueError(
                    f"{named('compression', names)} applies to .tif/.tiff outputs only, got "
                    f"{output_name} {output}"
                )
            check_compression(compression, name=named("compression", names))
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        label = f"{checkpoint_name} {checkpoint_dir}"
    else:
        checkpoint_dir = output.with_name(f"{output.name}.pixelsmith")
        label = f"the checkpoint folder {checkpoint_dir} (set with {checkpoint_name})"
    if writes:
        check_checkpoint_dir(checkpoint_dir, label, checkpoint_name)
    return output, checkpoint_dir


def check_inputs_kept(
    inputs: Mapping[str, Path],
    output: Path,
    intermediates: Sequence[Path],
    checkpoint_dir: Path | None,
    *,
    in_place: bool = False,
    names: Names | None = None,
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
        names: how the caller spells the arguments in messages (the CLI: its flags).

    Raises:
        InvalidArgument: naming the output and the input, and how to go on.
    """
    files = {argument: path for argument, path in inputs.items() if path.is_file()}
    if files and not in_place:
        listing = ImageListing(tuple(InputImage(path, Path(path.name)) for path in files.values()))
        check_not_inputs([output], listing, argument=named("output", names))
    folder = checkpoint_dir.resolve() if checkpoint_dir is not None else None
    for argument, path in files.items():
        for intermediate in intermediates:
            if intermediate.exists() and intermediate.samefile(path):
                raise InvalidArgument(
                    named("save_intermediate", names),
                    f"the intermediate image {literal(intermediate)} would replace the input "
                    f"{literal(path)} ({argument}), which later stages still read; choose "
                    "another {output} name",
                    mentions={"output": named("output", names)},
                )
        if folder is not None and folder in path.resolve().parents:
            raise InvalidArgument(
                named("checkpoint_dir", names),
                f"{literal(checkpoint_dir)} holds the input {literal(path)} ({argument}), and "
                "the checkpoint folder is deleted when the run ends; move the input or choose "
                "another {checkpoint_dir}",
                mentions={"checkpoint_dir": named("checkpoint_dir", names)},
            )


@torch.no_grad()
def generate_cascade(
    pipe: PixelsmithPipeline,
    prompt: str | None,
    sizes: Sequence[int | tuple[int, int]],
    sliders: Sequence[int],
    *,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    seed: int | None = 0,
    output: str | Path | None = None,
    negative_prompt: str | None = None,
    prompt_2: str | None = None,
    negative_prompt_2: str | None = None,
    config: PixelsmithConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1,
    keep_checkpoint: bool = False,
    restart: bool = False,
    save_intermediate: bool = False,
    compression: str | None = None,
    progress: bool = True,
    callback: CascadeCallback | None = None,
    prompt_embeds: Tensor | None = None,
    pooled_prompt_embeds: Tensor | None = None,
    negative_prompt_embeds: Tensor | None = None,
    negative_pooled_prompt_embeds: Tensor | None = None,
    controlnet: ControlNetModel | None = None,
    control_image: str | Path | Image.Image | Tensor | None = None,
    controlnet_conditioning_scale: float = 1.0,
    ranks: RankGroup | None = None,
    allow_large: bool = False,
    in_place: bool = False,
) -> Image.Image | Path | None:
    """Generate ``prompt`` at ``sizes[-1]`` through the cascade ``sizes``.

    Args:
        pipe: the pipeline (any SDXL-compatible components).
        prompt: the prompt.
        sizes: stage sizes in px (int = square, or (height, width)); ``sizes[0]`` is made by
            plain SDXL, every later size by a Pixelsmith stage.
        sliders: one slider per later stage, an int in [1, num_inference_steps].
        num_inference_steps: denoising steps of every stage.
        guidance_scale: CFG scale.
        seed: seed of the CPU generator behind every random draw; ``None`` draws one (and a
            resumed run reuses the checkpoint's).
        output: write the final image here (.tif/.tiff: streamed BigTIFF; .png/.jpg/.webp/.bmp:
            PIL) and return the path; ``None`` returns a PIL image (at most 16384^2 px).
        negative_prompt: negative prompt (zero embeddings when ``None``, SDXL's default).
        prompt_2: prompt of the second text encoder (defaults to ``prompt``).
        negative_prompt_2: negative prompt of the second text encoder.
        config: sampler, tiling and hand-over settings.
        checkpoint_dir: checkpoint folder; default ``<output>.pixelsmith`` when ``output`` is
            given, else no checkpoints. An existing checkpoint of the same run is resumed.
        checkpoint_every: save the latent state every this many steps.
        keep_checkpoint: keep the checkpoint folder after success (deleted otherwise).
        restart: delete an existing checkpoint folder first (a run with other settings, or one
            to discard) instead of resuming it.
        save_intermediate: also write every earlier stage's image next to ``output``
            (``<stem>_<H>x<W><suffix>``).
        compression: TIFF compression passed to tifffile (e.g. ``"zlib"``).
        progress: show progress bars (stages, steps, VAE tiles).
        callback: called as ``callback(stage, step, latents, plan)`` after every Pixelsmith
            step, ``plan`` the step's :class:`~pixelsmith.StepPlan` (patches, rolls, time_ids).
        prompt_embeds: precomputed (1, L, D) prompt embeddings instead of ``prompt`` (then
            ``None``); diffusers' names, as in ``StableDiffusionXLPipeline``.
        pooled_prompt_embeds: precomputed (1, P) pooled embedding (with ``prompt_embeds``).
        negative_prompt_embeds: precomputed (1, L, D) negative embeddings.
        negative_pooled_prompt_embeds: precomputed (1, P) negative pooled embedding.
        controlnet: an SDXL ``ControlNetModel`` for the pipeline's UNet; runs in every stage.
        control_image: its condition image (with ``controlnet``): a file (a TIFF is read
            region by region from disk), a PIL image or a (3, H, W) tensor in [0, 1], any size
            with the final image's aspect ratio; resized to every stage, cropped per patch.
        controlnet_conditioning_scale: the ControlNet residuals are multiplied by it.
        ranks: the processes of a patch-parallel run (:mod:`pixelsmith.parallel`); default
            the initialised ``torch.distributed`` group, else this process alone. Every rank
            calls with the same arguments; rank 0 writes the image and the checkpoints, and
            progress bars are rank 0's; callbacks run on every rank (with the same latents).
        allow_large: skip the check that the full-size latent maps of the largest stage fit in
            the memory available on the pipeline's device.
        in_place: allow ``output`` to be the ``control_image`` file (replaced atomically once
            the image is complete); without it such an output is refused before any work.

    Every argument is checked before any work (:func:`check_cascade`), with the messages the
    CLI prints for the same input.

    Returns:
        The final PIL image, or the path of the written file when ``output`` is given; on
        ranks other than 0, ``output`` (``None`` without one), once rank 0 has written it.
    """
    config = config or PixelsmithConfig()
    ranks = ranks or RankGroup.current()
    progress = progress and ranks.main
    plan = check_cascade(
        sizes,
        sliders,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        seed=seed,
        output=output,
        config=config,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        save_intermediate=save_intermediate,
        compression=compression,
        controlnet=controlnet,
        control_image=control_image,
        controlnet_conditioning_scale=controlnet_conditioning_scale,
        shape=ModelShape.from_configs(pipe.vae.config, pipe.unet.config, pipe.scheduler.config),
        device=pipe._execution_device,
        allow_large=allow_large,
        world_size=ranks.world_size,
        writes=ranks.main,
        in_place=in_place,
    )
    stages, output, checkpoint_dir = plan.sizes, plan.output, plan.checkpoint_dir
    final_size = stages[-1]
    if len(stages) > 1:
        pipe.check_scheduler()
    control = None
    if controlnet is not None:
        check_controlnet(controlnet, pipe.unet)
        control = ControlCondition(
            controlnet, plan.control_image, float(controlnet_conditioning_scale)
        )
    embeds = {
        "prompt_embeds": prompt_embeds,
        "pooled_prompt_embeds": pooled_prompt_embeds,
        "negative_prompt_embeds": negative_prompt_embeds,
        "negative_pooled_prompt_embeds": negative_pooled_prompt_embeds,
    }
    text = pipe.encode_text(
        prompt,
        guidance_scale=guidance_scale,
        negative_prompt=negative_prompt,
        prompt_2=prompt_2,
        negative_prompt_2=negative_prompt_2,
        **embeds,
    )
    settings = {
        "embeddings": {name: tensor_digest(t) for name, t in embeds.items() if t is not None},
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "prompt_2": prompt_2,
        "negative_prompt_2": negative_prompt_2,
        "sizes": stages,
        "sliders": list(sliders),
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "config": config.to_dict(),
        "model": pipeline_identity(pipe),
    }
    if control is not None:  # absent without one: checkpoints of earlier versions still match
        settings["controlnet"] = control.identity()
    store = None
    generator = torch.Generator()  # on ranks other than 0 its state comes from rank 0
    if ranks.main:  # the checkpoint is rank 0's
        if restart and checkpoint_dir is not None:
            CheckpointStore.discard(checkpoint_dir)
        if checkpoint_dir is not None:
            store = CheckpointStore(checkpoint_dir, settings, seed, device=pipe._execution_device)
            seed = store.seed
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
    run = _CascadeRun(
        pipe,
        text,
        stages,
        list(sliders),
        num_inference_steps,
        config,
        generator,
        store,
        checkpoint_every,
        progress,
        callback,
        output if save_intermediate else None,
        control,
        ranks,
    )
    latents = run.all_stages()
    result: Image.Image | Path | None = output
    if ranks.main:
        rows = pipe.decoded_rows(latents, config=config, progress=progress)
        if output is None:
            result = Image.fromarray(collect_uint8(rows, *final_size))
        else:
            result = write_image(rows, output, *final_size, compression=compression)
        if store is not None and not keep_checkpoint:
            store.remove()
    ranks.barrier()  # every rank returns once the image is written
    return result


class _CascadeRun:
    """The stages of one cascade, with checkpoints (internal helper of generate_cascade)."""

    def __init__(
        self,
        pipe: PixelsmithPipeline,
        text: TextConditioning,
        stages: list[tuple[int, int]],
        sliders: list[int],
        num_steps: int,
        config: PixelsmithConfig,
        generator: torch.Generator,
        store: CheckpointStore | None,
        checkpoint_every: int,
        progress: bool,
        callback: CascadeCallback | None,
        intermediate_output: Path | None,
        control: ControlCondition | None = None,
        ranks: RankGroup | None = None,
    ) -> None:
        self.pipe = pipe
        self.text = text
        self.stages = stages
        self.sliders = sliders
        self.num_steps = num_steps
        self.config = config
        self.generator = generator
        self.store = store
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.callback = callback
        self.intermediate_output = intermediate_output
        self.control = control
        self.ranks = ranks or RankGroup()
        if self.ranks.world_size > 1:  # rank 0's embeddings: every rank conditions alike
            shared = {
                name: self.ranks.broadcast(getattr(text, name).contiguous())
                for name in ("prompt_embeds", "pooled", "negative_prompt_embeds", "negative_pooled")
                if getattr(text, name) is not None
            }
            self.text = dataclasses.replace(text, **shared)
        self.device = pipe._execution_device
        self.channels = pipe.vae.config.latent_channels

    def all_stages(self) -> Tensor:
        """Run (or reload) every stage; the final (1, C, h, w) latent."""
        latents: Tensor | None = None
        stages = show_progress(
            self.stages, desc="pixelsmith stages", unit="stages", disable=not self.progress
        )
        for stage, size in enumerate(stages):
            final = self.store.load_final(stage) if self.store is not None else None
            if self.ranks.share(final is not None):
                if final is not None:
                    latents, state = final
                    self.generator.set_state(state)
                    logger.info(
                        "stage %d (%dx%d) already finished: loaded from the checkpoint",
                        stage, *size,
                    )  # fmt: skip
                latents = self.shared(latents, stage)
                self.ranks.share_generator(self.generator)
                continue
            if stage == 0:
                if self.ranks.main:  # one plain SDXL image: rank 0's, shared
                    latents = self.pipe.generate_base(
                        self.text,
                        *size,
                        num_inference_steps=self.num_steps,
                        generator=self.generator,
                        eta=self.config.eta,
                        progress=self.progress,
                        control=self.control,
                    )
                latents = self.shared(latents, stage)
                self.ranks.share_generator(self.generator)
            else:
                latents = self.pixelsmith_stage(stage, latents)
            if self.store is not None:
                self.store.save_final(stage, latents, self.generator.get_state())
        return latents

    def shared(
        self, tensor: Tensor | None, stage: int, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """Rank 0's (1, C, h, w) latent-sized ``tensor`` of ``stage`` on every rank."""
        height, width = (side // self.pipe.vae_scale_factor for side in self.stages[stage])
        shape = (1, self.channels, height, width)
        return self.ranks.share_tensor(tensor, shape, dtype, self.device)

    def pixelsmith_stage(self, stage: int, previous: Tensor | None) -> Tensor:
        pipe, config, store = self.pipe, self.config, self.store
        guidance = noise = latents = start = None
        if self.ranks.main:  # the stage's inputs: rank 0's, shared below
            guidance, noise, latents, start = self.stage_inputs(stage, previous)
        start = self.ranks.share(start)
        guidance = self.shared(guidance, stage)
        noise = self.shared(noise, stage, torch.float16 if config.faithful else torch.float32)
        latents = self.shared(latents, stage)
        self.ranks.share_generator(self.generator)

        def on_step(step: int, current: Tensor, plan: StepPlan) -> None:
            done = step + 1
            if store is not None and (done % self.checkpoint_every == 0 or done == self.num_steps):
                store.save_progress(stage, current, done, self.generator.get_state())
            if self.callback is not None:
                self.callback(stage, step, current, plan)

        pipe.sample_stage(
            self.text,
            guidance,
            noise,
            latents,
            slider=self.sliders[stage - 1],
            num_inference_steps=self.num_steps,
            config=config,
            generator=self.generator,
            start_step=start,
            on_step=on_step,
            progress=self.progress,
            control=self.control,
            ranks=self.ranks,
        )
        return latents

    def stage_inputs(
        self, stage: int, previous: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, int]:
        """(guidance, noise, latents, start step) of a stage: from the checkpoint, or made."""
        pipe, config, store = self.pipe, self.config, self.store
        inputs = store.load_inputs(stage) if store is not None else None
        progress_state = store.load_progress(stage) if store is not None else None
        if inputs is not None and progress_state is not None:
            guidance, noise = inputs
            latents, start, state = progress_state
            self.generator.set_state(state)
            logger.info(
                "resuming stage %d from step %d of %d (checkpoint %s)",
                stage, start, self.num_steps, store.directory,
            )  # fmt: skip
        else:
            guidance = self.guidance_latents(stage, previous)
            latents, noise = pipe.prepare_stage(
                guidance,
                num_inference_steps=self.num_steps,
                config=config,
                generator=self.generator,
            )
            start = 0
            if store is not None:
                store.save_inputs(stage, guidance, noise)
                store.save_progress(stage, latents, 0, self.generator.get_state())
        return guidance, noise, latents, start

    def guidance_latents(self, stage: int, previous: Tensor) -> Tensor:
        """Decode the previous stage, resize it to this stage's size, encode it."""
        size = self.stages[stage]
        save_to = None
        if self.intermediate_output is not None:
            previous_size = self.stages[stage - 1]
            path = intermediate_path(self.intermediate_output, previous_size)

            def save_to(blocks: Iterator[tuple[int, Tensor]]) -> None:
                write_image(blocks, path, *previous_size)

        parent = self.store.directory if self.store is not None else None
        with tempfile.TemporaryDirectory(prefix="pixelsmith-", dir=parent) as workdir:
            source = self.pipe.guidance_source(
                previous,
                size,
                config=self.config,
                workdir=Path(workdir),
                progress=self.progress,
                save_to=save_to,
            )
            return self.pipe.encode_guidance(
                source, config=self.config, generator=self.generator, progress=self.progress
            )
