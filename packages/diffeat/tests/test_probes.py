"""Property probes on maps with known answers, and on the tiny extractor."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffeat.probes import (
    autocorrelation_length,
    autocorrelation_profile,
    high_frequency_share,
    locality_score,
    noise_asymmetry,
    paired_features,
    probe_all,
)


def white_noise(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_high_frequency_share_known_values():
    noise = white_noise(4, 16, 64, 64)
    # flat spectrum: the share above radius r of the unit frequency square is 1 - pi r^2
    share = high_frequency_share(noise, cutoff=0.25)
    torch.testing.assert_close(
        share, torch.full((4,), 1 - math.pi / 16, dtype=torch.float64), atol=0.02, rtol=0
    )
    ys = torch.arange(64.0)[:, None]
    smooth = torch.cos(2 * math.pi * ys / 16).expand(64, 64)[None, None]  # 1/16 cycles/pixel
    assert float(high_frequency_share(smooth)) < 1e-12
    checker = torch.cos(math.pi * (ys + torch.arange(64.0)[None, :]))[None, None]  # Nyquist
    assert float(high_frequency_share(checker)) == pytest.approx(1.0, abs=1e-12)
    assert float(high_frequency_share(torch.ones(1, 2, 8, 8))) == 0.0
    with pytest.raises(ValueError, match="cutoff: must lie in"):
        high_frequency_share(noise, cutoff=0.9)


def test_autocorrelation_length_known_values():
    noise = white_noise(2, 32, 64, 64)
    profile = autocorrelation_profile(noise)
    assert profile.shape == (2, 33) and torch.allclose(
        profile[:, 0], torch.ones(2, dtype=torch.float64)
    )
    # white noise decorrelates after one pixel: crossing 1/e between lags 0 and 1
    torch.testing.assert_close(
        autocorrelation_length(noise),
        torch.full((2,), 1 - math.exp(-1), dtype=torch.float64),
        atol=0.05,
        rtol=0,
    )
    coarse = white_noise(2, 32, 16, 16, seed=1)
    x2 = F.interpolate(coarse, scale_factor=2, mode="nearest")
    x4 = F.interpolate(coarse, scale_factor=4, mode="nearest")
    ratio = autocorrelation_length(x4) / autocorrelation_length(x2)
    assert torch.all((ratio > 1.8) & (ratio < 2.2)), ratio
    assert autocorrelation_length(torch.ones(1, 3, 8, 8)).tolist() == [0.0]
    assert torch.all(autocorrelation_length(x4, threshold=0.1) > autocorrelation_length(x4))
    with pytest.raises(ValueError, match=r"threshold: must lie in \(0, 1\)"):
        autocorrelation_length(x4, threshold=1.0)


def test_locality_score_separates_position_from_semantics():
    height = width = 24
    ys, xs = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    freqs = [0.05, 0.1, 0.2]
    positional = torch.stack(
        [f(2 * math.pi * k * c) for k in freqs for c in (ys, xs) for f in (torch.sin, torch.cos)]
    )[None]  # (1, 12, h, w): similarity decays with distance
    assert float(locality_score(positional)) > 0.5
    labels = (xs >= width // 2).long()[None]  # two semantic regions
    semantic = F.one_hot(labels, 2).permute(0, 3, 1, 2).float() + 0.01 * white_noise(
        1, 2, height, width
    )
    score = locality_score(semantic, labels=labels)
    assert abs(float(score)) < 0.05  # near pairs are no more alike than same-label far pairs
    mixed = torch.cat([semantic, 3 * positional], dim=1)
    assert float(locality_score(mixed, labels=labels)) > 0.3
    with pytest.raises(ValueError, match=r"labels: expected \(1, 24, 24\)"):
        locality_score(semantic, labels=labels[:, :10])


def test_noise_probe_compares_the_same_latent_with_and_without_noise(make_extractor, images):
    extractor = make_extractor(
        "sd15", layers=["unet-in", "down-level0-repeat0-res-out"], timestep=500
    )
    generator = torch.Generator().manual_seed(3)
    noisy, clean = paired_features(extractor, images, generator=generator)
    normal = extractor(images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(noisy["unet-in"], normal["unet-in"])  # first pass == a normal call
    generator = torch.Generator().manual_seed(3)
    latents = extractor.encode_images(extractor.preprocess(images), generator)
    abar = float(extractor.scheduler.alphas_cumprod[500])
    torch.testing.assert_close(clean["unet-in"], math.sqrt(abar) * latents, atol=1e-6, rtol=1e-6)
    ratios = noise_asymmetry(extractor, images)
    assert list(ratios) == ["unet-in", "down-level0-repeat0-res-out"]
    assert ratios["unet-in"] > 1.0  # added white noise raises the high-frequency share


def test_probe_all_returns_a_number_per_activation_and_probe(make_extractor, images):
    extractor = make_extractor("sdxl", preset="ours-xl")
    results = probe_all(extractor, images)
    assert list(results) == list(extractor.layers)
    for values in results.values():
        assert list(values) == ["noise", "granularity", "locality"]
        assert all(math.isfinite(v) for v in values.values())
    only = probe_all(extractor, images, probes=["granularity"])
    assert {n: v["granularity"] for n, v in only.items()} == {
        n: v["granularity"] for n, v in results.items()
    }
    with pytest.raises(ValueError, match="probes: choose from"):
        probe_all(extractor, images, probes=["noise", "sharpness"])
