"""Image and video input/output; every write is atomic (temporary file, then rename).

Reading images and writing files are common-kernels' (``common_kernels.runtime.files``), shared by
every
package of the repository: written files get the usual permissions (``0o666`` less the umask),
a failed write leaves no temporary file and the target untouched.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageSequence
from torch import Tensor

from common_kernels.runtime import files
from common_kernels.runtime.batch import find_images
from common_kernels.runtime.errors import InvalidArgument

IMAGE_SUFFIXES = files.IMAGE_SUFFIXES


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically (missing folders are created); returns the path."""
    return files.write_text(path, text, make_parents=True)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (missing folders are created)."""
    return files.write_json(path, data, indent=2, make_parents=True)


def json_lines(
    lines: Iterable[str], bad_line: Callable[[int, json.JSONDecodeError], Exception]
) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of a JSONL text, numbered from 1.

    Args:
        lines: the text's lines.
        bad_line: ``bad_line(number, error)`` -> the exception raised for a line that is not
            valid JSON (each reader words it for its own file).
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise bad_line(number, err) from None
        yield number, value


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PIL image (format from the suffix) atomically; returns the path."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    with files.atomic_write(path, make_parents=True) as temp:
        image.save(temp, format=fmt)
    return Path(path)


def save_gif(frames: Sequence[Image.Image], path: str | os.PathLike, fps: float = 8.0) -> Path:
    """Write frames as a looping GIF atomically; returns the path."""
    if not frames:
        raise ValueError("a video needs at least one frame")
    duration = round(1000 / fps)
    with files.atomic_write(path, make_parents=True) as temp:
        frames[0].save(
            temp, format="GIF", save_all=True, append_images=list(frames[1:]), duration=duration,
            loop=0,
        )  # fmt: skip
    return Path(path)


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# An image file as 8-bit RGB (alpha dropped, gray and 16-bit converted, EXIF orientation
# applied): the repository's one reader, with its errors.
load_image = files.read_pil_image


def load_video(path: str | os.PathLike) -> list[Image.Image]:
    """Frames of an animated GIF/WebP/TIFF or of a folder of images (by name, see
    :func:`frame_files`), RGB.

    Args:
        path: the animation file or the folder of frames.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a readable image, or a folder holding no images.
    """
    path = Path(path)
    if path.is_dir():
        return [load_image(p) for p in frame_files(path)]
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


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The frames of a frame folder: its image files in name order, walked as every package
    walks folders (``common_kernels.runtime.batch.find_images``: hidden files such as an unfinished
    write skipped, subfolders not walked).

    Raises:
        ValueError: the folder holds no image.
    """
    try:
        return find_images(folder, argument="video").paths
    except InvalidArgument:
        raise ValueError(
            f"{folder} is a folder holding no images ({', '.join(IMAGE_SUFFIXES)})"
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


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` for a terminal: control characters other than newline and tab (escape sequences,
    carriage returns, C1 controls) written as ``\\xNN``, so that a model's text cannot move the
    cursor, clear the screen or hide what came before."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)
