"""diffeat in ComfyUI: an activation of a diffusion model, chosen by name, shown as the RGB of
its first three principal components (what ``diffeat pca`` and the diffeat page show), to look at
features inside a graph. Models: diffusers folders in ``models/diffusers``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diffeat import FeatureExtractor
from diffeat.viz import pca_rgb

from .host import DIFFUSERS, Node, Progress, comfy_image, device, image_list


class DiffeatLoader(Node):
    """Load a diffusion model as a feature extractor (SD 1.5/2.x, SDXL, PixArt, SD3, FLUX, ...:
    what ``diffeat.FeatureExtractor.from_pretrained`` loads)."""

    CATEGORY, RETURN_TYPES = "loaders", ("DIFFEAT",)
    INPUTS = {
        "model": (DIFFUSERS.names, {"tooltip": "a diffusers folder of models/diffusers"}),
        "image_size": ("INT", {"default": 512, "min": 8, "max": 4096, "step": 8,
                       "tooltip": "images are resized to this square size"}),
        "timestep": ("INT", {"default": 50, "min": 0, "max": 999, "tooltip": "the diffusion "
                     "timestep of the features (the paper's: 50)"}),
    }  # fmt: skip

    def run(self, model: str, image_size: int, timestep: int) -> tuple[Any]:
        folder = DIFFUSERS.path(model)
        extractor = FeatureExtractor.from_pretrained(
            folder, layers="all", timestep=timestep, device=device(), image_size=image_size,
            output_device="cpu",
        )  # fmt: skip
        return (extractor,)


class DiffeatPCA(Node):
    """One activation (vae-out, down_blocks.1, ...: `diffeat layers --model DIR` lists them) of
    every image of a batch, coloured by its first three principal components, at the size the
    image is fed at."""

    CATEGORY, RETURN_TYPES = "image/analysis", ("IMAGE",)
    INPUTS = {
        "extractor": ("DIFFEAT",),
        "image": ("IMAGE",),
        "layer": ("STRING", {"default": "vae-out"}),
        "prompt": ("STRING", {"default": "", "multiline": True}),
    }

    def run(self, extractor: Any, image: Tensor, layer: str, prompt: str) -> tuple[Tensor]:
        images, layer = image_list(image), layer.strip()
        progress = Progress(len(images))
        shown = []
        for pixels in images:
            feature = extractor(pixels[None], prompt, layers=[layer])[layer]
            size = extractor.config.image_size or tuple(pixels.shape[-2:])
            rgb = pca_rgb(feature.float(), size)[0]  # (H, W, 3) uint8
            shown.append(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)  # (3, H, W)
            progress.step()
        return (comfy_image(shown),)


NODES = {"DiffeatLoader": DiffeatLoader, "DiffeatPCA": DiffeatPCA}
NAMES = {"DiffeatLoader": "diffeat Loader", "DiffeatPCA": "diffeat Activation PCA"}
