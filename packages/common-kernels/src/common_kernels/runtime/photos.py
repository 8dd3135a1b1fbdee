"""Photos read and written whole: colour, bit depth, alpha, ICC profile and EXIF kept.

:func:`read_photo` gives a :class:`Photo`: the colour channels as float32 ``(C, H, W)`` in
[0, 1] (C = 1 for gray, 3 for colour), the alpha channel apart, the bit depth of the file (8 or
16), its ICC profile and its EXIF block, the pixels turned upright by the EXIF orientation and
that tag removed, so that the orientation is applied exactly once. :func:`write_photo` writes a
photo back, atomically, in the format of the target's suffix, at the photo's bit depth, with its
alpha, ICC profile and EXIF, and returns a note for each of these that the format cannot hold
(a JPEG has no alpha and 8 bits), so that nothing is lost without a word.

Pillow decodes 8-bit images and 16-bit gray; it has no 16-bit colour mode, so 16-bit PNGs are
decoded and encoded by imagecodecs (libpng) and 16-bit TIFFs by tifffile. :func:`read_image`
(``common_kernels.runtime.files``) stays the reader of datasets and metrics (alpha dropped, 16-bit
colour
at 8-bit precision); this module is for a user's photos.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from common_kernels.runtime.files import (
    IMAGE_SUFFIXES,
    ImageReadError,
    _decoded,
    _one_line,
    _unit_array,
    atomic_write,
)

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

ORIENTATION = 0x0112  # the EXIF tag
# What each format holds: bit depths, alpha, ICC profile, EXIF (Pillow's format names).
FORMATS = {
    "PNG": ((8, 16), True, True, True),
    "TIFF": ((8, 16), True, True, True),
    "JPEG": ((8,), False, True, True),
    "WEBP": ((8,), True, True, True),
    "BMP": ((8,), False, False, False),
}
_QUALITY = {"JPEG": 95, "WEBP": 95}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ICC_SPACES = {b"GRAY": 1, b"RGB ": 3}  # ICC header bytes 16-20: the data colour space
# A TIFF's tags are its EXIF block to Pillow, layout tags included; only these describe the
# photo: make, model, date, artist, copyright (text), the Exif and GPS IFDs.
_TIFF_TEXT = (0x010F, 0x0110, 0x0132, 0x013B, 0x8298)
_TIFF_DESCRIPTIVE = {*_TIFF_TEXT, 0x8769, 0x8825}


@dataclass(frozen=True)
class Photo:
    """An image file's content.

    Args:
        pixels: (C, H, W) float32 colour values in [0, 1], C = 1 (gray) or 3 (RGB), upright.
        alpha: (1, H, W) float32 opacity in [0, 1], or None.
        bit_depth: 8 or 16, the depth of the file's samples.
        icc_profile: the embedded ICC profile, or None.
        exif: the EXIF block without its orientation tag (the pixels are upright), or None.
        format: Pillow's name of the file's format (``"PNG"``), or None for a new photo.
    """

    pixels: torch.Tensor
    alpha: torch.Tensor | None = None
    bit_depth: int = 8
    icc_profile: bytes | None = None
    exif: bytes | None = None
    format: str | None = None

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.pixels.shape[-2]), int(self.pixels.shape[-1])

    def replace(self, **changes: object) -> Photo:
        """A copy with ``changes`` (``pixels=``, ``alpha=``, ...)."""
        return dataclasses.replace(self, **changes)


def read_photo(path: str | os.PathLike) -> Photo:
    """Read an image file completely, keeping what makes it that photo.

    Gray (with or without alpha) stays one channel; palette, CMYK and other modes become RGB
    (an ICC profile that describes the old colour space, such as CMYK, is then dropped);
    transparency becomes an alpha channel; 16-bit PNG and TIFF keep 16 bits (gray and colour).
    Floating-point images are refused.

    Args:
        path: the image file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageIsAFolderError: ``path`` is a folder.
        ImageReadError: the file does not decode completely, or holds an unsupported format.
    """
    path = Path(path)
    wide = _sixteen_bit_kind(path)
    if wide is not None:
        return _read_wide(path, wide)
    with _decoded(path) as image:  # decoded completely and turned upright
        icc, exif, source_format = _metadata(image)
        if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            array, alpha, depth = _unit_array(image, path), None, 16  # F: refused there
        else:
            array, alpha = _eight_bit(image)
            depth = 8
    pixels = _to_tensor(array)
    return Photo(
        pixels, alpha, depth, _icc_for(icc, pixels.shape[0]), exif, source_format
    )  # fmt: skip


def _eight_bit(image: Image.Image) -> tuple[np.ndarray, torch.Tensor | None]:
    """(H, W) or (H, W, 3) float32 colour values and the (1, H, W) alpha (or None)."""
    import numpy as np

    has_alpha = image.mode in ("LA", "La", "PA", "RGBA", "RGBa") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    gray = image.mode in ("1", "L", "LA", "La")
    mode = ("LA" if has_alpha else "L") if gray else ("RGBA" if has_alpha else "RGB")
    array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0  # (H, W[, C])
    if not has_alpha:
        return array, None
    colour = array[..., 0] if gray else array[..., :3]
    return colour, _to_tensor(array[..., -1])


def _metadata(image: Image.Image) -> tuple[bytes | None, bytes | None, str | None]:
    """(ICC profile, EXIF block without orientation, format) of an open image."""
    icc = image.info.get("icc_profile") or None
    exif = image.getexif()
    exif.pop(ORIENTATION, None)
    if image.format == "TIFF":
        for tag in set(exif) - _TIFF_DESCRIPTIVE:
            del exif[tag]
    return icc, (exif.tobytes() if len(exif) else None), image.format


def _icc_for(icc: bytes | None, channels: int) -> bytes | None:
    """``icc`` when it describes ``channels`` (a gray or RGB profile), else None."""
    if icc is None or len(icc) < 20:
        return None
    return icc if _ICC_SPACES.get(icc[16:20]) == channels else None


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, C) array -> contiguous float32 (C, H, W) tensor."""
    import numpy as np

    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)  # (C, H, W)
    return tensor.contiguous()


