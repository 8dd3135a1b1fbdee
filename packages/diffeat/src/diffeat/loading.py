"""Loading the components of a diffusers SD/SDXL repository (after the checks of
:func:`diffeat.plan.check_from_pretrained`); the callers load inside
``common_kernels.runtime.quiet.quiet_loading`` (the libraries' loading bars off)."""

from __future__ import annotations

import torch
from torch import nn

from diffeat.adapters import check_controlnet_config

LOAD_KEYS = ("revision", "variant", "cache_dir", "local_files_only", "token")


def load_controlnet(model: str, dtype: torch.dtype, unet_config, **load) -> nn.Module:
    """A diffusers ``ControlNetModel`` (hub id or folder), its config checked against the
    U-Net's before its weights are read.

    Args:
        model: hub id or folder of the ControlNet.
        dtype: weights dtype.
        unet_config: the U-Net's config (:func:`diffeat.adapters.check_controlnet_config`).
        **load: hub options (``revision``, ``variant``, ``cache_dir``, ...).
    """
    from diffusers import ControlNetModel

    config_load = {k: v for k, v in load.items() if k != "variant"}
    check_controlnet_config(ControlNetModel.load_config(model, **config_load), unet_config)
    return ControlNetModel.from_pretrained(model, torch_dtype=dtype, **load)


def load_components(model: str, dtype: torch.dtype, text_stack: bool = True, **load) -> dict:
    """Load unet, vae, scheduler, tokenizers and text encoders of a diffusers SD/SDXL repo.

    Args:
        model: hub id or local folder.
        dtype: weights dtype.
        text_stack: load tokenizers and text encoders (False: both None).
        **load: passed to every ``from_pretrained`` (revision, variant, cache_dir, ...).
    """
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    variant = load.pop("variant", None)
    unet = UNet2DConditionModel.from_pretrained(
        model, subfolder="unet", torch_dtype=dtype, variant=variant, **load
    )
    vae = AutoencoderKL.from_pretrained(
        model, subfolder="vae", torch_dtype=dtype, variant=variant, **load
    )
    scheduler_config = diffusers.DDPMScheduler.load_config(model, subfolder="scheduler", **load)
    scheduler_cls = getattr(diffusers, scheduler_config["_class_name"])
    scheduler = scheduler_cls.from_config(scheduler_config)
    if not text_stack:
        return {"unet": unet, "vae": vae, "scheduler": scheduler}
    text_kwargs = dict(load) if variant is None else {**load, "variant": variant}
    tokenizers = [CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **load)]
    encoders = [CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **text_kwargs)]
    if unet.config.get("addition_embed_type") == "text_time":
        tokenizers.append(CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2", **load))
        encoders.append(
            CLIPTextModelWithProjection.from_pretrained(
                model, subfolder="text_encoder_2", **text_kwargs
            )
        )
    encoders = [encoder.to(dtype) for encoder in encoders]
    return {
        "unet": unet,
        "vae": vae,
        "scheduler": scheduler,
        "tokenizers": tokenizers,
        "text_encoders": encoders,
    }
