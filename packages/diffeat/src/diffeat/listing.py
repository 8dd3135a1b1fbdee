"""Printing the activation catalogue of a U-Net or a PixArt DiT with shapes."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from torch import nn

from diffeat.catalogue import LayerInfo
from diffeat.checks import (
    TEXT_TOKENS,
    Names,
    check_int_range,
    check_model_source,
    named,
    read_config,
)
from diffeat.configs import DIT_CONFIGS, unet_config
from diffeat.dit import DIT_TOKENS, dit_layer_infos
from diffeat.shapes import layer_infos

VAE_SCALE = 8  # catalogue shapes are computed for the SD VAEs (x8)


def list_layers(
    unet_or_config: nn.Module | Mapping[str, Any],
    image_size: int | tuple[int, int] | None = None,
    text_tokens: int = 77,
    file: TextIO | None = None,
    contains: str | None = None,
) -> list[LayerInfo]:
    """Print the catalogue (index, name, ``C x h x w``) and return it with shapes.

    Args:
        unet_or_config: a ``UNet2DConditionModel`` or a PixArt ``PixArtTransformer2DModel``,
            or its config.
        image_size: input size in pixels (``S`` or ``(H, W)``); default: the native size.
        text_tokens: prompt length (sets the cross-attention map channels).
        file: where to print (default stdout).
        contains: print only names containing this substring.
    """
    config = getattr(unet_or_config, "config", unet_or_config)
    if "down_block_types" not in config:  # a DiT (PixArt) config
        infos = dit_layer_infos(unet_or_config, image_size, text_tokens)
    else:
        infos = layer_infos(unet_or_config, image_size, text_tokens)
    out = file or sys.stdout
    shown = [info for info in infos if contains is None or contains in info.name]
    width = max((len(info.name) for info in shown), default=4)
    print(f"{'#':>4}  {'name':<{width}}  C x h x w", file=out)
    for index, info in enumerate(infos):
        if info in shown:
            c, h, w = info.shape
            heads = f"  ({info.heads} heads)" if info.heads else ""
            print(f"{index:>4}  {info.name:<{width}}  {c} x {h} x {w}{heads}", file=out)
    print(f"{len(shown)} of {len(infos)} activations", file=out)
    return infos


def check_listing(
    config: str | None = None,
    model: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    text_tokens: int | None = None,
    names: Names | None = None,
) -> tuple[dict[str, Any], int | None, Path | str | None]:
    """The checked inputs of :func:`list_layers` from a bundled config name or a model's U-Net
    config (only that file is read): (config, prompt length, model source).

    The prompt length is None when ``text_tokens`` is not given for a model (its tokenizer's
    length then applies; the model source is returned to read it).

    Args:
        config: a bundled config name (:data:`diffeat.configs.UNET_CONFIGS`, ``DIT_CONFIGS``).
        model: a model folder or hub id (instead of ``config``).
        image_size: (H, W) in px, multiples of 8 (a DiT: 8 x its patch size).
        text_tokens: prompt length in tokens, >= 1.
        names: how the caller spells ``image_size``, ``text_tokens``, ``config``, ``model``.

    Raises:
        ValueError, FileNotFoundError: naming the argument.
    """
    resize = named("image_size", names)
    if text_tokens is not None:
        check_int_range(text_tokens, named("text_tokens", names), 1)
    height, width = image_size or (0, 0)
    if height % VAE_SCALE or width % VAE_SCALE:
        raise ValueError(
            f"{resize} {height}x{width}: height and width must be multiples of "
            f"{VAE_SCALE} (the SD VAE factor)"
        )
    if config is not None:
        default = DIT_TOKENS if config in DIT_CONFIGS else TEXT_TOKENS
        settings = unet_config(config)
        multiple = VAE_SCALE * settings.get("patch_size", 1)  # a DiT: x patch size
        if height % multiple or width % multiple:
            raise ValueError(
                f"{resize} {height}x{width}: height and width must be multiples of "
                f"{multiple} for {named('config', names)} {config} (VAE x8, patch "
                f"{multiple // 8})"
            )
        return settings, text_tokens or default, None
    from diffusers import UNet2DConditionModel

    needs = ("unet/config.json",) if text_tokens else ("unet/config.json", "tokenizer")
    flag = named("model_id_or_dir", names)
    source = check_model_source(model, needs, flag)
    settings = read_config(source, UNet2DConditionModel, "unet", flag)
    return settings, text_tokens, source


def tokenizer_length(model: str | Path, name: str = "model_id_or_dir") -> int:
    """The padded prompt length of a model's CLIP tokenizer (``tokenizer/``).

    Args:
        model: a model folder or hub id checked by :func:`check_listing`.
        name: how the caller spells the argument (for the message).

    Raises:
        OSError: the tokenizer cannot be loaded (a failure while working).
    """
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(model), subfolder="tokenizer").model_max_length
    except (OSError, ValueError) as error:
        text = " ".join(str(error).split())
        raise OSError(f"cannot load the tokenizer of {name} {model}: {text}") from None
