"""Image files and their sizes, checked before any model work (``diffeat extract``, ``probe``,
``pca``): readable and complete, of one size where one size is needed, and multiples of the
model's size factor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from safetensors import SafetensorError

from common_kernels.runtime.errors import InvalidValue, literal, shown
from common_kernels.runtime.files import ImageReadError
from diffeat.io import feature_shapes, load_image


class UnreadableImage(ValueError):
    """An image file that does not decode completely (``reason``: why, without the path)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is not a readable image ({reason})")
        self.path = path
        self.reason = reason


def check_image_file(path: Path) -> tuple[int, int]:
    """(H, W) of a readable, complete image file (decoded, then dropped).

    Raises:
        IsADirectoryError: a folder.
        FileNotFoundError: nothing there.
        UnreadableImage: not a readable image (a ``ValueError``).
    """
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder, not an image file (give the images, e.g. DIR/*.png)"
        )
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        width, height = load_image(path).size
    except ImageReadError as error:
        raise UnreadableImage(path, error.reason) from None
    return height, width


def fed_size(
    paths: Sequence[Path],
    sizes: Sequence[tuple[int, int]],
    group: int,
    why: str,
) -> tuple[tuple[int, int], str]:
    """The largest own (H, W) of images fed unresized, and its description; consecutive
    images in groups of ``group`` must share their size.

    Args:
        paths: the image files.
        sizes: their (H, W).
        group: consecutive images that must share their size (a batch, or all of them).
        why: why they must (for the message; arguments written ``{name}``).

    Raises:
        InvalidValue: two images of a group differ in size (``images``).
    """
    for start in range(0, len(paths), group):
        first = sizes[start]
        for index in range(start + 1, min(start + group, len(paths))):
            if sizes[index] != first:
                other = sizes[index]
                raise InvalidValue(
                    "images",
                    f"{literal(paths[start])} is {first[0]}x{first[1]} but "
                    f"{literal(paths[index])} is {other[0]}x{other[1]} (HxW); {why}: pass "
                    "{image_size} S|HxW to resize them",
                )
    height, width = max(sizes, key=lambda hw: hw[0] * hw[1])
    return (height, width), f"images of {height}x{width} (their own size)"


def check_multiples(
    paths: Sequence[Path],
    sizes: Sequence[tuple[int, int]],
    multiple: int,
    factors: str,
) -> None:
    """Fail unless the images' own sizes are multiples of ``multiple``.

    Args:
        paths: the image files.
        sizes: their (H, W).
        multiple: the model's size multiple.
        factors: how it is made (``"VAE x8, U-Net x8"``).

    Raises:
        InvalidValue: an image of another size (``images``).
    """
    for path, (height, width) in zip(paths, sizes, strict=True):
        if height % multiple or width % multiple:
            raise InvalidValue(
                "images",
                f"{literal(path)} is {height}x{width} (HxW), not a multiple of {multiple} for "
                f"this model ({factors}); pass {{image_size}} S|HxW to resize",
            )


def check_features_file(path: Path, argument: str = "features") -> tuple[dict, dict]:
    """Shapes and metadata of a ``diffeat extract`` features file (no tensor is read).

    Args:
        path: the file.
        argument: the API's argument (named in the messages).

    Raises:
        InvalidValue: a folder, nothing, not a features file, or tensors that are no features.
    """
    file = shown(argument, path)
    if path.is_dir():
        raise InvalidValue(argument, f"{file} is a folder, not a file")
    if not path.exists():
        raise InvalidValue(argument, f"{file} does not exist")
    try:
        shapes, meta = feature_shapes(path)
    except (OSError, ValueError, SafetensorError) as error:
        text = literal(" ".join(str(error).split()))
        raise InvalidValue(
            argument, f"{file} is not a features file of `diffeat extract` ({text})"
        ) from None
    bad = [key for key, shape in shapes.items() if len(shape) != 4 or 0 in shape]
    if not shapes or bad:
        found = literal(f"{bad[0]!r} is {shapes[bad[0]]}") if bad else "it holds none"
        raise InvalidValue(argument, f"{file}: expected (N, C, h, w) feature tensors; {found}")
    return shapes, meta
