"""Tiled VAE encode and decode of a pipeline: float32 upcasting, latent statistics, tiles.

A mixin of :class:`pixelsmith.PixelsmithPipeline` (it reads ``self.vae`` and
``self.vae_scale_factor``); the tiling itself is :mod:`pixelsmith.tiling`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from pixelsmith.config import PixelsmithConfig
from pixelsmith.tiling import decoded_rows


class TiledVAEMixin:
    """The VAE of an SDXL pipeline run tile by tile (latents scaled as the UNet sees them)."""

    @contextlib.contextmanager
    def _vae_precision(self) -> Iterator[torch.dtype]:
        """Run the VAE in float32 when it is float16 and its config asks for upcasting."""
        dtype = self.vae.dtype
        upcast = dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        if upcast:
            self.vae.to(torch.float32)
        try:
            yield self.vae.dtype
        finally:
            if upcast:
                self.vae.to(dtype)

    def _latent_stats(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Per-channel (mean, std) of the VAE latents ((0, 1) when the config has none)."""
        config = self.vae.config
        channels = config.latent_channels
        mean = getattr(config, "latents_mean", None)
        std = getattr(config, "latents_std", None)
        mean = torch.tensor(mean) if mean is not None else torch.zeros(channels)
        std = torch.tensor(std) if std is not None else torch.ones(channels)
        return mean.view(1, -1, 1, 1).to(device), std.view(1, -1, 1, 1).to(device)

    def _encode_tile(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """(1, 3, H, W) pixels in [-1, 1] -> scaled posterior mean and std (1, C, h, w)."""
        posterior = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist
        shift, scale = self._latent_stats(pixels.device)
        factor = self.vae.config.scaling_factor
        mean = (posterior.mean.float() - shift) * factor / scale
        return mean, posterior.std.float() * factor / scale

    def _decode_tile(self, latents: Tensor) -> Tensor:
        """(1, C, h, w) scaled latents -> (1, 3, 8h, 8w) float32 pixels in about [-1, 1]."""
        shift, scale = self._latent_stats(latents.device)
        latents = latents.float() * scale / self.vae.config.scaling_factor + shift
        return self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0].float()

    @torch.no_grad()
    def decoded_rows(
        self, latents: Tensor, *, config: PixelsmithConfig, progress: bool = True
    ) -> Iterator[tuple[int, Tensor]]:
        """Finished (3, r, W) pixel rows of the tiled decode of ``latents``, top to bottom."""
        with self._vae_precision():
            yield from decoded_rows(
                self._decode_tile,
                latents,
                tile=config.vae_tile,
                overlap=config.vae_overlap,
                blend=config.vae_blend,
                scale=self.vae_scale_factor,
                progress=progress,
            )
