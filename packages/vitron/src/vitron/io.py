"""Image and video input/output; every write is atomic (temporary file, then rename)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageSequence
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PIL image (format from the suffix)."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def save_gif(frames: Sequence[Image.Image], path: str | os.PathLike, fps: float = 8.0) -> Path:
    """Write frames as a looping GIF."""
    if not frames:
        raise ValueError("a video needs at least one frame")
    duration = round(1000 / fps)

    def write(tmp: Path) -> None:
        frames[0].save(
            tmp, format="GIF", save_all=True, append_images=list(frames[1:]), duration=duration,
            loop=0,
        )  # fmt: skip

    return atomic_write(path, write)


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as RGB (alpha dropped, grayscale expanded).

    Args:
        path: the image file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a folder.
        ValueError: ``path`` is not a readable image (not an image, truncated, too large).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path} is not a readable image ({_reason(error)})") from None


def load_video(path: str | os.PathLike) -> list[Image.Image]:
    """Frames of an animated GIF/WebP/TIFF or of a folder of images (sorted by name), RGB.

    Args:
        path: the animation file or the folder of frames.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a readable image, or a folder holding no images.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path} is a folder holding no images ({', '.join(IMAGE_SUFFIXES)})")
        return [load_image(p) for p in files]
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with Image.open(path) as image:
            return [frame.convert("RGB") for frame in ImageSequence.Iterator(image)]
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(
            f"{path} is not a readable video: an animated GIF/WebP/TIFF or a folder of images "
            f"({_reason(error)})"
        ) from None


def to_tensor(image: Image.Image) -> Tensor:
    """PIL image -> (3, H, W) float32 RGB in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, H, W)


def to_pil(image: Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] (or (H, W) mask) -> PIL image, rounded to 8 bits."""
    array = (image.detach().float().clamp(0, 1) * 255.0).round().byte().cpu()
    if array.ndim == 3:
        array = array.permute(1, 2, 0)  # (H, W, 3)
    return Image.fromarray(array.numpy())


def mask_to_pil(mask: Tensor) -> Image.Image:
    """(H, W) bool mask -> 8-bit PNG-able image (0 or 255)."""
    return Image.fromarray(mask.cpu().numpy().astype(np.uint8) * 255)


def overlay_mask(image: Image.Image, mask: Tensor, color=(255, 40, 40), opacity: float = 0.5):
    """The image with the mask tinted in ``color``."""
    base = to_tensor(image)  # (3, H, W)
    tint = torch.tensor(color, dtype=torch.float32).view(3, 1, 1) / 255.0
    m = mask.to(torch.float32)[None] * opacity  # (1, H, W)
    return to_pil(base * (1 - m) + tint * m)
