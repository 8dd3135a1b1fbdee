"""User-drawn regions (boxes, strokes, masks) and their footprint on the patch grid.

A region lives in the pixel coordinates of its source image (x along the width, y along the
height, pixel-edge convention of :mod:`vitron.geometry`). :func:`patch_coverage` maps it through
the same resize / crop / pad as the image and returns, for every patch of the model's grid, the
exact fraction of that patch the region covers. That grid is the pooling weight of the region
encoder, and the region's bounding box in the model frame is its location encoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from vitron.geometry import Geometry, cell_overlap, span_overlap


class RegionError(ValueError):
    """A region that is malformed or falls outside what the model sees."""


@dataclass(frozen=True)
class Box:
    """Axis-aligned box ``(x1, y1, x2, y2)`` in source pixels, x1 < x2 and y1 < y2."""

    x1: float
    y1: float
    x2: float
    y2: float

    def __post_init__(self) -> None:
        values = (self.x1, self.y1, self.x2, self.y2)
        if not all(math.isfinite(v) for v in values):
            raise RegionError(f"box coordinates must be finite, got {values}")
        if not (self.x1 < self.x2 and self.y1 < self.y2):
            raise RegionError(f"box must satisfy x1 < x2 and y1 < y2, got {values}")


@dataclass(frozen=True)
class Stroke:
    """A polyline drawn with a brush of ``width`` source pixels.

    Args:
        points: (x, y) vertices in source pixels (at least one).
        width: brush diameter in source pixels (> 0).
    """

    points: tuple[tuple[float, float], ...]
    width: float = 8.0

    def __post_init__(self) -> None:
        if len(self.points) == 0:
            raise RegionError("a stroke needs at least one point")
        if not self.width > 0:
            raise RegionError(f"stroke width must be > 0, got {self.width}")


@dataclass(frozen=True, eq=False)
class Mask:
    """A binary or soft (H, W) mask with values in [0, 1] at the source image's resolution."""

    values: Tensor = field(repr=False)

    def __post_init__(self) -> None:
        if self.values.ndim != 2:
            raise RegionError(f"a mask must be (H, W), got shape {tuple(self.values.shape)}")
        if self.values.numel() == 0:
            raise RegionError(
                f"values is empty: shape {tuple(self.values.shape)}; a mask is (H, W) with H, "
                "W >= 1"
            )
        values = self.values.double()
        if bool((values < 0).any() or (values > 1).any()):
            raise RegionError("mask values must lie in [0, 1]")
        if not bool((values > 0).any()):
            raise RegionError("mask is empty (no pixel above 0)")


Shape = Box | Stroke | Mask


@dataclass(frozen=True)
class Region:
    """A shape drawn on one of the conversation's images.

    Args:
        shape: the box, stroke or mask.
        image: index of the image it was drawn on.
    """

    shape: Shape
    image: int = 0


def parse_box(text: str | Sequence[float], width: int | None = None, height: int | None = None):
    """``"x1,y1,x2,y2"`` (pixels, or normalised to [0, 1] when all four are <= 1) -> ``Box``.

    Args:
        text: four numbers separated by commas or spaces (brackets allowed), or a sequence.
        width: source width, needed to scale normalised coordinates.
        height: source height, needed to scale normalised coordinates.
    """
    if isinstance(text, str):
        cleaned = text.strip().strip("[]()").replace(",", " ").split()
        try:
            values = [float(v) for v in cleaned]
        except ValueError as err:
            raise RegionError(f"box must be four numbers 'x1,y1,x2,y2', got {text!r}") from err
    else:
        values = [float(v) for v in text]
    if len(values) != 4:
        raise RegionError(f"box must be four numbers 'x1,y1,x2,y2', got {text!r}")
    if all(0.0 <= v <= 1.0 for v in values):
        if width is None or height is None:
            raise RegionError(
                f"box {values} is normalised (all values in [0, 1]); the image size is needed"
            )
        values = [values[0] * width, values[1] * height, values[2] * width, values[3] * height]
    return Box(*values)


