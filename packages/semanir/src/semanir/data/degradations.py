"""Synthetic degradations applied to clean images in [0, 1]: noise, JPEG, bicubic, Bayer, and
the crop windows the datasets cut (:class:`Box`, :func:`downscale_crop`).

Every degradation takes a (C, H, W) or (B, C, H, W) float tensor and checks its parameter range
with a message that names the parameter and the allowed values.
"""

from __future__ import annotations

import math
from io import BytesIO
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from common_kernels.runtime.errors import InvalidArgument
from semanir.io import to_uint8_array

SIGMA_RANGE = (0.0, 255.0)
QUALITY_RANGE = (1, 95)
SR_SCALES = (2, 3, 4)
BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
# Bicubic taps reach 2 low-resolution pixels on each side of an output pixel, so downscaling a
# crop padded by this many low-resolution pixels equals cropping the downscaled full image.
_SR_CROP_MARGIN = 2


class Box(NamedTuple):
    """A crop window in pixels: top-left corner and size."""

    top: int
    left: int
    height: int
    width: int


def crop(x: torch.Tensor, box: Box) -> torch.Tensor:
    """The pixels of ``x`` (..., H, W) inside ``box``."""
    return x[..., box.top : box.top + box.height, box.left : box.left + box.width]


def check_sigma(sigma: float, argument: str = "sigma") -> float:
    """Return ``sigma`` as a float if it lies in [0, 255] (the 8-bit noise scale).

    Args:
        sigma: the noise level.
        argument: the caller's name for it, in the error (``"add_noise"``).

    Raises:
        InvalidArgument: (``argument``) outside [0, 255], or NaN.
    """
    if not SIGMA_RANGE[0] <= sigma <= SIGMA_RANGE[1]:
        raise InvalidArgument(argument, f"must be in [0, 255] (8-bit scale), got {sigma}")
    return float(sigma)


def check_quality(quality: int, argument: str = "quality") -> int:
    """Return ``quality`` if it is an integer JPEG quality in [1, 95].

    Args:
        quality: the JPEG quality.
        argument: the caller's name for it, in the error.

    Raises:
        InvalidArgument: (``argument``) not an integer in [1, 95].
    """
    if int(quality) != quality or not QUALITY_RANGE[0] <= quality <= QUALITY_RANGE[1]:
        raise InvalidArgument(argument, f"must be an integer in [1, 95], got {quality}")
    return int(quality)


def check_scale(scale: int, argument: str = "scale") -> int:
    """Return ``scale`` if it is a supported super-resolution factor (2, 3 or 4).

    Args:
        scale: the factor.
        argument: the caller's name for it, in the error.

    Raises:
        InvalidArgument: (``argument``) not 2, 3 or 4.
    """
    if scale not in SR_SCALES:
        raise InvalidArgument(argument, f"must be one of 2, 3, 4, got {scale}")
    return int(scale)


