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

from common_kernels.runtime.errors import InvalidValue, literal

FEATURE_COPIES = 10.7  # fp32 copies of the first level's features alive at the peak
ATTENTION_COPIES = 2.55  # copies of (heads x window tokens) per pixel: logits, mask, weights
DNCNN_COPIES = 4.0  # DnCNN: copies of its feature maps alive at once
SAFETY = 1.25  # the estimate is multiplied by this
FIT_SHARE = 0.8  # a pass may use this share of the available memory
# full-size output copies alive while restoring: the blended sum, its weights (tiles; the
# whole-image output otherwise), the clamped result
IMAGE_COPIES = 3


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


def human_bytes(count: float) -> str:
    """Bytes in the largest binary unit that keeps one or more of it, two decimals
    (``12.34 GiB``, ``976.56 KiB``)."""
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if count >= 1024**power:
            return f"{count / 1024**power:,.2f} {unit}"
    return f"{count:,.0f} bytes"


def restore_estimate(
    config: dict[str, Any],
    height: int,
    width: int,
    *,
    tile: int | str | None,
    tile_overlap: int = 32,
    batch: int = 1,
    dtype_bytes: int = 4,
) -> tuple[int, int]:
    """Estimated bytes of restoring a (batch, C, height, width) image: one pass of the model
    (a tile, or the whole image) and the full-size images held meanwhile (the input, the
    output and its blending weights, the clamped result: :data:`IMAGE_COPIES`).

    Args:
        config: the model's config (``config.json`` content).
        height, width: the image's size in input pixels.
        tile: a tile side (px), None for the whole image, ``"auto"`` for the smallest tile
            ``tile="auto"`` may choose (what must fit at least).
        tile_overlap: of the tiles.
        batch: images restored together (3: a colour image's channels through a gray model).
        dtype_bytes: bytes per activation element of the pass (2 under fp16/bf16 autocast).

    Returns:
        (pass bytes, full-size image bytes).
    """
    if tile == "auto":
        multiple = pad_multiple(config)
        tile = (tile_overlap // multiple + 1) * multiple
    side_h, side_w = (height, width) if tile is None else (min(tile, height), min(tile, width))
    one_pass = estimate_peak_bytes(config, side_h, side_w, batch, dtype_bytes)
    scale = config.get("upscale", 1)
    channels_in = config.get("in_channels", config.get("channels", 1))
    channels_out = config.get("out_channels", channels_in)
    images = 4 * batch * height * width * (channels_in + IMAGE_COPIES * channels_out * scale**2)
    return one_pass, images


def check_restore_memory(
    config: dict[str, Any],
    name: str,
    height: int,
    width: int,
    *,
    tile: int | str | None,
    tile_overlap: int,
    budget: int,
    batch: int = 1,
    dtype_bytes: int = 4,
    images_argument: str = "inputs",
) -> None:
    """Refuse, before any work, a restore whose :func:`restore_estimate` exceeds ``budget``.

    Args:
        config: the model's config.
        name: the image, for the message.
        height, width, tile, tile_overlap, batch, dtype_bytes: as in :func:`restore_estimate`.
        budget: the bytes available (:func:`available_bytes`).
        images_argument: the caller's argument that gave the image (``inputs``, ``data``).

    Raises:
        InvalidValue: naming ``tile`` (an explicit tile or None: the pass does not fit) or
            ``images_argument`` (even the smallest automatic tile, or the full-size images, do
            not fit): the estimate and the limit.
    """
    one_pass, images = restore_estimate(
        config, height, width, tile=tile, tile_overlap=tile_overlap, batch=batch,
        dtype_bytes=dtype_bytes,
    )  # fmt: skip
    if one_pass + images <= budget:
        return
    scale = config.get("upscale", 1)
    what = f"{literal(name)} ({width}x{height} px{f', x{scale}' if scale > 1 else ''})"
    estimate = (
        f"needs an estimated {human_bytes(one_pass + images)} (a pass {human_bytes(one_pass)}, "
        f"the full-size images {human_bytes(images)}), more than the {human_bytes(budget)} "
        "available"
    )
    if tile == "auto" or one_pass <= images:
        raise InvalidValue(
            images_argument, f"{{{images_argument}}} {what} {estimate}; restore a smaller image"
        )
    head = "{tile}: restoring " + what + " whole" if tile is None else (
        f"{{tile={tile!r}}}: restoring {what} in {tile} px tiles"
    )  # fmt: skip
    raise InvalidValue("tile", f"{head} {estimate}; use a smaller {{tile}} or {{tile='auto'}}")
