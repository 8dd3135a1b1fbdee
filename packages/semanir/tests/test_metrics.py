"""PSNR/SSIM (torchmetrics with the field's conventions) cross-checked against scikit-image
and against the float64 formulas semanir 0.2.1 computed by hand.

Tolerances: PSNR relative 1e-7 (torchmetrics takes log(255) and 10 / log(10) as float32
scalars: a relative error of ~4.5e-8, 2e-6 dB at 48 dB); SSIM 1e-9 (scikit-image filters with
scipy's separable Gaussian over the whole image and then drops the 5-pixel border, torchmetrics
convolves the reflect-padded image and we drop the same border; all in float64).

scikit-image is a test dependency (``semanir[test]``): the tests that compare with it take the
``sk`` fixture and skip without it; the others run anyway.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semanir.metrics import prepare_for_metric, psnr, rgb_to_y, ssim

PSNR_REL = 1e-7


def pair(channels: int, batch: int = 2, size: tuple[int, int] = (37, 45), seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    clean = torch.rand(batch, channels, *size, generator=generator)
    noisy = clean + 0.08 * torch.randn(clean.shape, generator=generator)
    return noisy, clean


def to_8bit(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().double().numpy()


@dataclass(frozen=True)
class SkImage:
    """The scikit-image references.

    Args:
        psnr: ``peak_signal_noise_ratio(reference, test, data_range=...)``.
        ssim: SSIM of (C, H, W) arrays on the 0-255 scale with the field's conventions.
        rgb2ycbcr: (H, W, 3) RGB in [0, 1] -> YCbCr, Y in [16, 235].
    """

    psnr: Callable[..., float]
    ssim: Callable[[np.ndarray, np.ndarray], float]
    rgb2ycbcr: Callable[[np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def sk() -> SkImage:
    pytest.importorskip("skimage", reason="scikit-image (semanir[test]) is the reference")
    from skimage.color import rgb2ycbcr
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    def ssim_0_255(x: np.ndarray, y: np.ndarray) -> float:
        return structural_similarity(
            x,
            y,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=0,
        )

    return SkImage(peak_signal_noise_ratio, ssim_0_255, rgb2ycbcr)


@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_and_ssim_match_skimage_per_image(channels: int, sk: SkImage) -> None:
    noisy, clean = pair(channels)
    ours_psnr, ours_ssim = psnr(noisy, clean), ssim(noisy, clean)
    assert ours_psnr.shape == (2,) and ours_ssim.shape == (2,)
    for b in range(2):
        x, y = to_8bit(noisy[b]), to_8bit(clean[b])
        assert ours_psnr[b].item() == pytest.approx(sk.psnr(y, x, data_range=255), rel=PSNR_REL)
        assert ours_ssim[b].item() == pytest.approx(sk.ssim(x, y), abs=1e-9)
    single = psnr(noisy[0], clean[0])
    assert single.shape == () and single.item() == pytest.approx(ours_psnr[0].item())


def test_y_channel_matches_skimage_rgb2ycbcr(sk: SkImage) -> None:
    noisy, clean = pair(3, batch=1)
    x, y = to_8bit(noisy[0]) / 255, to_8bit(clean[0]) / 255  # rounded RGB in [0, 1]
    y_x = sk.rgb2ycbcr(x.transpose(1, 2, 0))[..., 0]  # MATLAB convention: Y in [16, 235]
    y_y = sk.rgb2ycbcr(y.transpose(1, 2, 0))[..., 0]
    expected_psnr = sk.psnr(y_y, y_x, data_range=255)
    expected_ssim = sk.ssim(y_x[None], y_y[None])
    assert psnr(noisy, clean, y_channel=True).item() == pytest.approx(expected_psnr, rel=PSNR_REL)
    assert ssim(noisy, clean, y_channel=True).item() == pytest.approx(expected_ssim, abs=1e-9)
    white = rgb_to_y(torch.full((3, 1, 1), 255.0, dtype=torch.float64))
    assert white.item() == pytest.approx(235.0, abs=1e-3)


def test_y_channel_is_ignored_for_gray() -> None:
    noisy, clean = pair(1)
    torch.testing.assert_close(psnr(noisy, clean, y_channel=True), psnr(noisy, clean))


def test_crop_border_and_data_range(sk: SkImage) -> None:
    noisy, clean = pair(3, batch=1)
    x, y = to_8bit(noisy[0])[:, 4:-4, 4:-4], to_8bit(clean[0])[:, 4:-4, 4:-4]
    expected = sk.psnr(y, x, data_range=255)
    assert psnr(noisy, clean, crop_border=4).item() == pytest.approx(expected, rel=PSNR_REL)
    assert ssim(noisy, clean, crop_border=4).item() == pytest.approx(sk.ssim(x, y), abs=1e-9)
    scaled = psnr(noisy * 255, clean * 255, data_range=255, crop_border=4)
    assert scaled.item() == pytest.approx(expected, rel=PSNR_REL)


def test_without_rounding_matches_float_arrays(sk: SkImage) -> None:
    clean = torch.rand(1, 30, 30, generator=torch.Generator().manual_seed(5)) * 0.8 + 0.1
    noisy = clean + 0.01
    x, y = noisy.double().numpy() * 255, clean.double().numpy() * 255
    ours = psnr(noisy, clean, round_to_8bit=False).item()
    assert ours == pytest.approx(sk.psnr(y, x, data_range=255), rel=PSNR_REL)
    assert ours == pytest.approx(40.0, abs=1e-4)  # error 0.01 of white: exactly 40 dB
    ours_ssim = ssim(noisy, clean, round_to_8bit=False).item()
    assert ours_ssim == pytest.approx(sk.ssim(x, y), abs=1e-6)


def test_known_values() -> None:
    clean = torch.full((1, 16, 16), 100 / 255)
    assert psnr(clean, clean).item() == float("inf")
    assert ssim(clean, clean).item() == pytest.approx(1.0)
    one_level = psnr(clean + 1 / 255, clean).item()
    assert one_level == pytest.approx(20 * np.log10(255), rel=PSNR_REL)  # 48.13 dB


def hand_psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The formula of semanir 0.2.1: (B, C, H, W) on the 0-255 scale -> (B,)."""
    return 10.0 * torch.log10(255.0**2 / (x - y).square().mean(dim=(-3, -2, -1)))


