"""Colour-coded label overlays with a legend of the classes present."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

LEGEND_ROW = 18
LEGEND_SWATCH = 12
LEGEND_WIDTH = 180


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 distinct colours: class bits spread over the high bits of R, G, B."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        value, shift = index + 1, 7
        while value and shift >= 0:
            for channel in range(3):
                colours[index, channel] |= ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
    return colours


def overlay(image: Tensor, labels: Tensor, names: Sequence[str], opacity: float = 0.5):
    """Blend a label map over the image and add a legend listing the classes present.

    Args:
        image: (3, H, W) RGB in [0, 1].
        labels: (H, W) class indices (values outside ``[0, len(names))`` stay uncoloured).
        names: class names.
        opacity: colour weight.

    Returns:
        PIL RGB image of size (W + legend width, max(H, legend height)).
    """
    colours = torch.from_numpy(palette(len(names))).float() / 255  # (C, 3)
    valid = (labels >= 0) & (labels < len(names))
    colour_map = colours[labels.clamp(0, len(names) - 1)].permute(2, 0, 1)  # (3, H, W)
    blended = torch.where(valid, (1 - opacity) * image + opacity * colour_map, image)
    rgb = (blended.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # (H, W, 3)
    present = torch.bincount(labels[valid].flatten(), minlength=len(names))
    order = [int(i) for i in present.argsort(descending=True) if present[i] > 0]
    height, width = rgb.shape[:2]
    canvas = Image.new(
        "RGB", (width + LEGEND_WIDTH, max(height, LEGEND_ROW * (len(order) + 1))), "white"
    )
    canvas.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for row, index in enumerate(order):
        top = 4 + row * LEGEND_ROW
        swatch = (width + 6, top, width + 6 + LEGEND_SWATCH, top + LEGEND_SWATCH)
        draw.rectangle(swatch, fill=tuple(int(c) for c in palette(len(names))[index]))
        draw.text((width + 12 + LEGEND_SWATCH, top), names[index], fill="black", font=font)
    return canvas
