"""What a Pixelsmith stage takes and gives: the scheduler (SDXL's DDIM, the first-order check),
the text conditioning, the plan of each step, the output, the checks of the tensors a user
passes (before any work, naming the argument) and the base stage's step progress.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler
from PIL import Image
from torch import Tensor

from common_kernels.runtime import files
from common_kernels.runtime.progress import progress as show_progress
from pixelsmith.config import check_not_empty
from pixelsmith.patches import Patch

# schedulers whose step depends on earlier steps of the whole image (multistep history)
HISTORY_ATTRIBUTES = ("model_outputs", "ets", "derivatives")
PATCH_SCHEDULERS_HINT = (
    "DDIMScheduler (the default), DDPMScheduler, EulerDiscreteScheduler, "
    "EulerAncestralDiscreteScheduler"
)


def ddim_from_config(config: dict) -> DDIMScheduler:
    """SDXL's DDIM: the model's scheduler config with ``set_alpha_to_one=True``, no clipping."""
    return DDIMScheduler.from_config(
        config, set_alpha_to_one=True, clip_sample=bool(config.get("clip_sample", False))
    )


def set_step_index(scheduler: object, step: int) -> None:
    """Point index-tracking schedulers (Euler, ...) at ``step``.

    Such schedulers count ``step`` calls; patch denoising calls ``step`` once per patch batch,
    so the index is set explicitly before every ``scale_model_input`` and ``step``.
    """
    if hasattr(scheduler, "_step_index"):
        scheduler._step_index = step


def check_patch_scheduler(scheduler: object) -> None:
    """Patch denoising needs ``add_noise``/``step`` and no cross-step history.

    Args:
        scheduler: the pipeline's scheduler.
    """
    name = type(scheduler).__name__
    for method in ("add_noise", "step", "set_timesteps", "scale_model_input"):
        if not callable(getattr(scheduler, method, None)):
            raise ValueError(f"scheduler {name} has no {method}(); use {PATCH_SCHEDULERS_HINT}")
    order = getattr(scheduler, "order", 1)
    history = [a for a in HISTORY_ATTRIBUTES if hasattr(scheduler, a)]
    if order != 1 or history:
        raise ValueError(
            f"scheduler {name} keeps state across steps (order {order}"
            f"{', history ' + ', '.join(history) if history else ''}); patch denoising steps "
            f"every patch separately and needs a first-order scheduler without history: "
            f"{PATCH_SCHEDULERS_HINT}"
        )


@dataclass
class TextConditioning:
    """Prompt embeddings of SDXL's two text encoders (negative ones for CFG)."""

    prompt_embeds: Tensor  # (1, L, D)
    pooled: Tensor  # (1, P)
    negative_prompt_embeds: Tensor | None
    negative_pooled: Tensor | None
    guidance_scale: float

    @property
    def cfg(self) -> bool:
        return self.negative_prompt_embeds is not None

    def batch(self, size: int) -> tuple[Tensor, Tensor]:
        """(B, L, D) hidden states and (B, P) pooled embeddings for ``size`` patches (x2 CFG)."""
        embeds = self.prompt_embeds.expand(size, -1, -1)
        pooled = self.pooled.expand(size, -1)
        if self.cfg:
            embeds = torch.cat([self.negative_prompt_embeds.expand(size, -1, -1), embeds])
            pooled = torch.cat([self.negative_pooled.expand(size, -1), pooled])
        return embeds, pooled


@dataclass
class StageStats:
    """Patches and UNet calls per denoising step of a stage."""

    patches_per_step: list[int] = field(default_factory=list)
    unet_calls_per_step: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class StepPlan:
    """What one Pixelsmith step did, as a step callback receives it.

    Args:
        step: the step index in [0, num_inference_steps).
        timestep: the scheduler timestep of the step.
        batches: the patches of the step, one list per UNet call (latent positions ``top``,
            ``left``, ``size`` and the checkerboard rolls ``roll_left``, ``roll_down``).
        time_ids: SDXL micro-conditioning of each patch, as ``batches``: (original height,
            original width, crop top, crop left, target height, target width) in px.
        fusion: whether the FFT phase fusion with the guidance ran (step < slider).
        chess: whether the chess mask took half the pixels from the guidance (step < slider - 1).
    """

    step: int
    timestep: float
    batches: list[list[Patch]]
    time_ids: list[list[list[int]]]
    fusion: bool
    chess: bool


StepCallback = Callable[[int, Tensor, StepPlan], None]


@dataclass
class PixelsmithOutput:
    """Result of one stage: ``images`` (PIL list or (1, 3, H, W) tensor in [0, 1]) or latents."""

    images: list[Image.Image] | Tensor | None
    latents: Tensor
    stats: StageStats


