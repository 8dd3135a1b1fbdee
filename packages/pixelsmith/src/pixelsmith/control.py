"""ControlNet through the cascade: one condition image, cropped per patch at every stage.

An SDXL ``ControlNetModel`` (diffusers) runs beside the UNet on every UNet call. Its condition
is one image for the whole cascade, at the final image's aspect ratio and any size: each stage
sees it Lanczos-resized to the stage's size (region by region, as the guidance), and each patch
gets the crop at the patch's position (``8 top, 8 left, 8 size`` px for SDXL), together with the
patch's micro-conditioning time ids. The base stage runs diffusers'
``StableDiffusionXLControlNetPipeline`` on the condition at the base size.

Condition images are read by region: a TIFF (e.g. the BigTIFF of an earlier run, or a
gigapixel depth or edge map) is read segment by segment (tile or strip) from disk and never
held whole in memory; other formats are read into RAM (PIL, at most 16384^2 px).
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import tifffile
import torch
from PIL import Image
from torch import Tensor

from common_kernels.runtime import files
from common_kernels.runtime.errors import InvalidValue, literal
from pixelsmith.config import check_not_empty
from pixelsmith.images import LanczosImage, _check_region
from pixelsmith.io import TIFF_SUFFIXES
from pixelsmith.patches import Patch
from pixelsmith.sources import CONFIG_MARKER, check_source, check_source_hub

if TYPE_CHECKING:  # diffusers loads in the functions that need it: the checks run without it
    from diffusers import ControlNetModel, UNet2DConditionModel

# ControlNet config entries that must equal the UNet's for its residuals to fit the UNet
MATCHING_FIELDS = (
    "in_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "cross_attention_dim",
    "addition_embed_type",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
)
ASPECT_TOLERANCE = 0.01  # relative difference of height / width accepted between image and target


class ConditionImage(Protocol):
    """A condition image in [0, 1] that can be read by region."""

    height: int
    width: int

    def read(self, top: int, left: int, height: int, width: int) -> Tensor:
        """(3, height, width) float32 pixels in [0, 1]."""
        ...


class ArrayCondition:
    """An 8-bit (H, W, 3) RGB image in RAM; pixels ``x / 255`` as diffusers' image processor.

    Args:
        array: (H, W, 3) uint8 array.
    """

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.height, self.width = array.shape[:2]

    def read(self, top: int, left: int, height: int, width: int) -> Tensor:
        _check_region(self, top, left, height, width)
        crop = self.array[top : top + height, left : left + width]  # (h, w, 3)
        return torch.from_numpy(crop.astype(np.float32) / 255.0).permute(2, 0, 1)  # (3, h, w)


class TensorCondition:
    """A float (3, H, W) image in [0, 1] in memory.

    Args:
        pixels: (3, H, W) tensor.
    """

    def __init__(self, pixels: Tensor) -> None:
        self.pixels = pixels
        self.height, self.width = pixels.shape[-2:]

    def read(self, top: int, left: int, height: int, width: int) -> Tensor:
        _check_region(self, top, left, height, width)
        return self.pixels[:, top : top + height, left : left + width].float()


class TiffCondition:
    """The first page of an 8-bit RGB (or gray) TIFF, read segment by segment from disk.

    A region read opens the file, decodes only the tiles (or strips) it touches and closes it
    again; ``segments_read`` counts the decoded segments.

    Args:
        path: the TIFF file (tiled or stripped, any compression tifffile decodes).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with tifffile.TiffFile(self.path) as tiff:
            page = tiff.pages.first
            separate, depth, length, width, samples = page.shaped
            if page.dtype != np.uint8 or samples not in (1, 3, 4) or depth != 1 or separate != 1:
                raise InvalidValue(
                    "control_image",
                    f"{{control_image}} {literal(self.path)}: expected an 8-bit gray, RGB or "
                    f"RGBA TIFF with interleaved samples, got {page.dtype} with shape "
                    f"{page.shape}",
                )
            tiled = page.is_tiled
            self._segment = (
                (page.tilelength, page.tilewidth) if tiled else (page.rowsperstrip, width)
            )
        self.height, self.width = length, width
        self._across = math.ceil(width / self._segment[1])  # segments per row of segments
        self.segments_read = 0

    def read(self, top: int, left: int, height: int, width: int) -> Tensor:
        _check_region(self, top, left, height, width)
        out = np.empty((height, width, 3), np.uint8)
        seg_h, seg_w = self._segment
        with tifffile.TiffFile(self.path) as tiff:
            page, handle = tiff.pages.first, tiff.filehandle
            for row in range(top // seg_h, (top + height - 1) // seg_h + 1):
                for col in range(left // seg_w, (left + width - 1) // seg_w + 1):
                    index = row * self._across + col
                    handle.seek(page.dataoffsets[index])
                    data = handle.read(page.databytecounts[index])
                    decoded, (_, _, y, x, _), _ = page.decode(
                        data, index, jpegtables=page.jpegtables
                    )
                    self.segments_read += 1
                    y0, x0 = max(y, top), max(x, left)
                    y1 = min(y + seg_h, top + height, self.height)
                    x1 = min(x + seg_w, left + width, self.width)
                    block = decoded[0, y0 - y : y1 - y, x0 - x : x1 - x]  # (rows, cols, samples)
                    if block.shape[-1] == 1:
                        block = np.repeat(block, 3, axis=-1)  # gray to RGB
                    out[y0 - top : y1 - top, x0 - left : x1 - left] = block[..., :3]
        return torch.from_numpy(out.astype(np.float32) / 255.0).permute(2, 0, 1)  # (3, h, w)


class _Signed:
    """A condition image seen in [-1, 1] (what :class:`LanczosImage` resizes)."""

    def __init__(self, image: ConditionImage) -> None:
        self.image = image
        self.height, self.width = image.height, image.width

    def read(self, top: int, left: int, height: int, width: int) -> Tensor:
        return self.image.read(top, left, height, width) * 2.0 - 1.0


class ResizedCondition:
    """``image`` Lanczos-3 resized to ``height x width`` region by region, in [0, 1].

    Args:
        image: the condition image.
        height: resized height in px.
        width: resized width in px.
    """

    def __init__(self, image: ConditionImage, height: int, width: int) -> None:
        self.resized = LanczosImage(_Signed(image), height, width)
        self.height, self.width = height, width

    def read(self, top: int, left: int, height: int, width: int) -> Tensor:
        return (self.resized.read(top, left, height, width) + 1.0) / 2.0


def open_control_image(image: str | os.PathLike | Image.Image | Tensor) -> ConditionImage:
    """A condition image from a file (TIFF: read by region from disk), a PIL image or a
    (3, H, W) / (1, 3, H, W) float tensor in [0, 1].

    Args:
        image: the ``control_image`` argument.

    Raises:
        InvalidValue: naming ``control_image``: no such file, not an image, a bad tensor.
        TypeError: not a file, PIL image or tensor.
    """
    if isinstance(image, Image.Image):
        return ArrayCondition(np.asarray(image.convert("RGB")))
    if isinstance(image, Tensor):
        check_not_empty(image, "control_image")
        if image.ndim == 4 and len(image) == 1:
            image = image[0]
        if image.ndim != 3 or image.shape[0] != 3:
            raise InvalidValue(
                "control_image",
                "{control_image} must be a (1, 3, H, W) / (3, H, W) tensor in [0, 1], got "
                f"{tuple(image.shape)}",
            )
        return TensorCondition(files.check_image_tensor(image, "control_image").float().cpu())
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(
            "control_image must be an image file, a PIL image or a tensor in [0, 1], got "
            f"{type(image).__name__}"
        )
    path = Path(image).expanduser()
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file"
        raise InvalidValue(
            "control_image", f"{{control_image}} {literal(image)}: {what}; expected an image file"
        )
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            return TiffCondition(path)
        except (tifffile.TiffFileError, OSError) as error:
            raise InvalidValue(
                "control_image",
                f"{{control_image}} {literal(image)}: not a readable TIFF ({literal(error)})",
            ) from None
    try:
        return ArrayCondition(np.asarray(files.read_pil_image(path)))
    except (OSError, ValueError) as error:
        raise InvalidValue(
            "control_image", f"{{control_image}} {literal(image)}: {literal(error)}"
        ) from None


def check_controlnet(controlnet: object, unet: UNet2DConditionModel) -> None:
    """Raise one ``ValueError`` unless ``controlnet`` is a ControlNet for ``unet``'s shapes.

    Args:
        controlnet: the ``controlnet`` argument.
        unet: the pipeline's UNet.
    """
    from diffusers import ControlNetModel

    if not isinstance(controlnet, ControlNetModel):
        raise TypeError(
            f"controlnet must be a diffusers ControlNetModel, got {type(controlnet).__name__}"
        )
    for field in MATCHING_FIELDS:
        mine, theirs = controlnet.config.get(field), unet.config.get(field)
        if _plain(mine) != _plain(theirs):
            raise ValueError(
                f"controlnet does not match the model: its {field} is {_plain(mine)!r}, the "
                f"UNet's {_plain(theirs)!r}; is it a ControlNet for another base model than "
                "this SDXL one?"
            )


def _plain(value: object) -> object:
    """Config values as comparable plain values (lists and tuples alike)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def check_aspect(image: ConditionImage, height: int, width: int) -> None:
    """The condition image must have the aspect ratio of the ``height x width`` image.

    Args:
        image: the condition image.
        height: final image height in px.
        width: final image width in px.
    """
    ratio = (image.height / image.width) / (height / width)
    if abs(ratio - 1.0) > ASPECT_TOLERANCE:
        raise InvalidValue(
            "control_image",
            f"{{control_image}} is {image.height}x{image.width} px (height x width) but the "
            f"image is {height}x{width}: a condition image must have the final image's aspect "
            f"ratio (within {ASPECT_TOLERANCE:.0%}); it is resized to every stage's size",
        )


@dataclass
class ControlCondition:
    """A ControlNet, its condition image and its scale, for every stage of a cascade.

    Args:
        controlnet: an SDXL ``ControlNetModel`` matching the pipeline's UNet.
        image: the condition image (:func:`open_control_image`), any size, the final image's
            aspect ratio.
        scale: ``controlnet_conditioning_scale``: the ControlNet residuals are multiplied by it.
    """

    controlnet: ControlNetModel
    image: ConditionImage
    scale: float = 1.0

    def at_size(self, height: int, width: int) -> ConditionImage:
        """The condition image at a stage's size in px (resized region by region if needed)."""
        if (self.image.height, self.image.width) == (height, width):
            return self.image
        return ResizedCondition(self.image, height, width)

    def crops(self, stage_image: ConditionImage, patches: list[Patch], factor: int) -> Tensor:
        """(k, 3, factor p, factor p) condition crops of ``patches`` (latent positions)."""
        crops = [
            stage_image.read(p.top * factor, p.left * factor, p.size * factor, p.size * factor)
            for p in patches
        ]
        return torch.stack(crops)

    def identity(self) -> dict:
        """What identifies the ControlNet and its condition in a run's checkpoint."""
        checksum = sum(float(p.detach().double().sum()) for p in self.controlnet.parameters())
        config = {k: v for k, v in sorted(self.controlnet.config.items()) if not k.startswith("_")}
        return {
            "config": config,
            "checksum": checksum,
            "image": image_identity(self.image),
            "scale": self.scale,
        }


def image_identity(image: ConditionImage) -> str:
    """A TIFF by path, size and modification time; an image in memory by a SHA-256 of it."""
    if isinstance(image, TiffCondition):
        stat = image.path.stat()
        return f"{image.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    data = image.array if isinstance(image, ArrayCondition) else image.pixels.numpy()
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def is_controlnet(value: object) -> bool:
    """Whether ``value`` is a diffusers ``ControlNetModel`` (one exists only once diffusers is
    imported, so diffusers is not imported to tell)."""
    diffusers = sys.modules.get("diffusers")
    return diffusers is not None and isinstance(value, diffusers.ControlNetModel)


def check_control(
    controlnet: ControlNetModel | str | os.PathLike | None,
    image: str | os.PathLike | Image.Image | Tensor | None,
    final_size: tuple[int, int],
) -> tuple[ControlNetModel | Path | str | None, ConditionImage | None]:
    """A ControlNet (model, folder or hub id) and its condition image, checked: the ControlNet
    (a model, or its local folder or hub id) and the opened condition image (both ``None``
    without a ControlNet).

    Args:
        controlnet: the ``controlnet`` argument.
        image: the ``control_image`` argument.
        final_size: the final image's (height, width) in px.

    Raises:
        InvalidValue: one without the other, a folder that is not a ControlNet's, a condition
            image that cannot be read or has another aspect ratio.
        MissingPath: a ControlNet path where nothing is (a ``FileNotFoundError``).
        TypeError: a ``controlnet`` that is neither a model nor a name.
    """
    if controlnet is None:
        if image is not None:
            raise InvalidValue("control_image", "{control_image} needs {controlnet}")
        return None, None
    if image is None:
        raise InvalidValue("controlnet", "{controlnet} needs {control_image} (its condition image)")
    if isinstance(controlnet, (str, os.PathLike)):
        controlnet = check_source(
            controlnet, "controlnet", what="ControlNet folder", marker=CONFIG_MARKER
        )
    elif not is_controlnet(controlnet):
        raise TypeError(
            "controlnet must be a diffusers ControlNetModel, a folder or a hub id, got "
            f"{type(controlnet).__name__}"
        )
    opened = open_control_image(image)
    check_aspect(opened, *final_size)
    return controlnet, opened


def load_controlnet(
    source: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> ControlNetModel:
    """``ControlNetModel.from_pretrained`` of a folder or hub id on ``device``, after the
    loader rule (:mod:`pixelsmith.sources`): a missing ``./folder`` fails at once, an uncached
    hub id within 5 s when the hub cannot be reached.

    Args:
        source: a ControlNet folder or hub id.
        torch_dtype: weights dtype.
        device: where the ControlNet runs.

    Raises:
        FileNotFoundError: a local path where nothing is.
        common_kernels.runtime.hub.HubUnreachableError: the hub cannot be reached (an ``OSError``).
        OSError: it cannot be loaded (named, with the reason on one line).
    """
    from diffusers import ControlNetModel

    found = check_source(source, "controlnet", what="ControlNet folder", marker=CONFIG_MARKER)
    check_source_hub(found, "the ControlNet")
    try:
        model = ControlNetModel.from_pretrained(os.fspath(found), torch_dtype=torch_dtype)
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        reason = " ".join(str(error).split())
        raise OSError(f"cannot load controlnet {source}: {reason}") from None
    return model.to(device).eval()
