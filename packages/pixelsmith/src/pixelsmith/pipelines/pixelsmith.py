"""PixelsmithPipeline: SDXL at higher resolutions by guided patch denoising (a diffusers pipeline).

One stage takes a previous image (or the previous stage's latent), Lanczos-upsamples it to the
target size, VAE-encodes it tile by tile into the guidance latent z_guid and samples the target
latent patch by patch (:class:`pixelsmith.sampling.PatchSampler`), each patch one SDXL UNet call
with classifier-free guidance and per-patch micro-conditioning. The base stage is plain SDXL
(``StableDiffusionXLPipeline.__call__``); :func:`pixelsmith.generate_cascade` chains stages.
The tiled VAE is :mod:`pixelsmith.pipelines.vae_tiling` and the guidance latent
:mod:`pixelsmith.pipelines.guidance` (mixins of the pipeline).
"""

from __future__ import annotations

import functools
import os

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from common_kernels.runtime.files import AtomicSavePretrained
from common_kernels.runtime.progress import progress as show_progress
from pixelsmith.config import PixelsmithConfig, check_slider
from pixelsmith.control import ControlCondition, check_aspect, check_controlnet
from pixelsmith.images import LanczosImage, PILLanczosImage
from pixelsmith.io import collect_uint8
from pixelsmith.lora import CheckedLoraLoaderMixin
from pixelsmith.parallel import RankGroup
from pixelsmith.patches import Patch, make_planner
from pixelsmith.pipelines.guidance import GuidanceMixin
from pixelsmith.pipelines.stage import (
    PixelsmithOutput,
    StageStats,
    StepCallback,
    StepPlan,
    StepProgress,
    TextConditioning,
    check_guidance_latents,
    check_patch_scheduler,
    check_text_inputs,
    ddim_from_config,
    set_step_index,
)
from pixelsmith.pipelines.vae_tiling import TiledVAEMixin
from pixelsmith.sampling import GuidanceLatents, PatchSampler, SplitDenoiser
from pixelsmith.sources import LoadPlan, check_from_pretrained

CONTROLNET_PIPELINE_COMPONENTS = (
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "unet",
    "scheduler",
)


def _on(tensor: Tensor | None, device: torch.device) -> Tensor | None:
    return None if tensor is None else tensor.to(device)


