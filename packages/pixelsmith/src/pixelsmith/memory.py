"""Memory estimates: will the full-size latent maps of a stage fit on the device, and the
model copies of the processes of ``devices`` on the CPU?

Everything of a Pixelsmith stage is tiled except a few full-size latent maps
(:func:`pixelsmith.config.latent_maps_bytes`, 66 bytes per latent px for SDXL);
:func:`check_memory` compares them with the memory available on the device before any work.
"""

from __future__ import annotations

import os

import torch

from common_kernels.runtime.errors import InvalidValue
from pixelsmith.config import latent_bytes_per_px, latent_maps_bytes


def available_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device, else the host's available RAM (MPS shares it), or None.

    Args:
        device: the device the stage runs on.
    """
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def resident_bytes() -> int:
    """The resident memory of this process (0 where ``/proc`` is absent)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def check_copies_memory(
    devices: int, weight_bytes: int, device: torch.device, *, allow_large: bool = False
) -> None:
    """Fail unless ``devices`` processes on the CPU fit in the host's available memory, each
    holding the interpreter with torch (as this process does: :func:`resident_bytes`) and its
    own copy of the model (``allow_large`` or unknown memory: pass).

    Args:
        devices: the processes.
        weight_bytes: the bytes of the model's weight files (one copy, at least what it holds).
        device: where they run (the check is for ``cpu``: a GPU process holds its copy on its
            own GPU).
        allow_large: skip the check.

    Raises:
        InvalidValue: naming ``devices``: the estimate, the available bytes and what to do.
    """
    if allow_large or device.type != "cpu" or devices < 2:
        return
    each = resident_bytes() + weight_bytes
    need = devices * each
    available = available_memory(device)
    if available is not None and need > available:
        raise InvalidValue(
            "devices",
            f"{{devices}} {devices} on cpu: each process holds the interpreter with torch and its "
            f"own copy of the model ({each} bytes, {weight_bytes} of them weight files), "
            f"{devices} processes need at least {need} bytes ({gib(need)}), more than the "
            f"{available} bytes ({gib(available)}) available; use a smaller {{devices}}, or "
            "{allow_large=True} to try anyway",
        )


def gib(count: int) -> str:
    """Bytes as GiB with two decimals."""
    return f"{count / 2**30:,.2f} GiB"


def check_memory(
    size: tuple[int, int],
    device: torch.device,
    *,
    vae_scale_factor: int = 8,
    latent_channels: int = 4,
) -> None:
    """Fail unless the full-size latent maps of a ``size`` stage fit in the memory available on
    ``device`` (unknown memory passes).

    Args:
        size: the stage's (height, width) in px.
        device: where it runs.
        vae_scale_factor: px per latent px.
        latent_channels: channels of the latent.

    Raises:
        InvalidValue: naming ``sizes``: the estimate, the available bytes and what to do.
    """
    need = latent_maps_bytes(*size, vae_scale_factor, latent_channels)
    available = available_memory(device)
    if available is not None and need > available:
        per_px = latent_bytes_per_px(latent_channels)
        raise InvalidValue(
            "sizes",
            f"{{sizes}} {size[0]}x{size[1]}: the full-size latent maps of this stage alone need "
            f"{need} bytes ({gib(need)}, {per_px} bytes per latent px), more than the "
            f"{available} bytes ({gib(available)}) available on {device}; use smaller {{sizes}}, "
            "or {allow_large=True} to try anyway",
        )
