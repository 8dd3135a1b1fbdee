"""Activation shapes from a shape-only forward pass on the ``meta`` device (no weights).

``layer_infos`` (U-Net) and ``control_layer_infos`` (ControlNet) build the model from its
config on the ``meta`` device, record every catalogue activation with an
:class:`~diffeat.capture.ActivationRecorder` and keep the shapes: no memory, no weights, so it
works for SDXL-sized configs anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from common_kernels.runtime.errors import InvalidValue
from diffeat.capture import ActivationRecorder
from diffeat.catalogue import LayerInfo, LayerSpec, build_catalogue, build_control_catalogue

# torch refuses a tensor of 2**63 bytes or more ("Storage size calculation overflowed"), even on
# the meta device; diffusers' attention builds (heads, tokens, tokens) float32 scores
TORCH_MAX_BYTES = 2**63 - 1
SCORE_BYTES = 4


def check_pass_size(config: Mapping[str, Any], height: int, width: int, vae_scale: int = 8) -> None:
    """Fail unless the shape pass of ``config`` can describe ``height x width`` px images:
    each attention's scores, heads x tokens^2 float32 values, must stay below torch's largest
    tensor. Counted with every head of the config at the finest attention level and the
    latent's every cell a token (divided by a DiT's patch), an upper bound.

    Args:
        config: the U-Net, ControlNet or DiT config.
        height: image height in px.
        width: image width in px.
        vae_scale: pixels per latent cell.

    Raises:
        InvalidValue: naming ``image_size``, with the largest px count (H x W) accepted.
    """
    heads = config.get("num_attention_heads") or config.get("attention_head_dim") or 8
    heads = max(heads) if isinstance(heads, (list, tuple)) else heads
    cell = (vae_scale * config.get("patch_size", 1)) ** 2  # px per token
    tokens = math.isqrt(TORCH_MAX_BYTES // (SCORE_BYTES * heads))
    if height * width > tokens * cell:
        raise InvalidValue(
            "image_size",
            f"{{image_size}} {height}x{width}: at most {tokens * cell} px (H x W) for this "
            f"model: its attention scores ({heads} heads x (H x W / {cell})^2 float32 values) "
            "would exceed torch's largest tensor (2^63 bytes)",
        )


def check_image_size(
    config: Mapping[str, Any], height: int, width: int, multiple: int, vae_scale: int = 8
) -> None:
    """Fail unless ``height x width`` px are multiples of ``multiple`` (the VAE factor x the
    network's downsampling) and the shape pass can describe them (:func:`check_pass_size`).

    Raises:
        ValueError: ``"image_size: ..."``, for a size that is no multiple.
    """
    if height % multiple or width % multiple:
        raise ValueError(f"image_size: {height}x{width} is not a multiple of {multiple}")
    check_pass_size(config, height, width, vae_scale)


def recorded_infos(
    recorder_class: type[ActivationRecorder],
    network: nn.Module,
    catalogue: list[LayerSpec],
    *args: Any,
    **kwargs: Any,
) -> list[LayerInfo]:
    """``catalogue`` with the feature shapes (batch left out) and attention heads that a
    ``recorder_class`` of every name records in one shape-only pass ``network(*args,
    **kwargs)``."""
    names = [spec.name for spec in catalogue]
    recorder = recorder_class(network, names, catalogue, early_exit=False)
    with torch.no_grad(), recorder:
        network(*args, **kwargs)
    heads = recorder.attention_heads()
    return [
        LayerInfo(spec, tuple(recorder.features[spec.name].shape[1:]), heads.get(spec.name))
        for spec in catalogue
    ]


def meta_unet(config: Mapping[str, Any]) -> nn.Module:
    """A ``UNet2DConditionModel`` of ``config`` on the ``meta`` device (no memory, no weights)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(dict(config)).eval()


def meta_inputs(
    config: Mapping[str, Any], height: int, width: int, text_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``meta`` inputs of one U-Net pass: latent (1, C, h, w), context and SDXL kwargs.

    Args:
        config: the U-Net config.
        height: latent height.
        width: latent width.
        text_tokens: prompt length.
    """
    latent = torch.empty(1, config.get("in_channels", 4), height, width, device="meta")
    width = config.get("encoder_hid_dim") or config["cross_attention_dim"]  # IF: T5's width
    context = torch.empty(1, text_tokens, width, device="meta")
    kwargs = {}
    if config.get("addition_embed_type") == "text_time":
        pooled = (
            config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        )
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.empty(1, pooled, device="meta"),
            "time_ids": torch.empty(1, 6, device="meta"),
        }
    return latent, context, kwargs


def control_layer_infos(
    controlnet_or_config: nn.Module | Mapping[str, Any],
    image_size: int | tuple[int, int],
    text_tokens: int = 77,
    vae_scale: int = 8,
) -> list[LayerInfo]:
    """The ControlNet catalogue (``control-...``) with shapes, from a ``meta`` pass.

    Args:
        controlnet_or_config: a ``ControlNetModel`` (only its config is used) or its config.
        image_size: input image size in pixels, ``S`` or ``(H, W)``.
        text_tokens: prompt length.
        vae_scale: pixels per latent cell.
    """
    from diffusers import ControlNetModel

    config = dict(getattr(controlnet_or_config, "config", controlnet_or_config))
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    check_pass_size(config, height, width, vae_scale)
    with torch.device("meta"):
        controlnet = ControlNetModel.from_config(config).eval()
    catalogue = build_control_catalogue(controlnet)
    latent, context, kwargs = meta_inputs(
        config, height // vae_scale, width // vae_scale, text_tokens
    )
    cond = torch.empty(1, config.get("conditioning_channels", 3), height, width, device="meta")
    timestep = torch.zeros(1, device="meta")
    return recorded_infos(
        ActivationRecorder, controlnet, catalogue, latent, timestep, context, cond,
        return_dict=False, **kwargs,
    )  # fmt: skip


def layer_infos(
    unet_or_config: nn.Module | Mapping[str, Any],
    image_size: int | tuple[int, int] | None = None,
    text_tokens: int = 77,
    vae_scale: int = 8,
) -> list[LayerInfo]:
    """The catalogue with feature shapes, from a shape-only pass on the ``meta`` device.

    No weights are read or allocated, so this works for SDXL-sized configs anywhere.

    Args:
        unet_or_config: a ``UNet2DConditionModel`` (only its config is used) or its config.
        image_size: input image size in pixels, ``S`` or ``(H, W)``; default: the model's native
            size (``sample_size * vae_scale``: 512 for SD 1.5, 1024 for SDXL).
        text_tokens: prompt length (77 for CLIP; the tokenizer's ``model_max_length``).
        vae_scale: pixels per latent cell (8 for the SD VAEs).
    """
    config = getattr(unet_or_config, "config", unet_or_config)
    if image_size is None:
        image_size = config["sample_size"] * vae_scale
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    check_image_size(config, height, width, vae_scale, vae_scale)
    unet = meta_unet(config)
    catalogue = build_catalogue(unet)
    latent, context, kwargs = meta_inputs(
        config, height // vae_scale, width // vae_scale, text_tokens
    )
    timestep = torch.zeros(1, device="meta")
    return recorded_infos(ActivationRecorder, unet, catalogue, latent, timestep, context,
                          return_dict=False, **kwargs)  # fmt: skip
