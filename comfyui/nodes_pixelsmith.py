"""Pixelsmith in ComfyUI. On ComfyUI's own MODEL (checkpoint and LoRA nodes), CONDITIONING
(CLIP Text Encode) and LATENT (VAE Encode): one guided patch-wise stage as a sampler node. On a
diffusers SDXL folder of ``models/diffusers`` or a hub id: the cascade (plain SDXL at the base
size, then the stages up to the target size), and one stage from an image of the graph.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import Tensor

from common_kernels.runtime.errors import InvalidArgument
from pixelsmith import CascadeOptions, PixelsmithConfig, PixelsmithPipeline, generate_cascade
from pixelsmith.pipelines.stage import ddim_from_config
from pixelsmith.tiny import SDXL_SCHEDULER_CONFIG

from .comfy_unet import ComfyUNet, embeddings
from .host import DIFFUSERS, Node, Progress, comfy_image, device, image_list

HUB_ID = "(hub id)"
DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def split_list(text: str) -> list[str]:
    """``"1024, 2048"`` or ``"1024 2048"`` -> ``["1024", "2048"]``."""
    return [item for item in re.split(r"[\s,]+", text.strip()) if item]


def parse_sliders(text: str) -> list[int]:
    """One slider per stage after the first, ints (checked against the steps by the API)."""
    items = split_list(text)
    if not all(item.isdigit() for item in items):
        raise InvalidArgument("sliders", f"must be ints separated by commas, got {text!r}")
    return [int(item) for item in items]


def cascade_options(steps: int, guidance: float, seed: int, patch_size: int,
                    faithful: bool) -> CascadeOptions:  # fmt: skip
    """The checked settings of a run (each bad one named by the API)."""
    config = PixelsmithConfig(patch_size=patch_size, faithful=faithful)
    return CascadeOptions(num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                          config=config, progress=False)  # fmt: skip


# the sampling inputs both Pixelsmith nodes take (the CLI's --steps, --guidance, --seed, ...)
SAMPLING = {
    "steps": ("INT", {"default": 50, "min": 1, "max": 1000}),
    "guidance": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1}),
    "seed": ("INT", {"default": 0, "min": 0, "max": 2**64 - 1}),
    "patch_size": ("INT", {"default": 128, "min": 8, "max": 1024, "step": 8,
                   "tooltip": "latent px the UNet sees (128 = 1024 px)"}),
    "faithful": ("BOOLEAN", {"default": False, "tooltip": "the official sampler"}),
}  # fmt: skip


def model_choices() -> list[str]:
    """``(hub id)``, then the diffusers folders of ComfyUI's ``models/diffusers``."""
    return [HUB_ID, *DIFFUSERS.names()]


class PixelsmithLoader(Node):
    """Load an SDXL diffusers folder (or hub id) as a Pixelsmith pipeline."""

    CATEGORY, RETURN_TYPES = "loaders", ("PIXELSMITH",)
    INPUTS = {
        "model": (model_choices, {"tooltip": "an SDXL diffusers folder of models/diffusers, or "
                  "(hub id)"}),
        "hub_id": ("STRING", {"default": "stabilityai/stable-diffusion-xl-base-1.0",
                   "tooltip": "with (hub id): a hub repository in the local cache or in reach"}),
        "dtype": (list(DTYPES), {"default": "auto", "tooltip": "auto: fp16 on CUDA, else fp32"}),
    }  # fmt: skip

    def run(self, model: str, hub_id: str, dtype: str) -> tuple[PixelsmithPipeline]:
        where = device()
        chosen = DTYPES[dtype] or (torch.float16 if where.type == "cuda" else torch.float32)
        source = hub_id.strip() if model == HUB_ID else DIFFUSERS.path(model)
        pipe = PixelsmithPipeline.from_pretrained(source, torch_dtype=chosen)
        pipe.set_progress_bar_config(disable=True)  # ComfyUI's bar shows the progress
        return (pipe.to(where),)


