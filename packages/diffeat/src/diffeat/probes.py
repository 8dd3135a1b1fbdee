"""Measurable probes of the paper's three activation properties (one number per activation).

1. Asymmetric diffusion noise: :func:`noise_asymmetry` = high-frequency energy share of an
   activation with the added noise / the same share without it (same timestep, noise set to 0).
   Values well above 1 mean the noise is visible in that activation.
2. In-resolution granularity: :func:`granularity` = spatial autocorrelation length in feature
   pixels (where the channel-summed, normalised autocorrelation first drops below 1/e).
   Larger = coarser; compare modules of one resolution.
3. Locality: :func:`locality` = mean cosine similarity of spatially adjacent tokens minus that
   of far token pairs (optionally only far pairs with the same semantic label). Positive =
   tokens resemble their neighbours more than semantically alike far tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PROBES = ("noise", "granularity", "locality")


def _check_map(feature: Tensor, argument: str = "feature") -> Tensor:
    """A non-empty (B, C, h, w) feature map in fp64 (``argument`` is named in the errors)."""
    if feature.ndim != 4:
        raise ValueError(f"{argument}: expected (B, C, h, w); got {tuple(feature.shape)}")
    if feature.numel() == 0:
        raise ValueError(f"{argument}: empty tensor {tuple(feature.shape)}")
    return feature.double()


def high_frequency_share(feature: Tensor, cutoff: float = 0.25) -> Tensor:
    """Share of spectral energy above ``cutoff`` cycles/pixel (radial), per image.

    Args:
        feature: (B, C, h, w); channel means are removed first.
        cutoff: radial frequency threshold in (0, 0.5*sqrt(2)) cycles per feature pixel.

    Returns:
        (B,) float64 in [0, 1] (0 for constant maps).
    """
    if not 0.0 < cutoff < math.sqrt(0.5):
        raise ValueError(f"cutoff: must lie in (0, {math.sqrt(0.5):.3f}); got {cutoff}")
    x = _check_map(feature)
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().square().sum(1)  # (B, h, w)
    fy = torch.fft.fftfreq(x.shape[-2], dtype=torch.float64, device=x.device)
    fx = torch.fft.fftfreq(x.shape[-1], dtype=torch.float64, device=x.device)
    radius = (fy[:, None].square() + fx[None, :].square()).sqrt()  # (h, w)
    total = power.sum((-2, -1))
    high = (power * (radius > cutoff)).sum((-2, -1))
    return torch.where(total > 0, high / total.clamp_min(1e-300), torch.zeros_like(total))


def autocorrelation_profile(feature: Tensor) -> Tensor:
    """Radially averaged, normalised spatial autocorrelation (unbiased), per image.

    Args:
        feature: (B, C, h, w); channel means removed, channels summed.

    Returns:
        (B, R + 1) float64 with ``R = min(h, w) // 2``; entry ``r`` averages lags with
        ``round(|lag|) == r``; entry 0 is 1 (0 for constant maps).
    """
    x = _check_map(feature)
    batch, _, height, width = x.shape
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    size = (2 * height, 2 * width)  # zero padding: linear, not circular, correlation
    spectrum = torch.fft.rfft2(x, s=size)
    corr = torch.fft.irfft2(spectrum.abs().square(), s=size).sum(1)  # (B, 2h, 2w)
    ones = torch.ones(1, 1, height, width, dtype=torch.float64, device=x.device)
    counts = torch.fft.irfft2(torch.fft.rfft2(ones, s=size).abs().square(), s=size)[0, 0]
    lag_y = torch.fft.fftfreq(2 * height, 1.0 / (2 * height), dtype=torch.float64)
    lag_x = torch.fft.fftfreq(2 * width, 1.0 / (2 * width), dtype=torch.float64)
    radius = (lag_y[:, None].square() + lag_x[None, :].square()).sqrt().to(x.device)
    max_lag = min(height, width) // 2
    valid = (counts.round() > 0) & (radius.round() <= max_lag)
    corr = corr / counts.round().clamp_min(1)  # unbiased: mean over overlapping pairs
    zero = corr[:, 0, 0]
    corr = torch.where(zero[:, None, None] > 0, corr / zero.clamp_min(1e-300)[:, None, None], 0.0)
    bins = radius.round().long()
    profile = torch.zeros(batch, max_lag + 1, dtype=torch.float64, device=x.device)
    hits = torch.zeros(max_lag + 1, dtype=torch.float64, device=x.device)
    profile.index_add_(1, bins[valid], corr[:, valid])
    hits.index_add_(0, bins[valid], torch.ones_like(bins[valid], dtype=torch.float64))
    return profile / hits.clamp_min(1)


def autocorrelation_length(feature: Tensor, threshold: float = math.exp(-1)) -> Tensor:
    """Lag (feature pixels) where the autocorrelation profile first drops below ``threshold``.

    Linear interpolation between integer lags; ``min(h, w) // 2`` when it never drops (a lower
    bound); 0 for constant maps.

    Args:
        feature: (B, C, h, w).
        threshold: in (0, 1); default 1/e.

    Returns:
        (B,) float64.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold: must lie in (0, 1); got {threshold}")
    profile = autocorrelation_profile(feature)
    lengths = []
    for row in profile:
        if row[0] <= 0:
            lengths.append(0.0)
            continue
        below = (row < threshold).nonzero()
        if len(below) == 0:
            lengths.append(float(len(row) - 1))
            continue
        k = int(below[0])
        before, after = float(row[k - 1]), float(row[k])
        lengths.append(k - 1 + (before - threshold) / (before - after))
    return torch.tensor(lengths, dtype=torch.float64)


