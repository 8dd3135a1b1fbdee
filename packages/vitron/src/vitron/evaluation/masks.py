"""COCO segmentations (polygons, uncompressed and compressed RLE) decoded to boolean masks.

Two backends: ``"pycocotools"`` (when installed) and ``"numpy"``, a pure-numpy reimplementation
of COCO's own polygon rasteriser and RLE codec. The numpy polygon rasteriser follows COCO's
algorithm step by step (boundary walked on a 5x upsampled grid, crossings taken at pixel-centre
columns, runs toggled in column-major order), so it gives the same pixels as ``pycocotools``,
not merely a similar fill. ``"auto"`` picks pycocotools when it imports, else numpy.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np

MASK_BACKENDS = ("auto", "pycocotools", "numpy")
UPSAMPLE = 5.0  # COCO walks polygon edges on a grid 5x finer than the pixels


class SegmentationError(ValueError):
    """A COCO segmentation that cannot be decoded (bad polygon, bad RLE, size mismatch)."""


def can_use_pycocotools() -> tuple[bool, str]:
    """Whether the pycocotools backend can run, and why not in words when it cannot."""
    if importlib.util.find_spec("pycocotools") is None:
        return False, "pycocotools is not installed (pip install pycocotools)"
    return True, ""


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"pycocotools"`` when installed, else ``"numpy"``; others are checked.

    Args:
        backend: one of :data:`MASK_BACKENDS`.
    """
    if backend not in MASK_BACKENDS:
        raise ValueError(f"mask backend must be one of {', '.join(MASK_BACKENDS)}, got {backend!r}")
    usable, why = can_use_pycocotools()
    if backend == "auto":
        return "pycocotools" if usable else "numpy"
    if backend == "pycocotools" and not usable:
        raise ValueError(f"mask backend 'pycocotools' cannot run: {why}")
    return backend


