"""Image reading/writing: bit depths, alpha, palettes, channel conversion, errors, atomicity."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semanir.io import convert_channels, list_images, read_image, write_image


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """Write a 16-bit PNG (gray, gray+alpha, RGB or RGBA) without Pillow, which cannot."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    height, width, channels = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_8bit_round_trip_gray_and_rgb(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    for channels in (1, 3):
        image = torch.randint(0, 256, (channels, 5, 7), generator=generator).float() / 255
        write_image(tmp_path / f"c{channels}.png", image)
        loaded = read_image(tmp_path / f"c{channels}.png")
        assert loaded.dtype == torch.float32 and loaded.shape == (channels, 5, 7)
        torch.testing.assert_close(loaded, image, atol=1e-6, rtol=0)


def test_16bit_gray_png_scaled_by_65535(tmp_path: Path) -> None:
    values = np.array([[0, 1, 257, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    loaded = read_image(tmp_path / "g16.png")
    expected = torch.from_numpy(values.astype(np.float32) / 65535)[None]
    torch.testing.assert_close(loaded, expected, atol=1e-7, rtol=0)


def test_16bit_colour_png_keeps_scale_at_8bit_precision(tmp_path: Path) -> None:
    write_png16(tmp_path / "rgb16.png", np.full((2, 3, 3), 40000, dtype=np.uint16))
    loaded = read_image(tmp_path / "rgb16.png")
    assert loaded.shape == (3, 2, 3)
    assert (loaded - 40000 / 65535).abs().max() <= 1 / 255


def test_alpha_channels_are_dropped(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: colour values are kept
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    loaded = read_image(tmp_path / "rgba.png")
    assert loaded.shape == (3, 2, 2)
    assert torch.allclose(loaded[0], torch.tensor(200 / 255)) and loaded[1:].abs().max() == 0

    gray_alpha = np.stack([np.full((2, 2), 60, np.uint8), np.full((2, 2), 9, np.uint8)], -1)
    Image.fromarray(gray_alpha, mode="LA").save(tmp_path / "la.png")
    assert torch.allclose(read_image(tmp_path / "la.png"), torch.full((1, 2, 2), 60 / 255))

    write_png16(tmp_path / "la16.png", np.full((2, 2, 2), 65535, dtype=np.uint16))
    assert torch.allclose(read_image(tmp_path / "la16.png", channels="gray"), torch.ones(1, 2, 2))


def test_palette_image_expands_to_its_colours(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1])
    image.save(tmp_path / "palette.png")
    loaded = read_image(tmp_path / "palette.png")
    expected = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]], [[0.0, 1.0]]])  # (3, 1, 2)
    torch.testing.assert_close(loaded, expected)


def test_channel_conversion_uses_bt601(tmp_path: Path) -> None:
    primaries = torch.eye(3).view(3, 1, 3)  # red, green, blue pixels side by side
    gray = convert_channels(primaries, "gray")
    torch.testing.assert_close(gray, torch.tensor([[[0.299, 0.587, 0.114]]]))
    rgb = convert_channels(torch.full((1, 2, 2), 0.25), "rgb")
    assert rgb.shape == (3, 2, 2) and torch.all(rgb == 0.25)
    write_image(tmp_path / "red.png", torch.tensor([1.0, 0, 0]).view(3, 1, 1))
    assert read_image(tmp_path / "red.png", channels="gray").item() == pytest.approx(0.299)
    write_image(tmp_path / "gray.png", torch.full((1, 1, 1), 128 / 255))
    assert torch.allclose(
        read_image(tmp_path / "gray.png", channels="rgb"), torch.tensor(128 / 255)
    )


def test_one_pixel_and_low_bit_depth_images(tmp_path: Path) -> None:
    Image.new("L", (1, 1), 77).save(tmp_path / "one.png")
    loaded = read_image(tmp_path / "one.png")
    assert loaded.shape == (1, 1, 1) and loaded.item() == pytest.approx(77 / 255)
    Image.new("1", (3, 1), 1).save(tmp_path / "bits.png")
    assert torch.all(read_image(tmp_path / "bits.png") == 1.0)


def test_read_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        read_image(missing)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot read .*notes\.png as an image"):
        read_image(text)
    Image.new("L", (64, 64), 5).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:60])
    with pytest.raises(ValueError, match=r"cut\.png"):
        read_image(tmp_path / "cut.png")
    Image.new("F", (2, 2), 0.5).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="floating-point"):
        read_image(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="channels must be"):
        read_image(tmp_path / "full.png", channels="rgba")


def test_write_rounds_clamps_and_picks_format_from_extension(tmp_path: Path) -> None:
    image = torch.tensor([[[-0.5, 0.4 / 255, 0.6 / 255, 1.5]]])  # (1, 1, 4)
    write_image(tmp_path / "out.bmp", image)
    assert Image.open(tmp_path / "out.bmp").format == "BMP"
    assert np.asarray(Image.open(tmp_path / "out.bmp")).tolist() == [[0, 0, 1, 255]]
    with pytest.raises(ValueError, match=r"unknown image extension '\.txt'"):
        write_image(tmp_path / "out.txt", image)
    with pytest.raises(ValueError, match="expected an image of shape"):
        write_image(tmp_path / "out.png", torch.zeros(2, 4, 4))


def test_write_is_atomic_when_saving_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "result.png"
    write_image(target, torch.zeros(1, 4, 4))
    original = target.read_bytes()

    def failing_save(self: Image.Image, fp: Path, *args: object, **kwargs: object) -> None:
        Path(fp).write_bytes(b"\x89PNG partial")  # a half-written file, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_image(target, torch.ones(1, 4, 4))
    with pytest.raises(OSError, match="disk full"):
        write_image(tmp_path / "new.png", torch.ones(1, 4, 4))
    assert target.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.png"]


def test_list_images_files_and_folders(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("b.PNG", "a.jpg", "c.bmp"):
        Image.new("L", (2, 2)).save(folder / name)
    (folder / "notes.txt").write_text("x")
    (folder / "sub").mkdir()
    single = tmp_path / "z.png"
    Image.new("L", (2, 2)).save(single)
    assert [p.name for p in list_images(folder)] == ["a.jpg", "b.PNG", "c.bmp"]
    assert [p.name for p in list_images([single, str(folder)])] == [
        "z.png",
        "a.jpg",
        "b.PNG",
        "c.bmp",
    ]
    with pytest.raises(ValueError, match=r"notes\.txt is not an image file"):
        list_images(folder / "notes.txt")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list_images(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no images .* found in .*sub"):
        list_images(folder / "sub")


def test_16bit_colour_png_is_read_at_16_bits_by_the_photo_reader(tmp_path: Path) -> None:
    """What ``semanir restore`` and the app read with (README, "Known limits"): every 16-bit
    level of a colour PNG, where ``read_image`` keeps 8 bits of it."""
    from common_kernels.runtime.photos import read_photo

    samples = (np.arange(2 * 3 * 3, dtype=np.uint16) * 3001 + 7).reshape(2, 3, 3)
    write_png16(tmp_path / "rgb16.png", samples)
    photo = read_photo(tmp_path / "rgb16.png")
    exact = torch.from_numpy(samples.astype(np.float32)).permute(2, 0, 1)
    assert photo.channels == 3
    assert (photo.pixels * 65535 - exact).abs().max() < 0.01
    assert (read_image(tmp_path / "rgb16.png") * 65535 - exact).abs().max() > 100
