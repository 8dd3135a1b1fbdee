"""Degradations: noise statistics, JPEG, MATLAB-style bicubic against an independent numpy
implementation (and Pillow in the interior), Bayer masks, and parameter-range errors."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from semanir.data.degradations import (
    add_gaussian_noise,
    bayer_mask,
    bayer_mosaic,
    bicubic_downscale,
    bicubic_resize,
    jpeg_compress,
    sample_quality,
    sample_sigma,
)


def matlab_cubic(t: float) -> float:
    t = abs(t)
    if t <= 1:
        return 1.5 * t**3 - 2.5 * t**2 + 1
    if t <= 2:
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return 0.0


def imresize_axis_reference(signal: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB imresize (bicubic, antialiased) along axis 0, one output sample at a time.

    Written independently of the library: 0-based centres c = (i + 0.5) / scale - 0.5, every
    integer tap within the kernel's support, symmetric (half-sample) reflection at the edges.
    """
    n = signal.shape[0]
    stretch = min(scale, 1.0)
    support = 2.0 / stretch
    out = []
    for i in range(math.ceil(n * scale)):
        centre = (i + 0.5) / scale - 0.5
        taps = range(math.floor(centre - support), math.ceil(centre + support) + 1)
        weights = np.array([stretch * matlab_cubic(stretch * (centre - j)) for j in taps])
        sources = []
        for j in taps:
            while not 0 <= j < n:
                j = -j - 1 if j < 0 else 2 * n - 1 - j
            sources.append(signal[j])
        out.append(np.tensordot(weights / weights.sum(), np.array(sources), axes=1))
    return np.array(out)


def imresize_reference(image: np.ndarray, scale: float) -> np.ndarray:
    rows = imresize_axis_reference(image, scale)
    return imresize_axis_reference(rows.T, scale).T


