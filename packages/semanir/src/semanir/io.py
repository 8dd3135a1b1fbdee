"""Image reading and writing: float tensors in [0, 1], atomic writes, image-folder listing.

Reading conventions:
- 8-bit images are divided by 255, 16-bit grayscale PNGs by 65535; lower bit depths (1/2/4-bit)
  are expanded to 8 bits by Pillow first. Pillow has no 16-bit colour mode, so 16-bit colour
  PNGs arrive at 8-bit precision (values are still scaled correctly).
- Alpha channels are dropped (not composited): restoration acts on the colour values only.
- Palette images are expanded to their colours.
- ``channels="gray"`` converts colour to luma with BT.601 weights (0.299 R + 0.587 G + 0.114 B);
  ``channels="rgb"`` repeats a gray channel three times; ``None`` keeps what the file holds.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

Channels = Literal["gray", "rgb"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
BT601_LUMA = (0.299, 0.587, 0.114)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_LOSSY_FORMATS = ("JPEG", "WEBP")


def read_image(path: str | os.PathLike, *, channels: Channels | None = None) -> torch.Tensor:
    """Read an image file as a float32 tensor of shape (C, H, W) with values in [0, 1].

    Args:
        path: image file (any format Pillow reads).
        channels: "gray" (C=1), "rgb" (C=3), or None to keep the file's own channel count.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image, or has an unsupported pixel format.
    """
    path = Path(path)
    if channels not in ("gray", "rgb", None):
        raise ValueError(f"channels must be 'gray', 'rgb' or None, got {channels!r}")
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            array = _to_unit_array(image, path)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from error
    tensor = torch.from_numpy(array)
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)  # (C, H, W)
    return convert_channels(tensor.contiguous(), channels)


def _to_unit_array(image: Image.Image, path: Path) -> np.ndarray:
    """Pixel values of an opened image as float32 in [0, 1], shape (H, W) or (H, W, 3)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode in ("I", "F"):
        raise ValueError(
            f"{path}: 32-bit integer or floating-point images (Pillow mode {image.mode}) are not "
            "supported; save it as an 8- or 16-bit PNG"
        )
    # Gray stays gray; palette, RGB(A), CMYK, YCbCr, ... expand to RGB. Alpha is dropped.
    mode = "L" if image.mode in ("1", "L", "LA", "La") else "RGB"
    return np.asarray(image.convert(mode), dtype=np.float32) / 255.0


def convert_channels(image: torch.Tensor, channels: Channels | None) -> torch.Tensor:
    """Convert a (C, H, W) or (B, C, H, W) image between gray (C=1) and RGB (C=3).

    Args:
        image: tensor with 1 or 3 channels at dim -3.
        channels: "gray" (BT.601 luma), "rgb" (gray repeated), or None (unchanged).
    """
    num_channels = image.shape[-3]
    if channels is None or (channels == "gray") == (num_channels == 1):
        return image
    if channels == "rgb":
        return image.expand(*image.shape[:-3], 3, *image.shape[-2:]).clone()
    weights = image.new_tensor(BT601_LUMA).view(3, 1, 1)  # (3, 1, 1)
    return (image * weights).sum(dim=-3, keepdim=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; move it onto ``path`` only on success.

    On any exception the temporary file is removed and ``path`` is left untouched, so readers
    never see a partially written file.

    Args:
        path: final destination; its parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temp_path
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)


def write_image(path: str | os.PathLike, image: torch.Tensor) -> None:
    """Write a (C, H, W) or (H, W) image in [0, 1] as an 8-bit file, atomically.

    Values are clamped to [0, 1] and rounded to the nearest 8-bit level. The format comes from
    the extension; JPEG and WebP are written at quality 95.

    Args:
        path: destination file; its extension selects the format.
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
    with atomic_write(path) as temp_path:
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


def list_images(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named by ``paths``: files are taken as given, folders contribute their images.

    Folders are not searched recursively; files inside them are sorted by name and filtered by
    extension (case-insensitive). Explicit files must have an image extension.

    Args:
        paths: one path or several paths, each a file or a folder.

    Raises:
        FileNotFoundError: a path does not exist, or no image was found at all.
        ValueError: an explicitly named file does not have an image extension.
    """
    paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p)))
        elif path.is_file():
            if not is_image_file(path):
                raise ValueError(
                    f"{path} is not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})"
                )
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    if not found:
        names = ", ".join(str(p) for p in paths)
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {names}")
    return found


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has one of the supported image extensions."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
