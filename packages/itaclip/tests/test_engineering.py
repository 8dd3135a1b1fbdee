"""Image variants and how their logits combine, against plain references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from itaclip.engineering import combine_variant_logits, gaussian_blur, grayscale, make_variants

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def reference_blur(image: np.ndarray, size=11, sigma=5.0) -> np.ndarray:
    """2-D Gaussian kernel, numpy reflect padding, direct sum."""
    r = size // 2
    ax = np.arange(-r, r + 1)
    kernel = np.exp(-(ax[:, None] ** 2 + ax[None] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image, ((0, 0), (r, r), (r, r)), mode="reflect")
    out = np.zeros_like(image)
    for dy in range(size):
        for dx in range(size):
            out += kernel[dy, dx] * padded[:, dy : dy + image.shape[1], dx : dx + image.shape[2]]
    return out


def test_blur_matches_reference():
    image = np.random.default_rng(0).random((3, 20, 17))
    out = gaussian_blur(torch.from_numpy(image)[None])[0].numpy()
    np.testing.assert_allclose(out, reference_blur(image), atol=1e-12)


def test_grayscale_weights():
    image = torch.rand(1, 3, 4, 5)
    gray = 0.2989 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]
    out = grayscale(image)
    for c in range(3):
        torch.testing.assert_close(out[:, c], gray)


def test_faithful_and_corrected_variants_differ_only_in_gray_and_blur():
    crops = torch.rand(2, 3, 24, 24)
    corrected = make_variants(crops, MEAN, STD).reshape(2, 5, 3, 24, 24)
    faithful = make_variants(crops, MEAN, STD, faithful=True).reshape(2, 5, 3, 24, 24)
    normed = (crops - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    for variants in (corrected, faithful):
        torch.testing.assert_close(variants[:, 0], normed)
        torch.testing.assert_close(variants[:, 3], normed.flip(-2))
        torch.testing.assert_close(variants[:, 4], normed.flip(-1))
    torch.testing.assert_close(faithful[:, 1], grayscale(normed))
    torch.testing.assert_close(faithful[:, 2], gaussian_blur(normed))
    gray_rgb = grayscale(crops)
    expected_gray = (gray_rgb - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(corrected[:, 1], expected_gray)
    assert (corrected[:, 1] - faithful[:, 1]).abs().max() > 1e-2
    # the blur kernel sums to 1, so it commutes with the per-channel affine normalisation
    torch.testing.assert_close(corrected[:, 2], faithful[:, 2], atol=1e-6, rtol=1e-6)


def test_combine_variant_logits_reference():
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(2, 5, 3, 4, 8), dim=-1)
    text = F.normalize(torch.randn(6, 8), dim=-1)
    lam = 0.7
    tokens = combine_variant_logits(feats, text, lam)
    assert tokens.shape == (2, 6, 3, 4)
    # the caller upsamples once; the official procedure upsamples every variant, then flips back
    out = F.interpolate(tokens, size=(12, 16), mode="bilinear", align_corners=False)
    for n in range(2):
        mean = (feats[n, 0] + feats[n, 1] + feats[n, 2]) / 3
        first = (mean @ text.T).permute(2, 0, 1)[None]
        up = F.interpolate(first, size=(12, 16), mode="bilinear", align_corners=False)[0]
        flips = []
        for variant, dim in ((3, -2), (4, -1)):
            lg = (feats[n, variant] @ text.T).permute(2, 0, 1)[None]
            lg = F.interpolate(lg, size=(12, 16), mode="bilinear", align_corners=False)[0]
            flips.append(lg.flip(dim))
        expected = lam * up + (1 - lam) * (flips[0] + flips[1]) / 2
        torch.testing.assert_close(out[n], expected, atol=1e-6, rtol=1e-5)
    assert not math.isclose(float(out.std()), 0.0)


def test_image_engineering_off_gives_the_original_crop_and_its_logits():
    crops = torch.rand(2, 3, 24, 24)
    for faithful in (False, True):
        only = make_variants(crops, MEAN, STD, faithful, image_engineering=False)
        normed = (crops - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        torch.testing.assert_close(only, normed)
    torch.manual_seed(0)
    feats = torch.randn(2, 1, 3, 4, 8)
    text = torch.randn(6, 8)
    expected = torch.stack([(feats[n, 0] @ text.T).permute(2, 0, 1) for n in range(2)])
    for lam in (0.0, 0.7):  # lam plays no part
        torch.testing.assert_close(combine_variant_logits(feats, text, lam), expected)
    with pytest.raises(ValueError, match=r"1 or 5 variants per crop \(dim 1\), got \(2, 3, 3"):
        combine_variant_logits(torch.randn(2, 3, 3, 4, 8), text, 0.5)
