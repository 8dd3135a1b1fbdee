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

from common_kernels.runtime import memory as shared_memory
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
    available = shared_memory.available_bytes(device)
    if available is None:  # no MemAvailable and no psutil: the free pages, never unknown
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return available


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


# One training step (forward, backward, AdamW step) holds the activations autograd keeps for
# the backward and their gradients. Fitted (least squares) to the peak-RSS growth per patch of
# one step between batch sizes 2 and 6 in fresh processes (fp32, one CPU thread, the largest
# train_k; semanir 0.4.13, 13 configs: the tiny denoiser at 64 and 128 px and with twice its
# width, its depth or a window of 16, the tiny x2/x4 SR models, the test models, DnCNN at 8, 32
# and 57 features): floats per input pixel =
#   TRAIN_FEATURE_COPIES * sum over stages of depth * width / 4^level
#   + TRAIN_ATTENTION_COPIES * sum over stages of depth * heads * top_k / 4^level
#   + TRAIN_UPSAMPLER_COPIES * upsampler_dim * upscale^2 + TRAIN_BASE_FLOATS,
# within 0.92-1.30x of the measured growth (17.2 KB per pixel for the tiny denoiser, 29.6 KB per
# low-resolution pixel for the tiny x4 SR model); DnCNN: 2.67 * depth * features + 70
# (10.5 KB per pixel for its tiny config).
TRAIN_FEATURE_COPIES = 14.3
TRAIN_ATTENTION_COPIES = 0.2
TRAIN_UPSAMPLER_COPIES = 1.8
TRAIN_BASE_FLOATS = 340.0
DNCNN_TRAIN_COPIES = 2.67
DNCNN_TRAIN_BASE_FLOATS = 70.0
OPTIMIZER_COPIES = 4  # fp32 weights, their gradients, AdamW's two moments


def _stage_levels_and_widths(config: dict[str, Any]) -> list[tuple[int, int]]:
    """(level, width) of every stage of a SemanIR config, in execution order (as
    ``SemanIRConfig.stage_dims``: the down stages, the bottleneck, the up stages, the
    refinement stage of a U-net; every stage at level 0 in a columnar body)."""
    embed = config.get("embed_dim", 32)
    depths = config.get("depths", (2,) * 6)
    if config.get("architecture", "unet") == "columnar":
        return [(0, embed)] * len(depths)
    widths = [embed * mult for mult in config.get("dim_mults", (1, 2, 2))]
    levels = len(widths) - 1
    down = list(enumerate(widths[:-1]))
    return [*down, (levels, widths[-1]), *reversed(down), (0, widths[0])]


def training_bytes_per_pixel(config: dict[str, Any]) -> float:
    """Estimated bytes one training step holds per input pixel of one patch (fp32).

    Args:
        config: the model's config (``config.json`` content).
    """
    if config.get("model_type") == "dncnn":
        work = config.get("depth", 17) * config.get("features", 64)
        return 4 * (DNCNN_TRAIN_COPIES * work + DNCNN_TRAIN_BASE_FLOATS)
    stages = _stage_levels_and_widths(config)
    depths, heads = config.get("depths", (2,) * 6), config.get("heads", (2,) * 6)
    top_k = config.get("top_k", 32)
    features = sum(d * width / 4**level for d, (level, width) in zip(depths, stages, strict=True))
    attention = sum(
        d * h * top_k / 4**level for d, h, (level, _) in zip(depths, heads, stages, strict=True)
    )
    upscale = config.get("upscale", 1)
    upsampler = config.get("upsampler_dim", 64) * upscale**2 if upscale > 1 else 0
    return 4 * (
        TRAIN_FEATURE_COPIES * features + TRAIN_ATTENTION_COPIES * attention
        + TRAIN_UPSAMPLER_COPIES * upsampler + TRAIN_BASE_FLOATS
    )  # fmt: skip


def training_estimate(config: dict[str, Any], parameters: int, patch_size: int) -> tuple[int, int]:
    """Estimated bytes of one training step: per patch of ``patch_size`` clean px a side
    (its input is ``patch_size / upscale`` px a side), and for the weights, gradients and
    AdamW state (:data:`OPTIMIZER_COPIES` fp32 copies of the ``parameters``), with margin.

    Returns:
        (bytes per patch, fixed bytes).
    """
    side = patch_size / config.get("upscale", 1)
    per_patch = SAFETY * side * side * training_bytes_per_pixel(config)
    return int(per_patch), int(SAFETY * 4 * OPTIMIZER_COPIES * parameters)


