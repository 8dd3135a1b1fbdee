"""One behaviour for files: atomic writes, image reading and size strings for every package.

Every method package writes its outputs, reads its input images and parses ``HxW`` sizes
through this module, so that they behave the same everywhere:

- Writes are atomic: :func:`atomic_write` hands out a hidden temporary file in the target's
  folder (``.NAME.RANDOM.tmp`` + the target's suffix, created exclusively, so two writers of one
  target never share it) and renames it onto the target only when the block succeeds. The file
  gets the permissions of a file made by ``open()`` (``0o666`` less the umask), not the
  ``0o600`` of ``tempfile.mkstemp`` or of safetensors' own writer. On any failure, Ctrl-C and
  ``SystemExit`` included, the temporary file is removed and the target is left as it was.
  Folders written by ``save_pretrained``-style writers go through :func:`atomic_directory`
  (or the :class:`AtomicSavePretrained` mixin), with the same rules.
- Images are read as float32 ``(C, H, W)`` tensors in [0, 1] (:func:`read_image`) or as RGB
  PIL images (:func:`read_pil_image`) with one set of conventions (see :func:`read_image`) and
  one set of errors: ``FileNotFoundError`` for a missing path, :class:`ImageIsAFolderError`
  for a folder, :class:`ImageReadError` for a file that does not decode completely.
- Sizes are ``S`` (a square) or ``HxW``, height first (:func:`parse_size`).

Only the standard library and torch are imported here; Pillow and numpy (the ``images`` extra,
which every method package has through its own dependencies) are imported by the image
functions when they are called.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

Channels = Literal["gray", "rgb"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
BT601_LUMA = (0.299, 0.587, 0.114)
SIZE_FORMAT = "S or HxW (height x width) in pixels, positive integers"

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_NAME_MAX = 255  # longest file name on common file systems (ext4, APFS, NTFS)
_TEMP_TRIES = 100
_SIZE_PATTERN = re.compile(r"(\d+)(?:\s*[xX]\s*(\d+))?", re.ASCII)


# -- atomic writes ---------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, make_parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The temporary file already exists (empty) when the block starts; writers overwrite it. Its
    name keeps the target's suffix, so writers that choose a format by suffix still work.

    Args:
        path: the file to write.
        make_parents: create missing parent folders; otherwise the folder must exist.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist (and ``make_parents`` is off).
        NotADirectoryError: the folder of ``path`` is a file.
        IsADirectoryError: ``path`` is a folder.
    """
    path = Path(path)
    _check_target(path, make_parents)
    temp = _create_temp_file(path)
    mode = _mode(temp)  # what open() gives here: 0o666 less the umask (never read or changed)
    try:
        yield temp
        if _mode(temp) != mode:  # a writer that made its own file (safetensors: 0o600)
            os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:  # KeyboardInterrupt and SystemExit too: never leave the temp behind
        temp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, make_parents: bool = False) -> Iterator[Path]:
    """Yield a new hidden folder next to ``path``; move its contents to ``path`` on success.

    For ``save_pretrained``-style writers that fill a folder. A new ``path`` appears complete or
    not at all (one rename); into an existing folder every written file is moved by its own
    atomic rename and other files there are kept. Every folder and file written gets the usual
    permissions (``0o777`` / ``0o666`` less the umask): safetensors, for one, makes ``0o600``
    files. On any failure the temporary folder is removed and ``path`` is left as it was.

    Args:
        path: the folder to write.
        make_parents: create missing parent folders; otherwise the parent must exist.

    Raises:
        FileNotFoundError: the parent of ``path`` does not exist (and ``make_parents`` is off).
        NotADirectoryError: ``path`` or its parent is a file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"cannot write {path}: it is a file, not a folder")
    _check_folder(path, make_parents)
    temp = _create_temp_folder(path)
    try:
        yield temp
        _give_usual_modes(temp, _mode(temp))
        _move_into_place(temp, path)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


class AtomicSavePretrained:
    """Mixin for classes with a ``save_pretrained(save_directory, ...)`` (huggingface_hub's
    ``ModelHubMixin``, diffusers pipelines): the folder is written by :func:`atomic_directory`.

    Put it before the class that defines ``save_pretrained`` in the bases. A push to the hub
    without ``repo_id`` keeps the destination folder's name as the repository name.
    """

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """``save_pretrained`` of the next class, into a temporary folder moved into place.

        Args:
            save_directory: the folder to write (missing parents are created).
            *args: passed on.
            **kwargs: passed on.
        """
        if kwargs.get("push_to_hub") and kwargs.get("repo_id") is None:
            kwargs["repo_id"] = Path(save_directory).name
        with atomic_directory(save_directory, make_parents=True) as temp:
            return super().save_pretrained(temp, *args, **kwargs)  # type: ignore[misc]


def write_bytes(path: str | os.PathLike, data: bytes, *, make_parents: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`); returns the path.

    Args:
        path: the file to write.
        data: its contents.
        make_parents: create missing parent folders.
    """
    with atomic_write(path, make_parents=make_parents) as temp:
        temp.write_bytes(data)
    return Path(path)


