"""How much memory restoring an image takes, and the tile size that fits the machine.

A whole-image pass of a windowed restoration model holds, at its peak, a few copies of the
first level's features and the attention weights of every window (the mask backend's logits),
both proportional to the number of (padded) pixels. The per-pixel cost is

    bytes/pixel = bytes(dtype) * (FEATURE_COPIES * embed_dim + ATTENTION_COPIES * heads * N)

with N = window^2 tokens per window and ``heads`` those of the first stage, calibrated on this
project's CPU benchmark (fp32, peak-RSS growth at 1024 px: 2.67 KB/pixel for the tiny denoiser's
window 8, 6.59 KB/pixel for its window-16 variant; a 1600 x 1605 photo took 7.6 GB). ``restore``
with ``tile="auto"`` restores the whole image when the estimate fits in ``FIT_SHARE`` of the
available memory and otherwise in the largest tiles that do.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

FEATURE_COPIES = 10.7  # fp32 copies of the first level's features alive at the peak
ATTENTION_COPIES = 2.55  # copies of (heads x window tokens) per pixel: logits, mask, weights
DNCNN_COPIES = 4.0  # DnCNN: copies of its feature maps alive at once
SAFETY = 1.25  # the estimate is multiplied by this
FIT_SHARE = 0.8  # a pass may use this share of the available memory


def bytes_per_pixel(config: dict[str, Any], dtype_bytes: int = 4) -> float:
    """Estimated peak bytes per (padded) input pixel of a model's whole-image pass.

    Args:
        config: the model's config (``config.json`` content).
        dtype_bytes: bytes per activation element (4 for fp32, 2 under fp16/bf16 autocast).
    """
    if config.get("model_type") == "dncnn":
        return dtype_bytes * DNCNN_COPIES * config.get("features", 64)
    tokens = config.get("window_size", 8) ** 2
    heads = (config.get("heads") or [1])[0]
    features = FEATURE_COPIES * config.get("embed_dim", 32)
    return dtype_bytes * (features + ATTENTION_COPIES * heads * tokens)


def pad_multiple(config: dict[str, Any]) -> int:
    """Inputs are padded to multiples of this (window x 2^levels; 1 for DnCNN)."""
    if config.get("model_type") == "dncnn":
        return 1
    return config.get("window_size", 8) * 2 ** (len(config.get("dim_mults", [1])) - 1)


def estimate_peak_bytes(
    config: dict[str, Any], height: int, width: int, batch: int = 1, dtype_bytes: int = 4
) -> int:
    """Estimated peak memory of one pass over a (batch, C, height, width) input, with margin."""
    multiple = pad_multiple(config)
    pixels = math.ceil(height / multiple) * multiple * math.ceil(width / multiple) * multiple
    return int(SAFETY * batch * pixels * bytes_per_pixel(config, dtype_bytes))


def available_bytes(device: torch.device) -> int:
    """Memory a pass can use on ``device``: free CUDA memory, or the system's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def auto_tile(
    config: dict[str, Any],
    height: int,
    width: int,
    *,
    budget: int,
    batch: int = 1,
    dtype_bytes: int = 4,
    tile_overlap: int = 32,
) -> int | None:
    """The tile side for ``tile="auto"``: None when the whole image fits in ``FIT_SHARE`` of
    ``budget`` bytes, else the largest multiple of the model's padding that fits.

    Raises:
        MemoryError: not even the smallest tile (overlap plus one padding multiple) fits.
    """
    usable = FIT_SHARE * budget
    if estimate_peak_bytes(config, height, width, batch, dtype_bytes) <= usable:
        return None
    multiple = pad_multiple(config)
    per_pixel = SAFETY * batch * bytes_per_pixel(config, dtype_bytes)
    tile = int(math.sqrt(usable / per_pixel)) // multiple * multiple
    smallest = (tile_overlap // multiple + 1) * multiple
    if tile < smallest:
        need = estimate_peak_bytes(config, smallest, smallest, batch, dtype_bytes)
        raise MemoryError(
            f"not enough memory to restore this image: {budget / 2**30:.2f} GiB available, "
            f"and even {smallest} px tiles need about {need / 2**30:.2f} GiB"
        )
    return tile
