"""PCA-to-RGB visualisation of any activation (what the authors used to filter activations)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffeat.io import save_png


def pca_components(feature: Tensor, k: int = 3, max_samples: int = 65536) -> tuple[Tensor, Tensor]:
    """Mean and top-``k`` principal directions of the pixels of (B, C, h, w) features.

    Deterministic: pixels are subsampled with a fixed stride, directions come from an exact
    eigendecomposition (fp64) and each direction's largest-magnitude entry is made positive.

    Args:
        feature: (B, C, h, w); all images share one PCA (colours are comparable across them).
        k: number of components (padded with zeros when C < k).
        max_samples: at most this many pixels fit the PCA.

    Returns:
        mean (C,) and components (k, C), float64.
    """
    if feature.ndim != 4:
        raise ValueError(f"feature: expected (B, C, h, w); got {tuple(feature.shape)}")
    pixels = feature.double().permute(0, 2, 3, 1).reshape(-1, feature.shape[1])  # (N, C)
    step = max(1, pixels.shape[0] // max_samples)
    sample = pixels[::step]
    mean = sample.mean(0)
    centred = sample - mean
    n, c = centred.shape
    if c <= n:
        values, vectors = torch.linalg.eigh(centred.T @ centred)  # (C,), (C, C)
        order = values.argsort(descending=True)[:k]
        components = vectors[:, order].T  # (k', C)
    else:  # Gram trick: eigenvectors of X X^T, mapped back through X^T
        values, vectors = torch.linalg.eigh(centred @ centred.T)  # (N,), (N, N)
        order = values.argsort(descending=True)[:k]
        components = F.normalize((centred.T @ vectors[:, order]).T, dim=1)  # (k', C)
    if components.shape[0] < k:
        components = torch.cat([components, components.new_zeros(k - components.shape[0], c)])
    peak = components.abs().argmax(1)
    signs = torch.sign(components[torch.arange(k), peak])
    components = components * torch.where(signs == 0, 1.0, signs)[:, None]
    return mean, components


def pca_rgb(
    feature: Tensor, size: tuple[int, int] | None = None, quantile: float = 0.01
) -> np.ndarray:
    """Features -> uint8 RGB images of their first three principal components.

    Args:
        feature: (B, C, h, w) or (C, h, w).
        size: (H, W) to upsample the RGB images to (nearest; keeps feature cells visible).
        quantile: each component is clipped to its [q, 1 - q] quantiles, then scaled to [0, 255].

    Returns:
        (B, H, W, 3) uint8 array.
    """
    if feature.ndim == 3:
        feature = feature[None]
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile: must lie in [0, 0.5); got {quantile}")
    mean, components = pca_components(feature)
    batch, _, height, width = feature.shape
    pixels = feature.double().permute(0, 2, 3, 1).reshape(-1, feature.shape[1])  # (N, C)
    projected = (pixels - mean) @ components.T  # (N, 3)
    subset = projected[:: max(1, projected.shape[0] // 1_000_000)]  # torch.quantile size limit
    low = torch.quantile(subset, quantile, dim=0)
    high = torch.quantile(subset, 1.0 - quantile, dim=0)
    scaled = ((projected - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
    rgb = scaled.reshape(batch, height, width, 3).permute(0, 3, 1, 2)  # (B, 3, h, w)
    if size is not None:
        rgb = F.interpolate(rgb, size=size, mode="nearest")
    rgb = (rgb * 255).round().to(torch.uint8).permute(0, 2, 3, 1)  # (B, H, W, 3)
    return rgb.cpu().numpy()


def save_pca_pngs(
    feature: Tensor,
    paths: list[str | Path],
    size: tuple[int, int] | None = None,
    quantile: float = 0.01,
) -> None:
    """Write the PCA-RGB image of each batch element to ``paths`` (one shared PCA)."""
    images = pca_rgb(feature, size, quantile)
    if len(paths) != images.shape[0]:
        raise ValueError(f"paths: {len(paths)} paths for {images.shape[0]} images")
    for path, image in zip(paths, images, strict=True):
        save_png(path, image)
