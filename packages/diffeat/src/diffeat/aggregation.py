"""Resize (or pool) features to one size and concatenate them along channels."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from diffeat.io import parse_size

RESIZE_MODES = ("bilinear", "bicubic", "nearest", "area")


def resize_feature(feature: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """(B, C, h, w) -> (B, C, H, W); ``area`` averages (pooling) when shrinking.

    Args:
        feature: the feature map (computed in fp32 when it is fp16/bf16, returned in its dtype).
        size: target (H, W).
        mode: one of ``RESIZE_MODES``.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode: must be one of {RESIZE_MODES}; got {mode!r}")
    if feature.numel() == 0:
        raise ValueError(f"feature: empty tensor {tuple(feature.shape)}")
    if tuple(feature.shape[-2:]) == tuple(size):
        return feature
    kwargs = {} if mode in ("nearest", "area") else {"align_corners": False}
    out = F.interpolate(feature.float(), size=size, mode=mode, **kwargs)
    return out.to(feature.dtype)


def aggregate(
    features: Mapping[str, Tensor],
    size: int | tuple[int, int] | None = None,
    mode: str = "bilinear",
    concat: bool = True,
    normalize: bool = False,
) -> Tensor | dict[str, Tensor]:
    """Bring features to one spatial size and (optionally) concatenate them.

    Args:
        features: ``{name: (B, C, h, w)}`` (the extractor's output).
        size: target ``S`` or ``(H, W)``; None = the largest feature's size.
        mode: ``bilinear``, ``bicubic``, ``nearest`` or ``area`` (average pooling).
        concat: return one (B, sum C, H, W) tensor in the dict's order; else a resized dict.
        normalize: L2-normalise every feature over its channels first (per pixel), so each
            layer weighs the same in a cosine similarity of the concatenation.
    """
    if not features:
        raise ValueError("features: empty")
    target = parse_size(size, "size") or max(
        (tuple(f.shape[-2:]) for f in features.values()), key=lambda hw: hw[0] * hw[1]
    )
    out = {}
    for name, feature in features.items():
        if feature.ndim != 4:
            raise ValueError(
                f"features[{name!r}]: expected (B, C, h, w); got {tuple(feature.shape)}"
            )
        if feature.numel() == 0:
            raise ValueError(f"features[{name!r}]: empty tensor {tuple(feature.shape)}")
        if normalize:
            feature = F.normalize(feature.float(), dim=1).to(feature.dtype)
        out[name] = resize_feature(feature, target, mode)
    return torch.cat(list(out.values()), dim=1) if concat else out