class PixelsmithPipeline(
    AtomicSavePretrained,
    CheckedLoraLoaderMixin,
    GuidanceMixin,
    TiledVAEMixin,
    StableDiffusionXLPipeline,
):
    """SDXL with Pixelsmith's guided patch sampling for resolutions beyond the model's.

    Construct from components (``vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2,
    unet, scheduler``; any SDXL-compatible ones) or with :meth:`from_pretrained`. ``__call__``
    runs one Pixelsmith stage from an image; plain SDXL is :meth:`generate_base`. Without a VAE
    and text encoders (``None``), a stage runs from ``guidance_latents`` and prompt embeddings
    to a latent (a host that encodes and decodes itself, such as ComfyUI).
    """

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | LoadPlan,
        *,
        vae: str | os.PathLike | AutoencoderKL | None = "auto",
        ddim: bool = True,
        **kwargs,
    ) -> PixelsmithPipeline:
        """Load an SDXL repository or folder (diffusers layout).

        The names follow the repository's loader rule (:mod:`pixelsmith.sources`): a path is a
        local folder and a missing one is a ``FileNotFoundError`` naming it; a hub id that is
        not cached fails within 5 s with ``HubUnreachableError`` when the hub cannot be reached.

        Args:
            pretrained_model_name_or_path: hub id or local folder, or the
                :class:`~pixelsmith.sources.LoadPlan` of :func:`~pixelsmith.sources.
                check_from_pretrained` (checked already: its VAE is used, ``vae`` ignored).
            vae: a VAE (hub id, folder or model) replacing the repository's; ``"auto"`` uses
                ``madebyollin/sdxl-vae-fp16-fix`` for the SDXL base repository and the
                repository's own VAE otherwise; ``None`` keeps the repository's.
            ddim: replace the repository's scheduler by DDIM from its config with
                ``set_alpha_to_one=True`` (ignored when ``scheduler=`` is passed).
            **kwargs: passed to ``DiffusionPipeline.from_pretrained`` (``torch_dtype``,
                ``variant``, components, ...).

        Raises:
            FileNotFoundError: a local path where nothing is.
            ValueError: a folder that is not a diffusers folder, a malformed hub id.
            common_kernels.runtime.hub.HubUnreachableError: a hub id that is not cached while the
                hub cannot be reached (an ``OSError``).
        """
        named_vae = vae if vae is None or isinstance(vae, (str, os.PathLike)) else None
        plan = pretrained_model_name_or_path
        if not isinstance(plan, LoadPlan):
            plan = check_from_pretrained(plan, named_vae)
        plan.check_hub()
        if plan.vae is not None:
            dtype = kwargs.get("torch_dtype")
            dtype = dtype if isinstance(dtype, torch.dtype) else None
            kwargs["vae"] = AutoencoderKL.from_pretrained(os.fspath(plan.vae), torch_dtype=dtype)
        elif named_vae is None and vae is not None:
            kwargs["vae"] = vae
        explicit_scheduler = "scheduler" in kwargs
        pipe = super().from_pretrained(os.fspath(plan.model), **kwargs)
        if ddim and not explicit_scheduler:
            pipe.scheduler = ddim_from_config(pipe.scheduler.config)
        return pipe

    # ------------------------------------------------------------------ checks

    @property
    def unet_factor(self) -> int:
        """Downsampling of the UNet: patch sides must be multiples of it."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def check_patch_size(self, patch_size: int) -> None:
        if patch_size % self.unet_factor:
            raise ValueError(
                f"patch_size must be a multiple of the UNet downsampling factor "
                f"{self.unet_factor}, got {patch_size}"
            )

    @property
    def latent_channels(self) -> int:
        """Channels of the latents (the VAE's; the UNet's input without a VAE)."""
        if self.vae is None:
            return self.unet.config.in_channels
        return self.vae.config.latent_channels

    def check_vae_needs(self, image: object, output_type: str) -> None:
        """A pipeline built without a VAE (``vae=None``: its host encodes and decodes, e.g.
        ComfyUI's VAE nodes) runs a stage only from ``guidance_latents`` to a latent."""
        if self.vae is not None:
            return
        if image is not None:
            raise ValueError(
                "image needs the pipeline's VAE, and this pipeline has none (vae=None): give "
                "guidance_latents instead"
            )
        if output_type != "latent":
            raise ValueError(
                f"output_type {output_type!r} needs the pipeline's VAE, and this pipeline has "
                "none (vae=None): use output_type='latent'"
            )

    def check_scheduler(self) -> None:
        """Patch denoising needs ``add_noise``/``step`` and no cross-step history."""
        check_patch_scheduler(self.scheduler)

    @staticmethod
    def check_generator(generator: torch.Generator) -> torch.Generator:
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError(
                "generator must be a CPU torch.Generator (patch placement and noise are drawn "
                f"on the CPU), got {generator!r}"
            )
        return generator

    # ------------------------------------------------------------------ text

    @torch.no_grad()
    def encode_text(
        self,
        prompt: str | None = None,
        *,
        guidance_scale: float,
        negative_prompt: str | None = None,
        prompt_2: str | None = None,
        negative_prompt_2: str | None = None,
        prompt_embeds: Tensor | None = None,
        pooled_prompt_embeds: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
        negative_pooled_prompt_embeds: Tensor | None = None,
    ) -> TextConditioning:
        """SDXL prompt embeddings from text or precomputed (diffusers' argument names).

        Negative embeddings are made when ``guidance_scale > 1`` (CFG): the given
        ``negative_*`` ones, else from ``negative_prompt``, else zeros (SDXL's default).

        Args:
            prompt: the prompt; or ``None`` with ``prompt_embeds`` and ``pooled_prompt_embeds``.
            guidance_scale: CFG scale.
            negative_prompt: negative prompt.
            prompt_2: prompt of the second text encoder (defaults to ``prompt``).
            negative_prompt_2: negative prompt of the second text encoder.
            prompt_embeds: (1, L, D) hidden states of both text encoders, concatenated.
            pooled_prompt_embeds: (1, P) pooled embedding of the second text encoder.
            negative_prompt_embeds: (1, L, D) negative hidden states.
            negative_pooled_prompt_embeds: (1, P) negative pooled embedding.
        """
        check_text_inputs(
            prompt,
            prompt_embeds,
            pooled_prompt_embeds,
            negative_prompt,
            negative_prompt_embeds,
            negative_pooled_prompt_embeds,
        )
        if self.text_encoder_2 is None and (prompt is not None or negative_prompt is not None):
            raise ValueError(
                "prompt and negative_prompt need the pipeline's text encoders, and this "
                "pipeline has none: give prompt_embeds and pooled_prompt_embeds (and the "
                "negative ones)"
            )
        cfg = guidance_scale > 1.0
        device = self._execution_device
        embeds, negative, pooled, negative_pooled = self.encode_prompt(
            prompt,
            prompt_2=prompt_2,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=_on(prompt_embeds, device),
            pooled_prompt_embeds=_on(pooled_prompt_embeds, device),
            negative_prompt_embeds=_on(negative_prompt_embeds, device),
            negative_pooled_prompt_embeds=_on(negative_pooled_prompt_embeds, device),
        )
        return TextConditioning(
            embeds,
            pooled,
            negative if cfg else None,
            negative_pooled if cfg else None,
            guidance_scale,
        )

    # ------------------------------------------------------------------ base stage

    @torch.no_grad()
    def generate_base(
        self,
        text: TextConditioning,
        height: int,
        width: int,
        *,
        num_inference_steps: int,
        generator: torch.Generator,
        eta: float = 0.0,
        progress: bool = True,
        control: ControlCondition | None = None,
    ) -> Tensor:
        """Plain SDXL at ``height x width`` px; returns the (1, C, h, w) float32 latent.

        With ``control``, diffusers' ``StableDiffusionXLControlNetPipeline`` on the same
        components, its condition image resized to ``height x width``.
        """
        self.set_progress_bar_config(disable=not progress, desc=f"base {height}x{width}")
        call, extra = functools.partial(StableDiffusionXLPipeline.__call__, self), {}
        if control is not None:
            check_controlnet(control.controlnet, self.unet)
            call = self._controlnet_pipeline(control.controlnet)
            condition = control.at_size(height, width).read(0, 0, height, width)  # (3, H, W)
            extra = {"image": condition[None], "controlnet_conditioning_scale": control.scale}
        output = call(
            **extra,
            prompt_embeds=text.prompt_embeds,
            pooled_prompt_embeds=text.pooled,
            negative_prompt_embeds=text.negative_prompt_embeds,
            negative_pooled_prompt_embeds=text.negative_pooled,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=text.guidance_scale,
            eta=eta,
            generator=generator,
            output_type="latent",
        )
        return output.images.float()

    def progress_bar(self, iterable=None, total=None):
        """The base stage's per-step progress (diffusers calls it): a bar on a terminal, a
        plain line every 10 s in a log (:class:`StepProgress`); ``set_progress_bar_config``'s
        ``disable`` and ``desc`` apply."""
        config = getattr(self, "_progress_bar_config", {})
        desc, disable = config.get("desc", "sdxl"), bool(config.get("disable", False))
        if iterable is not None:
            return show_progress(iterable, desc=desc, total=total, unit="steps", disable=disable)
        if total is None:
            raise ValueError("progress_bar needs iterable or total")
        return StepProgress(total, desc, disable)

    def _controlnet_pipeline(
        self, controlnet: ControlNetModel
    ) -> StableDiffusionXLControlNetPipeline:
        """diffusers' SDXL ControlNet pipeline over this pipeline's components (shared)."""
        pipe = StableDiffusionXLControlNetPipeline(
            **{name: getattr(self, name) for name in CONTROLNET_PIPELINE_COMPONENTS},
            controlnet=controlnet,
            force_zeros_for_empty_prompt=self.config.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        pipe.progress_bar = self.progress_bar  # the same plain lines in logs
        return pipe

    def check_control(self, control: ControlCondition, height: int, width: int) -> None:
        """One ``ValueError`` unless the ControlNet fits the UNet and the condition image has
        the aspect ratio of ``height x width``."""
        check_controlnet(control.controlnet, self.unet)
        check_aspect(control.image, height, width)

    # ------------------------------------------------------------------ Pixelsmith stage

    @torch.no_grad()
    def prepare_stage(
        self,
        guidance_latents: Tensor,
        *,
        num_inference_steps: int,
        config: PixelsmithConfig,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        """Guidance noise and start latent (the guidance noised to the first timestep).

        Faithful mode first draws (and discards) a full-size start latent, and stores the
        guidance noise as float16, as the official sampler.

        Returns:
            ``(latents, noise)``, both (1, C, h, w); latents float32.
        """
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        shape, device = guidance_latents.shape, guidance_latents.device
        if config.faithful:
            # the official sampler draws a start latent here and discards it
            randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        if config.faithful:
            noise = noise.half()
        first = self.scheduler.timesteps[:1]
        latents = self.scheduler.add_noise(guidance_latents.float(), noise.float(), first)
        return latents, noise

    def _patch_time_ids(self, patch: Patch, size: tuple[int, int], faithful: bool) -> list[int]:
        """SDXL micro-conditioning: original size, crop (top, left) in px, target size."""
        factor = self.vae_scale_factor
        top = patch.left * factor if faithful else patch.top * factor  # official: column twice
        return [size[0], size[1], top, patch.left * factor, size[0], size[1]]

    def _patch_denoiser(
        self,
        text: TextConditioning,
        size: tuple[int, int],
        config: PixelsmithConfig,
        generator: torch.Generator,
        control: ControlCondition | None = None,
    ) -> SplitDenoiser:
        """UNet with CFG (and the ControlNet of ``control`` on each patch's condition crop)
        on a batch of patches (``predict``), and one scheduler step (``advance``)."""
        timesteps = self.scheduler.timesteps
        extra = self.prepare_extra_step_kwargs(generator, config.eta)
        dtype = self.unet.dtype
        condition = control.at_size(*size) if control is not None else None

        def predict(x: Tensor, patches: list[Patch], step: int) -> Tensor:
            count = x.shape[0]
            t = timesteps[step]
            time_ids = torch.tensor(
                [self._patch_time_ids(p, size, config.faithful) for p in patches],
                device=x.device,
                dtype=text.prompt_embeds.dtype,
            )  # (k, 6)
            model_in = torch.cat([x, x]) if text.cfg else x  # (2k, C, p, p) with CFG
            set_step_index(self.scheduler, step)
            model_in = self.scheduler.scale_model_input(model_in, t).to(dtype)
            embeds, pooled = text.batch(count)
            added = {
                "text_embeds": pooled,
                "time_ids": time_ids.repeat(2, 1) if text.cfg else time_ids,
            }
            residuals = {}
            if control is not None:
                crops = control.crops(condition, patches, self.vae_scale_factor)  # (k, 3, P, P)
                crops = crops.to(x.device, control.controlnet.dtype)
                down, mid = control.controlnet(
                    model_in,
                    t,
                    encoder_hidden_states=embeds,
                    controlnet_cond=torch.cat([crops, crops]) if text.cfg else crops,
                    conditioning_scale=control.scale,
                    added_cond_kwargs=added,
                    return_dict=False,
                )
                residuals = {
                    "down_block_additional_residuals": down,
                    "mid_block_additional_residual": mid,
                }
            noise = self.unet(
                model_in,
                t,
                encoder_hidden_states=embeds,
                added_cond_kwargs=added,
                return_dict=False,
                **residuals,
            )[0].float()
            if text.cfg:
                uncond, cond = noise.chunk(2)
                noise = uncond + text.guidance_scale * (cond - uncond)
            return noise

        def advance(noise: Tensor, x: Tensor, step: int) -> Tensor:
            set_step_index(self.scheduler, step)
            t = timesteps[step]
            return self.scheduler.step(noise, t, x, **extra, return_dict=False)[0].float()

        return SplitDenoiser(predict, advance)

    @torch.no_grad()
    def sample_stage(
        self,
        text: TextConditioning,
        guidance_latents: Tensor,
        noise: Tensor,
        latents: Tensor,
        *,
        slider: int,
        num_inference_steps: int,
        config: PixelsmithConfig,
        generator: torch.Generator,
        start_step: int = 0,
        on_step: StepCallback | None = None,
        progress: bool = True,
        control: ControlCondition | None = None,
        ranks: RankGroup | None = None,
    ) -> StageStats:
        """Pixelsmith sampling of ``latents`` (in place) from ``start_step`` to the end.

        Args:
            text: prompt embeddings.
            guidance_latents: (1, C, h, w) z_guid.
            noise: (1, C, h, w) guidance noise from :meth:`prepare_stage`.
            latents: (1, C, h, w) float32 latent at ``start_step``; denoised in place.
            slider: fusion for steps < slider, chess mask for steps < slider - 1.
            num_inference_steps: steps of the stage.
            config: sampler settings.
            generator: CPU generator for patch placement and stochastic schedulers.
            start_step: first step to run (to resume).
            on_step: called as ``on_step(step, latents, plan)`` after every step, ``plan`` the
                step's :class:`StepPlan` (patches, rolls, time_ids, timestep).
            progress: show progress over steps (a bar on a terminal, lines in a log).
            control: a ControlNet and its condition image (cropped per patch).
            ranks: the processes sharing the UNet calls of each step (:mod:`pixelsmith.parallel`;
                every rank passes the same inputs and generator state).
        """
        self.check_scheduler()
        self.check_patch_size(config.patch_size)
        self.check_generator(generator)
        check_slider(slider, num_inference_steps)
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        height, width = latents.shape[-2:]
        size_px = (height * self.vae_scale_factor, width * self.vae_scale_factor)
        if control is not None:  # the aspect ratio is the final image's (checked by the caller)
            check_controlnet(control.controlnet, self.unet)
        planner = make_planner(
            config.scheduler_name,
            height,
            width,
            config.patch_size,
            batch_size=config.batch_limit,
            faithful=config.faithful,
            min_overlap=config.grid_min_overlap,
            stagger_below=config.band if config.grid_stagger else 0,
        )
        guidance = GuidanceLatents(
            guidance_latents, noise, self.scheduler.add_noise, self.scheduler.timesteps
        )
        sampler = PatchSampler(
            latents,
            num_steps=num_inference_steps,
            guidance=guidance,
            slider=slider,
            band=config.band,
            denoise=self._patch_denoiser(text, size_px, config, generator, control),
            faithful=config.faithful,
            start_step=start_step,
            ranks=ranks,
        )
        stats = StageStats()
        steps = show_progress(
            range(start_step, num_inference_steps),
            desc=f"pixelsmith {size_px[0]}x{size_px[1]}",
            unit="steps",
            disable=not progress,
            leave=False,
        )
        timesteps = self.scheduler.timesteps.tolist()  # once per stage, for the step plans
        for step in steps:
            batches = planner.plan(step, chess=step < slider - 1, generator=generator)
            sampler.step(step, batches)
            stats.patches_per_step.append(sum(len(b) for b in batches))
            stats.unet_calls_per_step.append(len(batches))
            if on_step is not None:
                plan = StepPlan(
                    step=step,
                    timestep=timesteps[step],
                    batches=batches,
                    time_ids=[
                        [self._patch_time_ids(p, size_px, config.faithful) for p in batch]
                        for batch in batches
                    ],
                    fusion=step < slider,
                    chess=step < slider - 1,
                )
                on_step(step, latents, plan)
        return stats

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | None = None,
        image: Image.Image | Tensor | None = None,
        *,
        slider: int,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | None = None,
        prompt_2: str | None = None,
        negative_prompt_2: str | None = None,
        generator: torch.Generator | None = None,
        config: PixelsmithConfig | None = None,
        output_type: str = "pil",
        progress: bool = True,
        prompt_embeds: Tensor | None = None,
        pooled_prompt_embeds: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
        negative_pooled_prompt_embeds: Tensor | None = None,
        guidance_latents: Tensor | None = None,
        callback: StepCallback | None = None,
        control: ControlCondition | None = None,
    ) -> PixelsmithOutput:
        """One Pixelsmith stage: ``image`` (or ``guidance_latents``) guides sampling at
        ``height x width`` px.

        Args:
            prompt: the prompt (or ``None`` with ``prompt_embeds``).
            image: the previous image (PIL, or a (1, 3, H, W) / (3, H, W) float tensor with
                finite values in [0, 1]); ``None`` with ``guidance_latents``.
            slider: guidance steps (an int in [1, num_inference_steps]).
            height: target height in px (default twice the image's; with
                ``guidance_latents``, their size times the VAE factor).
            width: target width in px (default as ``height``).
            num_inference_steps: denoising steps.
            guidance_scale: CFG scale (CFG off at <= 1).
            negative_prompt: negative prompt (zeros when ``None``, SDXL's default).
            prompt_2: prompt of the second text encoder (defaults to ``prompt``).
            negative_prompt_2: negative prompt of the second text encoder.
            generator: CPU generator (default: seed 0).
            config: sampler settings.
            output_type: ``"pil"``, ``"pt"`` ((1, 3, H, W) in [0, 1]) or ``"latent"``.
            progress: show progress bars.
            prompt_embeds: precomputed (1, L, D) prompt embeddings (diffusers' name).
            pooled_prompt_embeds: precomputed (1, P) pooled embedding.
            negative_prompt_embeds: precomputed (1, L, D) negative embeddings.
            negative_pooled_prompt_embeds: precomputed (1, P) negative pooled embedding.
            guidance_latents: a (1, C, h, w) z_guid (scaled VAE latents of the resized previous
                image) used instead of encoding ``image``: no VAE encode and no posterior draw.
            callback: called as ``callback(step, latents, plan)`` after every step with the
                step's :class:`StepPlan` (patch positions, rolls, time_ids, timestep).
            control: a :class:`~pixelsmith.control.ControlCondition` (ControlNet, condition
                image of the target's aspect ratio, scale); each patch gets its crop.
        """
        config = config or PixelsmithConfig()
        generator = self.check_generator(generator or torch.Generator().manual_seed(0))
        if output_type not in ("pil", "pt", "latent"):
            raise ValueError(
                f"output_type must be one of 'pil', 'pt', 'latent', got {output_type!r}"
            )
        factor = self.vae_scale_factor
        if (image is None) == (guidance_latents is None):
            raise ValueError("give exactly one of image and guidance_latents")
        self.check_vae_needs(image, output_type)
        if guidance_latents is not None:
            check_guidance_latents(guidance_latents, self.latent_channels)
            height = height or guidance_latents.shape[-2] * factor
            width = width or guidance_latents.shape[-1] * factor
            if (height, width) != tuple(s * factor for s in guidance_latents.shape[-2:]):
                raise ValueError(
                    f"height x width {height}x{width} must be the guidance_latents' size times "
                    f"{factor}: {guidance_latents.shape[-2] * factor}x"
                    f"{guidance_latents.shape[-1] * factor}"
                )
        else:
            source = self._image_source(image, config.handover_mode)
            height = height or 2 * source.height
            width = width or 2 * source.width
        if height % factor or width % factor:
            raise ValueError(
                f"height and width must be multiples of {factor}, got {height}x{width}"
            )
        if min(height, width) < config.patch_size * factor:
            raise ValueError(
                f"height and width must be at least one patch ({config.patch_size * factor} px), "
                f"got {height}x{width}"
            )
        check_slider(slider, num_inference_steps)
        self.check_scheduler()
        self.check_patch_size(config.patch_size)
        if control is not None:
            self.check_control(control, height, width)
        text = self.encode_text(
            prompt,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            prompt_2=prompt_2,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        )
        if guidance_latents is not None:
            guide = guidance_latents.to(self._execution_device, torch.float32)
        else:
            resized = (
                PILLanczosImage(source, height, width, config.max_ram_pixels)
                if isinstance(source, Image.Image)
                else LanczosImage(source, height, width)
            )
            guide = self.encode_guidance(
                resized, config=config, generator=generator, progress=progress
            )
        latents, noise = self.prepare_stage(
            guide, num_inference_steps=num_inference_steps, config=config, generator=generator
        )
        stats = self.sample_stage(
            text,
            guide,
            noise,
            latents,
            slider=slider,
            num_inference_steps=num_inference_steps,
            config=config,
            generator=generator,
            on_step=callback,
            progress=progress,
            control=control,
        )
        if output_type == "latent":
            return PixelsmithOutput(None, latents, stats)
        array = collect_uint8(
            self.decoded_rows(latents, config=config, progress=progress), height, width
        )
        if output_type == "pil":
            return PixelsmithOutput([Image.fromarray(array)], latents, stats)
        pixels = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)
        return PixelsmithOutput(pixels, latents, stats)
