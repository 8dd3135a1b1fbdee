"""Patch denoising at the target resolution: per-pixel step bookkeeping, guidance, fusion, chess.

:class:`PatchSampler` owns the full latent maps of a stage (current latent, the snapshot of the
step start, the per-pixel count of remaining steps) and applies one denoising step patch by patch:

1. crop the patch; pixels already advanced this step are reverted to the snapshot;
2. before the slider, FFT phase fusion with the guidance at the current step
   (``common_kernels.fft_phase_fusion``: amplitude of the latent, circular-mean phase);
3. ``denoise`` (UNet + CFG + scheduler step, supplied by the pipeline) on the batch of patches;
4. before slider - 1, a checkerboard half of the pixels takes the guidance at the next step;
5. write back: due pixels take the new value, already-advanced pixels within ``band`` px
   (Chebyshev) of the due region take (new + old) / 2, the rest keep theirs; the due pixels'
   remaining-step count drops by one.

Faithful mode swaps 1 and 2 (fusion on the crop before the revert), runs the rfft2/irfft2 round
trip after the slider too, uses the current crop as the step-0 guidance (the official start
latent aliases the step-0 guidance tensor) and fuses without the cancellation guard
(``fft_phase_fusion(..., guard=False)``: the official angle of the phasor sum, which zeroes real
DC/Nyquist bins whose signs differ).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from common_kernels import fft_phase_fusion
from pixelsmith.parallel import RankGroup, check_parallel
from pixelsmith.patches import Patch, chess_mask

DenoiseFn = Callable[[Tensor, list[Patch], int], Tensor]


@dataclass
class SplitDenoiser:
    """A denoise function in two parts: ``predict(x, patches, step)`` (the model) and
    ``advance(prediction, x, step)`` (the scheduler step); calling it runs both."""

    predict: DenoiseFn
    advance: Callable[[Tensor, Tensor, int], Tensor]

    def __call__(self, x: Tensor, patches: list[Patch], step: int) -> Tensor:
        return self.advance(self.predict(x, patches, step), x, step)


@dataclass
class GuidanceLatents:
    """The guidance latent z_guid and its noise; noised patches are computed on the fly.

    ``at(patch, n) == add_noise(z_guid, noise, timesteps[n])[patch]``: the ``slider`` noised
    full-size latents are never stored.

    Args:
        latents: (1, C, h, w) z_guid.
        noise: (1, C, h, w) noise drawn once (float16 in faithful mode).
        add_noise: the scheduler's ``add_noise(samples, noise, timesteps)``.
        timesteps: the stage's timesteps.
    """

    latents: Tensor
    noise: Tensor
    add_noise: Callable[[Tensor, Tensor, Tensor], Tensor]
    timesteps: Tensor

    def at(self, patch: Patch | None, step: int) -> Tensor:
        """(1, C, p, p) guidance of ``patch`` (whole latent for ``None``) at step ``step``."""
        rows, cols = patch.slices if patch is not None else (slice(None), slice(None))
        dtype = torch.promote_types(self.latents.dtype, torch.float32)  # float32 at least
        latents = self.latents[..., rows, cols].to(dtype)
        noise = self.noise[..., rows, cols].to(dtype)
        timestep = self.timesteps[step].reshape(1)
        return self.add_noise(latents, noise, timestep)


def dilate(mask: Tensor, radius: int) -> Tensor:
    """Pixels within ``radius`` (Chebyshev) of a True pixel of the (h, w) bool ``mask``."""
    if radius == 0:
        return mask
    grown = mask.float()[None, None]  # (1, 1, h, w)
    kernel = 2 * radius + 1
    grown = F.max_pool2d(grown, (1, kernel), stride=1, padding=(0, radius))
    grown = F.max_pool2d(grown, (kernel, 1), stride=1, padding=(radius, 0))
    return grown[0, 0] > 0


def fft_round_trip(x: Tensor) -> Tensor:
    """rfft2 then irfft2 over the last two dims (what the official code runs after the slider)."""
    return torch.fft.irfft2(torch.fft.rfft2(x), s=x.shape[-2:])


def uncovered_pixels(batches: list[list[Patch]], height: int, width: int) -> int:
    """How many pixels of an ``height x width`` latent no patch of ``batches`` covers (host)."""
    covered = torch.zeros(height, width, dtype=torch.bool)
    for batch in batches:
        for patch in batch:
            covered[patch.slices] = True
    return height * width - int(covered.sum())


class PatchSampler:
    """Denoises a full latent one step at a time, patch by patch.

    Args:
        latents: (1, C, h, w) start latent (at step ``start_step``); updated in place.
        num_steps: denoising steps of the stage.
        guidance: guidance latents, or ``None`` for plain patch denoising (``slider`` ignored).
        slider: fusion at steps < slider, chess mask at steps < slider - 1.
        band: seam band width in latent px.
        denoise: maps a (k, C, p, p) batch, its patches and the step index to the stepped batch;
            or a :class:`SplitDenoiser` (the model call and the scheduler step apart, so that
            with several ranks every rank steps every batch in order: a stochastic scheduler
            then draws the same noise as one process).
        faithful: official order of operations (see module docstring).
        start_step: the step ``latents`` is at (to resume).
        ranks: the processes sharing the UNet calls of each step (default: this one alone).
    """

    def __init__(
        self,
        latents: Tensor,
        *,
        num_steps: int,
        guidance: GuidanceLatents | None,
        slider: int,
        band: int,
        denoise: DenoiseFn,
        faithful: bool = False,
        start_step: int = 0,
        ranks: RankGroup | None = None,
    ) -> None:
        self.ranks = ranks or RankGroup()
        check_parallel(self.ranks.world_size, faithful=faithful)
        if latents.ndim != 4 or latents.shape[0] != 1:
            raise ValueError(f"latents must have shape (1, C, h, w), got {tuple(latents.shape)}")
        if not 0 <= start_step <= num_steps:
            raise ValueError(f"start_step must be in [0, {num_steps}], got {start_step}")
        self.latents = latents
        self.snapshot = torch.empty_like(latents)
        height, width = latents.shape[-2:]
        # remaining[i, j] = denoising steps pixel (i, j) still needs; 0 when fully denoised
        self.remaining = torch.full(
            (height, width), num_steps - start_step, dtype=torch.int16, device=latents.device
        )
        self.num_steps = num_steps
        self.next_step = start_step
        self.guidance = guidance
        self.slider = slider if guidance is not None else 0
        self.band = band
        self.predict = getattr(denoise, "predict", denoise)
        self.advance = getattr(denoise, "advance", None)
        self.faithful = faithful

    def step(self, step: int, batches: list[list[Patch]]) -> None:
        """Apply denoising step ``step`` with the planned ``batches`` (covering the latent).

        The plan is checked on the host before any work (no device synchronisation): steps
        come in order from ``start_step`` and the patches cover every latent pixel. With
        several ranks the batches run in rounds of ``world_size``, one per rank (see
        :mod:`pixelsmith.parallel`); the write-back keeps the plan's order.
        """
        if step != self.next_step:
            raise RuntimeError(f"step {step} started while the pixels are at step {self.next_step}")
        missed = uncovered_pixels(batches, *self.remaining.shape)
        if missed:
            raise RuntimeError(f"the patch plan of step {step} left {missed} pixels undenoised")
        self.snapshot.copy_(self.latents)
        world = self.ranks.world_size
        if world == 1:
            for batch in batches:
                self._run_batch(step, batch)
        else:
            for first in range(0, len(batches), world):
                self._run_round(step, batches[first : first + world])
        self.next_step = step + 1

    def _run_batch(self, step: int, batch: list[Patch]) -> None:
        """Denoise one batch and write it back."""
        x = torch.cat([self._prepare(step, p) for p in batch])  # (k, C, p, p)
        self._write_back(step, batch, self._stepped(self.predict(x, batch, step), x, step))

    def _run_round(self, step: int, group: list[list[Patch]]) -> None:
        """One batch per rank: each rank predicts its own, the predictions are broadcast, and
        every rank steps and writes back all of them in the plan's order.

        The inputs are prepared before the round's first write-back; in default mode that is
        the same input as one process prepares (see :meth:`_prepare`).
        """
        inputs = [torch.cat([self._prepare(step, p) for p in batch]) for batch in group]
        mine = self.ranks.rank
        prediction = self.predict(inputs[mine], group[mine], step) if mine < len(group) else None
        for owner, (batch, x) in enumerate(zip(group, inputs, strict=True)):
            shared = prediction.to(x.dtype) if owner == mine else torch.empty_like(x)
            noise = self.ranks.broadcast(shared.contiguous(), owner)
            self._write_back(step, batch, self._stepped(noise, x, step))

    def _stepped(self, prediction: Tensor, x: Tensor, step: int) -> Tensor:
        """The scheduler step of a :class:`SplitDenoiser` (a plain denoise function's output
        is already stepped)."""
        return prediction if self.advance is None else self.advance(prediction, x, step)

    def _prepare(self, step: int, patch: Patch) -> Tensor:
        """The (1, C, p, p) UNet input of ``patch``: reverted and (before the slider) fused.

        In default mode the input is the snapshot's crop (the pixels already advanced this
        step are reverted to it, the others still hold it), so it does not depend on which
        patches of the step ran before: the base of patch parallelism.
        """
        rows, cols = patch.slices
        advanced = self.remaining[rows, cols] == self.num_steps - step - 1  # (p, p)
        crop = self.latents[..., rows, cols]
        snapshot = self.snapshot[..., rows, cols]
        if not self.faithful:
            x = torch.where(advanced, snapshot, crop)
            if step < self.slider:
                x = fft_phase_fusion(x, self.guidance.at(patch, step))
            return x
        if step < self.slider:
            guide = crop if step == 0 else self.guidance.at(patch, step)
            x = fft_phase_fusion(crop, guide, guard=False)
        else:
            x = fft_round_trip(crop)
        return torch.where(advanced, snapshot, x)

    def _write_back(self, step: int, batch: list[Patch], stepped: Tensor) -> None:
        """Chess mask and write-back of the (k, C, p, p) stepped patches of ``batch``."""
        level = self.num_steps - step
        for patch, new in zip(batch, stepped.split(1), strict=True):
            rows, cols = patch.slices
            remaining = self.remaining[rows, cols]
            due = remaining == level  # (p, p)
            advanced = remaining == level - 1
            if step < self.slider - 1:
                mask = chess_mask(patch, new.device)
                new = torch.where(mask, self.guidance.at(patch, step + 1), new)
            old = self.latents[..., rows, cols]
            band = advanced & dilate(due, self.band)
            merged = torch.where(due, new, torch.where(band, (new + old) / 2, old))
            self.latents[..., rows, cols] = merged
            self.remaining[rows, cols] -= due.to(torch.int16)
