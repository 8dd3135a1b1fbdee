"""Images in, features and PNGs out.

Reading images, writing files atomically (temporary file, then rename; usual permissions) and
parsing sizes are common-kernels' (``common_kernels.runtime.files``), shared by every package of the
repository.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from common_kernels.runtime import files
from common_kernels.runtime.errors import InvalidArgument, literal

# An image file as 8-bit RGB (alpha dropped, gray and 16-bit converted, EXIF orientation
# applied): the repository's one reader, with its errors.
load_image = files.read_pil_image


def parse_size(
    value: str | int | Sequence[int] | None, argument: str = "image_size"
) -> tuple[int, int] | None:
    """``512`` / ``"512"`` / ``"512x768"`` (H x W) / ``(H, W)`` -> ``(H, W)``; None stays None.

    Args:
        value: the size (``common_kernels.runtime.files.parse_size`` rules) or None.
        argument: the argument named in the error message.
    """
    if value is None:
        return None
    try:
        return files.parse_size(value)
    except ValueError as error:
        raise InvalidArgument(argument, literal(error)) from None


def _pil_to_tensor(image: Image.Image) -> Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W)


def check_pixel_tensor(pixels, argument: str = "images") -> Tensor:
    """Raise unless ``pixels`` is a finite float (B, 3, H, W) tensor with values in [0, 1].

    Args:
        pixels: the tensor to check (returned unchanged).
        argument: the argument name used in error messages.
    """
    if not isinstance(pixels, Tensor):
        raise TypeError(f"{argument}: expected a (B, 3, H, W) tensor; got {type(pixels).__name__}")
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"{argument}: expected a (B, 3, H, W) tensor; got {tuple(pixels.shape)}")
    return files.check_image_tensor(pixels, argument)


def to_pixel_batch(images, size: tuple[int, int] | None = None) -> Tensor:
    """Images as one (B, 3, H, W) float32 batch in [0, 1], resized to ``size`` when given.

    Args:
        images: a PIL image, a list of PIL images, or a float tensor (3, H, W) / (B, 3, H, W)
            with values in [0, 1].
        size: (H, W) to resize every image to (bicubic, antialiased); None keeps the sizes,
            which must then agree.
    """
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, Tensor):
        if images.ndim == 3:
            images = images[None]
        images = check_pixel_tensor(images, "images")
        batch = [images[i].float() for i in range(images.shape[0])]
    elif (
        isinstance(images, Sequence) and images and all(isinstance(i, Image.Image) for i in images)
    ):
        batch = [_pil_to_tensor(i) for i in images]
    else:
        raise TypeError("images: pass a PIL image, a list of PIL images or a (B, 3, H, W) tensor")
    if size is not None:
        batch = [_resize(x, size) for x in batch]
    shapes = sorted({tuple(x.shape[-2:]) for x in batch})
    if len(shapes) > 1:
        raise ValueError(
            f"images: sizes differ ({', '.join(f'{h}x{w}' for h, w in shapes)}); pass "
            "image_size=(H, W) to resize them to one size"
        )
    return torch.stack(batch)  # (B, 3, H, W)


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None], size=size, mode="bicubic", antialias=True, align_corners=False)
    return out[0].clamp(0.0, 1.0)  # (3, H, W)


def save_features(
    path: str | Path, features: Mapping[str, Tensor], metadata: Mapping[str, object]
) -> None:
    """Write features to a safetensors file (values as JSON strings in its metadata)."""
    from safetensors.torch import save

    tensors = {name: value.detach().cpu().contiguous() for name, value in features.items()}
    meta = {key: json.dumps(value) for key, value in metadata.items()}
    files.write_bytes(path, save(tensors, metadata=meta), make_parents=True)


def load_features(path: str | Path) -> tuple[dict[str, Tensor], dict[str, object]]:
    """Features and metadata written by :func:`save_features`."""
    from safetensors import safe_open

    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        meta = _json_metadata(f)
        for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            tensors[name] = f.get_tensor(name)
    order = meta.get("layers")
    if isinstance(order, list) and set(order) == set(tensors):
        tensors = {name: tensors[name] for name in order}
    return tensors, meta


def feature_shapes(path: str | Path) -> tuple[dict[str, tuple[int, ...]], dict[str, object]]:
    """Tensor shapes and metadata of a :func:`save_features` file (no tensor data is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = _json_metadata(f)
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    return shapes, meta


def _json_metadata(handle) -> dict[str, object]:
    """The metadata of an open safetensors file, each value decoded from JSON."""
    return {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as a PNG (atomically; missing folders are created)."""
    with files.atomic_write(path, make_parents=True) as temp:
        Image.fromarray(rgb).save(temp, format="PNG")
