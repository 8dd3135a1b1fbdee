"""Photos read and written whole: colour, 16 bits, alpha, ICC profile and EXIF, orientation
applied once; what a format cannot hold is said."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageCms

from common_kernels.runtime.files import ImageReadError, read_image
from common_kernels.runtime.photos import ORIENTATION, Photo, read_photo, write_photo

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
RNG = np.random.default_rng(0)


def exif_block(orientation: int | None = None) -> Image.Exif:
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x010F] = "Camera maker"
    exif.get_ifd(0x8769)[0x9003] = "2026:11:25 12:00:00"  # DateTimeOriginal, in the Exif IFD
    if orientation is not None:
        exif[ORIENTATION] = orientation
    return exif


def saved_exif(path: Path) -> Image.Exif:
    with Image.open(path) as image:
        return image.getexif()


def test_8bit_rgb_jpeg_keeps_icc_and_exif_and_is_turned_upright_once(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    source = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(
        source, exif=exif_block(orientation=6).tobytes(), icc_profile=SRGB, quality=100
    )
    photo = read_photo(source)
    assert photo.pixels.shape == (3, 30, 20)  # orientation 6: a quarter turn clockwise
    assert (photo.bit_depth, photo.format, photo.alpha) == (8, "JPEG", None)
    assert photo.icc_profile == SRGB
    assert torch.equal(photo.pixels, read_image(source))  # the same pixels as the dataset reader
    assert write_photo(tmp_path / "out.jpg", photo) == []
    exif = saved_exif(tmp_path / "out.jpg")
    assert ORIENTATION not in exif  # applied once: a viewer does not turn it again
    assert exif[0x010F] == "Camera maker"
    assert exif.get_ifd(0x8769)[0x9003] == "2026:11:25 12:00:00"
    with Image.open(tmp_path / "out.jpg") as written:
        assert written.size == (20, 30) and written.info["icc_profile"] == SRGB


@pytest.mark.parametrize("orientation", range(1, 9))
def test_16bit_orientation_matches_pillows_exif_transpose(tmp_path: Path, orientation: int) -> None:
    samples = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    eight, sixteen = tmp_path / "8.png", tmp_path / "16.png"
    Image.fromarray(samples).save(eight, exif=exif_block(orientation).tobytes())
    wide = Photo(torch.from_numpy(samples).permute(2, 0, 1) / 255.0, bit_depth=16)
    write_photo(sixteen, wide.replace(exif=exif_block(orientation).tobytes()))
    assert torch.allclose(read_photo(sixteen).pixels, read_photo(eight).pixels, atol=1e-6)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_files_round_trip_exactly(tmp_path: Path, suffix: str, channels: int) -> None:
    samples = RNG.integers(0, 65536, (9, 11, channels), dtype=np.uint16)
    samples = samples[..., 0] if channels == 1 else samples
    source = tmp_path / f"in{suffix}"
    if suffix == ".png":
        source.write_bytes(imagecodecs.png_encode(samples))
    else:
        photometric = "rgb" if channels >= 3 else "minisblack"
        extra = (2,) if channels in (2, 4) else None
        tifffile.imwrite(source, samples, photometric=photometric, extrasamples=extra)
    photo = read_photo(source)
    assert photo.bit_depth == 16
    assert photo.channels == (3 if channels >= 3 else 1)
    assert (photo.alpha is not None) == (channels in (2, 4))
    assert write_photo(tmp_path / f"out{suffix}", photo) == []
    again = read_photo(tmp_path / f"out{suffix}")
    assert torch.equal(again.pixels, photo.pixels)
    assert (again.alpha is None) == (photo.alpha is None)
    if again.alpha is not None:
        assert torch.equal(again.alpha, photo.alpha)
    written = (
        imagecodecs.png_decode((tmp_path / "out.png").read_bytes())
        if suffix == ".png"
        else tifffile.imread(tmp_path / "out.tif")
    )
    assert written.dtype == np.uint16 and np.array_equal(written, samples)


def test_16bit_png_keeps_its_icc_profile_and_exif(tmp_path: Path) -> None:
    photo = Photo(torch.rand(3, 4, 5), bit_depth=16, icc_profile=SRGB,
                  exif=exif_block().tobytes())  # fmt: skip
    write_photo(tmp_path / "a.png", photo)
    again = read_photo(tmp_path / "a.png")
    assert again.icc_profile == SRGB and again.bit_depth == 16
    assert saved_exif(tmp_path / "a.png")[0x010F] == "Camera maker"


@pytest.mark.parametrize(
    ("mode", "channels"), [("LA", 1), ("RGBA", 3), ("P", 3)]
)  # fmt: skip
def test_alpha_is_carried(tmp_path: Path, mode: str, channels: int) -> None:
    if mode == "P":
        image = Image.fromarray(RNG.integers(0, 3, (6, 6), dtype=np.uint8), "P")
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
        image.save(tmp_path / "in.png", transparency=0)
        expected = (np.asarray(image) != 0).astype(np.float32)
    else:
        bands = len(mode)
        array = RNG.integers(0, 256, (6, 6, bands), dtype=np.uint8)
        Image.fromarray(array, mode).save(tmp_path / "in.png")
        expected = array[..., -1] / 255.0
    photo = read_photo(tmp_path / "in.png")
    assert photo.channels == channels
    assert np.allclose(photo.alpha[0].numpy(), expected)
    write_photo(tmp_path / "out.png", photo)
    assert torch.equal(read_photo(tmp_path / "out.png").alpha, photo.alpha)


def test_what_a_format_cannot_hold_is_said(tmp_path: Path) -> None:
    photo = Photo(torch.rand(3, 4, 4), alpha=torch.rand(1, 4, 4), bit_depth=16,
                  icc_profile=SRGB, exif=exif_block().tobytes())  # fmt: skip
    assert write_photo(tmp_path / "a.jpg", photo) == [
        "JPEG holds 8 bits: written at 8 bits, not 16",
        "JPEG has no alpha channel: alpha dropped",
    ]
    assert write_photo(tmp_path / "a.bmp", photo) == [
        "BMP holds 8 bits: written at 8 bits, not 16",
        "BMP has no alpha channel: alpha dropped",
        "the ICC profile was dropped (BMP holds none, or it describes another colour space)",
        "EXIF was dropped (BMP at 8 bits holds none here)",
    ]
    gray = Photo(torch.rand(1, 4, 4), icc_profile=SRGB)  # an RGB profile on gray pixels
    assert write_photo(tmp_path / "g.png", gray) == [
        "the ICC profile was dropped (PNG holds none, or it describes another colour space)"
    ]
    with pytest.raises(ValueError, match=r"unknown image suffix '.xyz'"):
        write_photo(tmp_path / "a.xyz", photo)


def test_cmyk_becomes_rgb_without_its_cmyk_profile(tmp_path: Path) -> None:
    cmyk = Image.fromarray(RNG.integers(0, 256, (4, 4, 4), dtype=np.uint8), "CMYK")
    fake_cmyk_profile = SRGB[:16] + b"CMYK" + SRGB[20:]
    cmyk.save(tmp_path / "c.jpg", icc_profile=fake_cmyk_profile)
    photo = read_photo(tmp_path / "c.jpg")
    assert photo.channels == 3 and photo.icc_profile is None


def test_broken_files_are_refused_in_one_line(tmp_path: Path) -> None:
    whole = tmp_path / "whole.png"
    whole.write_bytes(imagecodecs.png_encode(RNG.integers(0, 65536, (64, 64, 3), np.uint16)))
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=r"^cannot read .*cut.png as an image: [^\n]+$"):
        read_photo(cut)
    Image.fromarray(np.ones((2, 2), np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match=r"floating-point images"):
        read_photo(tmp_path / "f.tif")
    with pytest.raises(FileNotFoundError):
        read_photo(tmp_path / "missing.png")


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"pixels must have shape"):
        write_photo(tmp_path / "a.png", Photo(torch.rand(2, 4, 4)))
    assert list(tmp_path.iterdir()) == []
