"""PSNR and SSIM with the image-restoration field's conventions, computed by torchmetrics.

Both metrics work on the 0-255 scale: inputs in [0, data_range] are rescaled to [0, 255],
optionally clamped and rounded to 8-bit levels (as if saved as PNG), optionally reduced to the
Y channel of BT.601 YCbCr as MATLAB's ``rgb2ycbcr`` computes it
(Y = 16 + 65.481 R + 128.553 G + 24.966 B for R, G, B in [0, 1]; Y is not rounded), and cropped
by ``crop_border`` pixels on each side. ``y_channel`` has no effect on single-channel images.
Inputs are (C, H, W) or (B, C, H, W); results have shape () or (B,), one value per image.
SSIM follows Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
K2 = 0.03, evaluated where the window fits inside the image, averaged over pixels and channels.

torchmetrics computes both on the prepared float64 images. PSNR: its log constants are float32
scalars, so values differ from an all-float64 computation by up to ~1e-6 dB. SSIM: its scalar
averages the SSIM map over a reflect-padded border in recent releases (1.9) but over the valid
windows in older ones (1.4), so its map is taken and the valid windows averaged here, as Wang
et al.'s MATLAB code and scikit-image do. torchmetrics is imported on first use: it loads all
its metrics (~3 s), too slow for ``import semanir``.
"""

from __future__ import annotations

from typing import Any

import torch

YCBCR_Y_WEIGHTS = (65.481, 128.553, 24.966)
SSIM_WINDOW = 11  # torchmetrics sizes its Gaussian window 2 * int(3.5 sigma + 0.5) + 1 = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def rgb_to_y(image: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of MATLAB ``rgb2ycbcr`` on the 0-255 scale.

    Args:
        image: (..., 3, H, W) RGB on the 0-255 scale.

    Returns:
        (..., 1, H, W) Y in [16, 235] for inputs in [0, 255].
    """
    weights = image.new_tensor(YCBCR_Y_WEIGHTS).view(3, 1, 1) / 255.0  # (3, 1, 1)
    return 16.0 + (image * weights).sum(dim=-3, keepdim=True)


def prepare_for_metric(
    image: torch.Tensor,
    *,
    data_range: float = 1.0,
    crop_border: int = 0,
    y_channel: bool = False,
    round_to_8bit: bool = True,
) -> torch.Tensor:
    """Rescale to float64 on [0, 255], optionally round to 8 bits, take Y, crop the border.

    Args:
        image: (C, H, W) or (B, C, H, W) with values in [0, data_range].
        data_range: value of white in ``image``.
        crop_border: pixels removed from each side before measuring.
        y_channel: measure the BT.601 Y channel of RGB images.
        round_to_8bit: clamp to [0, 255] and round, as an 8-bit output file would be.
    """
    if image.ndim not in (3, 4):
        raise ValueError(f"expected (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    scaled = image.detach().to(torch.float64) * (255.0 / data_range)
    if round_to_8bit:
        scaled = scaled.clamp(0, 255).round()
    if y_channel and scaled.shape[-3] == 3:
        scaled = rgb_to_y(scaled)
    if crop_border:
        scaled = scaled[..., crop_border:-crop_border, crop_border:-crop_border]
    if scaled.shape[-2] == 0 or scaled.shape[-1] == 0:
        raise ValueError(f"crop_border {crop_border} leaves no pixels of a {image.shape} image")
    return scaled


def _prepare_pair(
    x: torch.Tensor, y: torch.Tensor, **options: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check that ``x`` and ``y`` match in shape and ``prepare_for_metric`` both."""
    if x.shape != y.shape:
        raise ValueError(
            f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    return prepare_for_metric(x, **options), prepare_for_metric(y, **options)


def psnr(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float = 1.0,
    crop_border: int = 0,
    y_channel: bool = False,
    round_to_8bit: bool = True,
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, 10 log10(255^2 / MSE); infinite for identical images.

    Args:
        x: restored image(s), (C, H, W) or (B, C, H, W), values in [0, data_range].
        y: reference image(s) of the same shape.
        data_range: value of white in ``x`` and ``y``.
        crop_border: pixels removed from each side (the SR scale, by convention).
        y_channel: measure the BT.601 Y channel of RGB images.
        round_to_8bit: round both images to 8-bit levels first.

    Returns:
        float64 tensor of shape () or (B,).
    """
    x, y = _prepare_pair(x, y, data_range=data_range, crop_border=crop_border,
                         y_channel=y_channel, round_to_8bit=round_to_8bit)  # fmt: skip
    from torchmetrics.functional.image import peak_signal_noise_ratio  # slow import: on use

    return peak_signal_noise_ratio(x, y, data_range=255.0, reduction="none", dim=(-3, -2, -1))


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float = 1.0,
    crop_border: int = 0,
    y_channel: bool = False,
    round_to_8bit: bool = True,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) with an 11x11 Gaussian window, sigma 1.5.

    Args:
        x: restored image(s), (C, H, W) or (B, C, H, W), values in [0, data_range].
        y: reference image(s) of the same shape; at least 11x11 after cropping.
        data_range: as in :func:`psnr`.
        crop_border: as in :func:`psnr`.
        y_channel: as in :func:`psnr`.
        round_to_8bit: as in :func:`psnr`.

    Returns:
        float64 tensor of shape () or (B,), the mean SSIM over valid pixels and channels.
    """
    x, y = _prepare_pair(x, y, data_range=data_range, crop_border=crop_border,
                         y_channel=y_channel, round_to_8bit=round_to_8bit)  # fmt: skip
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after cropping, "
            f"got {x.shape[-2]}x{x.shape[-1]}"
        )
    unbatched = x.ndim == 3
    if unbatched:
        x, y = x[None], y[None]  # (1, C, H, W)
    half = SSIM_WINDOW // 2
    inside = ssim_map(x, y)[..., half:-half, half:-half]  # (B, C, H - 10, W - 10)
    values = inside.mean(dim=(-3, -2, -1))
    return values[0] if unbatched else values


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM by torchmetrics, same size as the images (border windows reflect-padded).

    Args:
        x: (B, C, H, W) restored images on the 0-255 scale, H and W at least 11.
        y: (B, C, H, W) reference images on the same scale.

    Returns:
        (B, C, H, W) SSIM map; its 5-pixel border comes from windows that leave the image.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure  # on use

    _, full = structural_similarity_index_measure(
        x,
        y,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_WINDOW,
        data_range=255.0,
        k1=SSIM_K1,
        k2=SSIM_K2,
        reduction="none",
        return_full_image=True,
    )
    return full
