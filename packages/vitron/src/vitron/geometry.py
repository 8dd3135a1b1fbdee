"""Where each source pixel lands in the square model frame (resize, centre crop or pad).

Coordinates are continuous pixel-edge coordinates: a source image of width ``W`` spans
``x in [0, W]``, pixel ``j`` covers ``[j, j + 1]``. Every preprocessing mode is an axis-aligned
affine map ``x' = x * scale_x + offset_x`` (same for y) into the model frame ``[0, size]^2``,
so images, boxes, strokes and masks go through exactly the same geometry.

Modes:
    ``"resize"``: squash the image to ``size x size`` (aspect ratio not kept).
    ``"center_crop"``: resize the short side to ``size`` then crop the centre (CLIP's default;
        parts of the long side are cut away).
    ``"pad"``: pad the short side symmetrically to a square with the mean colour, then resize
        (LLaVA's ``expand2square``; nothing is cut away).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

PREPROCESS_MODES = ("resize", "center_crop", "pad")


@dataclass
class Geometry:
    """The affine map from a source image into the model frame.

    Args:
        src_height: source image height in pixels.
        src_width: source image width in pixels.
        size: side of the square model frame.
        mode: one of ``PREPROCESS_MODES``.
        scale_x: model-frame pixels per source pixel along x.
        scale_y: model-frame pixels per source pixel along y.
        offset_x: model-frame x of the source's left edge.
        offset_y: model-frame y of the source's top edge.
        resized: (height, width) of the intermediate resize (``center_crop``) or the padded
            square side twice (``pad``); ``(size, size)`` for ``resize``.
        pad: (top, left) padding in source pixels (``pad`` mode), else (0, 0).
        crop: (top, left) crop offset in resized pixels (``center_crop`` mode), else (0, 0).
    """

    src_height: int
    src_width: int
    size: int
    mode: str
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    resized: tuple[int, int]
    pad: tuple[int, int] = (0, 0)
    crop: tuple[int, int] = (0, 0)

    def to_model(self, x: float, y: float) -> tuple[float, float]:
        """Map a source point (x, y) into the model frame."""
        return x * self.scale_x + self.offset_x, y * self.scale_y + self.offset_y

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        """Map a model-frame point (x, y) back into the source image."""
        return (x - self.offset_x) / self.scale_x, (y - self.offset_y) / self.scale_y


def plan_geometry(height: int, width: int, size: int, mode: str) -> Geometry:
    """The geometry of preprocessing a ``height x width`` image into a ``size`` square.

    Args:
        height: source height in pixels (>= 1).
        width: source width in pixels (>= 1).
        size: model input side (>= 1).
        mode: ``"resize"``, ``"center_crop"`` or ``"pad"``.
    """
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"preprocess mode must be one of {PREPROCESS_MODES}, got {mode!r}")
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1 pixels, got {height}x{width}")
    if mode == "resize":
        return Geometry(
            height, width, size, mode, size / width, size / height, 0.0, 0.0, (size, size)
        )
    if mode == "center_crop":
        short = min(height, width)
        new_h = max(size, round(height * size / short))
        new_w = max(size, round(width * size / short))
        top, left = (new_h - size) // 2, (new_w - size) // 2
        return Geometry(
            height, width, size, mode, new_w / width, new_h / height, -float(left), -float(top),
            (new_h, new_w), crop=(top, left),
        )  # fmt: skip
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    scale = size / side
    return Geometry(
        height, width, size, mode, scale, scale, left * scale, top * scale, (side, side),
        pad=(top, left),
    )  # fmt: skip


def apply_geometry(image: Tensor, geometry: Geometry, fill: tuple[float, ...]) -> Tensor:
    """Resize / crop / pad an image exactly as ``geometry`` describes.

    Args:
        image: (C, H, W) float image with H, W equal to the geometry's source size.
        geometry: from :func:`plan_geometry`.
        fill: per-channel value of the padding (``pad`` mode).

    Returns:
        (C, size, size) image.
    """
    if tuple(image.shape[-2:]) != (geometry.src_height, geometry.src_width):
        raise ValueError(
            f"image is {tuple(image.shape[-2:])} but the geometry was planned for "
            f"{(geometry.src_height, geometry.src_width)}"
        )
    size = geometry.size
    if geometry.mode == "pad":
        side = geometry.resized[0]
        canvas = torch.tensor(fill, dtype=image.dtype).view(-1, 1, 1).expand(-1, side, side)
        canvas = canvas.clone()  # (C, side, side)
        top, left = geometry.pad
        canvas[:, top : top + geometry.src_height, left : left + geometry.src_width] = image
        image = canvas
    target = (size, size) if geometry.mode != "center_crop" else geometry.resized
    if tuple(image.shape[-2:]) != target:
        image = F.interpolate(
            image[None], size=target, mode="bicubic", align_corners=False, antialias=True
        )[0]  # (C, h, w)
    if geometry.mode == "center_crop":
        top, left = geometry.crop
        image = image[:, top : top + size, left : left + size]
    return image


def cell_overlap(edges_lo: Tensor, edges_hi: Tensor, cells: int, cell: float) -> Tensor:
    """Overlap length of each interval [lo, hi] with each cell [k * cell, (k + 1) * cell].

    Args:
        edges_lo: (N,) interval starts (model frame).
        edges_hi: (N,) interval ends.
        cells: number of cells.
        cell: cell side.

    Returns:
        (cells, N) overlap lengths divided by ``cell`` (in [0, 1]).
    """
    starts = torch.arange(cells, dtype=torch.float64)[:, None] * cell  # (cells, 1)
    lo = torch.maximum(starts, edges_lo[None].double())
    hi = torch.minimum(starts + cell, edges_hi[None].double())
    return (hi - lo).clamp(min=0) / cell  # (cells, N)


def span_overlap(lo: float, hi: float, cells: int, cell: float) -> Tensor:
    """(cells,) overlap of one interval [lo, hi] with each cell, divided by ``cell``."""
    bounds = torch.tensor([[lo], [hi]], dtype=torch.float64)
    return cell_overlap(bounds[0], bounds[1], cells, cell)[:, 0]
