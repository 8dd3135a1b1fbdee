"""Writing decoded images: BigTIFF streamed tile by tile, or PIL formats for small images.

Writers consume ``(top, rows)`` blocks from :func:`pixelsmith.tiling.decoded_rows` and write
through ``common_kernels.runtime.files.atomic_write`` (shared by every package of the repository): a
uniquely named hidden temporary file next to the target, with the usual permissions, that
replaces the target only when complete and is removed when the write fails or is interrupted
(KeyboardInterrupt, or SIGTERM raised as ``common_kernels.runtime.cli.Terminated`` by the CLI).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image
from torch import Tensor

from common_kernels.runtime.errors import InvalidValue, literal
from common_kernels.runtime.files import atomic_write

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
MAX_PIL_PIXELS = 2**28  # 16384^2; larger images are written as BigTIFF
TIFF_TILE = 512
# TIFF compressions offered in error messages when they can be written here (most need imagecodecs)
COMPRESSIONS = ("zlib", "lzma", "zstd", "lzw", "packbits", "jpeg", "webp", "png", "jpegxl")

RowBlocks = Iterable[tuple[int, Tensor]]


def check_output_path(path: str | Path, height: int, width: int, argument: str = "output") -> Path:
    """Validate an output file before any work is done: suffix, size, writable folder.

    Args:
        path: the file to write.
        height: image height in px.
        width: image width in px.
        argument: the API argument that gives the file (``output``, ``save_intermediate``).

    Raises:
        InvalidValue: naming ``argument``: an unknown suffix, too large for RAM, no folder.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    accepted = ", ".join((*TIFF_SUFFIXES, *PIL_FORMATS))
    file, folder = literal(repr(str(path))), literal(repr(str(path.parent)))
    problem = None
    if suffix not in TIFF_SUFFIXES and suffix not in PIL_FORMATS:
        problem = f" must end with one of {accepted}, got {file}"
    elif suffix in PIL_FORMATS and height * width > MAX_PIL_PIXELS:
        problem = (
            f" {file}: a {height}x{width} image is too large for {suffix} (held in RAM; at most "
            f"{MAX_PIL_PIXELS} px); use a .tif output (BigTIFF, streamed)"
        )
    elif not path.parent.exists():
        problem = f" folder {folder} does not exist"
    elif not path.parent.is_dir():
        problem = f" {file}: {folder} is a file, not a folder"
    elif path.is_dir():
        problem = f" {file} is a folder, not a file"
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        problem = f" {file}: cannot write to {folder}"
    if problem is not None:
        raise InvalidValue(argument, f"{{{argument}}}{problem}")
    return path


def compression_error(compression: str) -> str | None:
    """Why tifffile cannot write ``compression`` here (unknown name, codec missing), or None."""
    try:
        tifffile.imwrite(
            io.BytesIO(),
            np.zeros((16, 16, 3), np.uint8),
            photometric="rgb",
            tile=(16, 16),
            bigtiff=True,
            compression=compression,
        )
    except KeyError as error:  # tifffile: "<COMPRESSION.LZW: 5> requires the 'imagecodecs' ..."
        return str(error.args[0]) if error.args else "unknown compression"
    except (ValueError, TypeError, ImportError, RuntimeError) as error:
        return " ".join(str(error).split()) or type(error).__name__
    return None


def check_compression(compression: str | None) -> None:
    """Fail unless tifffile can write TIFF tiles with ``compression`` on this machine.

    Args:
        compression: a tifffile compression name (e.g. ``"zlib"``) or ``None``.

    Raises:
        InvalidValue: naming ``compression``, why, and the compressions usable here.
    """
    if compression is None:
        return
    reason = compression_error(compression)
    if reason is not None:
        usable = [c for c in COMPRESSIONS if compression_error(c) is None]
        raise InvalidValue(
            "compression",
            f"{{compression}} {literal(repr(compression))} cannot be written here "
            f"({literal(reason)}); usable here: {', '.join(usable)} (more with `pip install "
            "imagecodecs`)",
        )


def to_uint8(rows: Tensor) -> np.ndarray:
    """(3, r, W) pixels in [-1, 1] -> (r, W, 3) uint8 (diffusers' rounding)."""
    scaled = rows.float() / 2  # one temporary, then in place: (x / 2 + 0.5) clamped, * 255
    scaled.add_(0.5).clamp_(0, 1).mul_(255).round_()
    return scaled.to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # (r, W, 3)


def _tiff_tiles(blocks: RowBlocks, width: int, tile: int) -> Iterator[np.ndarray]:
    """Regroup row blocks into (tile, tile, 3) tiles, row-major (edge tiles are smaller)."""
    band = np.empty((tile, width, 3), dtype=np.uint8)
    filled = 0
    for _, rows in blocks:
        array = to_uint8(rows)
        used = 0
        while used < array.shape[0]:
            take = min(tile - filled, array.shape[0] - used)
            band[filled : filled + take] = array[used : used + take]
            filled += take
            used += take
            if filled == tile:
                yield from _band_tiles(band, width, tile)
                filled = 0
    if filled:
        yield from _band_tiles(band[:filled], width, tile)


def _band_tiles(band: np.ndarray, width: int, tile: int) -> Iterator[np.ndarray]:
    for left in range(0, width, tile):
        yield np.ascontiguousarray(band[:, left : left + tile])


def write_tiff(
    blocks: RowBlocks,
    path: str | Path,
    height: int,
    width: int,
    *,
    tile: int = TIFF_TILE,
    compression: str | None = None,
) -> Path:
    """Stream row blocks into a tiled RGB BigTIFF (atomic).

    Args:
        blocks: ``(top, (3, r, width))`` pixel rows in [-1, 1], in order, covering the image.
        path: output file.
        height: image height.
        width: image width.
        tile: TIFF tile side (a multiple of 16).
        compression: tifffile compression (e.g. ``"zlib"``) or ``None``.
    """
    path = Path(path)
    with atomic_write(path) as tmp:
        tifffile.imwrite(
            tmp,
            data=_tiff_tiles(blocks, width, tile),
            shape=(height, width, 3),
            dtype=np.uint8,
            photometric="rgb",
            tile=(tile, tile),
            bigtiff=True,
            compression=compression,
            metadata=None,
        )
    return path


def collect_uint8(blocks: RowBlocks, height: int, width: int) -> np.ndarray:
    """Assemble row blocks into an (H, W, 3) uint8 array."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    for top, rows in blocks:
        image[top : top + rows.shape[1]] = to_uint8(rows)
    return image


def write_pil(blocks: RowBlocks, path: str | Path, height: int, width: int) -> Path:
    """Assemble row blocks in RAM and save with PIL in the format of the suffix (atomic)."""
    path = Path(path)
    image = Image.fromarray(collect_uint8(blocks, height, width))
    with atomic_write(path) as tmp:
        image.save(tmp, format=PIL_FORMATS[path.suffix.lower()])
    return path


def write_image(
    blocks: RowBlocks,
    path: str | Path,
    height: int,
    width: int,
    *,
    compression: str | None = None,
) -> Path:
    """BigTIFF (streamed) for .tif/.tiff, PIL otherwise."""
    path = check_output_path(path, height, width)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return write_tiff(blocks, path, height, width, compression=compression)
    return write_pil(blocks, path, height, width)