def _edge_points(xs: int, ys: int, xe: int, ye: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer points of one edge on the upsampled grid, from (xs, ys) to (xe, ye) inclusive,
    stepping one unit along the longer axis (COCO's walk, rounding and direction included)."""
    dx, dy = abs(xe - xs), abs(ye - ys)
    if dx == 0 and dy == 0:  # a repeated vertex: one point (its row is never read)
        return np.array([xs]), np.array([ys])
    along_x = dx >= dy
    flip = (xs > xe) if along_x else (ys > ye)
    if flip:  # walk from the lower end, then list the points from the original start
        xs, xe, ys, ye = xe, xs, ye, ys
    steps = dx if along_x else dy
    t = np.arange(steps + 1)
    if flip:
        t = steps - t
    if along_x:
        slope = (ye - ys) / dx
        return xs + t, (ys + slope * t + 0.5).astype(np.int64)  # astype truncates like C (int)
    slope = (xe - xs) / dy
    return (xs + slope * t + 0.5).astype(np.int64), ys + t


def polygon_to_mask(polygon: Sequence[float], height: int, width: int) -> np.ndarray:
    """One COCO polygon ``[x1, y1, x2, y2, ...]`` (pixel coordinates) -> (H, W) bool mask.

    Args:
        polygon: flat vertex coordinates; the polygon closes itself.
        height: mask height.
        width: mask width.
    """
    xy = np.asarray(polygon, dtype=np.float64)
    if xy.ndim != 1 or xy.size < 2 or xy.size % 2:
        raise SegmentationError(
            f"a polygon is a flat list of x, y numbers; got {xy.size} number(s)"
        )
    if not np.isfinite(xy).all():
        raise SegmentationError("a polygon has a non-finite coordinate")
    x = (UPSAMPLE * xy[0::2] + 0.5).astype(np.int64)
    y = (UPSAMPLE * xy[1::2] + 0.5).astype(np.int64)
    x, y = np.append(x, x[0]), np.append(y, y[0])  # closed
    points = [_edge_points(*map(int, e)) for e in zip(x[:-1], y[:-1], x[1:], y[1:], strict=True)]
    u = np.concatenate([p[0] for p in points])
    v = np.concatenate([p[1] for p in points])
    # where the walk crosses from one upsampled column to the next: a pixel-centre column?
    prev_u, next_u = u[:-1], u[1:]
    column = np.where(next_u < prev_u, next_u, next_u - 1)
    xd = (column + 0.5) / UPSAMPLE - 0.5
    keep = (next_u != prev_u) & (np.floor(xd) == xd) & (xd >= 0) & (xd <= width - 1)
    yd = (np.minimum(v[:-1], v[1:]) + 0.5) / UPSAMPLE - 0.5
    yd = np.ceil(np.clip(yd, 0, height))
    toggles = (xd[keep] * height + yd[keep]).astype(np.int64)  # column-major pixel index
    return _mask_from_toggles(toggles, height, width)


def _mask_from_toggles(toggles: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels (column-major order) flip in/out at each toggle index; an even number of toggles
    at one index cancels, as COCO's run merging does."""
    flips = np.bincount(toggles, minlength=height * width + 1)[: height * width]
    inside = (np.cumsum(flips) % 2).astype(bool)
    return inside.reshape(width, height).T  # (H, W)


def rle_counts_from_string(text: str | bytes) -> list[int]:
    """COCO's compressed RLE string -> run lengths.

    Each count is written in 5-bit groups, least significant first, as characters
    ``48 + group`` with bit 0x20 meaning "more groups follow" and bit 0x10 of the last group
    the sign; from the third count on, the value is a difference to the count two before.

    Args:
        text: the ``counts`` string (or bytes) of a compressed RLE.
    """
    data = text.encode("ascii") if isinstance(text, str) else bytes(text)
    counts: list[int] = []
    position = 0
    while position < len(data):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(data):
                raise SegmentationError("a compressed RLE string ends inside a count")
            group = data[position] - 48
            if not 0 <= group < 64:
                raise SegmentationError(
                    f"a compressed RLE string has the character {chr(data[position])!r}, "
                    "outside '0'..'o'"
                )
            value |= (group & 0x1F) << shift
            shift += 5
            position += 1
            more = bool(group & 0x20)
            if not more and group & 0x10:
                value -= 1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def checked_runs(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """RLE run lengths as an array, checked: non-negative integers that sum to H * W.

    Args:
        counts: the run lengths.
        height: mask height.
        width: mask width.
    """
    if not all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in counts):
        raise SegmentationError("RLE counts must be a flat list of non-negative integers")
    runs = np.asarray(counts, dtype=np.int64).reshape(-1)
    if (runs < 0).any():
        raise SegmentationError("RLE counts must be a flat list of non-negative integers")
    if int(runs.sum()) != height * width:
        raise SegmentationError(
            f"RLE counts sum to {int(runs.sum())} pixels, but the mask is {height}x{width} = "
            f"{height * width}"
        )
    return runs


def rle_to_mask(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """Run lengths (background first, column-major) -> (H, W) bool mask.

    Args:
        counts: alternating runs of 0s and 1s, starting with 0s; they sum to H * W.
        height: mask height.
        width: mask width.
    """
    runs = checked_runs(counts, height, width)
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(width, height).T  # (H, W)


def _rle_mask(rle: dict[str, Any], height: int, width: int, backend: str) -> np.ndarray:
    size = rle.get("size")
    counts = rle.get("counts")
    if not (isinstance(size, list | tuple) and len(size) == 2):
        raise SegmentationError("an RLE segmentation needs 'size': [height, width]")
    if tuple(size) != (height, width):
        raise SegmentationError(
            f"an RLE segmentation of size {size[0]}x{size[1]} on a {height}x{width} image"
        )
    if not isinstance(counts, list | str | bytes):
        raise SegmentationError("RLE 'counts' must be a list of integers or a compressed string")
    runs = counts if isinstance(counts, list) else rle_counts_from_string(counts)
    checked_runs(runs, height, width)  # pycocotools would decode a bad RLE into garbage
    if backend == "pycocotools":
        from pycocotools import mask as coco_mask

        if isinstance(counts, list):
            encoded = coco_mask.frPyObjects(
                {"size": [height, width], "counts": counts}, height, width
            )
        else:
            text = counts.encode("ascii") if isinstance(counts, str) else counts
            encoded = {"size": [height, width], "counts": text}
        return coco_mask.decode(encoded).astype(bool)
    return rle_to_mask(runs, height, width)


def _polygon_mask(polygon: Sequence[float], height: int, width: int, backend: str) -> np.ndarray:
    if backend == "pycocotools":
        from pycocotools import mask as coco_mask

        if len(polygon) < 6:  # pycocotools would read 4 numbers as a box: same walk in numpy
            return polygon_to_mask(polygon, height, width)
        if len(polygon) % 2:
            raise SegmentationError(
                f"a polygon is a flat list of x, y numbers; got {len(polygon)} number(s)"
            )
        encoded = coco_mask.frPyObjects([list(map(float, polygon))], height, width)
        return coco_mask.decode(encoded)[..., 0].astype(bool)
    return polygon_to_mask(polygon, height, width)


def segmentation_to_mask(
    segmentation: Any, height: int, width: int, backend: str = "auto"
) -> np.ndarray:
    """A COCO annotation's ``segmentation`` -> (H, W) bool mask (the union of its parts).

    Accepted: a list of polygons, an RLE dict (``counts`` a list: uncompressed; a string:
    compressed), a list of RLE dicts, or an empty list (an empty mask).

    Args:
        segmentation: the annotation's ``segmentation`` value.
        height: the image height.
        width: the image width.
        backend: ``"auto"``, ``"pycocotools"`` or ``"numpy"``.
    """
    backend = resolve_backend(backend)
    if isinstance(segmentation, dict):
        return _rle_mask(segmentation, height, width, backend)
    if not isinstance(segmentation, list):
        raise SegmentationError(
            "a segmentation is a list of polygons or an RLE dict, got "
            f"{type(segmentation).__name__}"
        )
    mask = np.zeros((height, width), dtype=bool)
    for part in segmentation:
        if isinstance(part, dict):
            mask |= _rle_mask(part, height, width, backend)
        elif isinstance(part, list) and all(isinstance(v, int | float) for v in part):
            mask |= _polygon_mask(part, height, width, backend)
        else:
            raise SegmentationError(
                "each part of a segmentation is a polygon (a list of numbers) or an RLE dict"
            )
    return mask
