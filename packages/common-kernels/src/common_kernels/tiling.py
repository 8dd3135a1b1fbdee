"""Overlapping tiles over an image, blended reassembly and tiled application of a function."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from common_kernels.runtime.progress import progress as show_progress

from ._checks import check_float, check_ndim, check_positive_int, check_tensor

BLENDS = ("none", "linear", "gaussian")
WEIGHT_STEPS = 64  # per-axis weights are multiples of 1/64: weighted sums stay exact


class Tile(NamedTuple):
    """A rectangle of an image: top-left corner and size, in pixels."""

    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """(rows, cols) slices selecting the tile from an (..., H, W) tensor."""
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    """An int or an (h, w) pair as an (h, w) tuple of ints >= 1."""
    accepted = f"{name} must be an int >= 1 or an (h, w) pair of them"
    if not isinstance(value, (int, Sequence)):
        raise TypeError(f"{accepted}, got {type(value).__name__}")
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{accepted}, got {value!r}")
    return check_positive_int(f"{name}[0]", pair[0]), check_positive_int(f"{name}[1]", pair[1])


def _axis_spans(size: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """(offset, length) of the tiles along one axis; the last tile is shifted back inside."""
    if size <= tile:
        return [(0, size)]
    count = (size - tile + stride - 1) // stride + 1
    return [(min(i * stride, size - tile), tile) for i in range(count)]


def tile_grid(
    height: int, width: int, tile: int | Sequence[int], stride: int | Sequence[int]
) -> list[Tile]:
    """Row-major tiles covering a ``height x width`` image.

    Per axis there are ``max(size - tile + stride - 1, 0) // stride + 1`` tiles at offsets
    ``min(i * stride, size - tile)``; an axis shorter than the tile gets one clipped tile.

    Args:
        height: image height.
        width: image width.
        tile: tile size, an int or an (h, w) pair.
        stride: tile step, an int or an (h, w) pair, each in ``[1, tile]`` (no gaps).

    Returns:
        The tiles, row by row.
    """
    check_positive_int("height", height)
    check_positive_int("width", width)
    tile_hw = _pair("tile", tile)
    stride_hw = _pair("stride", stride)
    for axis, (size, step) in enumerate(zip(tile_hw, stride_hw, strict=True)):
        if step > size:
            raise ValueError(
                f"stride[{axis}] must be in [1, tile[{axis}]] = [1, {size}] (a larger stride "
                f"leaves gaps between tiles), got {step}"
            )
    rows = _axis_spans(height, tile_hw[0], stride_hw[0])
    cols = _axis_spans(width, tile_hw[1], stride_hw[1])
    return [Tile(top, left, h, w) for top, h in rows for left, w in cols]


def _axis_profile(size: int, kind: str) -> Tensor:
    """(size,) strictly positive fp32 weights in (0, 1], quantised to multiples of 1/64."""
    pos = torch.arange(size, dtype=torch.float64)
    if kind == "none":
        return torch.ones(size)
    if kind == "linear":
        profile = torch.minimum(pos + 1, size - pos) / math.ceil(size / 2)
    else:
        profile = torch.exp(-0.5 * ((pos - (size - 1) / 2) / (size / 4)) ** 2)
    steps = (profile * WEIGHT_STEPS).round().clamp_min(1)
    return (steps / WEIGHT_STEPS).float()


def check_blend(name: str, value: object) -> str:
    """Require one of the blend names; the message names the caller's argument."""
    if value not in BLENDS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, BLENDS))}, got {value!r}")
    return value


def blend_weights(height: int, width: int, kind: str) -> Tensor:
    """Blending weights of one tile.

    Weights are separable and quantised to multiples of 1/64 per axis, so for values with few
    significant bits the weighted sums are exact and identity tiles reassemble bit-exactly.

    Args:
        height: tile height.
        width: tile width.
        kind: ``"none"`` (all ones), ``"linear"`` (ramp up from the tile edges) or
            ``"gaussian"`` (centred, sigma = size / 4 per axis).

    Returns:
        (height, width) fp32 weights, strictly positive, at most 1.
    """
    check_positive_int("height", height)
    check_positive_int("width", width)
    check_blend("kind", kind)
    return torch.outer(_axis_profile(height, kind), _axis_profile(width, kind))  # (H, W)


