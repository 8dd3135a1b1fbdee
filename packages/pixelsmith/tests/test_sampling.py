"""PatchSampler bookkeeping against a plain per-pixel reference (fp64, numpy FFT)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import pixelsmith.sampling as sampling
from pixelsmith.patches import GridPlanner, Patch, RandomPlanner
from pixelsmith.pipelines.pixelsmith import ddim_from_config
from pixelsmith.sampling import GuidanceLatents, PatchSampler, dilate, uncovered_pixels
from pixelsmith.tiny import SDXL_SCHEDULER_CONFIG

STEPS = 4
SHAPE = (1, 4, 20, 18)


def fake_denoise(x: torch.Tensor, patches: list[Patch], step: int) -> torch.Tensor:
    """Per-sample, non-pointwise: the patch mean enters, so reverting matters."""
    return 0.7 * x + 0.2 * x.mean(dim=(1, 2, 3), keepdim=True) + 0.05 * (step + 1)


def make_guidance(seed: int = 0) -> GuidanceLatents:
    scheduler = ddim_from_config(dict(SDXL_SCHEDULER_CONFIG))
    scheduler.set_timesteps(STEPS)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    noise = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    return GuidanceLatents(z, noise, scheduler.add_noise, scheduler.timesteps)


def plans(planner, slider: int, seed: int = 0) -> list[list[list[Patch]]]:
    gen = torch.Generator().manual_seed(seed)
    return [planner.plan(n, chess=n < slider - 1, generator=gen) for n in range(STEPS)]


def new_sampler(latents: torch.Tensor, **settings: Any) -> PatchSampler:
    """A PatchSampler over ``latents`` with the keywords ``settings`` (``band`` is required);
    unless they say otherwise, ``STEPS`` steps of ``fake_denoise`` without guidance."""
    defaults = {"num_steps": STEPS, "guidance": None, "slider": 0, "denoise": fake_denoise}
    return PatchSampler(latents, **(defaults | settings))


def run_sampler(latents, step_plans, guidance, slider, band, faithful, denoise=fake_denoise):
    sampler = new_sampler(
        latents.clone(),
        guidance=guidance,
        slider=slider,
        band=band,
        denoise=denoise,
        faithful=faithful,
    )
    for n, batches in enumerate(step_plans):
        sampler.step(n, batches)
    return sampler


def fuse_reference(x: np.ndarray, g: np.ndarray, guard: bool) -> np.ndarray:
    """Amplitude of x, phase = circular mean of the phases of x and g (per channel, fp64).

    ``guard`` keeps x's phase where the mean is undefined; without it, the official formula:
    the angle of the phasor sum as it comes out.
    """
    spec_x = np.fft.rfft2(x, norm="ortho")
    spec_g = np.fft.rfft2(g, norm="ortho")
    mix = (np.exp(1j * np.angle(spec_x)) + np.exp(1j * np.angle(spec_g))) / 2
    phase = np.where(guard & (np.abs(mix) < 1e-8), np.angle(spec_x), np.angle(mix))
    return np.fft.irfft2(np.abs(spec_x) * np.exp(1j * phase), s=x.shape[-2:], norm="ortho")


def reference(latents, step_plans, guidance, slider, band, faithful):
    """The sampling rules written out pixel by pixel, patches one after the other."""
    x = latents.double().numpy().copy()
    height, width = x.shape[-2:]
    remaining = np.full((height, width), STEPS)
    guide = lambda patch, n: guidance.at(patch, n).double().numpy()  # noqa: E731
    for n, batches in enumerate(step_plans):
        level = STEPS - n
        snapshot = x.copy()
        for patch in (p for batch in batches for p in batch):
            r, c, size = patch.top, patch.left, patch.size
            window = (..., slice(r, r + size), slice(c, c + size))
            rem = remaining[r : r + size, c : c + size]
            due, advanced = rem == level, rem == level - 1
            crop = x[window].copy()
            if faithful:
                if n < slider:
                    crop = fuse_reference(crop, crop if n == 0 else guide(patch, n), guard=False)
                crop = np.where(advanced, snapshot[window], crop)
            else:
                crop = np.where(advanced, snapshot[window], crop)
                if n < slider:
                    crop = fuse_reference(crop, guide(patch, n), guard=True)
            new = fake_denoise(torch.from_numpy(crop), [patch], n).numpy()
            if n < slider - 1:
                nxt = guide(patch, n + 1)
                for i in range(size):
                    for j in range(size):
                        if (i + j + patch.roll_left + patch.roll_down) % 2 == 0:
                            new[..., i, j] = nxt[..., i, j]
            old = x[window].copy()
            due_pixels = np.argwhere(due)
            for i in range(size):
                for j in range(size):
                    if due[i, j]:
                        x[..., r + i, c + j] = new[..., i, j]
                    elif advanced[i, j] and len(due_pixels):
                        distance = np.abs(due_pixels - [i, j]).max(1).min()
                        if distance <= band:
                            x[..., r + i, c + j] = (new[..., i, j] + old[..., i, j]) / 2
            remaining[r : r + size, c : c + size] -= due
    return torch.from_numpy(x), remaining


@pytest.mark.parametrize(
    ("planner", "faithful", "slider", "band"),
    [
        (GridPlanner(20, 18, 8, batch_size=4), False, 3, 2),
        (GridPlanner(20, 18, 8, batch_size=1, min_overlap=4), False, 4, 1),
        (RandomPlanner(20, 18, 8, batch_size=3), False, 2, 3),
        (RandomPlanner(20, 18, 8, permutation_draw=True, always_draw_rolls=True), True, 3, 2),
        (RandomPlanner(20, 18, 8, batch_size=2), True, 1, 0),
    ],
)
def test_sampler_matches_pixel_reference(planner, faithful, slider, band):
    # fp64: the circular mean of near-opposite phases is ill-conditioned, fp32 rounding would
    # flip such bins between "mean" and "keep x"
    latents = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    guidance = make_guidance()
    step_plans = plans(planner, slider)
    sampler = run_sampler(latents, step_plans, guidance, slider, band, faithful)
    expected, remaining = reference(latents, step_plans, guidance, slider, band, faithful)
    torch.testing.assert_close(sampler.latents, expected, atol=1e-10, rtol=1e-10)
    assert (remaining == 0).all() and bool((sampler.remaining == 0).all())


def test_each_pixel_denoised_once_per_step():
    planner = RandomPlanner(20, 18, 8, batch_size=2)
    sampler = new_sampler(torch.zeros(SHAPE), band=2)
    run_batch = sampler._run_batch
    visits = torch.zeros(20, 18, dtype=torch.int64)

    def counting(step, batch):
        before = sampler.remaining.clone()
        run_batch(step, batch)
        visits.add_((before - sampler.remaining).long())

    sampler._run_batch = counting
    gen = torch.Generator().manual_seed(0)
    for n in range(STEPS):
        visits.zero_()
        batches = planner.plan(n, chess=False, generator=gen)
        assert sum(len(b) for b in batches) > 6  # random placement overlaps
        sampler.step(n, batches)
        assert bool((visits == 1).all())
        assert bool((sampler.remaining == STEPS - n - 1).all())
    assert bool((sampler.remaining == 0).all())


def test_revert_restores_snapshot_before_denoising():
    planner = RandomPlanner(20, 18, 8, batch_size=1)
    seen = []
    sampler: PatchSampler | None = None

    def recording(x, patches, step):
        (patch,) = patches
        advanced = sampler.remaining[patch.slices] == STEPS - step - 1
        snapshot = sampler.snapshot[(..., *patch.slices)]
        current = sampler.latents[(..., *patch.slices)]
        seen.append(int(advanced.sum()))
        assert torch.equal(x[0][:, advanced], snapshot[0][:, advanced])
        assert torch.equal(x[0][:, ~advanced], current[0][:, ~advanced])
        return fake_denoise(x, patches, step)

    latents = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    sampler = new_sampler(latents, band=2, denoise=recording)
    gen = torch.Generator().manual_seed(0)
    for n in range(STEPS):
        sampler.step(n, planner.plan(n, chess=False, generator=gen))
    assert max(seen) > 0  # overlapping patches did revert pixels


@pytest.mark.parametrize("faithful", [False, True])
def test_fusion_only_before_slider(monkeypatch, faithful):
    fused, round_trips = [], []
    real_fusion, real_round_trip = sampling.fft_phase_fusion, sampling.fft_round_trip
    step_of = {}

    def fusion(x, guide, **options):
        fused.append((step_of["n"], options))
        return real_fusion(x, guide, **options)

    def round_trip(x):
        round_trips.append(step_of["n"])
        return real_round_trip(x)

    monkeypatch.setattr(sampling, "fft_phase_fusion", fusion)
    monkeypatch.setattr(sampling, "fft_round_trip", round_trip)
    sampler = new_sampler(
        torch.zeros(SHAPE), guidance=make_guidance(), slider=2, band=1, faithful=faithful
    )
    planner = GridPlanner(20, 18, 8, batch_size=4)
    gen = torch.Generator()
    for n in range(STEPS):
        step_of["n"] = n
        sampler.step(n, planner.plan(n, chess=n < 1, generator=gen))
    assert sorted({n for n, _ in fused}) == [0, 1] and len(fused) == 2 * 9
    # faithful mode fuses without the cancellation guard, as the official sampler does
    assert all(options == ({"guard": False} if faithful else {}) for _, options in fused)
    assert sorted(set(round_trips)) == ([2, 3] if faithful else [])


def test_chess_mask_only_before_slider_minus_one():
    guidance = make_guidance()
    constant = lambda x, patches, step: torch.full_like(x, 100.0)  # noqa: E731
    slider = 3
    sampler = new_sampler(
        torch.zeros(SHAPE, dtype=torch.float64),
        guidance=guidance,
        slider=slider,
        band=0,
        denoise=constant,
    )
    gen = torch.Generator().manual_seed(4)
    planner = GridPlanner(20, 18, 8, batch_size=4)
    for n in range(STEPS):
        batches = planner.plan(n, chess=n < slider - 1, generator=gen)
        sampler.snapshot.copy_(sampler.latents)
        sampler._run_batch(n, batches[0])  # the first batch: every pixel of it is due
        for patch in batches[0]:
            values = sampler.latents[(..., *patch.slices)]
            if n < slider - 1:
                mask = sampling.chess_mask(patch)
                nxt = guidance.at(patch, n + 1)
                assert torch.equal(values[..., mask], nxt[..., mask])
                assert bool((values[..., ~mask] == 100.0).all())
            else:
                assert bool((values == 100.0).all())
        for batch in batches[1:]:
            sampler._run_batch(n, batch)


def test_guidance_on_the_fly_equals_add_noise():
    guidance = make_guidance()
    scheduler = ddim_from_config(dict(SDXL_SCHEDULER_CONFIG))
    scheduler.set_timesteps(STEPS)
    patch = Patch(5, 3, 8)
    for n, t in enumerate(scheduler.timesteps):
        full = scheduler.add_noise(guidance.latents, guidance.noise, t.reshape(1))
        assert torch.equal(guidance.at(None, n), full)
        assert torch.equal(guidance.at(patch, n), full[..., 5:13, 3:11])
        alpha = scheduler.alphas_cumprod[int(t)].double()
        manual = alpha.sqrt() * guidance.latents.double() + (1 - alpha).sqrt() * guidance.noise
        torch.testing.assert_close(full.double(), manual, atol=1e-6, rtol=0)


def test_resumed_sampler_equals_uninterrupted():
    guidance = make_guidance()
    planner = RandomPlanner(20, 18, 8, batch_size=2)
    latents = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    step_plans = plans(planner, 3)
    full = run_sampler(latents, step_plans, guidance, 3, 2, False).latents
    first = new_sampler(latents.clone(), guidance=guidance, slider=3, band=2)
    for n in range(2):
        first.step(n, step_plans[n])
    second = new_sampler(first.latents.clone(), guidance=guidance, slider=3, band=2, start_step=2)
    for n in range(2, STEPS):
        second.step(n, step_plans[n])
    assert torch.equal(second.latents, full)


def test_dilate_is_chebyshev():
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[4, 4] = True
    grown = dilate(mask, 2)
    rows, cols = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
    assert torch.equal(grown, torch.maximum((rows - 4).abs(), (cols - 4).abs()) <= 2)
    assert torch.equal(dilate(mask, 0), mask)


def test_sampler_errors():
    sampler = new_sampler(torch.zeros(SHAPE), band=1)
    with pytest.raises(RuntimeError, match="the patch plan of step 0 left 296 pixels undenoised"):
        sampler.step(0, [[Patch(0, 0, 8)]])
    with pytest.raises(ValueError, match=r"latents must have shape \(1, C, h, w\)"):
        PatchSampler(
            torch.zeros(4, 8, 8), num_steps=2, guidance=None, slider=0, band=1, denoise=fake_denoise
        )


def test_plan_checks_run_on_the_host_before_any_work():
    """A step out of order or a plan with holes is refused before the latent changes, without
    reading anything back from the device (the checks use only the plan)."""
    latents = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    sampler = new_sampler(latents.clone(), band=1)
    height, width = SHAPE[-2:]
    assert uncovered_pixels([[Patch(0, 0, 8)]], height, width) == height * width - 64
    assert uncovered_pixels([[Patch(0, 0, 8)], [Patch(0, 0, 8)]], height, width) == (
        height * width - 64
    )
    with pytest.raises(RuntimeError, match="the patch plan of step 0 left"):
        sampler.step(0, [[Patch(0, 0, 8)]])
    assert torch.equal(sampler.latents, latents)  # nothing was denoised
    full = [[Patch(top, left, 8)] for top in (0, 8, height - 8) for left in (0, 8, width - 8)]
    with pytest.raises(RuntimeError, match="step 1 started while the pixels are at step 0"):
        sampler.step(1, full)
    assert torch.equal(sampler.latents, latents)
    assert uncovered_pixels(full, height, width) == 0
    sampler.step(0, full)
    assert sampler.next_step == 1 and bool((sampler.remaining == STEPS - 1).all())
