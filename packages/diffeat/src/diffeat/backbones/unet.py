"""U-Nets (diffusers ``UNet2DConditionModel``: SD 1.x/2.x, SDXL, Playground v2) as a backbone:
their folder, size rule, catalogue (:mod:`diffeat.catalogue`) with shapes
(:mod:`diffeat.shapes`) and the loading of their components (CLIP text stack: one tokenizer and
text encoder, two for SDXL-style text-time U-Nets)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diffeat.backbones.base import Backbone, load_vae_and_scheduler, text_stack_files
from diffeat.catalogue import LayerInfo, LayerSpec, build_catalogue
from diffeat.shapes import layer_infos

SDXL_TEXT_FILES = ("text_encoder_2/config.json", "tokenizer_2")  # text-time U-Nets


def is_text_time(config: Mapping[str, Any]) -> bool:
    """SDXL-style size and pooled-text conditioning (two text encoders)."""
    return config.get("addition_embed_type") == "text_time"


class UNetBackbone(Backbone):
    """diffusers ``UNet2DConditionModel`` U-Nets."""

    name = "unet"
    title = "U-Net"
    subfolder = "unet"
    class_names = ("UNet2DConditionModel",)
    text_files = text_stack_files(1)
    text_tokens = 77  # CLIP prompt length
    adapters = True

    def owns(self, name: str) -> bool:
        """U-Net (and ControlNet) names: ``unet-``, ``down-``, ``mid-``, ``up-``, ``control-``."""
        return name.startswith(("unet-", "down-level", "mid-", "up-level", "control-"))

    def extra_text_files(self, config: Mapping[str, Any]) -> tuple[str, ...]:
        return SDXL_TEXT_FILES if is_text_time(config) else ()

    def downsampling(self, config: Mapping[str, Any]) -> int:
        """x2 per down block but the last (each of those halves the grid)."""
        return 2 ** (len(config["down_block_types"]) - 1)

    def factors(self, config: Mapping[str, Any], vae_scale: int) -> str:
        return f"VAE x{vae_scale}, U-Net x{self.downsampling(config)}"

    def catalogue(self, network: nn.Module) -> list[LayerSpec]:
        return build_catalogue(network)

    def layer_infos(
        self, config: Mapping[str, Any], size: tuple[int, int], text_tokens: int, vae_scale: int
    ) -> list[LayerInfo]:
        return layer_infos(config, size, text_tokens, vae_scale)

    def load(
        self, model: str, dtype: torch.dtype, text_stack: bool = True, **load: Any
    ) -> dict[str, Any]:
        return load_components(model, dtype, text_stack, **load)


def load_components(model: str, dtype: torch.dtype, text_stack: bool = True, **load) -> dict:
    """Load unet, vae, scheduler, tokenizers and text encoders of a diffusers SD/SDXL repo.

    Args:
        model: hub id or local folder.
        dtype: weights dtype.
        text_stack: load tokenizers and text encoders (False: none).
        **load: passed to every ``from_pretrained`` (revision, variant, cache_dir, ...).
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype, **load)
    parts = {"unet": unet, **load_vae_and_scheduler(model, dtype, **load)}
    if not text_stack:
        return parts
    tokenizer_load = {key: value for key, value in load.items() if key != "variant"}
    tokenizers = [CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **tokenizer_load)]
    encoders = [CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **load)]
    if is_text_time(unet.config):
        tokenizers.append(
            CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2", **tokenizer_load)
        )
        encoders.append(
            CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder_2", **load)
        )
    return {**parts, "tokenizers": tokenizers, "text_encoders": [e.to(dtype) for e in encoders]}


UNET = UNetBackbone()
