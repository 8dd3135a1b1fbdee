"""DDIM inversion as the noising: a deterministic path from the clean latent to timestep ``t``.

Instead of ``x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps`` with random ``eps``, the latent is
walked up ``steps`` DDIM steps ``0 = s_0 < s_1 < ... < s_k = t`` (``s_i = round(i t / k)``),
each with the network's own noise prediction at the current point (the same prompt, no
guidance)::

    eps_i = network(x_i, s_i)            (v-prediction: eps = sqrt(abar) v + sqrt(1 - abar) x)
    x0_i  = (x_i - sqrt(1 - abar_i) eps_i) / sqrt(abar_i)
    x_i+1 = sqrt(abar_i+1) x0_i + sqrt(1 - abar_i+1) eps_i

with ``x_0`` the clean latent and ``abar_0 = 1`` (the clean latent is exactly the signal).
Nothing is random: the generator is not used for the noise. The steps cost ``k`` extra network
passes. Schedulers that cannot invert (no ``alphas_cumprod``: flow matching; a prediction type
other than epsilon or v) are refused before any weights load.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

NOISINGS = ("random", "ddim-inversion")
PREDICTIONS = ("epsilon", "v_prediction")


def inversion_steps(timestep: int, steps: int | None) -> int:
    """The number of DDIM steps: ``steps``, or (None) one per timestep up to 50."""
    return min(timestep, 50) if steps is None else steps


def check_inversion(
    scheduler: Any, timestep: int, steps: int | None, faithful: bool = False
) -> None:
    """Whether ``scheduler`` can be inverted ``steps`` DDIM steps up to ``timestep``.

    Raises:
        ValueError: ``noising: ...`` or ``inversion_steps: ...`` naming what does not fit.
    """
    kind = type(scheduler).__name__
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(
            f"noising: DDIM inversion needs a DDPM-style noise schedule (alphas_cumprod); this "
            f"model's {kind} has none (flow-matching models: use noising='random')"
        )
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"noising: DDIM inversion needs an epsilon or v_prediction model; this model's "
            f"{kind} predicts {prediction!r}"
        )
    if faithful:
        raise ValueError("noising: the official code's DDIM inversion is not restated (faithful)")
    steps = inversion_steps(timestep, steps)
    if not 1 <= steps <= max(timestep, 1) or timestep < 1:
        raise ValueError(
            f"inversion_steps: must be in [1, timestep] = [1, {timestep}] (distinct integer "
            f"timesteps from 0 to t; t >= 1); got {steps}"
        )


def inversion_timesteps(timestep: int, steps: int) -> list[int]:
    """``[s_0 = 0, ..., s_k = timestep]``: ``steps`` + 1 distinct integer timesteps."""
    return [round(i * timestep / steps) for i in range(steps + 1)]


def ddim_invert(extractor, latents: Tensor, embeddings, image_size, original_size=None,
                target_size=None, control: Tensor | None = None) -> Tensor:  # fmt: skip
    """The latent at the extractor's timestep reached by DDIM inversion of ``latents``.

    Args:
        extractor: a U-Net or PixArt extractor (its network predicts the noise).
        latents: clean scaled latents (B, C, h, w), fp32.
        embeddings: the prompt embeddings of the batch.
        image_size: (H, W) px (SDXL-style size conditioning).
        original_size: SDXL ``original_size`` (parsed).
        target_size: SDXL ``target_size`` (parsed).
        control: the ControlNet's conditioning images, if any.

    Returns:
        The network input at ``extractor.plan.timestep`` (B, C, h, w), fp32.
    """
    scheduler, config = extractor.scheduler, extractor.config
    check_inversion(scheduler, config.timestep, config.inversion_steps, config.faithful)
    abar = scheduler.alphas_cumprod.double()
    steps = inversion_timesteps(
        config.timestep, inversion_steps(config.timestep, config.inversion_steps)
    )
    prediction = scheduler.config.get("prediction_type", "epsilon")
    channels = latents.shape[1]
    saved = extractor.plan
    x = latents.double()
    try:
        for index, (now, later) in enumerate(itertools.pairwise(steps)):
            a_now = 1.0 if index == 0 else float(abar[now])  # the clean latent: all signal
            a_next = float(abar[later])
            extractor.plan = replace(saved, timestep=now)
            with torch.no_grad():
                _, output = extractor._run_models(
                    x.float(), embeddings, image_size, [], original_size, target_size, True,
                    control,
                )  # fmt: skip
            output = output[:, :channels].double()  # PixArt: noise, then learned variance
            if prediction == "v_prediction":
                eps = math.sqrt(a_now) * output + math.sqrt(1 - a_now) * x
            else:
                eps = output
            x0 = (x - math.sqrt(1 - a_now) * eps) / math.sqrt(a_now)
            x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
    finally:
        extractor.plan = saved
    return x.float()
