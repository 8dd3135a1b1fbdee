"""Image reading and writing: float tensors in [0, 1], atomic writes, image-folder listing.

Reading, channel conversion and atomic writes are common-kernels'
(``common_kernels.runtime.files``),
shared by every package of the repository: 8-bit images are divided by 255, 16-bit gray by
65535, palettes expanded, alpha dropped, the EXIF orientation applied; ``channels="gray"`` is
BT.601 luma, ``channels="rgb"`` repeats a gray channel. See
``common_kernels.runtime.files.read_image``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common_kernels.runtime.batch import find_images
from common_kernels.runtime.files import (
    BT601_LUMA,
    IMAGE_SUFFIXES,
    Channels,
    atomic_write,
    convert_channels,
    read_image,
)

__all__ = [
    "BT601_LUMA",
    "IMAGE_EXTENSIONS",
    "Channels",
    "check_writable",
    "convert_channels",
    "is_gray_file",
    "is_image_file",
    "list_images",
    "read_image",
    "to_uint8_array",
    "write_image",
]

IMAGE_EXTENSIONS = IMAGE_SUFFIXES
GRAY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")  # Pillow modes

_LOSSY_FORMATS = ("JPEG", "WEBP")


def write_image(path: str | os.PathLike, image: torch.Tensor) -> None:
    """Write a (C, H, W) or (H, W) image in [0, 1] as an 8-bit file, atomically.

    Values are clamped to [0, 1] and rounded to the nearest 8-bit level. The format comes from
    the extension; JPEG and WebP are written at quality 95.

    Args:
        path: destination file; its extension selects the format; missing folders are created.
        image: tensor with 1 or 3 channels (or 2-D), any float dtype and device.
    """
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(
            f"cannot write {path}: unknown image extension {path.suffix!r} "
            f"(use one of {', '.join(IMAGE_EXTENSIONS)})"
        )
    pixels = to_uint8_array(image)
    options = {"quality": 95} if image_format in _LOSSY_FORMATS else {}
    with atomic_write(path, make_parents=True) as temp_path:
        Image.fromarray(pixels).save(temp_path, format=image_format, **options)


def to_uint8_array(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) or (H, W) float tensor in [0, 1] -> uint8 array (H, W) or (H, W, 3).

    Args:
        image: 1- or 3-channel image; values are clamped to [0, 1] and rounded to 8 bits.
    """
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]  # (H, W)
    if image.ndim == 3 and image.shape[0] == 3:
        image = image.permute(1, 2, 0)  # (H, W, 3)
    elif image.ndim != 2:
        raise ValueError(
            f"expected an image of shape (1|3, H, W) or (H, W), got {tuple(image.shape)}"
        )
    scaled = image.detach().float().clamp(0, 1).mul(255).round()
    return scaled.to(torch.uint8).cpu().numpy()


def list_images(
    paths: str | os.PathLike | Iterable[str | os.PathLike], *, recursive: bool = False
) -> list[Path]:
    """Image files named by ``paths``: files are taken as given, folders contribute their images.

    The walk of every package (:func:`common_kernels.runtime.batch.find_images`): a folder's images
    in
    name order, its subfolders only with ``recursive``; hidden files are skipped; explicit
    files must have an image extension (case-insensitive).

    Args:
        paths: one path or several paths, each a file or a folder.
        recursive: walk subfolders too.

    Raises:
        FileNotFoundError: a path does not exist, or no image was found at all.
        ValueError: an explicitly named file does not have an image extension.
    """
    return find_images(paths, recursive=recursive, argument="paths").paths


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has one of the supported image extensions."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_gray_file(path: Path) -> bool:
    """Whether an image file holds one channel (its header's pixel mode; nothing decoded).

    A file Pillow cannot open counts as gray here: reading it reports the error.
    """
    try:
        with Image.open(path) as image:
            return image.mode in GRAY_MODES
    except (OSError, SyntaxError, ValueError):
        return True


def image_size(path: Path) -> tuple[int, int] | None:
    """An image file's (height, width) from its header (nothing decoded); None when Pillow
    cannot open it (reading it reports the error)."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, SyntaxError, ValueError):
        return None


def target_names(targets: list[Path]) -> str:
    """The first output path, and how many more, for messages."""
    more = f" (and {len(targets) - 1} more)" if len(targets) > 1 else ""
    return f"{targets[0]}{more}"


def check_writable(targets: list[Path]) -> None:
    """Fail before any work when the folder of an output cannot be created or written."""
    for folder in sorted({target.parent for target in targets}):
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise ValueError(f"output {target_names(targets)}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(
                f"output {target_names(targets)}: cannot write to {existing} (permission denied)"
            )