def test_noise_statistics_and_determinism() -> None:
    clean = torch.full((1, 256, 256), 0.5)
    noisy = add_gaussian_noise(clean, 25, torch.Generator().manual_seed(0))
    residual = noisy - clean
    assert residual.std().item() == pytest.approx(25 / 255, rel=0.02)
    assert abs(residual.mean().item()) < 1e-3
    assert noisy.min() < 0.5 - 2 * 25 / 255  # not clipped to [0, 1] by design
    again = add_gaussian_noise(clean, 25, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    assert torch.equal(add_gaussian_noise(clean, 0), clean)


def test_blind_sigma_and_quality_sampling() -> None:
    generator = torch.Generator().manual_seed(1)
    sigmas = [sample_sigma((0, 55), generator) for _ in range(200)]
    assert 0 <= min(sigmas) < 5 and 50 < max(sigmas) <= 55
    qualities = {sample_quality((10, 12), generator) for _ in range(100)}
    assert qualities == {10, 11, 12}
    first = sample_sigma((5, 50), torch.Generator().manual_seed(3))
    assert first == sample_sigma((5, 50), torch.Generator().manual_seed(3))


@pytest.mark.parametrize("sigma", [-1, 255.5, float("nan")])
def test_sigma_out_of_range(sigma: float) -> None:
    with pytest.raises(ValueError, match=r"^sigma: must be in \[0, 255\] \(8-bit scale\), got "):
        add_gaussian_noise(torch.zeros(1, 2, 2), sigma)


def test_bad_ranges() -> None:
    with pytest.raises(ValueError, match="low <= high"):
        sample_sigma((30, 10))
    with pytest.raises(ValueError, match=r"^sigma: must be in \[0, 255\] \(8-bit scale\), got "):
        sample_sigma((0, 300))
    with pytest.raises(ValueError, match="low <= high"):
        sample_quality((40, 10))


def test_jpeg_gray_and_colour() -> None:
    generator = torch.Generator().manual_seed(0)
    smooth = torch.linspace(0, 1, 48).view(1, 1, 48) * torch.tensor([0.7, 0.5, 0.3]).view(3, 1, 1)
    texture = torch.rand(1, 48, 48, generator=generator) * 0.2  # luma texture; smooth chroma
    image = (smooth + texture).clamp(0, 1)  # (3, 48, 48)
    errors = {}
    for quality in (10, 90):
        for channels in (1, 3):
            out = jpeg_compress(image[:channels], quality)
            assert out.shape == (channels, 48, 48) and out.dtype == torch.float32
            assert torch.all(out * 255 == (out * 255).round())  # decoded 8-bit levels
            errors[quality, channels] = (out - image[:channels]).abs().mean().item()
    assert errors[10, 1] > 2 * errors[90, 1] > 0
    assert errors[10, 3] > 2 * errors[90, 3] > 0
    batch = jpeg_compress(image[None].repeat(2, 1, 1, 1), 30)
    assert batch.shape == (2, 3, 48, 48) and torch.equal(batch[0], batch[1])
    flat = jpeg_compress(torch.full((1, 16, 16), 100 / 255), 10)
    assert (flat * 255 - 100).abs().max() <= 3  # only the DC quantisation error


@pytest.mark.parametrize("quality", [0, 96, 10.5])
def test_jpeg_quality_out_of_range(quality: float) -> None:
    with pytest.raises(ValueError, match=r"^quality: must be an integer in \[1, 95\], got "):
        jpeg_compress(torch.zeros(1, 8, 8), quality)


def test_jpeg_needs_gray_or_rgb() -> None:
    with pytest.raises(ValueError, match="1 or 3 channels"):
        jpeg_compress(torch.zeros(2, 8, 8), 50)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_matches_independent_reference(scale: int) -> None:
    image = torch.rand(13, 17, generator=torch.Generator().manual_seed(scale), dtype=torch.float64)
    expected = imresize_reference(image.numpy(), 1 / scale)
    out = bicubic_downscale(image, scale)
    assert out.shape == (math.ceil(13 / scale), math.ceil(17 / scale))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12, rtol=0)
    upscaled = bicubic_resize(image, scale)  # no antialiasing when enlarging
    np.testing.assert_allclose(
        upscaled.numpy(), imresize_reference(image.numpy(), scale), atol=1e-12
    )


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_interior_matches_pillow(scale: int) -> None:
    """Pillow's antialiased bicubic uses the same a = -0.5 kernel but renormalises at the edges
    instead of mirroring, so the two agree only away from the border (float32: 1e-5)."""
    image = torch.rand(48, 60, generator=torch.Generator().manual_seed(0))
    size = (60 // scale, 48 // scale)
    pillow = np.asarray(Image.fromarray(image.numpy(), mode="F").resize(size, Image.BICUBIC))
    ours = bicubic_downscale(image, scale).numpy()
    np.testing.assert_allclose(ours[3:-3, 3:-3], pillow[3:-3, 3:-3], atol=1e-5)


def test_bicubic_properties() -> None:
    constant = torch.full((2, 3, 9, 14), 0.3)
    for scale in (2, 3, 4):
        out = bicubic_downscale(constant, scale)
        assert out.shape == (2, 3, math.ceil(9 / scale), math.ceil(14 / scale))
        torch.testing.assert_close(out, torch.full_like(out, 0.3))
    image = torch.rand(1, 7, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bicubic_resize(image, 1.0), image, atol=1e-6, rtol=0)
    tiny = bicubic_downscale(torch.full((1, 1, 1), 0.8), 4)  # smaller than the factor
    assert tiny.shape == (1, 1, 1) and tiny.item() == pytest.approx(0.8)


@pytest.mark.parametrize("scale", [1, 5, 2.5])
def test_bicubic_scale_out_of_range(scale: float) -> None:
    with pytest.raises(ValueError, match=r"^scale: must be one of 2, 3, 4, got "):
        bicubic_downscale(torch.zeros(1, 8, 8), scale)


def test_bayer_mask_layouts() -> None:
    rggb = bayer_mask("RGGB", 2, 2)
    assert rggb[:, 0, 0].tolist() == [1, 0, 0]  # R
    assert rggb[:, 0, 1].tolist() == [0, 1, 0] and rggb[:, 1, 0].tolist() == [0, 1, 0]  # G
    assert rggb[:, 1, 1].tolist() == [0, 0, 1]  # B
    gbrg = bayer_mask("GBRG", 4, 6)
    assert gbrg[:, 1, 0].tolist() == [1, 0, 0] and gbrg[:, 0, 1].tolist() == [0, 0, 1]
    for pattern in ("RGGB", "BGGR", "GRBG", "GBRG"):
        mask = bayer_mask(pattern, 5, 7)
        assert torch.all(mask.sum(0) == 1)  # one colour per pixel
        assert mask[1].mean().item() == pytest.approx(0.5, abs=0.1)  # half the pixels are green


def test_bayer_mosaic_keeps_one_sample_per_pixel() -> None:
    image = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mosaic = bayer_mosaic(image, "BGGR")
    assert mosaic.shape == image.shape
    assert mosaic[0, 2, 0, 0] == image[0, 2, 0, 0] and mosaic[0, 0, 0, 0] == 0
    assert torch.equal(mosaic.sum(1), (image * bayer_mask("BGGR", 4, 4)).sum(1))
    with pytest.raises(ValueError, match="pattern must be one of RGGB, BGGR, GRBG, GBRG"):
        bayer_mosaic(image, "RGBG")
    with pytest.raises(ValueError, match="needs RGB input"):
        bayer_mosaic(image[:, :1], "RGGB")