# -- 16-bit PNG and TIFF ---------------------------------------------------------------------


def _sixteen_bit_kind(path: Path) -> str | None:
    """ "png" or "tiff" for a 16-bit file of that kind (Pillow would narrow it), else None."""
    try:
        with path.open("rb") as file:
            head = file.read(32)
    except (IsADirectoryError, FileNotFoundError, PermissionError):
        return None  # _decoded reports these in the usual words
    if head.startswith(_PNG_SIGNATURE) and len(head) >= 26 and head[12:16] == b"IHDR":
        return "png" if head[24] == 16 else None
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tiff:
                page = tiff.pages[0]
                return "tiff" if page.bitspersample == 16 and page.samplesperpixel > 1 else None
        except Exception:  # Pillow's own error comes again, in the usual words, from _decoded
            return None
    return None


def _read_wide(path: Path, kind: str) -> Photo:
    """A 16-bit PNG (imagecodecs) or TIFF (tifffile) as a photo."""
    import imagecodecs
    import numpy as np
    from PIL import Image

    try:
        if kind == "png":
            array = imagecodecs.png_decode(path.read_bytes())  # (H, W[, C]) uint16
            with Image.open(path) as image:
                image.load()  # the PNG's eXIf and iCCP chunks, wherever they are
                orientation = image.getexif().get(ORIENTATION, 1)
                icc, exif, _ = _metadata(image)
        else:
            array, orientation, icc, exif = _tiff_samples(path)
    except ImageReadError:
        raise
    except Exception as error:  # the decoders' own errors: a truncated or broken file
        raise ImageReadError(path, _one_line(error)) from None
    if array.dtype != np.uint16:
        raise ImageReadError(path, f"16-bit samples expected, got {array.dtype}")
    array = _upright(array, orientation).astype(np.float32) / 65535.0
    channels = array.shape[-1] if array.ndim == 3 else 1
    alpha = None
    if channels in (2, 4):
        alpha, array = _to_tensor(array[..., -1]), array[..., :-1]
    pixels = _to_tensor(array[..., 0] if channels == 2 else array)
    return Photo(pixels, alpha, 16, _icc_for(icc, pixels.shape[0]), exif, kind.upper())


def _tiff_samples(path: Path) -> tuple[np.ndarray, int, bytes | None, bytes | None]:
    """The first page of a 16-bit TIFF as (H, W[, S]) uint16, gray or RGB (+ one alpha), with
    its orientation, ICC profile and descriptive tags as an EXIF block."""
    import tifffile
    from PIL import Image

    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        photometric = int(page.photometric)
        array = page.asarray()
        axes = page.axes
        tags = {tag.code: tag.value for tag in page.tags.values()}
    if photometric not in (1, 2):  # MINISBLACK, RGB
        raise ImageReadError(
            path, f"16-bit TIFF photometric {photometric} is not supported (gray or RGB only)"
        )
    if axes.startswith("S"):  # planar: (S, H, W)
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4):
        raise ImageReadError(path, f"{array.shape[-1]} samples per pixel are not supported")
    exif = Image.Exif()
    for code in _TIFF_TEXT:
        if isinstance(tags.get(code), str):
            exif[code] = tags[code]
    icc = tags.get(34675)
    array = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
    return (array, int(tags.get(0x0112, 1)), bytes(icc) if icc else None,
            exif.tobytes() if len(exif) else None)  # fmt: skip