def check_text_inputs(
    prompt: str | None,
    prompt_embeds: Tensor | None,
    pooled_prompt_embeds: Tensor | None,
    negative_prompt: str | None,
    negative_prompt_embeds: Tensor | None,
    negative_pooled_prompt_embeds: Tensor | None,
) -> None:
    """One source per text input: a prompt or its embeddings (pooled too), with shapes checked."""
    if (prompt is None) == (prompt_embeds is None):
        raise ValueError("give exactly one of prompt and prompt_embeds")
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("give at most one of negative_prompt and negative_prompt_embeds")
    pairs = (
        ("prompt_embeds", prompt_embeds, "pooled_prompt_embeds", pooled_prompt_embeds),
        (
            "negative_prompt_embeds",
            negative_prompt_embeds,
            "negative_pooled_prompt_embeds",
            negative_pooled_prompt_embeds,
        ),
    )
    for name, embeds, pooled_name, pooled in pairs:
        if (embeds is None) != (pooled is None):
            raise ValueError(f"{name} and {pooled_name} must be given together")
        if embeds is None:
            continue
        check_not_empty(embeds, name)
        check_not_empty(pooled, pooled_name)
        if embeds.ndim != 3 or embeds.shape[0] != 1:
            raise ValueError(f"{name} must have shape (1, L, D), got {tuple(embeds.shape)}")
        if pooled.ndim != 2 or pooled.shape[0] != 1:
            raise ValueError(f"{pooled_name} must have shape (1, P), got {tuple(pooled.shape)}")
    if (
        negative_prompt_embeds is not None
        and prompt_embeds is not None
        and (
            negative_prompt_embeds.shape != prompt_embeds.shape
            or negative_pooled_prompt_embeds.shape != pooled_prompt_embeds.shape
        )
    ):
        raise ValueError(
            "negative_prompt_embeds / negative_pooled_prompt_embeds must have the shapes of "
            f"prompt_embeds {tuple(prompt_embeds.shape)} / pooled_prompt_embeds "
            f"{tuple(pooled_prompt_embeds.shape)}"
        )


def check_guidance_latents(latents: object, channels: int) -> None:
    """A finite float (1, channels, h, w) tensor.

    Args:
        latents: the ``guidance_latents`` argument of a stage.
        channels: latent channels of the VAE.
    """
    if not isinstance(latents, Tensor) or not latents.is_floating_point():
        raise TypeError(f"guidance_latents must be a float tensor, got {type(latents).__name__}")
    check_not_empty(latents, "guidance_latents")
    if latents.ndim != 4 or latents.shape[:2] != (1, channels):
        raise ValueError(
            f"guidance_latents must have shape (1, {channels}, h, w), got {tuple(latents.shape)}"
        )
    if not bool(torch.isfinite(latents).all()):
        raise ValueError(
            "guidance_latents contains NaN or Inf values; expected finite scaled VAE latents "
            "(any real value)"
        )


def check_image_tensor(image: Tensor) -> Tensor:
    """The (3, H, W) pixels of an ``image`` tensor: float, finite, in [0, 1] (the value checks
    are ``common_kernels.runtime.files.check_image_tensor``'s, as in every package).

    Args:
        image: a (1, 3, H, W) or (3, H, W) tensor.
    """
    check_not_empty(image, "image")
    if image.ndim not in (3, 4) or image.shape[-3] != 3 or (image.ndim == 4 and len(image) != 1):
        raise ValueError(
            f"image must be a (1, 3, H, W) / (3, H, W) tensor in [0, 1], got {tuple(image.shape)}"
        )
    pixels = image[0] if image.ndim == 4 else image  # (3, H, W)
    return files.check_image_tensor(pixels, "image")


class StepProgress:
    """diffusers' ``with pipe.progress_bar(total=n) as bar: ... bar.update()`` on
    :func:`common_kernels.runtime.progress.progress`: a tqdm bar on a terminal, plain lines in a log
    (diffusers' own tqdm bar writes carriage returns into log files).

    Args:
        total: the number of steps.
        desc: the first word(s) of each line.
        disable: show nothing.
    """

    def __init__(self, total: int, desc: str, disable: bool) -> None:
        self.total, self.done = total, 0
        self.steps = show_progress(iter(range(total)), desc=desc, total=total, unit="steps",
                                   disable=disable)  # fmt: skip

    def update(self, n: int = 1) -> None:
        for _ in range(n):
            next(self.steps, None)
        self.done += n

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.done >= self.total:
            next(self.steps, None)  # the generator ends: the final line / the bar closes
        self.steps.close()