class OverlapAccumulator:
    """Weighted sum of overlapping tiles on a canvas of shape (..., H, W).

    Args:
        shape: canvas shape (..., H, W).
        blend: per-tile weighting, one of ``"none"``, ``"linear"``, ``"gaussian"``.
        dtype: canvas dtype.
        device: canvas device.
    """

    def __init__(
        self,
        shape: Sequence[int],
        *,
        blend: str = "none",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"shape must be (..., H, W) with at least 2 dims, got {shape}")
        for i, size in enumerate(shape):
            check_positive_int(f"shape[{i}]", size)
        check_blend("blend", blend)
        self.shape = shape
        self.blend = blend
        self.canvas = torch.zeros(shape, dtype=dtype, device=device)
        self.weight = torch.zeros(shape[-2:], dtype=dtype, device=device)
        self._tile_weights: dict[tuple[int, int], Tensor] = {}

    def _weights_for(self, height: int, width: int) -> Tensor:
        """Cached (height, width) blend weights on the canvas dtype and device."""
        key = (height, width)
        if key not in self._tile_weights:
            weights = blend_weights(height, width, self.blend)
            self._tile_weights[key] = weights.to(self.canvas.device, self.canvas.dtype)
        return self._tile_weights[key]

    def add(self, tile: Tile, values: Tensor) -> None:
        """Add ``weight * values`` to the canvas under ``tile``.

        Args:
            tile: where the values go; must lie inside the canvas.
            values: (..., tile.height, tile.width) tensor, leading dims equal to the canvas's.
        """
        check_float("values", values, finite=False)
        height, width = self.shape[-2:]
        if not (
            tile.top >= 0
            and tile.left >= 0
            and tile.top + tile.height <= height
            and tile.left + tile.width <= width
        ):
            raise ValueError(
                f"tile must lie inside the canvas of size ({height}, {width}), got {tile}"
            )
        expected = (*self.shape[:-2], tile.height, tile.width)
        if tuple(values.shape) != expected:
            raise ValueError(
                f"values must have shape {expected} (canvas leading dims, then the tile's "
                f"height and width), got {tuple(values.shape)}"
            )
        rows, cols = tile.slices
        weights = self._weights_for(tile.height, tile.width)
        self.canvas[..., rows, cols].add_(values * weights)
        self.weight[rows, cols].add_(weights)

    def result(self) -> Tensor:
        """Weighted average of everything added; raises if a pixel was never covered."""
        uncovered = self.weight == 0
        if bool(uncovered.any()):
            row, col = (int(i) for i in uncovered.nonzero()[0])
            raise ValueError(
                f"{int(uncovered.sum())} canvas pixels were never covered by a tile "
                f"(first at row {row}, col {col}); tiles must cover all of (H, W) = "
                f"{tuple(self.shape[-2:])}"
            )
        return self.canvas / self.weight


def _check_tile_output(out: object, batch: int, height: int, width: int) -> Tensor:
    """Require ``fn``'s output to be a floating (batch, C_out, height, width) tensor."""
    check_float("fn output", out, finite=False)
    if out.ndim != 4 or out.shape[0] != batch or tuple(out.shape[-2:]) != (height, width):
        raise ValueError(
            f"fn output must have shape ({batch}, C_out, {height}, {width}) for a batch of tile "
            f"crops (tile size times scale), got {tuple(out.shape)}"
        )
    return out


def _tile_outputs(
    fn: Callable[[Tensor], Tensor], x: Tensor, tiles: list[Tile], scale: int, batch_size: int
) -> Iterator[tuple[Tile, Tensor]]:
    """Run ``fn`` on groups of tile crops; yield (output tile, (B, C_out, h, w) values)."""
    batch = x.shape[0]
    for start in range(0, len(tiles), batch_size):
        group = tiles[start : start + batch_size]
        crops = torch.cat([x[(..., *t.slices)] for t in group])  # (n*B, C, h, w)
        out_h, out_w = group[0].height * scale, group[0].width * scale
        out = _check_tile_output(fn(crops), len(group) * batch, out_h, out_w)  # (n*B, C_out, h, w)
        for t, values in zip(group, out.split(batch), strict=True):
            yield Tile(t.top * scale, t.left * scale, out_h, out_w), values


def tiled_apply(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    tile: int | Sequence[int],
    stride: int | Sequence[int],
    scale: int = 1,
    blend: str = "linear",
    batch_size: int = 1,
    progress: bool = False,
) -> Tensor:
    """Apply ``fn`` to overlapping tiles of ``x`` and blend the results into one image.

    Args:
        fn: maps (n*B, C, h, w) crops (n tiles concatenated along dim 0) to
            (n*B, C_out, h*scale, w*scale).
        x: (B, C, H, W) input.
        tile: tile size, an int or an (h, w) pair.
        stride: tile step, an int or an (h, w) pair in ``[1, tile]``.
        scale: integer upscaling factor of ``fn``; output tiles land at coordinates * scale.
        blend: tile weighting, one of ``"none"``, ``"linear"``, ``"gaussian"``.
        batch_size: tiles per ``fn`` call.
        progress: show progress over the tiles (a bar on a terminal, else a line every 10 s).

    Returns:
        (B, C_out, H*scale, W*scale) tensor in the dtype of ``fn``'s output.
    """
    check_ndim("x", check_tensor("x", x), (4,), "(B, C, H, W)")
    if x.is_floating_point():
        check_float("x", x)  # NaN/Inf would spread over every overlapping tile
    check_positive_int("scale", scale)
    check_positive_int("batch_size", batch_size)
    check_blend("blend", blend)
    batch, _, height, width = x.shape
    tiles = tile_grid(height, width, tile, stride)
    outputs = show_progress(
        _tile_outputs(fn, x, tiles, scale, batch_size),
        desc="tiles", total=len(tiles), unit="tiles", disable=not progress,
    )  # fmt: skip
    first_tile, first_values = next(outputs)
    acc = OverlapAccumulator(
        (batch, first_values.shape[1], height * scale, width * scale),
        blend=blend,
        dtype=torch.promote_types(first_values.dtype, torch.float32),
        device=first_values.device,
    )
    for out_tile, values in itertools.chain([(first_tile, first_values)], outputs):
        acc.add(out_tile, values)
    return acc.result().to(first_values.dtype)
