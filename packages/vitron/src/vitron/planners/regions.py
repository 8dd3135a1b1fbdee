"""A user's region as a chat model reads coordinates: its bounding box in the model's convention.

Conventions (by ``config.model_type``):

- ``thousandths``: Qwen2-VL, Qwen3-VL: integers in [0, 1000] relative to the image's width
  and height (``(x1,y1),(x2,y2)``, the models' grounding format).
- ``resized_pixels``: Qwen2.5-VL: absolute pixels of the image as its processor resizes it
  (``smart_resize``: sides rounded to multiples of patch_size * merge_size, the pixel count kept
  within the processor's bounds).
- ``fractions``: every other image-text-to-text model (LLaVA, LLaVA-OneVision, Idefics3 /
  SmolVLM, Gemma 3, ...): ``[x1, y1, x2, y2]`` as fractions of the width and height, 3 decimals.
- ``pixels``: a text-only model: pixels of the image as the user gave it (it is told the size).

Strokes and masks are given by their bounding box (the pixels they cover).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from vitron.regions import Box, Shape, source_mask

CONVENTIONS = ("thousandths", "resized_pixels", "fractions", "pixels")
BY_MODEL_TYPE = {
    "qwen2_vl": "thousandths",
    "qwen3_vl": "thousandths",
    "qwen3_vl_moe": "thousandths",
    "qwen2_5_vl": "resized_pixels",
}


def convention_of(config: Any, vision: bool) -> str:
    """The coordinate convention of a model (see the module's list)."""
    if not vision:
        return "pixels"
    return BY_MODEL_TYPE.get(getattr(config, "model_type", ""), "fractions")


def bounding_box(shape: Shape, width: int, height: int) -> tuple[float, float, float, float]:
    """``(x1, y1, x2, y2)`` in pixels: a box as drawn, a stroke's or mask's covered pixels."""
    if isinstance(shape, Box):
        return (shape.x1, shape.y1, shape.x2, shape.y2)
    covered = source_mask(shape, height, width) > 0  # (H, W)
    rows = torch.nonzero(covered.any(dim=1)).flatten()
    cols = torch.nonzero(covered.any(dim=0)).flatten()
    return (float(cols[0]), float(rows[0]), float(cols[-1]) + 1, float(rows[-1]) + 1)


def resized_size(image: Image.Image, processor: Any) -> tuple[int, int]:
    """(width, height) of ``image`` after a Qwen2-VL-family image processor's ``smart_resize``."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    ip = getattr(processor, "image_processor", processor)
    size = getattr(ip, "size", None) or {}
    min_pixels = getattr(ip, "min_pixels", None) or size.get("shortest_edge", 56 * 56)
    max_pixels = getattr(ip, "max_pixels", None) or size.get("longest_edge", 28 * 28 * 1280)
    factor = getattr(ip, "patch_size", 14) * getattr(ip, "merge_size", 2)
    height, width = smart_resize(
        image.height, image.width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels
    )
    return width, height


def describe_region(shape: Shape, image: Image.Image, convention: str, processor: Any) -> str:
    """The region's box as text in ``convention``.

    Args:
        shape: the region (pixels of ``image``).
        image: the image it is drawn on.
        convention: one of :data:`CONVENTIONS`.
        processor: the model's processor (``resized_pixels`` reads its resize bounds).
    """
    x1, y1, x2, y2 = bounding_box(shape, image.width, image.height)
    w, h = image.width, image.height
    if convention == "thousandths":
        v = [round(1000 * x1 / w), round(1000 * y1 / h), round(1000 * x2 / w), round(1000 * y2 / h)]
        return f"box ({v[0]},{v[1]}),({v[2]},{v[3]}) in thousandths of the width and height"
    if convention == "resized_pixels":
        rw, rh = resized_size(image, processor)
        v = [round(x1 * rw / w), round(y1 * rh / h), round(x2 * rw / w), round(y2 * rh / h)]
        return f"box [{v[0]}, {v[1]}, {v[2]}, {v[3]}] in pixels of the {rw}x{rh} image you see"
    if convention == "fractions":
        v = [x1 / w, y1 / h, x2 / w, y2 / h]
        return "box [{:.3f}, {:.3f}, {:.3f}, {:.3f}] as fractions of the width and height".format(
            *v
        )
    if convention == "pixels":
        v = [round(x1), round(y1), round(x2), round(y2)]
        return f"box [{v[0]}, {v[1]}, {v[2]}, {v[3]}] in pixels of the {w}x{h} image"
    raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
