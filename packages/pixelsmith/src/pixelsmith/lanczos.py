"""Lanczos-3 resampling in torch, region by region, with PIL's coefficients.

For output pixel ``x`` of an axis resized from ``in_size`` to ``out_size`` (PIL's
``Image.resize(..., Image.LANCZOS)`` convention): ``scale = in/out``, ``f = max(scale, 1)``,
``centre = (x + 0.5) * scale``, support ``3 f``; source pixels ``j`` in
``[trunc(centre - 3f + 0.5), trunc(centre + 3f + 0.5))`` (clipped to the image) get weight
``L((j - centre + 0.5) / f)`` with ``L(t) = sinc(t) sinc(t / 3)`` on ``[-3, 3)``, normalised to
sum 1. Any output region can be computed from a small source window, so a gigapixel upsample
never exists in memory as a whole.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SUPPORT = 3.0
CHUNK = 64  # output lines per dense product (the weights are banded)


def lanczos_kernel(t: Tensor) -> Tensor:
    """sinc(t) * sinc(t / 3) on [-3, 3), 0 elsewhere (normalised sinc, PIL's ``lanczos``)."""
    inside = (t >= -SUPPORT) & (t < SUPPORT)
    return torch.where(inside, torch.sinc(t) * torch.sinc(t / SUPPORT), torch.zeros_like(t))


def _support(
    in_size: int, out_size: int, start: int, stop: int
) -> tuple[Tensor, Tensor, Tensor, float]:
    """Centres, source bounds [low, high) and filter scale of output pixels [start, stop)."""
    if not 0 <= start < stop <= out_size:
        raise ValueError(
            f"output range must satisfy 0 <= start < stop <= {out_size}, got [{start}, {stop})"
        )
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = SUPPORT * filter_scale
    centre = (torch.arange(start, stop, dtype=torch.float64) + 0.5) * scale  # (n_out,)
    low = torch.floor(centre - support + 0.5).clamp_min(0)  # C's int() on values >= 0
    high = torch.floor(centre + support + 0.5).clamp_max(in_size)
    return centre, low.long(), high.long(), filter_scale


def axis_weights(in_size: int, out_size: int, start: int, stop: int) -> tuple[int, Tensor]:
    """Weights of output pixels ``[start, stop)`` of a resized axis.

    Args:
        in_size: source length.
        out_size: resized length.
        start: first output pixel.
        stop: end of the output range (exclusive).

    Returns:
        ``(first, weights)``: ``weights`` is (stop - start, n) float64, rows sum to 1, over
        source pixels ``[first, first + n)``.
    """
    centre, low, high, filter_scale = _support(in_size, out_size, start, stop)
    first, last = int(low.min()), int(high.max())
    source = torch.arange(first, last, dtype=torch.float64)  # (n_src,)
    weights = lanczos_kernel((source[None] - centre[:, None] + 0.5) / filter_scale)
    inside = (source[None] >= low[:, None]) & (source[None] < high[:, None])
    weights = weights * inside  # (n_out, n_src)
    return first, weights / weights.sum(1, keepdim=True)


def source_window(in_size: int, out_size: int, start: int, stop: int) -> tuple[int, int]:
    """Source pixels ``[first, last)`` needed for output pixels ``[start, stop)``."""
    scale = in_size / out_size
    support = SUPPORT * max(scale, 1.0)
    first = max(math.floor((start + 0.5) * scale - support + 0.5), 0)
    last = min(math.floor((stop - 0.5) * scale + support + 0.5), in_size)
    return first, last


def _resample_rows(
    src: Tensor, origin: int, in_size: int, out_size: int, start: int, stop: int
) -> Tensor:
    """Resample dim -2 of (C, h, w) ``src`` (source rows from ``origin``) to output rows
    [start, stop), in chunks of :data:`CHUNK` output rows, each a small dense product."""
    parts = []
    for chunk in range(start, stop, CHUNK):
        first, weights = axis_weights(in_size, out_size, chunk, min(chunk + CHUNK, stop))
        lines = src[:, first - origin : first - origin + weights.shape[1]]  # (C, n_src, w)
        if first < origin or lines.shape[1] != weights.shape[1]:
            raise ValueError("window does not hold the source pixels the region needs")
        parts.append(weights.to(src.device, src.dtype) @ lines)  # (C, n_chunk, w)
    return torch.cat(parts, dim=1)


def resize_region(
    window: Tensor,
    window_origin: tuple[int, int],
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    region: tuple[int, int, int, int],
) -> Tensor:
    """Output ``region`` of resizing an (C, H, W) image whose window ``window`` is given.

    Args:
        window: (C, h, w) crop of the source holding at least :func:`source_window` of the region.
        window_origin: (top, left) of ``window`` in the source.
        in_size: source (H, W).
        out_size: resized (H', W').
        region: (top, left, height, width) of the output to compute.

    Returns:
        (C, height, width) tensor in the dtype of ``window`` (float32 accumulations at least).
    """
    top, left, height, width = region
    src = window.to(torch.promote_types(window.dtype, torch.float32))
    rows = _resample_rows(src, window_origin[0], in_size[0], out_size[0], top, top + height)
    cols = _resample_rows(  # the same on the transposed rows: (C, w, height) -> (C, width, height)
        rows.transpose(1, 2), window_origin[1], in_size[1], out_size[1], left, left + width
    )
    return cols.transpose(1, 2).contiguous().to(window.dtype)  # (C, height, width)