def hand_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM over 'valid' 11x11 Gaussian windows as semanir 0.2.1 computed it by hand."""
    offsets = torch.arange(11, dtype=torch.float64) - 5
    profile = torch.exp(-(offsets**2) / (2 * 1.5**2))
    profile = profile / profile.sum()
    channels = x.shape[1]
    window = (profile[:, None] * profile[None, :]).expand(channels, 1, 11, 11)  # (C, 1, 11, 11)

    def local_mean(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(image, window, groups=channels)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x, var_y = local_mean(x * x) - mu_x**2, local_mean(y * y) - mu_y**2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    ssim_map = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    ssim_map = ssim_map / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(-3, -2, -1))


@pytest.mark.parametrize(
    ("channels", "size", "options"),
    [
        (1, (23, 31), {}),
        (3, (40, 29), {"y_channel": True, "crop_border": 3}),
        (3, (19, 52), {"crop_border": 2}),
        (3, (33, 33), {"round_to_8bit": False}),
    ],
)
def test_equal_to_the_previous_hand_written_metrics(
    channels: int, size: tuple[int, int], options: dict
) -> None:
    for seed in range(3):
        noisy, clean = pair(channels, batch=3, size=size, seed=seed)
        x, y = prepare_for_metric(noisy, **options), prepare_for_metric(clean, **options)
        torch.testing.assert_close(
            psnr(noisy, clean, **options), hand_psnr(x, y), rtol=PSNR_REL, atol=0
        )
        torch.testing.assert_close(
            ssim(noisy, clean, **options), hand_ssim(x, y), rtol=0, atol=1e-9
        )


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(1, 8, 8), torch.zeros(1, 8, 9))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 20, 20), torch.zeros(1, 20, 20), crop_border=5)
    with pytest.raises(ValueError, match="leaves no pixels"):
        psnr(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), crop_border=4)
    with pytest.raises(ValueError, match=r"expected \(C, H, W\) or \(B, C, H, W\)"):
        psnr(torch.zeros(8, 8), torch.zeros(8, 8))