def write_text(
    path: str | os.PathLike, text: str, *, encoding: str = "utf-8", make_parents: bool = False
) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`); returns the path.

    Args:
        path: the file to write.
        text: its contents.
        encoding: text encoding.
        make_parents: create missing parent folders.
    """
    return write_bytes(path, text.encode(encoding), make_parents=make_parents)


def write_json(
    path: str | os.PathLike, data: Any, *, indent: int | None = 2, make_parents: bool = False
) -> Path:
    """Write ``data`` as JSON (UTF-8, non-ASCII kept, a final newline) atomically.

    Args:
        path: the file to write.
        data: anything ``json.dumps`` accepts.
        indent: JSON indentation (``None``: one line).
        make_parents: create missing parent folders.
    """
    text = json.dumps(data, indent=indent, ensure_ascii=False) + "\n"
    return write_text(path, text, make_parents=make_parents)


def check_output_folder_name(path: str | os.PathLike, flag: str) -> Path:
    """Refuse a suffix on a new output folder: ``-o out.png`` (or ``out.xyz``) given to a command
    that writes its files into a folder was meant as a file. Existing folders pass.

    Args:
        path: the output folder.
        flag: the flag named in the message (``"-o/--output"``).

    Raises:
        ValueError: ``path`` does not exist as a folder and its name has a suffix.
    """
    path = Path(path)
    if path.suffix and not path.is_dir():
        raise ValueError(
            f"{flag} {path}: the outputs go into a folder, and a new folder's name must have no "
            f"suffix (got {path.suffix!r})"
        )
    return path


def temp_name(path: Path) -> str:
    """A fresh hidden name ``.NAME.RANDOM.tmp`` + suffix for a temporary file next to ``path``.

    NAME is shortened when needed so the name stays within 255 characters.

    Args:
        path: the target file.
    """
    tail = f".{secrets.token_hex(6)}.tmp{path.suffix}"
    return f".{path.name[: _NAME_MAX - 1 - len(tail)]}{tail}"


def _check_target(path: Path, make_parents: bool) -> None:
    """Fail before writing when the target is a folder or its folder is missing or a file."""
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder, not a file")
    _check_folder(path, make_parents)


def _check_folder(path: Path, make_parents: bool) -> None:
    """Fail unless the folder of ``path`` exists (created first with ``make_parents``)."""
    folder = path.parent
    if make_parents and not folder.exists():
        folder.mkdir(parents=True, exist_ok=True)
    if not folder.exists():
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {folder} is a file, not a folder")


def _create_temp_file(path: Path) -> Path:
    """Create an empty, exclusively owned temporary file next to ``path``.

    Created like ``open()`` creates files (mode ``0o666``, less the umask and as default ACLs
    say), so the renamed result has the usual permissions; the umask itself is never changed.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_TEMP_TRIES):
        temp = path.with_name(temp_name(path))
        try:
            os.close(os.open(temp, flags, 0o666))
        except FileExistsError:
            continue
        return temp
    raise FileExistsError(f"cannot write {path}: no free temporary name in {path.parent}")


def _create_temp_folder(path: Path) -> Path:
    """Create an empty temporary folder next to ``path`` (mode ``0o777`` less the umask)."""
    for _ in range(_TEMP_TRIES):
        temp = path.with_name(temp_name(path))
        try:
            temp.mkdir(0o777)
        except FileExistsError:
            continue
        return temp
    raise FileExistsError(f"cannot write {path}: no free temporary name in {path.parent}")


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _give_usual_modes(folder: Path, folder_mode: int) -> None:
    """``folder_mode`` for every folder under ``folder``, its read/write bits for every file."""
    for root, folders, names in os.walk(folder):
        for name in folders:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), folder_mode)
        for name in names:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), folder_mode & 0o666)


def _move_into_place(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; into an existing non-empty folder, entry by entry."""
    try:
        os.rename(source, target)  # target absent (or, on POSIX, an empty folder)
        return
    except OSError:
        if not target.is_dir():
            raise
    _merge(source, target)
    shutil.rmtree(source)


def _merge(source: Path, target: Path) -> None:
    """Move every entry of ``source`` into the existing folder ``target`` (files replaced)."""
    for entry in source.iterdir():
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir():
            _merge(entry, destination)
        else:
            os.replace(entry, destination)


# -- sizes -----------------------------------------------------------------------------------


def parse_size(value: str | int | Sequence[int]) -> tuple[int, int]:
    """A size as ``(height, width)`` in pixels.

    ``"S"`` or an int is a square; ``"HxW"`` is height first (``"480x640"`` is 480 px high and
    640 px wide; ``x`` or ``X``, spaces around it allowed); an ``(H, W)`` pair is taken as is.
    Every side must be a positive integer.

    Args:
        value: the size, as text, an int or an (H, W) pair of ints.

    Raises:
        ValueError: anything else; the message states the accepted form (callers prefix it with
            their flag or argument name).
    """
    if isinstance(value, str):
        match = _SIZE_PATTERN.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"expected {SIZE_FORMAT}, got {value!r}")
        height = int(match[1])
        size = (height, int(match[2]) if match[2] is not None else height)
    elif _is_int(value):
        size = (value, value)
    elif isinstance(value, Sequence) and len(value) == 2 and all(_is_int(v) for v in value):
        size = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"expected {SIZE_FORMAT}, got {value!r}")
    if min(size) < 1:
        raise ValueError(f"expected {SIZE_FORMAT}, got {value!r}")
    return size


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- images ----------------------------------------------------------------------------------


class ImageReadError(ValueError):
    """A file that is not a readable image (not an image, truncated, an unsupported format).

    Args:
        path: the file.
        reason: what went wrong, in one line (CLIs print it in their own sentence).
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"cannot read {path} as an image: {reason}")
        self.path = Path(path)
        self.reason = reason


class ImageIsAFolderError(IsADirectoryError, ValueError):
    """A folder given where an image file was expected (an ``IsADirectoryError`` and a
    ``ValueError``: a bad input, whichever of the two a caller handles)."""


def read_image(path: str | os.PathLike, *, channels: Channels | None = None) -> torch.Tensor:
    """Read an image file as a float32 tensor of shape (C, H, W) with values in [0, 1].

    Conventions:

    - 8-bit images are divided by 255, 16-bit grayscale by 65535 (32-bit integer images whose
      values fit in 16 bits, as older Pillow opens 16-bit PNGs, too); 1/2/4-bit images are
      expanded to 8 bits by Pillow. Pillow has no 16-bit colour mode: 16-bit colour arrives at
      8-bit precision (still scaled correctly). Floating-point images are refused.
    - Alpha is dropped, not composited: the colour values are kept as stored.
    - Palette images are expanded to their colours; CMYK, YCbCr, ... are converted to RGB.
    - The EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): pixels come out the
      way image viewers and OpenCV/mmcv show them.
    - ``channels="gray"`` turns colour into BT.601 luma (0.299 R + 0.587 G + 0.114 B),
      ``channels="rgb"`` repeats a gray channel three times, ``None`` keeps the file's own
      channel count (1 or 3).

    Args:
        path: the image file (any format Pillow reads).
        channels: ``"gray"`` (C=1), ``"rgb"`` (C=3) or ``None``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageIsAFolderError: ``path`` is a folder.
        ImageReadError: the file does not decode completely, or has an unsupported pixel format.
    """
    import numpy as np

    if channels not in ("gray", "rgb", None):
        raise ValueError(f"channels must be 'gray', 'rgb' or None, got {channels!r}")
    with _decoded(path) as image:
        array = _unit_array(image, Path(path))  # (H, W) or (H, W, 3)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)  # (C, H, W)
    return convert_channels(tensor.contiguous(), channels)


def read_pil_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as an 8-bit RGB PIL image, with :func:`read_image`'s conventions.

    16-bit images are rounded to 8 bits (not clipped, as ``Image.convert("RGB")`` would);
    gray is repeated over three channels; alpha is dropped; the EXIF orientation is applied.

    Args:
        path: the image file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageIsAFolderError: ``path`` is a folder.
        ImageReadError: the file does not decode completely, or has an unsupported pixel format.
    """
    from PIL import Image

    with _decoded(path) as image:
        if image.mode not in (*_SIXTEEN_BIT_MODES, "I", "F"):
            return image.convert("RGB")
        array = _unit_array(image, Path(path))  # (H, W) in [0, 1]
    pixels = (array * 255.0).round().astype("uint8")
    return Image.fromarray(pixels).convert("RGB")


def convert_channels(image: torch.Tensor, channels: Channels | None) -> torch.Tensor:
    """Convert a (..., C, H, W) image between gray (C=1) and RGB (C=3).

    Args:
        image: tensor with 1 or 3 channels at dim -3.
        channels: ``"gray"`` (BT.601 luma), ``"rgb"`` (gray repeated) or ``None`` (unchanged).
    """
    num_channels = image.shape[-3]
    if channels is None or (channels == "gray") == (num_channels == 1):
        return image
    if channels == "rgb":
        return image.expand(*image.shape[:-3], 3, *image.shape[-2:]).clone()
    weights = image.new_tensor(BT601_LUMA).view(3, 1, 1)  # (3, 1, 1)
    return (image * weights).sum(dim=-3, keepdim=True)


def check_image_tensor(image: object, argument: str) -> torch.Tensor:
    """Raise unless ``image`` is a non-empty floating tensor with finite values in [0, 1].

    One host synchronisation (NaN/Inf and the range come from one min/max pass). Shapes are the
    caller's to check.

    Args:
        image: the tensor (returned unchanged).
        argument: the argument (or flag) named in the messages.

    Raises:
        TypeError: not a tensor.
        ValueError: an integer or bool tensor, an empty one, NaN/Inf, or a value outside [0, 1].
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{argument}: expected a tensor; got {type(image).__name__}")
    if not image.is_floating_point():
        raise ValueError(
            f"{argument}: tensors must be float in [0, 1]; got {image.dtype} (divide 8-bit "
            "pixels by 255)"
        )
    if image.numel() == 0:
        raise ValueError(f"{argument}: empty tensor {tuple(image.shape)}")
    low, high = torch.stack(torch.aminmax(image.detach().float())).tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = int((~torch.isfinite(image)).sum())
        raise ValueError(
            f"{argument}: values must be finite and lie in [0, 1]; got {bad} NaN/Inf value(s)"
        )
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{argument}: values must lie in [0, 1]; got [{low:.3g}, {high:.3g}]")
    return image


def _decoded(path: str | os.PathLike) -> Image.Image:
    """The image at ``path``, fully decoded and turned upright (close it after use).

    Raises as :func:`read_image` does.
    """
    from PIL import Image, ImageOps

    path = Path(path)
    if path.is_dir():
        raise ImageIsAFolderError(f"{path} is a folder, not an image file")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    # What Pillow raises for files it cannot decode (a DecompressionBombError: more than twice
    # Image.MAX_IMAGE_PIXELS).
    errors = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
    try:
        image = Image.open(path)
    except errors as error:
        raise ImageReadError(path, _one_line(error)) from None
    try:
        image.load()  # decode everything now: a truncated file fails here, not later
        ImageOps.exif_transpose(image, in_place=True)
    except errors as error:
        image.close()
        raise ImageReadError(path, _one_line(error)) from None
    return image


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _unit_array(image: Image.Image, path: Path) -> np.ndarray:
    """Pixel values of a decoded image as float32 in [0, 1], shape (H, W) or (H, W, 3)."""
    import numpy as np

    if image.mode in _SIXTEEN_BIT_MODES:
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageReadError(
                path, "32-bit integer pixels beyond the 16-bit range are not supported"
            )
        return values.astype(np.float32) / 65535.0
    if image.mode == "F":
        raise ImageReadError(
            path, "floating-point images (Pillow mode F) are not supported; save it as an 8- or "
            "16-bit PNG",
        )  # fmt: skip
    # Gray stays gray; palette, RGB(A), CMYK, YCbCr, ... become RGB. Alpha is dropped.
    mode = "L" if image.mode in ("1", "L", "LA", "La") else "RGB"
    return np.asarray(image.convert(mode), dtype=np.float32) / 255.0