def add_gaussian_noise(
    x: torch.Tensor, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add white Gaussian noise of standard deviation ``sigma / 255``; the result is not clipped.

    Args:
        x: clean image(s) in [0, 1].
        sigma: noise standard deviation on the 0-255 scale, in [0, 255].
        generator: random generator on ``x``'s device (None = torch's global generator).
    """
    sigma = check_sigma(sigma)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + noise * (sigma / 255.0)


def sample_sigma(
    sigma_range: tuple[float, float], generator: torch.Generator | None = None
) -> float:
    """Draw a noise level uniformly from ``sigma_range`` (blind denoising).

    Args:
        sigma_range: (low, high) on the 0-255 scale, 0 <= low <= high <= 255.
        generator: CPU random generator (None = torch's global generator).
    """
    low, high = (check_sigma(s) for s in sigma_range)
    if low > high:
        raise ValueError(f"sigma_range must be (low, high) with low <= high, got {sigma_range}")
    return low + (high - low) * torch.rand((), generator=generator).item()


def sample_quality(quality_range: tuple[int, int], generator: torch.Generator | None = None) -> int:
    """Draw a JPEG quality uniformly from the integers in ``quality_range`` (inclusive).

    Args:
        quality_range: (low, high), 1 <= low <= high <= 95.
        generator: CPU random generator (None = torch's global generator).
    """
    low, high = (check_quality(q) for q in quality_range)
    if low > high:
        raise ValueError(f"quality_range must be (low, high) with low <= high, got {quality_range}")
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def jpeg_compress(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode with Pillow's JPEG codec (libjpeg; 4:2:0 chroma subsampling for colour).

    The input is rounded to 8 bits first, as a real JPEG file would be.

    Args:
        x: image(s) in [0, 1] with 1 (gray) or 3 (RGB) channels.
        quality: JPEG quality, an integer in [1, 95].
    """
    quality = check_quality(quality)
    if x.shape[-3] not in (1, 3):
        raise ValueError(f"jpeg_compress needs 1 or 3 channels, got {x.shape[-3]}")
    if x.ndim == 4:
        return torch.stack([jpeg_compress(image, quality) for image in x])
    buffer = BytesIO()
    Image.fromarray(to_uint8_array(x)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(decoded)
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)  # (C, H, W)
    return tensor.to(device=x.device, dtype=x.dtype)


def cubic_kernel(t: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (the kernel of MATLAB's imresize)."""
    t = t.abs()
    near = (1.5 * t**3 - 2.5 * t**2 + 1) * (t <= 1)
    far = (-0.5 * t**3 + 2.5 * t**2 - 4 * t + 2) * ((t > 1) & (t <= 2))
    return near + far


def bicubic_weights(
    in_size: int, scale: float, *, antialias: bool = True, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """The (out_size, in_size) matrix of MATLAB imresize along one axis, out_size = ceil(in*scale).

    Output pixel i (1-based) sits at input coordinate u = i / scale + (1 - 1 / scale) / 2. When
    shrinking with antialiasing, the kernel is stretched by 1 / scale (and scaled by ``scale``).
    Each row is normalised to sum to one; taps outside the image are mirrored back in
    (symmetric padding: ... 2 1 | 1 2 ... n | n n-1 ...).

    Args:
        in_size: input length along the axis.
        scale: output / input size ratio (> 0).
        antialias: stretch the kernel when shrinking (MATLAB's default).
        dtype: dtype of the returned matrix.
    """
    out_size = math.ceil(in_size * scale)
    kernel_scale = scale if (antialias and scale < 1) else 1.0
    width = 4.0 / kernel_scale
    positions = torch.arange(1, out_size + 1, dtype=torch.float64)
    centers = positions / scale + 0.5 * (1 - 1 / scale)
    first = torch.floor(centers - width / 2)
    taps = first[:, None] + torch.arange(math.ceil(width) + 2, dtype=torch.float64)  # (out, T)
    weights = kernel_scale * cubic_kernel(kernel_scale * (centers[:, None] - taps))
    weights = weights / weights.sum(dim=1, keepdim=True)
    mirrored = torch.remainder(taps.long() - 1, 2 * in_size)
    mirrored = torch.where(mirrored < in_size, mirrored, 2 * in_size - 1 - mirrored)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    matrix.scatter_add_(1, mirrored, weights)
    return matrix.to(dtype)


def bicubic_resize(x: torch.Tensor, scale: float, *, antialias: bool = True) -> torch.Tensor:
    """Resize by ``scale`` like MATLAB's ``imresize(x, scale, 'bicubic')`` on double images.

    Output size is ceil(H * scale) x ceil(W * scale); no clipping or rounding is applied.

    Args:
        x: image(s) of shape (..., H, W).
        scale: output / input size ratio (> 0); 1 is the identity.
        antialias: stretch the kernel when shrinking (MATLAB's default).
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    rows = bicubic_weights(x.shape[-2], scale, antialias=antialias, dtype=x.dtype)
    cols = bicubic_weights(x.shape[-1], scale, antialias=antialias, dtype=x.dtype)
    return rows.to(x.device) @ x @ cols.to(x.device).T  # (..., ceil(H*s), ceil(W*s))


def bicubic_downscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic downscaling by an integer super-resolution factor (MATLAB imresize, antialiased).

    Args:
        x: image(s) of shape (..., H, W) in [0, 1].
        scale: 2, 3 or 4; the output is ceil(H / scale) x ceil(W / scale).
    """
    return bicubic_resize(x, 1.0 / check_scale(scale))


def bayer_mask(pattern: str, height: int, width: int) -> torch.Tensor:
    """The (3, H, W) 0/1 colour-filter-array mask of a 2x2 Bayer ``pattern``.

    Args:
        pattern: colours of the top-left 2x2 block read row by row: RGGB, BGGR, GRBG or GBRG.
        height: mask height.
        width: mask width.
    """
    if pattern not in BAYER_PATTERNS:
        raise ValueError(f"pattern must be one of {', '.join(BAYER_PATTERNS)}, got {pattern!r}")
    mask = torch.zeros(3, height, width)
    for offset, colour in enumerate(pattern):
        channel = "RGB".index(colour)
        mask[channel, offset // 2 :: 2, offset % 2 :: 2] = 1
    return mask


def bayer_mosaic(x: torch.Tensor, pattern: str = "RGGB") -> torch.Tensor:
    """Simulate a Bayer sensor: keep, at each pixel, only the colour its filter passes.

    The result keeps three channels with zeros at the missing samples, so a demosaicking
    model maps (3, H, W) to (3, H, W) like every other restoration task.

    Args:
        x: RGB image(s) of shape (..., 3, H, W).
        pattern: RGGB, BGGR, GRBG or GBRG.
    """
    if x.shape[-3] != 3:
        raise ValueError(f"bayer_mosaic needs RGB input (3 channels), got {x.shape[-3]}")
    mask = bayer_mask(pattern, x.shape[-2], x.shape[-1])
    return x * mask.to(device=x.device, dtype=x.dtype)


def downscale_crop(image: torch.Tensor, box: Box, scale: int) -> torch.Tensor:
    """``crop(bicubic_downscale(image, scale), box / scale)`` computed on a padded crop only.

    The crop is widened by a margin of low-resolution pixels (clamped at the image border, where
    symmetric padding then matches the full-image computation), downscaled, and cut back.

    Args:
        image: (C, H, W) with H and W multiples of ``scale``.
        box: ground-truth crop window aligned to ``scale``.
        scale: 2, 3 or 4.
    """
    low_h, low_w = image.shape[-2] // scale, image.shape[-1] // scale
    top, left = box.top // scale, box.left // scale
    height, width = box.height // scale, box.width // scale
    top0, left0 = max(top - _SR_CROP_MARGIN, 0), max(left - _SR_CROP_MARGIN, 0)
    bottom1 = min(top + height + _SR_CROP_MARGIN, low_h)
    right1 = min(left + width + _SR_CROP_MARGIN, low_w)
    region = image[..., top0 * scale : bottom1 * scale, left0 * scale : right1 * scale]
    low = bicubic_downscale(region, scale)
    return low[..., top - top0 : top - top0 + height, left - left0 : left - left0 + width]