def _near_offsets(radius: float) -> list[tuple[int, int]]:
    reach = math.floor(radius)
    return [
        (dy, dx)
        for dy in range(0, reach + 1)
        for dx in range(-reach, reach + 1)
        if (dy > 0 or dx > 0) and dy * dy + dx * dx <= radius * radius
    ]


def locality_score(
    feature: Tensor,
    near: float = 1.5,
    far: float | None = None,
    labels: Tensor | None = None,
    pairs: int = 20000,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mean cosine similarity of near token pairs minus that of far pairs, per image.

    Args:
        feature: (B, C, h, w).
        near: near pairs are all pairs at distance in (0, near] (exact, by shifts).
        far: far pairs have distance >= far (default: a quarter of the map diagonal).
        labels: optional (B, h, w) integer labels; far pairs must then share a label
            ("semantically similar far tokens").
        pairs: far pairs sampled per image.
        generator: draws the far pairs (default: seeded with 0).

    Returns:
        (B,) float64 (nan for an image without any qualifying far pair).
    """
    x = F.normalize(_check_map(feature), dim=1)
    batch, _, height, width = x.shape
    if near < 1:
        raise ValueError(f"near: must be >= 1 feature pixel; got {near}")
    far = math.hypot(height, width) / 4 if far is None else far
    if labels is not None and tuple(labels.shape) != (batch, height, width):
        raise ValueError(f"labels: expected {(batch, height, width)}; got {tuple(labels.shape)}")
    near_sum = torch.zeros(batch, dtype=torch.float64, device=x.device)
    near_count = 0
    for dy, dx in _near_offsets(near):
        a = x[:, :, dy:, max(dx, 0) : width + min(dx, 0)]
        b = x[:, :, : height - dy, max(-dx, 0) : width - max(dx, 0)]
        sims = (a * b).sum(1)  # (B, h - dy, w - |dx|)
        near_sum += sims.sum((-2, -1))
        near_count += sims[0].numel()
    generator = generator or torch.Generator().manual_seed(0)
    tokens = x.flatten(2)  # (B, C, L)
    ys = torch.arange(height).repeat_interleave(width).double()
    xs = torch.arange(width).repeat(height).double()
    scores = []
    for i in range(batch):
        first = torch.randint(height * width, (pairs * 8,), generator=generator)
        second = torch.randint(height * width, (pairs * 8,), generator=generator)
        keep = (ys[first] - ys[second]).hypot(xs[first] - xs[second]) >= far
        if labels is not None:
            flat = labels[i].flatten().cpu()
            keep &= flat[first] == flat[second]
        first, second = first[keep][:pairs], second[keep][:pairs]
        if len(first) == 0:
            scores.append(float("nan"))
            continue
        far_sim = (tokens[i][:, first] * tokens[i][:, second]).sum(0).mean()
        scores.append(float(near_sum[i] / near_count - far_sim))
    return torch.tensor(scores, dtype=torch.float64)


@torch.no_grad()
def paired_features(
    extractor,
    images,
    prompts: str | Sequence[str] = "",
    generator: torch.Generator | None = None,
    layers: Sequence[str] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Features of the noised latent and of the same latent with the noise set to zero.

    Both passes use the same latent, timestep and prompts (the first pass equals a normal
    extractor call with the same generator).
    """
    pixels = extractor.preprocess(images)
    generator = generator if generator is not None else extractor.generator()
    latents = extractor.encode_images(pixels, generator)
    noise = extractor.sample_noise(latents, generator)
    embeddings = extractor.encode_prompts(_prompt_list(prompts, pixels.shape[0]))
    size = tuple(pixels.shape[-2:])
    noisy = extractor.forward_unet(extractor.unet_input(latents, noise), embeddings, size, layers)
    clean = extractor.forward_unet(
        extractor.unet_input(latents, torch.zeros_like(noise)), embeddings, size, layers
    )
    return noisy, clean


def noise_ratio(noisy: dict[str, Tensor], clean: dict[str, Tensor], cutoff: float = 0.25):
    """``{name: HF share(noisy) / HF share(clean)}`` (batch means; nan when clean has none)."""
    out = {}
    for name in noisy:
        with_noise = high_frequency_share(noisy[name], cutoff).mean()
        without = high_frequency_share(clean[name], cutoff).mean()
        out[name] = float(with_noise / without) if without > 0 else float("nan")
    return out


def noise_asymmetry(
    extractor,
    images,
    prompts: str | Sequence[str] = "",
    generator: torch.Generator | None = None,
    layers: Sequence[str] | None = None,
    cutoff: float = 0.25,
) -> dict[str, float]:
    """High-frequency share with noise / without noise, per activation (batch mean).

    Args:
        extractor: a :class:`~diffeat.FeatureExtractor`.
        images: as for the extractor call.
        prompts: prompt(s).
        generator: draws the latent sample and the noise (default: the extractor's seed).
        layers: activation names (default: the extractor's).
        cutoff: radial frequency threshold (cycles per feature pixel).
    """
    noisy, clean = paired_features(extractor, images, prompts, generator, layers)
    return noise_ratio(noisy, clean, cutoff)


def probe_all(
    extractor,
    images,
    prompts: str | Sequence[str] = "",
    generator: torch.Generator | None = None,
    layers: Sequence[str] | None = None,
    probes: Sequence[str] = PROBES,
) -> dict[str, dict[str, float]]:
    """``{name: {probe: value}}`` for the requested probes (two U-Net passes at most)."""
    unknown = sorted(set(probes) - set(PROBES))
    if unknown or not probes:
        raise ValueError(f"probes: choose from {PROBES}; got {list(probes)}")
    if "noise" in probes:
        noisy, clean = paired_features(extractor, images, prompts, generator, layers)
        results = {"noise": noise_ratio(noisy, clean)}
    else:
        noisy = extractor(images, prompts, generator, layers=layers)
        results = {}
    if "granularity" in probes:
        results["granularity"] = granularity(noisy)
    if "locality" in probes:
        results["locality"] = locality(noisy)
    return {name: {p: results[p][name] for p in probes} for name in noisy}


def _prompt_list(prompts: str | Sequence[str], batch: int) -> list[str]:
    prompts = [prompts] * batch if isinstance(prompts, str) else list(prompts)
    if len(prompts) != batch:
        raise ValueError(f"prompts: {len(prompts)} prompts for {batch} images")
    return prompts


def granularity(features: dict[str, Tensor], threshold: float = math.exp(-1)) -> dict[str, float]:
    """Autocorrelation length (feature pixels, batch mean) per activation."""
    for name, feature in features.items():
        _check_map(feature, f"features[{name!r}]")
    return {n: float(autocorrelation_length(f, threshold).mean()) for n, f in features.items()}


def locality(
    features: dict[str, Tensor],
    near: float = 1.5,
    far: float | None = None,
    labels: Tensor | None = None,
) -> dict[str, float]:
    """Locality score (batch mean) per activation; ``labels`` (B, H, W) are resized (nearest)."""
    out = {}
    for name, feature in features.items():
        _check_map(feature, f"features[{name!r}]")
        resized = None
        if labels is not None:
            resized = F.interpolate(
                labels[:, None].float(), size=feature.shape[-2:], mode="nearest"
            )
            resized = resized[:, 0].long()  # (B, h, w)
        out[name] = float(locality_score(feature, near, far, resized).nanmean())
    return out
