"""Sliding-window logits on the token grid -> logits at the input size, as two matrix products.

The official procedure upsamples every window's logits to the crop (bilinear), adds them into a
full canvas, divides by the coverage count and resizes the canvas to the input size (bilinear).
Every one of these steps is linear and acts on rows and columns separately, and the windows lie
on a grid (row offsets x column offsets), so the coverage is a product of per-axis counts. The
whole chain is therefore ``R @ G[q] @ C^T`` for each query ``q``, where ``G`` holds the windows'
token-grid logits side by side and ``R`` (``C``) maps window tokens to output rows (columns):
no window is ever upsampled to the crop size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def bilinear_matrix(out_size: int, in_size: int) -> Tensor:
    """(out_size, in_size) fp64 matrix of ``F.interpolate(mode="bilinear", align_corners=False)``
    along one axis (PyTorch's bilinear is separable: one such matrix per axis)."""
    eye = torch.eye(in_size, dtype=torch.float64)[None]  # (1, in, in): the unit signals
    return F.interpolate(eye, size=out_size, mode="linear", align_corners=False)[0].T


def window_axis_matrix(
    size: int, starts: Sequence[int], crop: int, tokens: int, out_size: int
) -> Tensor:
    """Map of one axis: window tokens side by side -> averaged, resized output pixels.

    Args:
        size: length of the axis the windows slide over (the resized image).
        starts: window offsets along the axis (each window covers ``[start, start + crop)``).
        crop: window length in pixels.
        tokens: token-grid length of a window.
        out_size: output length (the input image's size along the axis).

    Returns:
        (out_size, len(starts) * tokens) fp64 matrix.
    """
    upsample = bilinear_matrix(crop, tokens)  # (crop, tokens)
    placed = torch.zeros(size, len(starts) * tokens, dtype=torch.float64)
    coverage = torch.zeros(size, dtype=torch.float64)
    for index, start in enumerate(starts):
        placed[start : start + crop, index * tokens : (index + 1) * tokens] = upsample
        coverage[start : start + crop] += 1
    placed /= coverage[:, None]
    if out_size == size:
        return placed
    return bilinear_matrix(out_size, size) @ placed  # (out_size, len(starts) * tokens)


def stitch_windows(grid: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``rows @ grid @ cols^T`` per channel, in the cheaper order.

    Args:
        grid: (Q, n_rows * t_h, n_cols * t_w) token-grid logits of the windows, row-major.
        rows: (H, n_rows * t_h) row map (``window_axis_matrix``).
        cols: (W, n_cols * t_w) column map.

    Returns:
        (Q, H, W) logits.
    """
    rows, cols = rows.to(grid), cols.to(grid)
    (height, grid_h), (width, grid_w) = rows.shape, cols.shape
    columns_first = grid_h * grid_w * width + height * grid_h * width
    rows_first = height * grid_h * grid_w + height * grid_w * width
    if columns_first <= rows_first:
        return rows @ (grid @ cols.T)  # (Q, gh, W) -> (Q, H, W)
    return (rows @ grid) @ cols.T  # (Q, H, gw) -> (Q, H, W)
