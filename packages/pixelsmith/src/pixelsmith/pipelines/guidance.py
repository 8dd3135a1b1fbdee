"""The guidance latent z_guid of a Pixelsmith stage: the previous stage (or an image)
decoded, Lanczos-resized region by region and encoded tile by tile.

A mixin of :class:`pixelsmith.PixelsmithPipeline` (with :class:`~pixelsmith.pipelines.vae_tiling.
TiledVAEMixin`); the hand-over mode and tiling come from :class:`pixelsmith.PixelsmithConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from pixelsmith.config import PixelsmithConfig
from pixelsmith.images import (
    ImageSource,
    LanczosImage,
    MemmapImage,
    PILLanczosImage,
    TensorImage,
    pil_to_pixels,
)
from pixelsmith.io import to_uint8
from pixelsmith.pipelines.stage import check_image_tensor
from pixelsmith.tiling import encode_tiled


class GuidanceMixin:
    """Guidance latents of a pipeline with a tiled VAE (``TiledVAEMixin``)."""

    @torch.no_grad()
    def encode_guidance(
        self,
        source: ImageSource,
        *,
        config: PixelsmithConfig,
        generator: torch.Generator,
        progress: bool = True,
    ) -> Tensor:
        """z_guid of ``source``: tiled encode, then the posterior sample (or mean).

        The posterior moments of overlapping tiles are blended and one full-size noise is
        drawn from ``generator``, as a single untiled encode would.
        """
        factor = self.vae_scale_factor
        size = (source.height // factor, source.width // factor)
        with self._vae_precision():
            mean, std = encode_tiled(
                self._encode_tile,
                source,
                size,
                tile=config.vae_tile,
                overlap=config.vae_overlap,
                blend=config.vae_blend,
                scale=factor,
                device=self._execution_device,
                progress=progress,
            )
        if config.guidance_posterior == "mean":
            return mean
        noise = randn_tensor(
            mean.shape, generator=generator, device=mean.device, dtype=torch.float32
        )
        return torch.addcmul(mean, std, noise)  # mean + std * noise, no temporary

    @torch.no_grad()
    def guidance_source(
        self,
        latents: Tensor,
        size: tuple[int, int],
        *,
        config: PixelsmithConfig,
        workdir: Path,
        progress: bool = True,
        save_to: Callable[[Iterator[tuple[int, Tensor]]], None] | None = None,
    ) -> ImageSource:
        """The previous stage decoded and Lanczos-resized to ``size`` (computed per region).

        Args:
            latents: the previous stage's (1, C, h, w) latent.
            size: the target (H, W) in px.
            config: hand-over mode and tiling.
            workdir: where a disk memmap goes when the decoded image exceeds
                ``config.max_ram_pixels``.
            progress: show progress (a bar on a terminal, lines in a log).
            save_to: also consume the decoded rows (e.g. to write the intermediate image).
        """
        height, width = (s * self.vae_scale_factor for s in latents.shape[-2:])
        rows = self.decoded_rows(latents, config=config, progress=progress)
        uint8 = config.handover_mode == "uint8"
        if uint8:  # the official hand-over: an 8-bit image in RAM
            store: np.ndarray | TensorImage | MemmapImage = np.empty((height, width, 3), np.uint8)
        elif height * width > config.max_ram_pixels:
            store = MemmapImage(workdir / "previous.f16", height, width)
        else:
            store = TensorImage.empty(height, width)

        def stored(blocks: Iterator[tuple[int, Tensor]]) -> Iterator[tuple[int, Tensor]]:
            for top, block in blocks:
                if uint8:
                    store[top : top + block.shape[1]] = to_uint8(block)
                else:
                    store.write_rows(top, block.clamp(-1.0, 1.0))
                yield top, block

        if save_to is not None:
            save_to(stored(rows))
        else:
            for _ in stored(rows):
                pass
        if uint8:
            return PILLanczosImage(Image.fromarray(store), *size, config.max_ram_pixels)
        return LanczosImage(store, *size)

    @staticmethod
    def _image_source(image: Image.Image | Tensor, handover: str) -> Image.Image | TensorImage:
        """A PIL image (uint8 hand-over) or a TensorImage in [-1, 1] (float hand-over)."""
        if isinstance(image, Image.Image):
            return (
                image.convert("RGB") if handover == "uint8" else TensorImage(pil_to_pixels(image))
            )
        if not isinstance(image, Tensor):
            raise ValueError(
                "image must be a PIL image or a (1, 3, H, W) / (3, H, W) tensor in [0, 1], got "
                f"{type(image).__name__}"
            )
        pixels = check_image_tensor(image).float().cpu()  # (3, H, W)
        if handover == "uint8":
            return Image.fromarray(to_uint8(pixels * 2 - 1))
        return TensorImage(pixels * 2 - 1)
