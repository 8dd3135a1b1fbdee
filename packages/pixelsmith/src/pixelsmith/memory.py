"""Memory estimates: will the full-size latent maps of a stage, one UNet call on a batch of
patches and one VAE tile's decoding fit on the device, and the model copies of the processes of
``devices`` on the CPU?

Everything of a Pixelsmith stage is tiled except a few full-size latent maps
(:func:`pixelsmith.config.latent_maps_bytes`, 66 bytes per latent px for SDXL);
:func:`check_memory` compares them with the memory available on the device before any work,
:func:`check_patch_batch_memory` and :func:`check_vae_tile_memory` the activations of the tiled
work. Memory that ``available_bytes`` cannot tell (None) passes every check.
"""

from __future__ import annotations

import os

import torch

from common_kernels.runtime.errors import InvalidValue
from common_kernels.runtime.memory import available_bytes
from pixelsmith.config import (
    UNET_BYTES_PER_VALUE,
    VAE_DECODER_BYTES_PER_VALUE,
    latent_bytes_per_px,
    latent_maps_bytes,
    unet_call_bytes,
    unet_values_per_px,
    vae_decoder_values_per_px,
    vae_tile_bytes,
)


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
    available = available_bytes(device)  # None: unknown, no check
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
    available = available_bytes(device)  # None: unknown, no check
    if available is not None and need > available:
        per_px = latent_bytes_per_px(latent_channels)
        raise InvalidValue(
            "sizes",
            f"{{sizes}} {size[0]}x{size[1]}: the full-size latent maps of this stage alone need "
            f"{need} bytes ({gib(need)}, {per_px} bytes per latent px), more than the "
            f"{available} bytes ({gib(available)}) available on {device}; use smaller {{sizes}}, "
            "or {allow_large=True} to try anyway",
        )


def check_patch_batch_memory(
    latent: tuple[int, int],
    patch_size: int,
    batch: int,
    guided: bool,
    device: torch.device,
    widths: tuple[int, ...],
) -> None:
    """Fail unless one UNet call on a full patch batch fits in the memory available on
    ``device`` (unknown memory passes).

    A batch larger than the disjoint patches the latent holds is clamped to them (the planner
    batches only disjoint patches), and the estimate counts the clamped batch.

    Args:
        latent: (height, width) of the largest stage in latent px.
        patch_size: patch side in latent px.
        batch: patches per UNet call (``PixelsmithConfig.batch_limit``).
        guided: classifier-free guidance doubles the samples of a call.
        device: where it runs.
        widths: the UNet's ``block_out_channels``.

    Raises:
        InvalidValue: naming ``patch_batch_size``: the estimate, the available bytes and what to
            do.
    """
    used = min(batch, max(1, (latent[0] // patch_size) * (latent[1] // patch_size)))
    samples = used * (2 if guided else 1)
    need = unet_call_bytes(samples, patch_size, widths)
    per_px = round(unet_values_per_px(widths) * UNET_BYTES_PER_VALUE)
    what = (
        f"one UNet call on {used} patches of {patch_size}x{patch_size} latent px ({samples} "
        f"samples with guidance) needs an estimated {need} bytes ({gib(need)}, {per_px} bytes "
        "per latent px of a sample)"
    )
    check_activations("patch_batch_size", batch, what, need, device)


def check_vae_tile_memory(
    latent: tuple[int, int], tile: int, device: torch.device, widths: tuple[int, ...]
) -> None:
    """Fail unless decoding one VAE tile fits in the memory available on ``device`` (unknown
    memory passes).

    A tile larger than the latent is clipped to it (``pixelsmith.tiling.latent_tiles``), and
    the estimate counts the clipped tile.

    Args:
        latent: (height, width) of the largest stage in latent px.
        tile: the tile side in latent px.
        device: where it runs.
        widths: the VAE's ``block_out_channels``.

    Raises:
        InvalidValue: naming ``vae_tile``: the estimate, the available bytes and what to do.
    """
    height, width = min(tile, latent[0]), min(tile, latent[1])
    need = vae_tile_bytes(height, width, widths)
    per_px = round(vae_decoder_values_per_px(widths) * VAE_DECODER_BYTES_PER_VALUE)
    what = (
        f"decoding one {height}x{width} latent px tile needs an estimated {need} bytes "
        f"({gib(need)}, {per_px} bytes per latent px)"
    )
    check_activations("vae_tile", tile, what, need, device)


def check_activations(
    argument: str, value: int, what: str, need: int, device: torch.device
) -> None:
    """Fail when the activations ``need`` exceed the memory available on ``device`` (unknown
    memory passes).

    Args:
        argument: the option that sets them.
        value: its value.
        what: the estimate in words, with its bytes.
        need: the estimated bytes.
        device: where they are held.

    Raises:
        InvalidValue: naming ``argument``: the estimate, the available bytes and what to do.
    """
    available = available_bytes(device)  # None: unknown, no check
    if available is not None and need > available:
        raise InvalidValue(
            argument,
            f"{{{argument}}} {value}: {what} of activations, more than the {available} bytes "
            f"({gib(available)}) available on {device}; use a smaller {{{argument}}}, or "
            "{allow_large=True} to try anyway",
        )
