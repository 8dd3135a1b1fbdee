"""Memory estimates of an extraction, checked against the available memory before any work.

A run's estimate is a list of :class:`MemoryPart` (one batch's pass, the features kept, their
resizing, the probes, the PCA and PNGs); :func:`check_memory` compares the parts held on a CUDA
device with its free memory and the rest with the host's available memory.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from common_kernels.runtime.errors import InvalidValue
from common_kernels.runtime.memory import available_bytes, human_bytes
from diffeat.catalogue import LayerInfo

MAP_KINDS = ("self-map", "cross-map")  # materialised only when requested
VAE_MAPS = 3  # full-resolution fp32 maps of the VAE encoder's first width alive at once
PROBE_BYTES = 64  # per feature value: float64 FFTs of the 2x zero-padded maps
PCA_BYTES = 16  # per feature value: the float64 copies the PCA makes
PNG_BYTES = 17  # per RGB value: the float64 upsampled image, its scaled copy, the uint8 PNG


@dataclass(frozen=True)
class MemoryPart:
    """One item of a run's memory estimate.

    Args:
        what: the settings that set it (named in the error: arguments written ``{name}``, as
            in :class:`common_kernels.runtime.errors.InvalidValue`).
        nbytes: the estimated bytes.
        on_device: held in the device's memory (else in host memory).
        argument: the argument that sets it most directly (the error's argument).
    """

    what: str
    nbytes: int
    on_device: bool
    argument: str = "images"


def pass_bytes(
    infos: Sequence[LayerInfo],
    names: Collection[str],
    batch: int,
    itemsize: int,
    size: tuple[int, int],
    vae_width: int,
) -> int:
    """One batch through the VAE encoder and the U-Net: every activation of the pass counted
    as alive at once (attention maps only when requested: only those are materialised), plus
    ``VAE_MAPS`` fp32 maps of the VAE encoder's first width at full resolution.

    Args:
        infos: ``vae-out`` and the catalogue with shapes at ``size``.
        names: the requested names.
        batch: images per pass.
        itemsize: bytes per value of the dtype.
        size: (H, W) of the images fed.
        vae_width: channels of the VAE encoder's first block.
    """
    unet = sum(
        math.prod(info.shape)
        for info in infos
        if info.spec.kind not in MAP_KINDS or info.name in names
    )
    return batch * (unet * itemsize + VAE_MAPS * vae_width * size[0] * size[1] * 4)


def probe_bytes(shapes: Sequence[tuple[int, ...]], batch: int, itemsize: int) -> int:
    """The features of one batch with and without noise, and the probes' float64 FFTs."""
    values = [math.prod(shape) for shape in shapes]
    return batch * (2 * sum(values) * itemsize + PROBE_BYTES * max(values))


def pca_bytes(count: int, values: Sequence[int], png: tuple[int, int]) -> tuple[int, int]:
    """(PCA, PNG) bytes: the PCA of the largest activation and the PNGs of one activation.

    Args:
        count: images.
        values: C * h * w of every activation.
        png: (H, W) of the PNGs.
    """
    return count * max(values) * PCA_BYTES, count * png[0] * png[1] * 3 * PNG_BYTES


def check_memory(
    parts: Sequence[MemoryPart],
    device: torch.device,
    allow_large: bool = False,
) -> None:
    """Fail when an estimate exceeds the available memory, unless ``allow_large``.

    Parts held on a CUDA ``device`` count against its free memory; the rest (everything on
    cpu, and on mps: unified memory) against the host's available memory.

    Args:
        parts: the run's memory estimate.
        device: where the models run.
        allow_large: skip the check.

    Raises:
        InvalidValue: naming the largest part, the estimate and the available memory.
    """
    if allow_large:
        return
    pools: dict[str, list[MemoryPart]] = {}
    for part in parts:
        pool = str(device) if part.on_device and device.type == "cuda" else "host"
        pools.setdefault(pool, []).append(part)
    for pool, group in pools.items():
        total = sum(part.nbytes for part in group)
        # None: unknown (no /proc/meminfo and no psutil), no check
        available = available_bytes("cpu" if pool == "host" else pool)
        if available is not None and total > available:
            largest = max(group, key=lambda part: part.nbytes)
            raise InvalidValue(
                largest.argument,
                f"{largest.what}: needs an estimated {human_bytes(total)} ({total:,} bytes) of "
                f"{pool} memory, more than the {human_bytes(available)} available (lower it, "
                "or pass {allow_large} to run anyway)",
            )
