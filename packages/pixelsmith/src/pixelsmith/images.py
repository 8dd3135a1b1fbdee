"""Images read region by region: in RAM, in a disk memmap, or Lanczos-resized on the fly.

Every source has ``height``, ``width`` and ``read(top, left, height, width)`` returning a
(3, h, w) float32 tensor in [-1, 1], so the guidance of a gigapixel stage is encoded tile by
tile from the previous stage without the upsampled image ever existing as a whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pixelsmith.lanczos import resize_region, source_window


class ImageSource(Protocol):
    """An RGB image in [-1, 1] that can be read by region."""

    height: int
    width: int

    def read(self, top: int, left: int, height: int, width: int) -> Tensor:
        """(3, height, width) float32 pixels in [-1, 1]."""
        ...


def _check_region(source: ImageSource, top: int, left: int, height: int, width: int) -> None:
    if not (
        top >= 0
        and left >= 0
        and height > 0
        and width > 0
        and top + height <= source.height
        and left + width <= source.width
    ):
        raise ValueError(
            f"region (top={top}, left={left}, height={height}, width={width}) is not inside "
            f"the {source.height}x{source.width} image"
        )


class TensorImage:
    """A (3, H, W) float image in [-1, 1] held in memory (any float dtype, any device).

    Args:
        pixels: (3, H, W) tensor.
    """

    def __init__(self, pixels: Tensor) -> None:
        if pixels.ndim != 3 or pixels.shape[0] != 3 or not pixels.is_floating_point():
            raise ValueError(
                f"pixels must be a float (3, H, W) tensor, got {pixels.dtype} {tuple(pixels.shape)}"
            )
        self.pixels = pixels
        self.height, self.width = pixels.shape[-2:]

    @classmethod
    def empty(cls, height: int, width: int, dtype: torch.dtype = torch.float16) -> TensorImage:
        return cls(torch.empty(3, height, width, dtype=dtype))

    def write_rows(self, top: int, rows: Tensor) -> None:
        """Store (3, r, W) rows starting at row ``top``."""
        self.pixels[:, top : top + rows.shape[1]] = rows.to(self.pixels)

    def read(self, top: int, left: int, height: int, width: int) -> Tensor:
        _check_region(self, top, left, height, width)
        return self.pixels[:, top : top + height, left : left + width].float()


class MemmapImage:
    """A (3, H, W) float16 image in [-1, 1] stored in a file (numpy memmap), for huge stages.

    Args:
        path: file to create (``mode="w+"``) or open.
        height: image height.
        width: image width.
        mode: numpy memmap mode.
    """

    def __init__(self, path: str | Path, height: int, width: int, mode: str = "w+") -> None:
        self.path = Path(path)
        self.height, self.width = height, width
        self.array = np.memmap(self.path, dtype=np.float16, mode=mode, shape=(3, height, width))

    def write_rows(self, top: int, rows: Tensor) -> None:
        """Store (3, r, W) rows starting at row ``top``."""
        self.array[:, top : top + rows.shape[1]] = rows.to(torch.float16).cpu().numpy()

    def read(self, top: int, left: int, height: int, width: int) -> Tensor:
        _check_region(self, top, left, height, width)
        crop = np.array(self.array[:, top : top + height, left : left + width])
        return torch.from_numpy(crop).float()


def pil_to_pixels(image: Image.Image) -> Tensor:
    """(3, H, W) float32 in [-1, 1] from an RGB PIL image (x / 255 * 2 - 1)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0  # (3, H, W)


class LanczosImage:
    """``source`` Lanczos-3 resized to ``height x width``, computed in float region by region.

    Values are clamped to [-1, 1] after resampling (as an 8-bit image would be clipped).

    Args:
        source: the image to resize.
        height: resized height.
        width: resized width.
    """

    def __init__(self, source: ImageSource, height: int, width: int) -> None:
        self.source = source
        self.height, self.width = height, width

    def read(self, top: int, left: int, height: int, width: int) -> Tensor:
        _check_region(self, top, left, height, width)
        in_size = (self.source.height, self.source.width)
        out_size = (self.height, self.width)
        row0, row1 = source_window(in_size[0], out_size[0], top, top + height)
        col0, col1 = source_window(in_size[1], out_size[1], left, left + width)
        window = self.source.read(row0, col0, row1 - row0, col1 - col0)  # (3, rows, cols)
        out = resize_region(window, (row0, col0), in_size, out_size, (top, left, height, width))
        return out.clamp(-1.0, 1.0)


class PILLanczosImage:
    """An 8-bit RGB PIL image Lanczos-resized by PIL to ``height x width``.

    This is the official hand-over (uint8 image, ``Image.LANCZOS``). Up to ``max_pixels``
    output pixels the whole image is resized once, as the official code does, and regions are
    crops of it; above that, each region is PIL's ``resize(..., box=...)`` of the matching
    source box, which equals the crop of the full resize exactly for dyadic scales and up to
    1/255 on a fraction of the pixels otherwise (PIL's coefficient rounding).

    Args:
        image: the RGB image to resize.
        height: resized height.
        width: resized width.
        max_pixels: largest output resized in one piece.
    """

    def __init__(
        self, image: Image.Image, height: int, width: int, max_pixels: int = 2**27
    ) -> None:
        self.image = image.convert("RGB")
        self.height, self.width = height, width
        self.whole = height * width <= max_pixels
        self._resized: Image.Image | None = None

    def read(self, top: int, left: int, height: int, width: int) -> Tensor:
        _check_region(self, top, left, height, width)
        if self.whole:
            if self._resized is None:
                self._resized = self.image.resize((self.width, self.height), Image.LANCZOS)
            return pil_to_pixels(self._resized.crop((left, top, left + width, top + height)))
        sy = self.image.height / self.height
        sx = self.image.width / self.width
        box = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
        region = self.image.resize((width, height), Image.LANCZOS, box=box)
        return pil_to_pixels(region)