def check_training_memory(
    config: dict[str, Any],
    *,
    parameters: int,
    patch_size: int,
    batch_size: int,
    budget: int,
    where: str,
    processes: int = 1,
    model_argument: str = "arch",
) -> None:
    """Refuse, before any work, a training step whose :func:`training_estimate` at
    ``batch_size`` patches exceeds ``budget``.

    Args:
        config: the model's config.
        parameters: the model's parameter count.
        patch_size: side of the clean training patches (px).
        batch_size: patches per step and process.
        budget: the bytes available (:func:`available_bytes`).
        where: the device, for the message (``cpu``, ``cuda:0``).
        processes: training processes sharing ``budget`` (the processes of a CPU run).
        model_argument: the argument that sizes the model (``arch`` or ``arch_overrides``).

    Raises:
        InvalidValue: naming ``batch_size`` (one patch fits: the largest batch that does),
            ``patch_size`` (not even one patch fits: the largest patch that does) or
            ``model_argument`` (not even the weights and optimizer state fit), with the
            estimate and the limit.
    """
    per_patch, fixed = training_estimate(config, parameters, patch_size)
    need = processes * (batch_size * per_patch + fixed)
    if need <= budget:
        return
    share = budget // processes  # each process's part
    on = f"more than the {human_bytes(budget)} available on {where}"
    copies = f" in each of {processes} processes" if processes > 1 else ""
    if fixed > share:
        raise InvalidValue(
            model_argument,
            f"{{{model_argument}}}: training a model of {parameters:,} parameters needs an "
            f"estimated {human_bytes(processes * fixed)} for its weights, gradients and AdamW "
            f"state alone{copies}, {on}; use a smaller model",
        )
    weights = f"{human_bytes(fixed)} of weights, gradients and AdamW state{copies}"
    most = (share - fixed) // per_patch
    if most >= 1:
        raise InvalidValue(
            "batch_size",
            f"{{batch_size}} {batch_size}: a training step needs an estimated "
            f"{human_bytes(need)} ({batch_size} x {human_bytes(per_patch)} per {patch_size} px "
            f"patch + {weights}), {on}; use a {{batch_size}} of at most {most}",
        )
    scale = config.get("upscale", 1)
    pixels = (share - fixed) / (per_patch / (patch_size / scale) ** 2)
    largest = int(math.sqrt(pixels)) * scale
    advice = f"at most {largest}" if largest >= scale else "a smaller model"
    raise InvalidValue(
        "patch_size",
        f"{{patch_size}} {patch_size}: a training step on a single patch needs an estimated "
        f"{human_bytes(processes * (per_patch + fixed))} ({human_bytes(per_patch)} per "
        f"{patch_size} px patch + {weights}), {on}; use a {{patch_size}} of {advice}",
    )


def check_validation_memory(
    config: dict[str, Any],
    *,
    parameters: int,
    height: int,
    width: int,
    batch_size: int,
    budget: int,
    where: str,
    processes: int = 1,
) -> None:
    """Refuse, before any work, a validation batch of ``batch_size`` (height x width) inputs
    whose :func:`restore_estimate` (a whole-input pass, no autograd) plus the weights,
    gradients and AdamW state that stay meanwhile exceed ``budget``.

    Args:
        config: the model's config.
        parameters: the model's parameter count.
        height, width: the largest validation input (input pixels: an SR model's low
            resolution).
        batch_size: validation inputs per step (``val_batch_size``).
        budget: the bytes available (:func:`available_bytes`).
        where: the device, for the message.
        processes: processes sharing ``budget``.

    Raises:
        InvalidValue: naming ``val_batch_size`` (a smaller batch fits: the largest) or
            ``val_patch_size`` (not even one input fits whole), with the estimate and limit.
    """
    fixed = int(SAFETY * 4 * OPTIMIZER_COPIES * parameters)

    def need(batch: int) -> int:
        one_pass, images = restore_estimate(config, height, width, tile=None, batch=batch)
        return processes * (one_pass + images + fixed)

    if need(batch_size) <= budget:
        return
    on = f"more than the {human_bytes(budget)} available on {where}"
    what = f"{height}x{width} px input{'s' if batch_size > 1 else ''}"
    fitting = [b for b in range(batch_size - 1, 0, -1) if need(b) <= budget]
    if fitting:
        raise InvalidValue(
            "val_batch_size",
            f"{{val_batch_size}} {batch_size}: validating {batch_size} {what} at once needs an "
            f"estimated {human_bytes(need(batch_size))} (with the training's weights, gradients "
            f"and AdamW state), {on}; use a {{val_batch_size}} of at most {fitting[0]}",
        )
    raise InvalidValue(
        "val_patch_size",
        f"{{val_patch_size}}: validating a whole {height}x{width} px input needs an estimated "
        f"{human_bytes(need(1))}, {on}; set a {{val_patch_size}} (center crops) small enough",
    )
