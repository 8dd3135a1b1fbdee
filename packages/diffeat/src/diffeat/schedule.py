"""Noising a clean latent at one diffusion timestep: the exact rule and the official quirk.

Exact (default): ``x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps`` with the U-Net timestep ``t``
itself, ``abar`` taken from the model's scheduler (its training noise schedule).

Flow matching (FLUX, SD3): ``x_t = (1 - sigma) z + sigma eps`` at an exact ``sigma``.

Faithful (official code): the pipeline scheduler is set to as many inference steps as training
steps and entry ``num_train_timesteps - t`` of its timestep list is used for the noise and the
U-Net. On SD 1.5 (PNDM, leading spacing, offset 1) the list holds 999 twice, so ``t = 50``
becomes timestep 51; on SDXL (Euler) it stays 50.0, the latent is noised as ``z + sigma eps``
and scaled by ``1 / sqrt(sigma^2 + 1)`` (the same point up to rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class NoisePlan:
    """How one extraction noises its latent.

    Args:
        timestep: the U-Net timestep (int for DDPM-style, float for Euler in faithful mode).
        signal: coefficient of the clean latent (exact mode), else None.
        noise: coefficient of the noise (exact mode), else None.
        faithful: use the scheduler's own ``add_noise``/``scale_model_input``.
    """

    timestep: int | float
    signal: float | None
    noise: float | None
    faithful: bool


def num_train_timesteps(scheduler) -> int:
    return int(scheduler.config.num_train_timesteps)


def is_flow_matching(scheduler) -> bool:
    """Whether ``scheduler`` is a flow-matching one (FLUX, SD3: ``FlowMatch...Scheduler``)."""
    return type(scheduler).__name__.startswith("FlowMatch")


def check_sigma(sigma) -> float:
    """``sigma`` as a float in [0, 1] (0: the clean latent, 1: pure noise).

    Raises:
        ValueError: ``sigma: ...`` naming the range.
    """
    number = isinstance(sigma, int | float) and not isinstance(sigma, bool)
    if not number or not math.isfinite(sigma) or not 0 <= sigma <= 1:
        raise ValueError(f"sigma: must be a number in [0, 1]; got {sigma!r}")
    return float(sigma)


def plan_noise(scheduler, t: int, faithful: bool, sigma: float | None = None) -> NoisePlan:
    """Resolve timestep ``t`` (or, for flow matching, ``sigma``) for a scheduler.

    Flow matching (FLUX, SD3): ``x_t = (1 - sigma) z + sigma eps`` at ``sigma`` (default
    ``t / num_train_timesteps``, e.g. 0.05 for t = 50; no shift of the sampling schedule is
    applied), the transformer's timestep ``sigma * num_train_timesteps``.

    Args:
        scheduler: the model's diffusers scheduler (``alphas_cumprod``, or flow matching).
        t: the requested timestep, in ``[0, num_train_timesteps - 1]``.
        faithful: reproduce the official timestep selection (DDPM-style schedulers only).
        sigma: the flow-matching noise level in [0, 1] (flow-matching schedulers only).
    """
    total = num_train_timesteps(scheduler)
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < total:
        raise ValueError(
            f"timestep: must be an integer in [0, {total - 1}] (the scheduler's "
            f"num_train_timesteps is {total}); got {t!r}"
        )
    if is_flow_matching(scheduler):
        if faithful:
            raise ValueError("faithful: the official code's path is restated for U-Nets only")
        level = t / total if sigma is None else check_sigma(sigma)
        return NoisePlan(level * total, 1.0 - level, level, False)
    if sigma is not None:
        raise ValueError(
            f"sigma: applies to flow-matching models (FLUX, SD3); this model's "
            f"{type(scheduler).__name__} noises at a DDPM timestep, not at a sigma"
        )
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(
            f"scheduler: {type(scheduler).__name__} has no alphas_cumprod; diffeat needs a "
            "DDPM-style noise schedule (PNDM, DDIM, DDPM, Euler, ...)"
        )
    if not faithful:
        abar = float(scheduler.alphas_cumprod[t].double())
        return NoisePlan(t, math.sqrt(abar), math.sqrt(1.0 - abar), False)
    timesteps = _official_timesteps(scheduler)
    index = total - t
    if not 0 <= index < len(timesteps):
        raise ValueError(
            f"timestep: faithful mode picks entry {total} - t of the scheduler's "
            f"{len(timesteps)}-entry timestep list; t = {t} is outside it"
        )
    value = timesteps[index]
    step = value.item() if value.is_floating_point() else int(value)
    return NoisePlan(step, None, None, True)


def _official_timesteps(scheduler) -> Tensor:
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(num_train_timesteps(scheduler))
    return fresh.timesteps


def noisy_latents(scheduler, plan: NoisePlan, latents: Tensor, noise: Tensor) -> Tensor:
    """The U-Net input for clean ``latents`` (B, 4, h, w) and standard-normal ``noise``.

    Computed in fp32 whatever the input dtype.

    Args:
        scheduler: the model's scheduler (used in faithful mode).
        plan: from :func:`plan_noise`.
        latents: scaled VAE latents.
        noise: the noise, same shape.
    """
    latents, noise = latents.float(), noise.float()
    if not plan.faithful:
        return plan.signal * latents + plan.noise * noise
    fresh, step, noisy = _official_noisy(scheduler, plan, latents, noise)
    return fresh.scale_model_input(noisy, step)


def _official_noisy(scheduler, plan: NoisePlan, latents: Tensor, noise: Tensor):
    """A fresh scheduler set to ``num_train_timesteps`` steps, the timestep as a tensor and
    the (unscaled) noisy latent as the official pipeline holds it."""
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(num_train_timesteps(scheduler))
    step = torch.tensor(plan.timestep, dtype=fresh.timesteps.dtype)
    noisy = fresh.add_noise(latents, noise, step.repeat(latents.shape[0]))
    return fresh, step, noisy


def official_step(
    scheduler, plan: NoisePlan, latents: Tensor, noise: Tensor, model_output: Tensor
) -> Tensor:
    """The latents after one scheduler step of the official extraction call (fp32).

    The official code runs its pipeline's denoising loop for one step: the noisy latent of a
    faithful plan (``add_noise`` on a fresh scheduler set to ``num_train_timesteps`` steps),
    the U-Net's output at that timestep, then ``scheduler.step`` (PNDM: its first PLMS step,
    a DDIM step to ``t - 1``; Euler: ``x + (sigma_next - sigma) * eps``).

    Args:
        scheduler: the model's scheduler (a fresh copy is stepped; this one is untouched).
        plan: a faithful plan from :func:`plan_noise`.
        latents: the clean scaled latents.
        noise: the noise drawn for them.
        model_output: the U-Net output on :func:`noisy_latents` (same shape).
    """
    if not plan.faithful:
        raise ValueError("official_step: needs a faithful plan (plan_noise(..., faithful=True))")
    fresh, step, noisy = _official_noisy(scheduler, plan, latents.float(), noise.float())
    fresh.scale_model_input(noisy, step)  # Euler: marks the input scaled, sets the step index
    return fresh.step(model_output.float(), step, noisy, return_dict=False)[0].float()