def _upright(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` (H, W[, C]) turned as ``PIL.ImageOps.exif_transpose`` turns an image."""
    import numpy as np

    turns = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return turns[orientation](array) if orientation in turns else array


# -- writing ---------------------------------------------------------------------------------


def write_photo(path: str | os.PathLike, photo: Photo, *, make_parents: bool = True) -> list[str]:
    """Write ``photo`` to ``path`` atomically, in the format of its suffix, and say what the
    format could not hold.

    The samples are written at the photo's bit depth when the format holds it (PNG, TIFF),
    else at 8 bits; alpha, the ICC profile and EXIF go along where the format has room. JPEG
    and WebP are written at quality 95.

    Args:
        path: the target file; its suffix picks the format.
        photo: the photo (values are clamped to [0, 1] and rounded to the bit depth).
        make_parents: create missing folders.

    Returns:
        One note per thing dropped (``"JPEG has no alpha channel: alpha dropped"``); empty
        when everything was kept.
    """
    from PIL import Image

    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format not in FORMATS:
        raise ValueError(
            f"cannot write {path}: unknown image suffix {path.suffix!r} "
            f"(use one of {', '.join(IMAGE_SUFFIXES)})"
        )
    depths, has_alpha, has_icc, has_exif = FORMATS[image_format]
    notes = []
    depth = photo.bit_depth if photo.bit_depth in depths else 8
    if depth != photo.bit_depth:
        notes.append(f"{image_format} holds 8 bits: written at 8 bits, not {photo.bit_depth}")
    alpha = photo.alpha if has_alpha else None
    if photo.alpha is not None and alpha is None:
        notes.append(f"{image_format} has no alpha channel: alpha dropped")
    icc = _icc_for(photo.icc_profile, photo.channels) if has_icc else None
    if photo.icc_profile is not None and icc is None:
        notes.append(
            f"the ICC profile was dropped ({image_format} holds none, or it describes another "
            "colour space)"
        )
    exif = photo.exif if has_exif and not (depth == 16 and image_format == "TIFF") else None
    if photo.exif is not None and exif is None:
        notes.append(f"EXIF was dropped ({image_format} at {depth} bits holds none here)")
    array = _samples(photo.pixels, alpha, depth)
    with atomic_write(path, make_parents=make_parents) as temp:
        if depth == 16 and image_format == "PNG":
            temp.write_bytes(_png16(array, icc, exif))
        elif depth == 16:
            _tiff16(temp, array, alpha is not None, icc)
        else:
            options = {"quality": _QUALITY[image_format]} if image_format in _QUALITY else {}
            options.update({"icc_profile": icc} if icc else {})
            options.update({"exif": exif} if exif else {})
            Image.fromarray(array).save(temp, format=image_format, **options)
    return notes


def _samples(pixels: torch.Tensor, alpha: torch.Tensor | None, depth: int) -> np.ndarray:
    """(H, W), (H, W, 2), (H, W, 3) or (H, W, 4) unsigned integer samples of ``depth`` bits."""
    if pixels.ndim != 3 or pixels.shape[0] not in (1, 3):
        raise ValueError(f"pixels must have shape (1|3, H, W), got {tuple(pixels.shape)}")
    channels = pixels if alpha is None else torch.cat([pixels, alpha.to(pixels)], dim=0)
    top = 65535.0 if depth == 16 else 255.0
    values = channels.detach().float().cpu().clamp(0, 1).mul(top).round()
    import numpy as np

    array = values.permute(1, 2, 0).numpy().astype("uint16" if depth == 16 else "uint8")
    return np.ascontiguousarray(array[..., 0] if array.shape[-1] == 1 else array)  # (H, W[, C])


def _png16(array: np.ndarray, icc: bytes | None, exif: bytes | None) -> bytes:
    """A 16-bit PNG (libpng through imagecodecs) with iCCP and eXIf chunks after IHDR."""
    import imagecodecs

    data = imagecodecs.png_encode(array, level=6)
    chunks = b""
    if icc:
        chunks += _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if exif:
        chunks += _png_chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00"))
    ihdr_end = len(_PNG_SIGNATURE) + 8 + 13 + 4  # length, type, 13 data bytes, CRC
    return data[:ihdr_end] + chunks + data[ihdr_end:]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _tiff16(path: Path, array: np.ndarray, alpha: bool, icc: bytes | None) -> None:
    """A 16-bit TIFF (tifffile, deflate-compressed) with its ICC profile."""
    import tifffile

    colour = array.ndim == 3 and array.shape[-1] >= 3
    tifffile.imwrite(
        path, array, photometric="rgb" if colour else "minisblack", compression="zlib",
        extrasamples=(2,) if alpha else None, iccprofile=icc,
    )  # fmt: skip
