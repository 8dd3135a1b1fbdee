"""Image engineering: the crop variants that ITACLIP encodes and how their logits are combined.

First category (spatial layout kept): original, grayscale, Gaussian blur (kernel 11, sigma 5);
their features are averaged. Second category (pixels moved): vertical and horizontal flips;
their logits are flipped back and averaged. ``logits = lam * first + (1 - lam) * flips``.
With image engineering off (the official ``img_engineering=False``) only the original crop is
encoded and its logits are the crop's logits (``lam`` plays no part).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0
VARIANTS = ("original", "gray", "blur", "vflip", "hflip")
FIRST_CATEGORY = 3  # the first three variants keep the spatial layout


def num_variants(image_engineering: bool = True) -> int:
    """Images encoded per crop: the five variants, or the original only."""
    return len(VARIANTS) if image_engineering else 1


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> mean/std-normalised."""
    mean_t = images.new_tensor(mean).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    std_t = images.new_tensor(std).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    return (images - mean_t) / std_t


def grayscale(images: Tensor) -> Tensor:
    """0.2989 R + 0.587 G + 0.114 B broadcast to 3 channels; (B, 3, H, W)."""
    weights = images.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True).expand_as(images)


def gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype, device) -> Tensor:
    """(size,) normalised Gaussian taps centred on the middle tap."""
    pos = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    kernel = torch.exp(-0.5 * (pos / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def gaussian_blur(images: Tensor, size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> Tensor:
    """Separable Gaussian blur with reflect padding; (B, C, H, W), H and W > size // 2."""
    channels = images.shape[1]
    pad = size // 2
    if min(images.shape[-2:]) <= pad:
        raise ValueError(
            f"gaussian_blur needs H and W > {pad} (reflect padding), got {tuple(images.shape[-2:])}"
        )
    taps = gaussian_kernel1d(size, sigma, images.dtype, images.device)
    x = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    row = taps.view(1, 1, 1, size).expand(channels, 1, 1, size)  # (C, 1, 1, k) depthwise
    column = taps.view(1, 1, size, 1).expand(channels, 1, size, 1)  # (C, 1, k, 1) depthwise
    return F.conv2d(F.conv2d(x, row, groups=channels), column, groups=channels)


def make_variants(
    crops: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    faithful: bool = False,
    image_engineering: bool = True,
) -> Tensor:
    """The five normalised variants of each crop, variant-major within each crop.

    Args:
        crops: (n, 3, h, w) RGB crops in [0, 1].
        mean: normalisation mean.
        std: normalisation std.
        faithful: apply grayscale and blur to the normalised crop (the official code) instead
            of to the RGB crop before normalisation.
        image_engineering: ``False`` gives the normalised original crops only.

    Returns:
        (n * 5, 3, h, w): for each crop, original, gray, blur, vflip, hflip; (n, 3, h, w)
        without image engineering.
    """
    normed = normalize(crops, mean, std)
    if not image_engineering:
        return normed  # (n, 3, h, w): original only
    if faithful:
        gray, blur = grayscale(normed), gaussian_blur(normed)
    else:
        gray = normalize(grayscale(crops), mean, std)
        blur = normalize(gaussian_blur(crops), mean, std)
    variants = (normed, gray, blur, normed.flip(-2), normed.flip(-1))
    return torch.stack(variants, dim=1).flatten(0, 1)  # (n*5, 3, h, w)


def combine_variant_logits(features: Tensor, text: Tensor, lam: float) -> Tensor:
    """Crop logits on the token grid from the features of its five variants.

    The official procedure upsamples each variant's logits to the crop, flips the flipped ones
    back and mixes them. Bilinear upsampling (``align_corners=False``) commutes with flips and
    with linear combinations, so mixing the features on the token grid and upsampling once
    (the caller does, see ``itaclip.stitching``) gives the same logits up to float rounding.

    With one variant (image engineering off) the logits are those of the original crop.

    Args:
        features: (n, 5, h, w, C) patch features, variants in ``VARIANTS`` order, or
            (n, 1, h, w, C) of the original crops only.
        text: (Q, C) query embeddings.
        lam: weight of the first category (unused with one variant).

    Returns:
        (n, Q, h, w) logits on the token grid.
    """
    if features.shape[1] == 1:
        return torch.einsum("nhwc,qc->nqhw", features[:, 0], text)
    if features.shape[1] != len(VARIANTS):
        raise ValueError(
            f"features must hold 1 or {len(VARIANTS)} variants per crop (dim 1), "
            f"got {tuple(features.shape)}"
        )
    first = features[:, :FIRST_CATEGORY].mean(1)  # (n, h, w, C), not renormalised
    flips = 0.5 * (features[:, 3].flip(1) + features[:, 4].flip(2))  # flipped back: h, then w
    mixed = lam * first + (1 - lam) * flips  # (n, h, w, C)
    return torch.einsum("nhwc,qc->nqhw", mixed, text)
