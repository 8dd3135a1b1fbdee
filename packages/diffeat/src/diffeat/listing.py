"""Printing the activation catalogue of a U-Net or a PixArt DiT with shapes."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TextIO

from torch import nn

from diffeat.catalogue import LayerInfo
from diffeat.dit import dit_layer_infos
from diffeat.shapes import layer_infos


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
