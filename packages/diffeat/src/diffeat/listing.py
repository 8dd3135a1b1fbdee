"""Printing the activation catalogue of a U-Net, a PixArt DiT or a FLUX/SD3 transformer with
shapes."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from torch import nn

from common_kernels.runtime.errors import InvalidValue, literal, shown
from diffeat.backbones import DIT, UNET, backbone_of, backbone_of_model
from diffeat.backbones.dit import dit_layer_infos
from diffeat.catalogue import LayerInfo
from diffeat.checks import check_model_folder, read_config, resolve_source
from diffeat.configs import unet_config
from diffeat.errors import SourceError, check_int_range
from diffeat.io import parse_size
from diffeat.shapes import check_pass_size, layer_infos

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
    backbone = backbone_of(config)
    if backbone not in (UNET, DIT):  # FLUX, SD3, HunyuanDiT: the backbone's own listing
        size = parse_size(image_size) or backbone.native_size(config, VAE_SCALE)
        infos = backbone.layer_infos(config, size, text_tokens, VAE_SCALE)
    else:
        dit = backbone is DIT
        infos = (dit_layer_infos if dit else layer_infos)(unet_or_config, image_size, text_tokens)
    out = file or sys.stdout
    listed = [info for info in infos if contains is None or contains in info.name]
    width = max((len(info.name) for info in listed), default=4)
    print(f"{'#':>4}  {'name':<{width}}  C x h x w", file=out)
    for index, info in enumerate(infos):
        if info in listed:
            c, h, w = info.shape
            heads = f"  ({info.heads} heads)" if info.heads else ""
            print(f"{index:>4}  {info.name:<{width}}  {c} x {h} x {w}{heads}", file=out)
    print(f"{len(listed)} of {len(infos)} activations", file=out)
    return infos


def check_listing(
    config: str | None = None,
    model: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    text_tokens: int | None = None,
) -> tuple[dict[str, Any], int | None, Path | str | None]:
    """The checked inputs of :func:`list_layers` from a bundled config name or a model's
    network config (only that file is read; a U-Net's or a PixArt transformer's, as its
    ``model_index.json`` says): (config, prompt length, model source).

    The prompt length is None when ``text_tokens`` is not given for a U-Net model (its CLIP
    tokenizer's length then applies; the model source is returned to read it); a DiT's is its
    T5 length (300).

    Args:
        config: a bundled config name (:data:`diffeat.configs.UNET_CONFIGS`, ``DIT_CONFIGS``).
        model: a model folder or hub id (instead of ``config``).
        image_size: (H, W) in px, multiples of 8 (a DiT: 8 x its patch size), at most as
            many px as the shape pass can describe (:func:`diffeat.shapes.check_pass_size`).
        text_tokens: prompt length in tokens, >= 1.

    Raises:
        InvalidArgument: naming the argument (``MissingPath``: a model folder
            where nothing is).
    """
    if text_tokens is not None:
        check_int_range(text_tokens, "text_tokens", 1)
    height, width = image_size or (0, 0)
    if height % VAE_SCALE or width % VAE_SCALE:
        raise InvalidValue(
            "image_size",
            f"{{image_size}} {height}x{width}: height and width must be multiples of "
            f"{VAE_SCALE} (the SD VAE factor)",
        )
    if config is not None:
        settings = unet_config(config)
        backbone = backbone_of(settings)
        default = backbone.text_tokens
        multiple = VAE_SCALE  # a DiT: x its patch size (FLUX: its 2x2 packing)
        if backbone is not UNET:
            multiple *= backbone.downsampling(settings)
        if height % multiple or width % multiple:
            raise InvalidValue(
                "image_size",
                f"{{image_size}} {height}x{width}: height and width must be multiples of "
                f"{multiple} for {shown('config', config)} "
                f"({backbone.factors(settings, VAE_SCALE)})",
            )
        if image_size is not None:
            check_pass_size(settings, height, width, VAE_SCALE)
        return settings, text_tokens or default, None
    source = resolve_source(model, "model")
    backbone = backbone_of_model(source)
    tokens = text_tokens or (None if backbone is UNET else backbone.text_tokens)
    needs = (f"{backbone.subfolder}/config.json",) + (() if tokens else ("tokenizer",))
    if isinstance(source, Path):
        check_model_folder(source, model, needs, "model")
    settings = read_config(source, backbone.loader(), backbone.subfolder, "model")
    if image_size is not None:
        check_pass_size(settings, height, width, VAE_SCALE)
    return settings, tokens, source


def tokenizer_length(model: str | Path) -> int:
    """The padded prompt length of a model's CLIP tokenizer (``tokenizer/``).

    Args:
        model: a model folder or hub id checked by :func:`check_listing`.

    Raises:
        SourceError: the tokenizer cannot be loaded (a failure while working; an ``OSError``
            naming ``model``).
    """
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(model), subfolder="tokenizer").model_max_length
    except (OSError, ValueError) as error:
        text = literal(" ".join(str(error).split()))
        raise SourceError(
            "model", f"cannot load the tokenizer of {shown('model', model)}: {text}"
        ) from None