class PixelsmithCascade(Node):
    """Pixelsmith: generate a prompt above the model's training size. The first size is plain
    SDXL, every later one a guided patch-wise stage, with a slider per later stage (the steps
    guided by the previous stage, in [1, steps])."""

    CATEGORY, RETURN_TYPES = "sampling", ("IMAGE",)
    INPUTS = {
        "pipeline": ("PIXELSMITH",),
        "prompt": ("STRING", {"multiline": True, "default": "a photo of a lighthouse"}),
        "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
        "sizes": ("STRING", {"default": "1024, 2048", "tooltip": "stage sizes in px: an int "
                  "(square) or HEIGHTxWIDTH, multiples of 8, growing"}),
        "sliders": ("STRING", {"default": "30", "tooltip": "one per stage after the first, in "
                    "[1, steps]"}),
        **SAMPLING,
    }  # fmt: skip

    @classmethod
    def VALIDATE_INPUTS(cls, sliders: str, steps: int, guidance: float, seed: int,
                        patch_size: int, faithful: bool) -> bool | str:  # fmt: skip
        try:
            parse_sliders(sliders)
            cascade_options(steps, guidance, seed, patch_size, faithful)
        except (InvalidArgument, TypeError) as error:
            return str(error)
        return True

    def run(
        self, pipeline: PixelsmithPipeline, prompt: str, negative_prompt: str, sizes: str,
        sliders: str, steps: int, guidance: float, seed: int, patch_size: int, faithful: bool,
    ) -> tuple[Tensor]:  # fmt: skip
        stages = split_list(sizes)
        slider_list = parse_sliders(sliders)
        options = cascade_options(steps, guidance, seed, patch_size, faithful)
        progress = Progress(max(1, len(slider_list)) * steps)
        Progress.check()
        image = generate_cascade(
            pipeline, prompt, stages, slider_list, options,
            negative_prompt=negative_prompt or None,
            callback=progress.step,  # each Pixelsmith step; cancel stops before the next one
            on_stage=lambda *_: Progress.check(),
        )  # fmt: skip
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"))).float() / 255  # (H, W, 3)
        return (comfy_image([pixels.permute(2, 0, 1)]),)


class PixelsmithUpscale(Node):
    """One Pixelsmith stage from each image of a batch: the image (made by any nodes, e.g.
    ComfyUI's own sampler with its checkpoint, LoRA and ControlNet) guides patch-wise sampling
    at height x width (0: twice the image's) for its first slider steps
    (`PixelsmithPipeline.__call__`)."""

    CATEGORY, RETURN_TYPES = "sampling", ("IMAGE",)
    INPUTS = {
        "pipeline": ("PIXELSMITH",),
        "image": ("IMAGE",),
        "prompt": ("STRING", {"multiline": True, "default": "a photo of a lighthouse"}),
        "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
        "height": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8}),
        "width": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8}),
        "slider": ("INT", {"default": 30, "min": 1, "max": 1000, "tooltip": "steps guided by "
                   "the image, in [1, steps]"}),
        **SAMPLING,
    }  # fmt: skip

    def run(
        self, pipeline: PixelsmithPipeline, image: Tensor, prompt: str, negative_prompt: str,
        height: int, width: int, slider: int, steps: int, guidance: float, seed: int,
        patch_size: int, faithful: bool,
    ) -> tuple[Tensor]:  # fmt: skip
        config = PixelsmithConfig(patch_size=patch_size, faithful=faithful)
        images = image_list(image)
        progress = Progress(len(images) * steps)
        outputs = []
        for pixels in images:
            Progress.check()
            result = pipeline(
                prompt, pixels, slider=slider, height=height or None, width=width or None,
                num_inference_steps=steps, guidance_scale=guidance,
                negative_prompt=negative_prompt or None,
                generator=torch.Generator().manual_seed(seed), config=config, output_type="pt",
                progress=False, callback=progress.step,
            )  # fmt: skip
            outputs.append(result.images[0])  # (3, H, W)
        return (comfy_image(outputs),)


