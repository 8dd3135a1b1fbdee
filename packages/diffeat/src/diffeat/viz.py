"""PCA-to-RGB visualisation of any activation (what the authors used to filter activations)."""

from __future__ import annotations

from dataclasses import dataclass
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
    if feature.numel() == 0:
        raise ValueError(f"feature: empty tensor {tuple(feature.shape)}")
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


@dataclass(frozen=True)
class PcaColours:
    """The PCA-to-RGB colouring fitted on a batch by :func:`fit_pca_colours`; applied to any
    features of the same channels (one image at a time gives the colours of the whole batch).

    Args:
        mean: (C,) float64 pixel mean.
        components: (3, C) float64 principal directions.
        low: (3,) lower clipping quantile of each component.
        high: (3,) upper clipping quantile of each component.
    """

    mean: Tensor
    components: Tensor
    low: Tensor
    high: Tensor

    def __call__(self, feature: Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
        """(B, C, h, w) or (C, h, w) features -> (B, H, W, 3) uint8 RGB images.

        Args:
            feature: features with the fitted channels.
            size: (H, W) to upsample the RGB images to (nearest; keeps feature cells visible).
        """
        feature = _check_feature(feature)
        if feature.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"feature: {feature.shape[1]} channels; the colouring was fitted on "
                f"{self.mean.shape[0]}"
            )
        batch, _, height, width = feature.shape
        projected = _project(feature, self.mean, self.components)  # (N, 3)
        scaled = ((projected - self.low) / (self.high - self.low).clamp_min(1e-12)).clamp(0, 1)
        rgb = scaled.reshape(batch, height, width, 3).permute(0, 3, 1, 2)  # (B, 3, h, w)
        if size is not None:
            rgb = F.interpolate(rgb, size=size, mode="nearest")
        rgb = (rgb * 255).round().to(torch.uint8).permute(0, 2, 3, 1)  # (B, H, W, 3)
        return rgb.cpu().numpy()


def _check_feature(feature: Tensor) -> Tensor:
    """A non-empty (B, C, h, w) feature map ((C, h, w) gets a batch axis)."""
    if feature.ndim == 3:
        feature = feature[None]
    if feature.ndim != 4:
        raise ValueError(f"feature: expected (B, C, h, w); got {tuple(feature.shape)}")
    if feature.numel() == 0:
        raise ValueError(f"feature: empty tensor {tuple(feature.shape)}")
    return feature


def _project(feature: Tensor, mean: Tensor, components: Tensor) -> Tensor:
    """Every pixel of (B, C, h, w) features on the components: (B * h * w, k) float64."""
    pixels = feature.double().permute(0, 2, 3, 1).reshape(-1, feature.shape[1])  # (N, C)
    return (pixels - mean.to(pixels.device)) @ components.to(pixels.device).T


def fit_pca_colours(feature: Tensor, quantile: float = 0.01) -> PcaColours:
    """The PCA-to-RGB colouring of a batch: one PCA shared by its images, each component clipped
    to its [q, 1 - q] quantiles over the batch and scaled to [0, 255].

    Args:
        feature: (B, C, h, w) or (C, h, w).
        quantile: the clipping quantile, in [0, 0.5).
    """
    feature = _check_feature(feature)
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile: must lie in [0, 0.5); got {quantile}")
    mean, components = pca_components(feature)
    projected = _project(feature, mean, components)  # (N, 3)
    subset = projected[:: max(1, projected.shape[0] // 1_000_000)]  # torch.quantile size limit
    low = torch.quantile(subset, quantile, dim=0)
    high = torch.quantile(subset, 1.0 - quantile, dim=0)
    return PcaColours(mean, components, low, high)


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
    return fit_pca_colours(feature, quantile)(feature, size)


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
