"""The Pixelsmith cascade: plain SDXL at the base size, then guided stages up to the target.

    image = generate_cascade(pipe, "a lighthouse", sizes=[1024, 2048, 4096], sliders=[20, 30])

The settings of a run are a :class:`~pixelsmith.options.CascadeOptions` and its checks
:func:`~pixelsmith.options.check_cascade` (:mod:`pixelsmith.options`); :func:`generate_cascade`
checks, then :func:`run_cascade` runs the checked plan.

Stages hand latents to each other: the previous latent is decoded tile by tile (floats, no
uint8 round trip unless ``handover="uint8"`` or faithful mode), Lanczos-resized region by
region and encoded tile by tile into the next guidance latent. With an output path the final
image is streamed to disk (BigTIFF for .tif) and the run is checkpointed after every step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel
from PIL import Image
from torch import Tensor

from common_kernels.runtime.progress import progress as show_progress
from pixelsmith.checkpoint import CheckpointStore
from pixelsmith.control import ControlCondition, check_controlnet
from pixelsmith.io import collect_uint8, write_image
from pixelsmith.lora import LORA_COMPONENTS, lora_identity
from pixelsmith.options import CascadeOptions, CascadePlan, check_cascade, intermediate_path
from pixelsmith.parallel import RankGroup
from pixelsmith.pipelines.pixelsmith import PixelsmithPipeline, StepPlan, TextConditioning
from pixelsmith.sources import ModelShape

CascadeCallback = Callable[[int, int, Tensor, StepPlan], None]
StageCallback = Callable[[int, Tensor], None]
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


@torch.no_grad()
def generate_cascade(
    pipe: PixelsmithPipeline,
    prompt: str | None,
    sizes: Sequence[int | tuple[int, int]],
    sliders: Sequence[int],
    options: CascadeOptions | None = None,
    *,
    negative_prompt: str | None = None,
    prompt_2: str | None = None,
    negative_prompt_2: str | None = None,
    prompt_embeds: Tensor | None = None,
    pooled_prompt_embeds: Tensor | None = None,
    negative_prompt_embeds: Tensor | None = None,
    negative_pooled_prompt_embeds: Tensor | None = None,
    controlnet: ControlNetModel | None = None,
    control_image: str | Path | Image.Image | Tensor | None = None,
    callback: CascadeCallback | None = None,
    on_stage: StageCallback | None = None,
    ranks: RankGroup | None = None,
    **settings: Any,
) -> Image.Image | Path | None:
    """Generate ``prompt`` at ``sizes[-1]`` through the cascade ``sizes``.

    Every input is checked before any work (:func:`pixelsmith.options.check_cascade`), then
    :func:`run_cascade` runs the plan.

    Args:
        pipe: the pipeline (any SDXL-compatible components).
        prompt: the prompt (``None`` with ``prompt_embeds``).
        sizes: stage sizes in px (int = square, or (height, width)); ``sizes[0]`` is made by
            plain SDXL, every later size by a Pixelsmith stage.
        sliders: one slider per later stage, an int in [1, num_inference_steps].
        options: the run's settings (:class:`~pixelsmith.options.CascadeOptions`: steps,
            guidance, seed, output, checkpoints, sampler config, ...); or give its fields as
            keywords (``**settings``), not both.
        negative_prompt: negative prompt (zero embeddings when ``None``, SDXL's default).
        prompt_2: prompt of the second text encoder (defaults to ``prompt``).
        negative_prompt_2: negative prompt of the second text encoder.
        prompt_embeds: precomputed (1, L, D) prompt embeddings instead of ``prompt``;
            diffusers' names, as in ``StableDiffusionXLPipeline``.
        pooled_prompt_embeds: precomputed (1, P) pooled embedding (with ``prompt_embeds``).
        negative_prompt_embeds: precomputed (1, L, D) negative embeddings.
        negative_pooled_prompt_embeds: precomputed (1, P) negative pooled embedding.
        controlnet: an SDXL ``ControlNetModel`` for the pipeline's UNet; runs in every stage.
        control_image: its condition image (with ``controlnet``): a file (a TIFF is read
            region by region from disk), a PIL image or a (3, H, W) tensor in [0, 1], any size
            with the final image's aspect ratio; resized to every stage, cropped per patch.
        callback: called as ``callback(stage, step, latents, plan)`` after every Pixelsmith
            step, ``plan`` the step's :class:`~pixelsmith.StepPlan` (patches, rolls, time_ids).
        on_stage: called as ``on_stage(stage, latents)`` once each stage is finished (stage 0
            too, and a stage loaded from a checkpoint), ``latents`` its final (1, C, h, w)
            float32 latent (decode it with ``pipe.decoded_rows``); e.g. to show every stage's
            image as it comes.
        ranks: the processes of a patch-parallel run (:mod:`pixelsmith.parallel`); default
            the initialised ``torch.distributed`` group, else this process alone. Every rank
            calls with the same arguments; rank 0 writes the image and the checkpoints, and
            progress bars are rank 0's; callbacks run on every rank (with the same latents).
        **settings: ``CascadeOptions`` fields (``num_inference_steps=4``, ``output=...``).

    Returns:
        The final PIL image, or the path of the written file when ``output`` is given; on
        ranks other than 0, ``output`` (``None`` without one), once rank 0 has written it.
    """
    if options is not None and settings:
        raise TypeError(f"give options or its fields, not both (got {', '.join(settings)})")
    options = options if options is not None else CascadeOptions(**settings)
    ranks = ranks or RankGroup.current()
    plan = check_cascade(
        sizes,
        sliders,
        options,
        controlnet=controlnet,
        control_image=control_image,
        shape=pipeline_shape(pipe),
        device=pipe._execution_device,
        world_size=ranks.world_size,
        writes=ranks.main,
    )
    prompts = Prompts(
        prompt,
        negative_prompt,
        prompt_2,
        negative_prompt_2,
        prompt_embeds,
        pooled_prompt_embeds,
        negative_prompt_embeds,
        negative_pooled_prompt_embeds,
    )
    return run_cascade(
        pipe, prompts, plan, controlnet=controlnet, callback=callback, on_stage=on_stage,
        ranks=ranks,
    )  # fmt: skip


def pipeline_shape(pipe: PixelsmithPipeline) -> ModelShape:
    """The geometry of a loaded pipeline's model."""
    return ModelShape.from_configs(pipe.vae.config, pipe.unet.config, pipe.scheduler.config)


@dataclass(frozen=True)
class Prompts:
    """The prompts of a cascade, as text or as precomputed embeddings (diffusers' names; see
    :func:`generate_cascade`)."""

    prompt: str | None = None
    negative_prompt: str | None = None
    prompt_2: str | None = None
    negative_prompt_2: str | None = None
    prompt_embeds: Tensor | None = None
    pooled_prompt_embeds: Tensor | None = None
    negative_prompt_embeds: Tensor | None = None
    negative_pooled_prompt_embeds: Tensor | None = None

    def embeddings(self) -> dict[str, Tensor | None]:
        """The ``*_embeds`` fields by name (``encode_text``'s keywords)."""
        return {name: value for name, value in vars(self).items() if name.endswith("_embeds")}

    def texts(self) -> dict[str, str | None]:
        """The text fields by name (``encode_text``'s keywords)."""
        return {name: value for name, value in vars(self).items() if not name.endswith("_embeds")}


@torch.no_grad()
def run_cascade(
    pipe: PixelsmithPipeline,
    prompts: Prompts,
    plan: CascadePlan,
    *,
    controlnet: ControlNetModel | None = None,
    callback: CascadeCallback | None = None,
    on_stage: StageCallback | None = None,
    ranks: RankGroup | None = None,
) -> Image.Image | Path | None:
    """Run a cascade checked by :func:`pixelsmith.options.check_cascade` (the command line
    checks before it loads the model, then runs its plan; the checks that need the loaded
    model run here: the scheduler, the ControlNet against the UNet, and the plan again when
    the model's geometry differs from the one it was checked for).

    Args:
        pipe: the pipeline.
        prompts: the prompts or their embeddings.
        plan: the checked cascade.
        controlnet: the loaded ControlNet of ``plan`` (with a condition image in the plan).
        callback: see :func:`generate_cascade`.
        on_stage: see :func:`generate_cascade`.
        ranks: see :func:`generate_cascade`.

    Returns:
        As :func:`generate_cascade`.
    """
    options, config = plan.options, plan.options.config
    ranks = ranks or RankGroup.current()
    progress = options.progress and ranks.main
    plan.check_model(pipeline_shape(pipe), pipe._execution_device)
    stages, output, checkpoint_dir = plan.sizes, plan.output, plan.checkpoint_dir
    final_size = stages[-1]
    if len(stages) > 1:
        pipe.check_scheduler()
    control = None
    if plan.control_image is not None:
        check_controlnet(controlnet, pipe.unet)
        control = ControlCondition(
            controlnet, plan.control_image, float(options.controlnet_conditioning_scale)
        )
    embeds = prompts.embeddings()
    text = pipe.encode_text(guidance_scale=options.guidance_scale, **prompts.texts(), **embeds)
    settings = {
        "embeddings": {name: tensor_digest(t) for name, t in embeds.items() if t is not None},
        **prompts.texts(),
        "sizes": stages,
        "sliders": list(plan.sliders),
        "num_inference_steps": options.num_inference_steps,
        "guidance_scale": options.guidance_scale,
        "config": config.to_dict(),
        "model": pipeline_identity(pipe),
    }
    if control is not None:  # absent without one: checkpoints of earlier versions still match
        settings["controlnet"] = control.identity()
    store = None
    seed = options.seed
    generator = torch.Generator()  # on ranks other than 0 its state comes from rank 0
    if ranks.main:  # the checkpoint is rank 0's
        if options.restart and checkpoint_dir is not None:
            CheckpointStore.discard(checkpoint_dir)
        if checkpoint_dir is not None:
            store = CheckpointStore(checkpoint_dir, settings, seed, device=pipe._execution_device)
            seed = store.seed
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
    run = _CascadeRun(
        pipe, text, plan, generator, store, progress, callback, control, ranks, on_stage
    )
    latents = run.all_stages()
    result: Image.Image | Path | None = output
    if ranks.main:
        rows = pipe.decoded_rows(latents, config=config, progress=progress)
        if output is None:
            result = Image.fromarray(collect_uint8(rows, *final_size))
        else:
            result = write_image(rows, output, *final_size, compression=options.compression)
        if store is not None and not options.keep_checkpoint:
            store.remove()
    ranks.barrier()  # every rank returns once the image is written
    return result


class _CascadeRun:
    """The stages of one cascade, with checkpoints (internal helper of generate_cascade)."""

    def __init__(
        self,
        pipe: PixelsmithPipeline,
        text: TextConditioning,
        plan: CascadePlan,
        generator: torch.Generator,
        store: CheckpointStore | None,
        progress: bool,
        callback: CascadeCallback | None,
        control: ControlCondition | None = None,
        ranks: RankGroup | None = None,
        on_stage: StageCallback | None = None,
    ) -> None:
        self.pipe = pipe
        self.text = text
        self.stages = plan.sizes
        self.sliders = plan.sliders
        self.num_steps = plan.options.num_inference_steps
        self.config = plan.options.config
        self.generator = generator
        self.store = store
        self.checkpoint_every = plan.options.checkpoint_every
        self.progress = progress
        self.callback = callback
        self.on_stage = on_stage
        self.intermediate_output = plan.output if plan.options.save_intermediate else None
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
                self.finished(stage, latents)
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
            self.finished(stage, latents)
        return latents

    def finished(self, stage: int, latents: Tensor) -> None:
        """Tell ``on_stage`` that ``stage`` is finished."""
        if self.on_stage is not None:
            self.on_stage(stage, latents)

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
