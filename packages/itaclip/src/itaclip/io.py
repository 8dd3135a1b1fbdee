"""Image input/output: any common image -> (3, H, W) RGB in [0, 1]; atomic PNG writes.

Files are read and written by common-kernels (``common_kernels.runtime.files``, and
``common_kernels.runtime.photos`` for a user's photos), as in every package of the repository: 8-bit
/255, 16-bit /65535, palettes expanded, alpha dropped, EXIF orientation applied once; writes
are atomic with the usual permissions. An empty image (a dimension of size 0) is refused
naming the argument (``image: ...``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.files import atomic_write, read_image
from common_kernels.runtime.photos import Photo

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
TENSOR_LAYOUT = "tensor images must be float (3, H, W) or batches (B, 3, H, W), RGB in [0, 1]"


def check_unit_range(image: np.ndarray | Tensor) -> None:
    """Raise unless every value of a float image lies in [0, 1] (NaN does not)."""
    size = image.numel() if isinstance(image, Tensor) else image.size
    if size == 0 or bool(((image >= 0) & (image <= 1)).all()):
        return
    low, high = float(image.min()), float(image.max())
    raise ValueError(
        f"float images must lie in [0, 1], got range [{low:g}, {high:g}] "
        "(divide 0-255 values by 255, or pass uint8)"
    )


def _array_to_unit(array: np.ndarray) -> np.ndarray:
    """Integer or float array -> float32 in [0, 1] (integers scaled by their dtype's max)."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / np.iinfo(array.dtype).max
    if np.issubdtype(array.dtype, np.floating):
        check_unit_range(array)
        return array.astype(np.float32)
    raise TypeError(f"unsupported image dtype {array.dtype}")


def check_not_empty(shape: Sequence[int], argument: str = "image") -> None:
    """Refuse an image with no pixels (a height or width of 0), naming the argument.

    Args:
        shape: the image's shape as given ((H, W[, C]) for arrays, (C, H, W) for tensors).
        argument: the argument named in the message.

    Raises:
        InvalidArgument: ``image: an empty image of shape (3, 0, 5): ...``.
    """
    if 0 in tuple(shape):
        raise InvalidArgument(
            argument,
            f"an empty image of shape {tuple(shape)}: an image needs at least one pixel "
            "(height and width >= 1)",
        )


def to_rgb_tensor(image: Photo | Image.Image | np.ndarray | Tensor) -> Tensor:
    """An image as a (3, H, W) fp32 RGB tensor in [0, 1].

    Accepts photos read by ``common_kernels.runtime.photos.read_photo`` (upright, 8 or 16 bits), PIL
    images (L, LA, P, RGB, RGBA, 16-bit I;16 / I), (H, W) / (H, W, 1|3|4) arrays of uint8,
    uint16 or floats in [0, 1], and (3, H, W) float tensors in [0, 1]. Alpha is dropped;
    grayscale is repeated over three channels.

    Raises:
        ValueError: a float array or tensor with a value outside [0, 1] (or NaN).
        InvalidArgument: an empty image (``image: an empty image of shape ...``).
    """
    if isinstance(image, Photo):
        return image.pixels.float().expand(3, -1, -1).contiguous()  # (3, H, W)
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(f"{TENSOR_LAYOUT}, got {image.dtype} {tuple(image.shape)}")
        check_not_empty(image.shape)
        check_unit_range(image)
        return image.float()
    if isinstance(image, Image.Image):
        if image.mode in SIXTEEN_BIT_MODES:
            array = np.asarray(image).astype(np.uint16 if image.mode != "I" else np.int64)
            array = np.clip(array, 0, 65535).astype(np.uint16)
        elif image.mode in ("L", "RGB", "RGBA", "LA"):
            array = np.asarray(image)
        else:
            array = np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB"))
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"images must be (H, W) or (H, W, 1|2|3|4), got {array.shape}")
    check_not_empty(array.shape)
    if array.shape[-1] in (2, 4):
        array = array[..., :-1]  # drop alpha
    array = _array_to_unit(array)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)  # (c, H, W)
    return tensor.expand(3, -1, -1).contiguous() if tensor.shape[0] == 1 else tensor  # (3, H, W)


def to_rgb_images(image: Image.Image | np.ndarray | Tensor) -> tuple[list[Tensor], bool]:
    """One image, or a (B, 3, H, W) float tensor batch, as (3, H, W) fp32 RGB tensors in [0, 1].

    Args:
        image: anything ``to_rgb_tensor`` takes, or a batch tensor (B >= 1).

    Returns:
        The images, and whether ``image`` was a batch.

    Raises:
        InvalidArgument: an empty batch or image (``image: ...``).
    """
    if not isinstance(image, Tensor) or image.ndim != 4:
        return [to_rgb_tensor(image)], False
    if image.shape[1] != 3 or not image.is_floating_point():
        raise ValueError(f"{TENSOR_LAYOUT} with B >= 1, got {image.dtype} {tuple(image.shape)}")
    if image.shape[0] == 0:
        raise InvalidArgument(
            "image", f"an empty batch of shape {tuple(image.shape)}: give at least one image"
        )
    check_not_empty(image.shape)
    return [to_rgb_tensor(one) for one in image.unbind(0)], True


def load_image(path: str | os.PathLike) -> Tensor:
    """Read an image file as a (3, H, W) fp32 RGB tensor in [0, 1].

    Args:
        path: the image file (``common_kernels.runtime.files.read_image`` conventions; gray
        repeated).

    Raises:
        what ``common_kernels.runtime.files.read_image`` raises: ``FileNotFoundError``,
        ``ImageIsAFolderError`` (an ``IsADirectoryError``), ``ImageReadError`` (a ``ValueError``).
    """
    return read_image(path, channels="rgb")


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as PNG atomically (missing folders are created); returns the path."""
    path = Path(path)
    with atomic_write(path, make_parents=True) as temp:
        image.save(temp, format="PNG")
    return path
