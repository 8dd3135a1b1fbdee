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
from pixelsmith.patches import Patch, chess_mask

DenoiseFn = Callable[[Tensor, list[Patch], int], Tensor]


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
        denoise: maps a (k, C, p, p) batch, its patches and the step index to the stepped batch.
        faithful: official order of operations (see module docstring).
        start_step: the step ``latents`` is at (to resume).
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
    ) -> None:
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
        self.denoise = denoise
        self.faithful = faithful

    def step(self, step: int, batches: list[list[Patch]]) -> None:
        """Apply denoising step ``step`` with the planned ``batches`` (covering the latent).

        The plan is checked on the host before any work (no device synchronisation): steps
        come in order from ``start_step`` and the patches cover every latent pixel.
        """
        if step != self.next_step:
            raise RuntimeError(f"step {step} started while the pixels are at step {self.next_step}")
        missed = uncovered_pixels(batches, *self.remaining.shape)
        if missed:
            raise RuntimeError(f"the patch plan of step {step} left {missed} pixels undenoised")
        self.snapshot.copy_(self.latents)
        for batch in batches:
            self._run_batch(step, batch)
        self.next_step = step + 1

    def _prepare(self, step: int, patch: Patch, advanced: Tensor) -> Tensor:
        """The (1, C, p, p) UNet input of ``patch``: reverted and (before the slider) fused."""
        rows, cols = patch.slices
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

    def _run_batch(self, step: int, batch: list[Patch]) -> None:
        level = self.num_steps - step
        masks = []
        inputs = []
        for patch in batch:
            remaining = self.remaining[patch.slices]
            due = remaining == level  # (p, p)
            advanced = remaining == level - 1
            masks.append((due, advanced))
            inputs.append(self._prepare(step, patch, advanced))
        stepped = self.denoise(torch.cat(inputs), batch, step)  # (k, C, p, p)
        for patch, (due, advanced), new in zip(batch, masks, stepped.split(1), strict=True):
            rows, cols = patch.slices
            if step < self.slider - 1:
                mask = chess_mask(patch, new.device)
                new = torch.where(mask, self.guidance.at(patch, step + 1), new)
            old = self.latents[..., rows, cols]
            band = advanced & dilate(due, self.band)
            merged = torch.where(due, new, torch.where(band, (new + old) / 2, old))
            self.latents[..., rows, cols] = merged
            self.remaining[rows, cols] -= due.to(torch.int16)