def check_inside(shape: Shape, width: int, height: int, label: str) -> None:
    """Refuse a box or stroke that is not inside its ``width x height`` image.

    A box must lie in ``[0, width] x [0, height]`` and so must every stroke point (the brush may
    spill over the edge); a mask has its image's size, which is checked where it is read.

    Args:
        shape: the region's shape in source pixels.
        width: the image's width in pixels.
        height: the image's height in pixels.
        label: how the message names the region (``--box 0,0,100000,100000``).
    """
    if isinstance(shape, Box):
        points = [(shape.x1, shape.y1), (shape.x2, shape.y2)]
    elif isinstance(shape, Stroke):
        points = list(shape.points)
    else:
        return
    if not all(0.0 <= x <= width and 0.0 <= y <= height for x, y in points):
        raise RegionError(f"{label} lies outside the {width}x{height} image")


def check_regions(regions: Sequence[Region], images: Sequence) -> None:
    """Refuse a region that names no image of the conversation (``images``: every image so far,
    with ``.width`` and ``.height``) or that lies outside its image."""
    for i, region in enumerate(regions):
        if not 0 <= region.image < len(images):
            raise ValueError(
                f"a region refers to image {region.image}, but the conversation has "
                f"{len(images)} image(s)"
            )
        image = images[region.image]
        check_inside(region.shape, image.width, image.height, f"regions[{i}] {region.shape}")


def rasterize_stroke(stroke: Stroke, height: int, width: int) -> Tensor:
    """(H, W) float mask of the pixels whose centre lies within ``width / 2`` of the polyline."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64) + 0.5,
        torch.arange(width, dtype=torch.float64) + 0.5,
        indexing="ij",
    )  # (H, W) pixel centres
    points = torch.tensor(stroke.points, dtype=torch.float64)  # (P, 2) as (x, y)
    starts = points if len(points) == 1 else points[:-1]
    ends = points if len(points) == 1 else points[1:]
    best = torch.full((height, width), math.inf, dtype=torch.float64)
    for (ax, ay), (bx, by) in zip(starts.tolist(), ends.tolist(), strict=True):
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        t = ((xs - ax) * dx + (ys - ay) * dy) / length2 if length2 > 0 else torch.zeros_like(xs)
        t = t.clamp(0, 1)
        dist = torch.hypot(xs - (ax + t * dx), ys - (ay + t * dy))
        best = torch.minimum(best, dist)
    mask = (best <= stroke.width / 2).double()
    if not bool(mask.any()):
        raise RegionError(f"stroke {stroke.points} covers no pixel of the {width}x{height} image")
    return mask


def source_mask(shape: Shape, height: int, width: int) -> Tensor:
    """(H, W) float64 coverage of the shape on the source image's pixel grid."""
    if isinstance(shape, Mask):
        if tuple(shape.values.shape) != (height, width):
            raise RegionError(
                f"mask is {tuple(shape.values.shape)} but its image is {(height, width)}"
            )
        return shape.values.double()
    if isinstance(shape, Stroke):
        return rasterize_stroke(shape, height, width)
    rows = span_overlap(shape.y1, shape.y2, height, 1.0)
    cols = span_overlap(shape.x1, shape.x2, width, 1.0)
    mask = rows[:, None] * cols[None, :]  # (H, W): rows are y, columns are x
    if not bool(mask.any()):
        raise RegionError(f"box {shape} lies outside the {width}x{height} image")
    return mask


def clip_box(box: Box, height: int, width: int) -> Box:
    """``box`` clipped to its ``width x height`` source image (padding is not image)."""
    x1, y1 = max(box.x1, 0.0), max(box.y1, 0.0)
    x2, y2 = min(box.x2, float(width)), min(box.y2, float(height))
    if not (x1 < x2 and y1 < y2):
        raise RegionError(f"box {box} lies outside the {width}x{height} image")
    return Box(x1, y1, x2, y2)


