"""What ``itaclip segment`` writes for an image, also from Python (``Segmentation.save_overlay``
and ``Segmentation.save_labels``): the labels blended over the photo with a legend, and the
label map. Both are written atomically (``common_kernels.runtime.photos.write_photo``).

The overlay is drawn on the photo as the segmenter saw it: upright (a photo read with
``common_kernels.runtime.photos.read_photo`` had its EXIF orientation applied once, and the tag is
not
written again), at the labels' size; it keeps a colour photo's ICC profile and its EXIF.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.photos import Photo, write_photo
from itaclip.io import to_rgb_tensor
from itaclip.viz import overlay

LABEL_SUFFIXES = (".png", ".tif", ".tiff")  # lossless, 8 and 16 bits


def overlay_photo(image: Any, labels: Tensor, names: Sequence[str]) -> Photo:
    """The overlay of ``labels`` on ``image`` as an 8-bit RGB photo.

    Args:
        image: a photo (``read_photo``), PIL image, array or (3, H, W) tensor in [0, 1]; resized
            bilinearly to the labels' size when it differs (``output_size``).
        labels: (H, W) class indices.
        names: the class names (the legend).
    """
    rgb = to_rgb_tensor(image)  # (3, H, W)
    if tuple(rgb.shape[-2:]) != tuple(labels.shape):
        rgb = F.interpolate(
            rgb[None], size=tuple(labels.shape), mode="bilinear", align_corners=False
        )[0].clamp(0, 1)  # (3, H_labels, W_labels)
    canvas = np.asarray(overlay(rgb, labels.cpu(), names), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(canvas).permute(2, 0, 1).contiguous()  # (3, H, W + legend)
    if not isinstance(image, Photo):
        return Photo(pixels)
    icc = image.icc_profile if image.channels == 3 else None  # a gray profile fits no RGB
    return Photo(pixels, None, 8, icc, image.exif)


def save_overlay(
    path: str | os.PathLike, image: Any, labels: Tensor, names: Sequence[str]
) -> list[str]:
    """Write the overlay (``overlay_photo``) to ``path`` in the format of its suffix.

    Returns:
        What the format could not hold (``write_photo``'s notes; none for PNG).
    """
    return write_photo(path, overlay_photo(image, labels, names))


def save_labels(path: str | os.PathLike, labels: Tensor, num_classes: int) -> list[str]:
    """Write the class indices as a one-channel image: 8 bits for up to 256 classes, else 16.

    Args:
        path: a ``.png`` or ``.tif``/``.tiff`` file (lossless).
        labels: (H, W) class indices in [0, num_classes).
        num_classes: the number of classes.

    Raises:
        InvalidArgument: another suffix (``path: ...``): a lossy format changes the indices.
    """
    path = Path(path)
    if path.suffix.lower() not in LABEL_SUFFIXES:
        raise InvalidArgument(
            "path",
            f"{path}: a label map needs a lossless format ({', '.join(LABEL_SUFFIXES)}), got "
            f"{path.suffix!r}",
        )
    depth = 8 if num_classes <= 256 else 16
    top = 255.0 if depth == 8 else 65535.0
    pixels = labels.detach().cpu().to(torch.float64)[None] / top  # (1, H, W), exact steps
    return write_photo(path, Photo(pixels.float(), bit_depth=depth))
