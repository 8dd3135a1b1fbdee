"""Tiled VAE encoding into a latent canvas and streamed tiled decoding, row band by row band.

Both use ``common_kernels.tile_grid`` over the latent and blend overlapping tiles with
``common_kernels.blend_weights``. Encoding accumulates the posterior mean and standard deviation
of the tiles in an ``OverlapAccumulator``; decoding yields finished pixel rows as soon as no later
tile can touch them, so only about one row of tiles is ever held in memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from common_kernels import OverlapAccumulator, Tile, blend_weights, tile_grid
from common_kernels.runtime.progress import progress as show_progress
from pixelsmith.images import ImageSource

EncodeFn = Callable[[Tensor], tuple[Tensor, Tensor]]
DecodeFn = Callable[[Tensor], Tensor]
ROWS_PER_BLOCK = 256  # decoded rows are yielded in blocks of at most this many


def latent_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Row-major tiles of side ``tile`` (clipped to the latent) overlapping by ``overlap``."""
    return tile_grid(height, width, tile, tile - overlap)


def encode_tiled(
    encode: EncodeFn,
    source: ImageSource,
    latent_size: tuple[int, int],
    *,
    tile: int,
    overlap: int,
    blend: str,
    scale: int,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Posterior mean and std of ``source`` encoded tile by tile.

    Args:
        encode: maps (1, 3, th*scale, tw*scale) pixels to the (1, C, th, tw) mean and std.
        source: the image, ``latent_size * scale`` px.
        latent_size: (h, w) of the latent.
        tile: tile side in latent px.
        overlap: tile overlap in latent px.
        blend: tile blending (see ``common_kernels.blend_weights``).
        scale: px per latent px.
        device: where the canvas lives.
        progress: show progress (``common_kernels.runtime.progress``: a bar on a terminal, lines in
        a log).

    Returns:
        (1, C, h, w) mean and (1, C, h, w) std, float32.
    """
    height, width = latent_size
    if (source.height, source.width) != (height * scale, width * scale):
        raise ValueError(
            f"source must be {height * scale}x{width * scale} px for a {height}x{width} latent, "
            f"got {source.height}x{source.width}"
        )
    tiles = latent_tiles(height, width, tile, overlap)
    accumulator: OverlapAccumulator | None = None
    shown = show_progress(
        tiles, desc="pixelsmith encode", unit="tiles", disable=not progress, leave=False
    )
    for t in shown:
        pixels = source.read(t.top * scale, t.left * scale, t.height * scale, t.width * scale)
        mean, std = encode(pixels[None].to(device))  # (1, C, th, tw) each
        if accumulator is None:
            channels = mean.shape[1]
            accumulator = OverlapAccumulator(
                (1, 2 * channels, height, width), blend=blend, device=mean.device
            )
        accumulator.add(t, torch.cat([mean, std], 1).float())  # (1, 2C, th, tw)
    moments = accumulator.result()  # (1, 2C, h, w)
    mean, std = moments.chunk(2, dim=1)
    return mean, std


def decoded_rows(
    decode: DecodeFn,
    latents: Tensor,
    *,
    tile: int,
    overlap: int,
    blend: str,
    scale: int,
    progress: bool = False,
) -> Iterator[tuple[int, Tensor]]:
    """Decode ``latents`` tile by tile; yield ``(top, rows)`` of finished pixel rows in order.

    Memory: one (3, tile * scale, W) band of weighted sums and its weights, whatever the height.

    Args:
        decode: maps (1, C, th, tw) latents to (1, 3, th*scale, tw*scale) pixels.
        latents: (1, C, h, w).
        tile: tile side in latent px.
        overlap: tile overlap in latent px.
        blend: tile blending.
        scale: px per latent px.
        progress: show progress (``common_kernels.runtime.progress``: a bar on a terminal, lines in
        a log).

    Yields:
        ``(top, rows)`` with rows a (3, r, w*scale) float32 tensor of pixels in [-1, 1]
        (blended, not clamped); consecutive blocks tile the image from row 0 to the bottom.
    """
    height, width = latents.shape[-2:]
    tiles = latent_tiles(height, width, tile, overlap)
    row_groups = [list(g) for _, g in itertools.groupby(tiles, key=lambda t: t.top)]
    # one tick per tile, in the order of row_groups (a bar on a terminal, lines in a log)
    ticks = iter(
        show_progress(
            tiles, desc="pixelsmith decode", unit="tiles", disable=not progress, leave=False
        )
    )
    band = max(t.height for t in tiles) * scale  # rows one row of tiles can touch
    canvas: Tensor | None = None  # (3, band, W) weighted sums of rows start .. start + band
    weight: Tensor | None = None  # (band, W)
    start = 0
    weights: dict[tuple[int, int], Tensor] = {}
    try:
        for index, group in enumerate(row_groups):
            for t in group:
                pixels = decode(latents[..., t.top : t.top + t.height, t.left : t.left + t.width])
                pixels = pixels[0].float()  # (3, th*scale, tw*scale)
                if canvas is None:
                    canvas = pixels.new_zeros(3, band, width * scale)
                    weight = pixels.new_zeros(band, width * scale)
                key = tuple(pixels.shape[-2:])
                if key not in weights:
                    weights[key] = blend_weights(*key, blend).to(pixels.device)
                w = weights[key]
                rows = slice(t.top * scale - start, (t.top + t.height) * scale - start)
                cols = slice(t.left * scale, (t.left + t.width) * scale)
                canvas[:, rows, cols] += pixels * w
                weight[rows, cols] += w
                next(ticks)
            last = index + 1 == len(row_groups)
            done = height * scale if last else row_groups[index + 1][0].top * scale
            finished = done - start  # rows no later tile touches
            for first in range(0, finished, ROWS_PER_BLOCK):
                stop = min(first + ROWS_PER_BLOCK, finished)
                yield start + first, canvas[:, first:stop] / weight[first:stop]
            carried = band - finished  # rows the next row of tiles adds to: move them up
            canvas[:, :carried] = canvas[:, finished:].clone()
            weight[:carried] = weight[finished:].clone()
            canvas[:, carried:] = 0
            weight[carried:] = 0
            start = done
        next(ticks, None)  # the end of the progress
    finally:
        ticks.close()