def stage_pipeline(model: object) -> PixelsmithPipeline:
    """A Pixelsmith pipeline on ComfyUI's MODEL, with SDXL's DDIM and no VAE or text encoders
    (ComfyUI's nodes encode and decode)."""
    none = dict.fromkeys(("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"))
    scheduler = ddim_from_config(dict(SDXL_SCHEDULER_CONFIG))
    return PixelsmithPipeline(unet=ComfyUNet(model), scheduler=scheduler, add_watermarker=False,
                              **none)  # fmt: skip


def guidance_latents(latent: dict) -> Tensor:
    """ComfyUI's LATENT -> its (B, C, h, w) samples (refusing a noise mask, which a stage
    would not honour)."""
    if "noise_mask" in latent:
        raise InvalidArgument("latent", "has a noise mask (Set Latent Noise Mask), which "
                              "Pixelsmith's stage does not apply")  # fmt: skip
    return latent["samples"]


class PixelsmithSampler(Node):
    """One Pixelsmith stage on ComfyUI's SDXL MODEL: the latent (the previous stage decoded,
    upscaled with Lanczos to the target size and VAE-encoded) guides patch-wise
    sampling for its first slider steps; every patch gets its own SDXL crop conditioning.
    Chain stages with VAE Decode, Upscale Image and VAE Encode between them."""

    CATEGORY, RETURN_TYPES = "sampling", ("LATENT",)
    INPUTS = {
        "model": ("MODEL", {"tooltip": "an SDXL model (checkpoint, LoRA: weight patches apply)"}),
        "positive": ("CONDITIONING", {"tooltip": "CLIP Text Encode of an SDXL CLIP"}),
        "negative": ("CONDITIONING",),
        "latent": ("LATENT", {"tooltip": "the previous image at the target size, VAE-encoded: "
                   "the guidance"}),
        "slider": ("INT", {"default": 30, "min": 1, "max": 1000, "tooltip": "steps guided by "
                   "the previous image, in [1, steps]"}),
        **SAMPLING,
    }  # fmt: skip

    def run(
        self, model: object, positive: list, negative: list, latent: dict, slider: int,
        steps: int, guidance: float, seed: int, patch_size: int, faithful: bool,
    ) -> tuple[dict]:  # fmt: skip
        embeds, pooled = embeddings(positive, "positive")
        negative_embeds, negative_pooled = embeddings(negative, "negative")
        samples = guidance_latents(latent)
        config = PixelsmithConfig(patch_size=patch_size, faithful=faithful)
        pipeline = stage_pipeline(model)
        latent_format = model.model.latent_format
        pipeline.unet.load((2 * config.batch_limit, samples.shape[1], patch_size, patch_size))
        progress = Progress(samples.shape[0] * steps)
        outputs = []
        for sample in samples:
            Progress.check()
            result = pipeline(
                guidance_latents=latent_format.process_in(sample[None].float()), slider=slider,
                num_inference_steps=steps, guidance_scale=guidance,
                prompt_embeds=embeds, pooled_prompt_embeds=pooled,
                negative_prompt_embeds=negative_embeds,
                negative_pooled_prompt_embeds=negative_pooled,
                generator=torch.Generator().manual_seed(seed), config=config,
                output_type="latent", progress=False, callback=progress.step,
            )  # fmt: skip
            outputs.append(latent_format.process_out(result.latents.cpu()))  # (1, C, h, w)
        return ({"samples": torch.cat(outputs)},)


NODES = {"PixelsmithLoader": PixelsmithLoader, "PixelsmithCascade": PixelsmithCascade,
         "PixelsmithUpscale": PixelsmithUpscale,
         "PixelsmithSampler": PixelsmithSampler}  # fmt: skip
NAMES = {"PixelsmithLoader": "Pixelsmith Loader (diffusers SDXL)",
         "PixelsmithCascade": "Pixelsmith Cascade",
         "PixelsmithUpscale": "Pixelsmith Upscale (image)",
         "PixelsmithSampler": "Pixelsmith Sampler (MODEL)"}  # fmt: skip
