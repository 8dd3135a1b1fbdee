"""Window stitching as matrix products against the per-window upsample, canvas add and resize."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common_kernels import tile_grid
from itaclip.stitching import bilinear_matrix, stitch_windows, window_axis_matrix


@pytest.mark.parametrize(("out_size", "in_size"), [(224, 14), (7, 3), (5, 9), (6, 6), (1, 4)])
def test_bilinear_matrix_is_torch_bilinear(out_size, in_size):
    x = torch.randn(2, 3, in_size, 5, dtype=torch.float64)
    expected = F.interpolate(x, size=(out_size, 5), mode="bilinear", align_corners=False)
    matrix = bilinear_matrix(out_size, in_size)
    assert matrix.shape == (out_size, in_size) and matrix.dtype == torch.float64
    torch.testing.assert_close(torch.einsum("oi,bciw->bcow", matrix, x), expected)
    torch.testing.assert_close(matrix.sum(1), torch.ones(out_size, dtype=torch.float64))


def canvas_reference(windows, tiles, size, out_size):
    """The official chain: upsample each window to its crop, add into a canvas, divide by the
    coverage, resize to the output; fp64."""
    queries = windows.shape[1]
    total = torch.zeros(queries, *size, dtype=torch.float64)
    count = torch.zeros(size, dtype=torch.float64)
    for window, tile in zip(windows, tiles, strict=True):
        up = F.interpolate(window[None], size=(tile.height, tile.width), mode="bilinear")[0]
        total[(slice(None), *tile.slices)] += up
        count[tile.slices] += 1
    out = (total / count)[None]
    return F.interpolate(out, size=out_size, mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize(
    ("size", "crop", "stride", "tokens", "out_size"),
    [
        ((448, 448), 224, 112, 14, (448, 448)),  # same size: no final resize
        ((60, 75), 32, 12, 4, (90, 50)),  # up along one axis, down along the other
        ((20, 40), 32, 16, 4, (25, 41)),  # shorter than the crop: one clipped window per row
    ],
)
def test_stitching_equals_the_canvas_chain(size, crop, stride, tokens, out_size):
    tiles = tile_grid(*size, crop, stride)
    tops = list(dict.fromkeys(t.top for t in tiles))
    lefts = list(dict.fromkeys(t.left for t in tiles))
    torch.manual_seed(0)
    windows = torch.randn(len(tiles), 3, tokens, tokens, dtype=torch.float64)
    grid = windows.reshape(len(tops), len(lefts), 3, tokens, tokens)  # (rows, cols, Q, t, t)
    grid = grid.permute(2, 0, 3, 1, 4).reshape(3, len(tops) * tokens, len(lefts) * tokens)
    rows = window_axis_matrix(size[0], tops, tiles[0].height, tokens, out_size[0])
    cols = window_axis_matrix(size[1], lefts, tiles[0].width, tokens, out_size[1])
    assert rows.shape == (out_size[0], len(tops) * tokens)
    out = stitch_windows(grid, rows, cols)
    expected = canvas_reference(windows, tiles, size, out_size)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    # both multiplication orders agree
    torch.testing.assert_close((rows @ grid) @ cols.T, rows @ (grid @ cols.T))
