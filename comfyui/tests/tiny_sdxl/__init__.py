"""Test-only ComfyUI extension: ComfyUI's model detection knows SDXL by its full size, so this
registers the tiny SDXL of :mod:`configs` (an ``SDXL`` subclass matching the tiny UNet, with
tiny text encoders) before any checkpoint loads. Linked into ``custom_nodes`` by the tests'
harness only; it adds no node."""

from __future__ import annotations

from typing import ClassVar

import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils

from .configs import COMFY_UNET, HEADS, TEXT


class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
    """SDXL's two text encoders at :data:`configs.TEXT`'s size (ComfyUI reads a config override
    per encoder from ``model_options``)."""

    def __init__(self, device="cpu", dtype=None, model_options=None):
        options = {**(model_options or {}), "clip_l_model_config": dict(TEXT),
                   "clip_g_model_config": dict(TEXT)}  # fmt: skip
        super().__init__(device=device, dtype=dtype, model_options=options)


class TinySDXL(comfy.supported_models.SDXL):
    unet_config: ClassVar[dict] = {key: COMFY_UNET[key] for key in (
        "model_channels", "transformer_depth", "context_dim", "adm_in_channels",
        "use_linear_in_transformer")}  # fmt: skip
    unet_extra_config: ClassVar[dict] = {"num_heads": HEADS, "num_head_channels": -1}

    def process_clip_state_dict(self, state_dict):
        # both encoders in transformers' layout (SDXL's second is open_clip's in real files)
        return comfy.utils.state_dict_prefix_replace(state_dict, {
            "conditioner.embedders.0.transformer.": "clip_l.transformer.",
            "conditioner.embedders.1.transformer.": "clip_g.transformer.",
        }, filter_keys=True)  # fmt: skip

    def clip_target(self, state_dict=None):
        return comfy.supported_models_base.ClipTarget(
            comfy.sdxl_clip.SDXLTokenizer, TinySDXLClipModel
        )


if TinySDXL not in comfy.supported_models.models:
    comfy.supported_models.models.insert(0, TinySDXL)

NODE_CLASS_MAPPINGS: dict = {}