def box_in_model_frame(box: Box, geometry: Geometry) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) of ``box``, clipped to its image, in model-frame pixels."""
    box = clip_box(box, geometry.src_height, geometry.src_width)
    x1, y1 = geometry.to_model(box.x1, box.y1)
    x2, y2 = geometry.to_model(box.x2, box.y2)
    return x1, y1, x2, y2


def cut_away(shape: Shape, geometry: Geometry) -> RegionError:
    """The error for a region the preprocessing crops away entirely."""
    return RegionError(
        f"region {shape!r} falls outside what the model sees of the image "
        f"(preprocess={geometry.mode!r} cuts it away); use preprocess='pad' or move the region"
    )


def pixel_edges(geometry: Geometry) -> tuple[Tensor, Tensor]:
    """Model-frame edges of the source pixels: (H + 1,) row edges and (W + 1,) column edges."""
    ys = torch.arange(geometry.src_height + 1, dtype=torch.float64)
    xs = torch.arange(geometry.src_width + 1, dtype=torch.float64)
    return ys * geometry.scale_y + geometry.offset_y, xs * geometry.scale_x + geometry.offset_x


def patch_coverage(shape: Shape, geometry: Geometry, grid: int) -> Tensor:
    """Fraction of each model-frame patch covered by the region, after resize / crop / pad.

    Args:
        shape: the region in source pixels.
        geometry: how the source image maps into the model frame.
        grid: patches per side (model frame side / patch size).

    Returns:
        (grid, grid) float64 coverage in [0, 1]; row = y, column = x.
    """
    cell = geometry.size / grid
    if isinstance(shape, Box):
        x1, y1, x2, y2 = box_in_model_frame(shape, geometry)
        rows = span_overlap(y1, y2, grid, cell)  # (grid,)
        cols = span_overlap(x1, x2, grid, cell)
        coverage = rows[:, None] * cols[None, :]  # (grid, grid)
    else:
        mask = source_mask(shape, geometry.src_height, geometry.src_width)  # (H, W)
        y_edges, x_edges = pixel_edges(geometry)
        rows = cell_overlap(y_edges[:-1], y_edges[1:], grid, cell)  # (grid, H)
        cols = cell_overlap(x_edges[:-1], x_edges[1:], grid, cell)  # (grid, W)
        coverage = rows @ mask @ cols.T  # (grid, grid) area-weighted coverage
    if not bool((coverage > 0).any()):
        raise cut_away(shape, geometry)
    return coverage


def model_box(shape: Shape, geometry: Geometry) -> Tensor:
    """(4,) bounding box (x1, y1, x2, y2) of the visible region in the model frame, in [0, 1].

    For strokes and masks it is the extent of the pixels the crop keeps (an L-shaped mask whose
    vertical arm is cropped away gets the box of its horizontal arm, not its whole box clipped).
    """
    if isinstance(shape, Box):
        x1, y1, x2, y2 = box_in_model_frame(shape, geometry)
    else:
        mask = source_mask(shape, geometry.src_height, geometry.src_width)  # (H, W)
        y_edges, x_edges = pixel_edges(geometry)
        seen_rows = (y_edges[1:] > 0) & (y_edges[:-1] < geometry.size)  # (H,) inside the frame
        seen_cols = (x_edges[1:] > 0) & (x_edges[:-1] < geometry.size)  # (W,)
        seen = (mask > 0) & seen_rows[:, None] & seen_cols[None, :]  # (H, W)
        rows = torch.nonzero(seen.any(1))[:, 0]
        cols = torch.nonzero(seen.any(0))[:, 0]
        if len(rows) == 0:
            raise cut_away(shape, geometry)
        x1, x2 = float(x_edges[cols.min()]), float(x_edges[cols.max() + 1])
        y1, y2 = float(y_edges[rows.min()]), float(y_edges[rows.max() + 1])
    box = torch.tensor([x1, y1, x2, y2], dtype=torch.float64) / geometry.size
    return box.clamp(0.0, 1.0)


def region_mask_at(shape: Shape, height: int, width: int) -> Tensor:
    """(H, W) bool mask of the region on its source image (coverage >= 0.5 per pixel)."""
    return source_mask(shape, height, width) >= 0.5


def shape_from_json(data: dict, height: int | None = None, width: int | None = None) -> Shape:
    """``{"box": [...]}``, ``{"points": [[x, y], ...], "width": w}`` or ``{"mask": array}``."""
    keys = set(data) - {"image"}
    if keys == {"box"}:
        return parse_box(data["box"], width, height)
    if keys in ({"points"}, {"points", "width"}):
        points = tuple((float(x), float(y)) for x, y in data["points"])
        return Stroke(points, float(data.get("width", 8.0)))
    if keys == {"mask"}:
        return Mask(torch.as_tensor(np.asarray(data["mask"], dtype=np.float64)))
    raise RegionError(
        f"a region is {{'box': [x1, y1, x2, y2]}}, {{'points': [[x, y], ...], 'width': w}} or "
        f"{{'mask': ...}}, got keys {sorted(keys)}"
    )
