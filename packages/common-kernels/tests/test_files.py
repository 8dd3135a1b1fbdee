"""common_kernels.runtime.files: atomic writes (permissions, unique temporaries, cleanup), image
reading
conventions and errors, size strings, image-tensor checks."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common_kernels.runtime.files import (
    AtomicSavePretrained,
    ImageIsAFolderError,
    ImageReadError,
    atomic_directory,
    atomic_write,
    check_image_tensor,
    check_output_folder_name,
    parse_size,
    read_image,
    read_pil_image,
    write_bytes,
    write_json,
    write_text,
)

SIZE_ERROR = "expected S or HxW (height x width) in pixels, positive integers, got "


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process umask after a test that sets it."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# -- atomic writes ---------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_have_the_permissions_open_gives(
    tmp_path: Path, umask: None, mask: int
) -> None:
    os.umask(mask)
    with open(tmp_path / "plain.txt", "w") as handle:
        handle.write("x")
    write_bytes(tmp_path / "bytes.bin", b"x")
    write_json(tmp_path / "data.json", {"a": 1})
    with atomic_write(tmp_path / "image.png") as temp:
        Image.new("L", (2, 2)).save(temp)  # a writer that opens the path itself
    expected = 0o666 & ~mask
    assert mode(tmp_path / "plain.txt") == expected
    for name in ("bytes.bin", "data.json", "image.png"):
        assert mode(tmp_path / name) == expected, name


def write_private_file(path: Path, data: bytes) -> None:
    """What safetensors' writer does: a new 0o600 file renamed onto ``path``."""
    private = path.with_name(path.name + ".private")
    os.close(os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    private.write_bytes(data)
    os.replace(private, path)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_a_writer_that_makes_private_files_still_gives_the_usual_permissions(
    tmp_path: Path, umask: None, mask: int
) -> None:
    os.umask(mask)
    with atomic_write(tmp_path / "model.safetensors") as temp:
        write_private_file(temp, b"weights")
    assert mode(tmp_path / "model.safetensors") == 0o666 & ~mask
    assert (tmp_path / "model.safetensors").read_bytes() == b"weights"


def test_temp_file_is_hidden_next_to_the_target_and_keeps_the_suffix(tmp_path: Path) -> None:
    target = tmp_path / "out.tif"
    with atomic_write(target) as temp:
        assert temp.parent == tmp_path and temp.is_file() and temp.stat().st_size == 0
        assert temp.name.startswith(".out.tif.") and temp.name.endswith(".tmp.tif")
        assert not target.exists()  # nothing at the target until the block ends
        temp.write_bytes(b"done")
    assert target.read_bytes() == b"done"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_two_writers_of_one_target_get_distinct_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    with atomic_write(target) as first, atomic_write(target) as second:
        assert first != second and first.exists() and second.exists()
        first.write_text("first")
        second.write_text("second")
    # the inner block (second) finishes first; the outer one renames last and wins
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt(), SystemExit(1)])
def test_a_failed_write_leaves_the_target_untouched_and_no_temp(
    tmp_path: Path, error: BaseException
) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(type(error)), atomic_write(target) as temp:
        temp.write_bytes(b"half of the new con")
        raise error
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    with pytest.raises(type(error)), atomic_write(tmp_path / "new.bin") as temp:
        raise error
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_target_folder_rules(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cannot write .*a/b\.txt: the folder .*a does"):
        write_text(tmp_path / "a" / "b.txt", "x")
    assert list(tmp_path.iterdir()) == []
    assert write_text(tmp_path / "a" / "b" / "c.txt", "x", make_parents=True).read_text() == "x"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"file is a file, not a folder"):
        write_text(tmp_path / "file" / "c.txt", "x")
    with pytest.raises(IsADirectoryError, match=r"cannot write .*a: it is a folder, not a file"):
        write_text(tmp_path / "a", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "file"]


def test_text_and_json_helpers(tmp_path: Path) -> None:
    path = write_json(tmp_path / "r.json", {"name": "café", "n": [1, 2]})
    assert path == tmp_path / "r.json"
    expected = '{\n  "name": "café",\n  "n": [\n    1,\n    2\n  ]\n}\n'
    assert path.read_text(encoding="utf-8") == expected
    write_json(tmp_path / "one.json", [1], indent=None)
    assert (tmp_path / "one.json").read_text() == "[1]\n"
    write_text(tmp_path / "latin.txt", "é", encoding="latin-1")
    assert (tmp_path / "latin.txt").read_bytes() == b"\xe9"


def test_long_target_names_get_a_shortened_temp_name(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 246 + ".png")  # 250 characters: at most 5 left for the temp
    with atomic_write(target) as temp:
        assert len(temp.name) <= 255 and temp.name.endswith(".tmp.png")
        temp.write_bytes(b"x")
    assert target.read_bytes() == b"x"


# -- atomic folders --------------------------------------------------------------------------


def fill_model_folder(folder: Path, weights: bytes) -> None:
    """A save_pretrained-like writer: a config, private weights, a sub-folder."""
    (folder / "config.json").write_text("{}")
    write_private_file(folder / "model.safetensors", weights)
    (folder / "tokenizer").mkdir(mode=0o700)
    write_private_file(folder / "tokenizer" / "vocab.json", b"{}")


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_directory_new_folder_with_the_usual_permissions(
    tmp_path: Path, umask: None, mask: int
) -> None:
    os.umask(mask)
    target = tmp_path / "parents" / "model"
    with atomic_directory(target, make_parents=True) as temp:
        assert temp.parent == target.parent and temp.name.startswith(".model.")
        assert not target.exists()
        fill_model_folder(temp, b"w1")
    written = {str(p.relative_to(target)): mode(p) for p in target.rglob("*")}
    folder_mode, file_mode = 0o777 & ~mask, 0o666 & ~mask
    assert written == {
        "config.json": file_mode,
        "model.safetensors": file_mode,
        "tokenizer": folder_mode,
        "tokenizer/vocab.json": file_mode,
    }
    assert mode(target) == folder_mode
    assert [p.name for p in target.parent.iterdir()] == ["model"]


def test_atomic_directory_into_existing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty") as temp:
        fill_model_folder(temp, b"w1")
    assert (tmp_path / "empty" / "model.safetensors").read_bytes() == b"w1"
    # a folder holding an older model and other files: the written files replace theirs
    target = tmp_path / "run"
    (target / "tokenizer").mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"old")
    (target / "tokenizer" / "merges.txt").write_text("kept")
    (target / "notes.txt").write_text("kept")
    with atomic_directory(target) as temp:
        fill_model_folder(temp, b"new")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == [
        "config.json", "model.safetensors", "notes.txt", "tokenizer", "tokenizer/merges.txt",
        "tokenizer/vocab.json",
    ]  # fmt: skip
    assert (target / "model.safetensors").read_bytes() == b"new"
    assert (target / "notes.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "run"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_atomic_directory_failure_leaves_nothing(tmp_path: Path, error: BaseException) -> None:
    with pytest.raises(type(error)), atomic_directory(tmp_path / "model") as temp:
        fill_model_folder(temp, b"w")
        raise error
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.safetensors").write_bytes(b"old")
    with pytest.raises(type(error)), atomic_directory(tmp_path / "old") as temp:
        fill_model_folder(temp, b"w")
        raise error
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["model.safetensors"]
    assert (tmp_path / "old" / "model.safetensors").read_bytes() == b"old"


def test_atomic_directory_target_rules(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with (
        pytest.raises(NotADirectoryError, match=r"cannot write .*file: it is a file, not a"),
        atomic_directory(tmp_path / "file"),
    ):
        pass
    with (
        pytest.raises(FileNotFoundError, match=r"the folder .*missing does not exist"),
        atomic_directory(tmp_path / "missing" / "model"),
    ):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


class Saver:
    """Stands for huggingface_hub's ModelHubMixin / a diffusers pipeline."""

    def save_pretrained(self, save_directory: Path, *, repo_id: str | None = None, **kw: object):
        save_directory = Path(save_directory)
        self.seen = (save_directory, repo_id, kw)
        fill_model_folder(save_directory, b"w")
        return "pushed" if kw.get("push_to_hub") else None


class AtomicSaver(AtomicSavePretrained, Saver):
    pass


def test_atomic_save_pretrained_mixin(tmp_path: Path) -> None:
    saver = AtomicSaver()
    assert saver.save_pretrained(tmp_path / "a" / "model") is None
    assert saver.seen[0].parent == tmp_path / "a" and saver.seen[0].name.startswith(".model.")
    assert mode(tmp_path / "a" / "model" / "model.safetensors") == mode(tmp_path / "a") & 0o666
    assert saver.save_pretrained(tmp_path / "b", push_to_hub=True) == "pushed"
    assert saver.seen[1:] == ("b", {"push_to_hub": True})
    assert saver.save_pretrained(tmp_path / "c", push_to_hub=True, repo_id="org/c") == "pushed"
    assert saver.seen[1] == "org/c"


def test_output_folder_names_have_no_suffix_unless_the_folder_exists(tmp_path: Path) -> None:
    assert check_output_folder_name(tmp_path / "out", "-o/--output") == tmp_path / "out"
    (tmp_path / "run.v2").mkdir()
    assert check_output_folder_name(tmp_path / "run.v2", "-o") == tmp_path / "run.v2"
    for name in ("out.png", "out.xyz"):
        with pytest.raises(ValueError) as info:
            check_output_folder_name(tmp_path / name, "-o/--output")
        assert str(info.value) == (
            f"-o/--output {tmp_path / name}: the outputs go into a folder, and a new folder's "
            f"name must have no suffix (got '{Path(name).suffix}')"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.v2"]


def test_importing_the_module_does_not_import_pillow() -> None:
    code = "import sys, common_kernels.runtime.files; print('PIL' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# -- reading images --------------------------------------------------------------------------


def test_8bit_gray_and_rgb_are_divided_by_255(tmp_path: Path) -> None:
    gray = np.array([[0, 1, 128, 255]], dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    loaded = read_image(tmp_path / "g.png")
    assert loaded.dtype == torch.float32 and loaded.shape == (1, 1, 4)
    torch.testing.assert_close(loaded, torch.from_numpy(gray / 255.0).float()[None])
    rgb = np.arange(24, dtype=np.uint8).reshape(2, 4, 3) * 10
    Image.fromarray(rgb).save(tmp_path / "c.png")
    expected = torch.from_numpy(rgb / 255.0).float().permute(2, 0, 1)  # (3, 2, 4)
    torch.testing.assert_close(read_image(tmp_path / "c.png"), expected)


def test_16bit_gray_is_divided_by_65535(tmp_path: Path) -> None:
    values = np.array([[0, 1, 257, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    expected = torch.from_numpy(values.astype(np.float32) / 65535)[None]
    torch.testing.assert_close(read_image(tmp_path / "g16.png"), expected, atol=1e-7, rtol=0)
    # read as PIL: rounded to 8 bits (Image.convert("RGB") would clip 40000 to 255)
    pil = np.asarray(read_pil_image(tmp_path / "g16.png"))
    assert pil.shape == (1, 5, 3) and pil[0, :, 0].tolist() == [0, 0, 1, 156, 255]


def test_32bit_integer_images_only_within_16_bits(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32), mode="I").save(tmp_path / "i.tif")
    expected = torch.tensor([[[0.0, 1000 / 65535, 1.0]]])
    torch.testing.assert_close(read_image(tmp_path / "i.tif"), expected)
    Image.fromarray(np.array([[70000]], dtype=np.int32), mode="I").save(tmp_path / "big.tif")
    with pytest.raises(ImageReadError, match="beyond the 16-bit range"):
        read_image(tmp_path / "big.tif")
    Image.new("F", (2, 2), 0.5).save(tmp_path / "float.tif")
    for read in (read_image, read_pil_image):
        with pytest.raises(ImageReadError, match=r"float\.tif as an image: floating-point"):
            read(tmp_path / "float.tif")


def test_palette_expands_to_its_colours(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1])
    image.save(tmp_path / "p.png")
    expected = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]], [[0.0, 1.0]]])  # (3, 1, 2)
    torch.testing.assert_close(read_image(tmp_path / "p.png"), expected)
    assert np.asarray(read_pil_image(tmp_path / "p.png")).tolist() == [[[255, 0, 0], [0, 0, 255]]]


def test_alpha_is_dropped_not_composited(tmp_path: Path) -> None:
    la = np.stack([np.full((2, 2), 60, np.uint8), np.full((2, 2), 9, np.uint8)], -1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    torch.testing.assert_close(read_image(tmp_path / "la.png"), torch.full((1, 2, 2), 60 / 255))
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: the red is kept
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    loaded = read_image(tmp_path / "rgba.png")
    assert loaded.shape == (3, 2, 2)
    torch.testing.assert_close(loaded[0], torch.full((2, 2), 200 / 255))
    assert loaded[1:].abs().max() == 0
    assert np.asarray(read_pil_image(tmp_path / "rgba.png"))[0, 0].tolist() == [200, 0, 0]


def test_channel_conversion_bt601_luma_and_repeated_gray(tmp_path: Path) -> None:
    Image.fromarray(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)).save(
        tmp_path / "primaries.png"
    )
    gray = read_image(tmp_path / "primaries.png", channels="gray")
    torch.testing.assert_close(gray, torch.tensor([[[0.299, 0.587, 0.114]]]))
    Image.new("L", (2, 1), 128).save(tmp_path / "g.png")
    rgb = read_image(tmp_path / "g.png", channels="rgb")
    assert rgb.shape == (3, 1, 2) and torch.all(rgb == 128 / 255)
    with pytest.raises(ValueError, match="channels must be 'gray', 'rgb' or None, got 'rgba'"):
        read_image(tmp_path / "g.png", channels="rgba")  # type: ignore[arg-type]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40  # 2 rows, 3 columns
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: the viewer turns it 90 degrees clockwise
    image.save(tmp_path / "turned.png", exif=exif)
    loaded = read_image(tmp_path / "turned.png")
    upright = np.rot90(pixels, k=-1)  # clockwise: (3, 2)
    torch.testing.assert_close(loaded, torch.from_numpy(upright / 255.0).float()[None])
    assert read_pil_image(tmp_path / "turned.png").size == (2, 3)  # PIL: (width, height)


def test_read_errors(tmp_path: Path) -> None:
    for read in (read_image, read_pil_image):
        with pytest.raises(FileNotFoundError, match=r"^.*missing\.png does not exist$"):
            read(tmp_path / "missing.png")
        with pytest.raises(ImageIsAFolderError, match=r"is a folder, not an image file$") as info:
            read(tmp_path)
        assert isinstance(info.value, IsADirectoryError) and isinstance(info.value, ValueError)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageReadError) as info:
        read_pil_image(tmp_path / "notes.png")
    assert str(info.value).startswith(f"cannot read {tmp_path / 'notes.png'} as an image: ")
    assert info.value.reason.startswith("cannot identify image file")
    assert info.value.path == tmp_path / "notes.png"
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    for read in (read_image, read_pil_image):
        with pytest.raises(ImageReadError, match=r"cut\.png as an image: image file is truncated"):
            read(tmp_path / "cut.png")


# -- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512", (512, 512)),
        ("480x640", (480, 640)),
        ("480X640", (480, 640)),
        (" 480 x 640 ", (480, 640)),
        ("1", (1, 1)),
        (64, (64, 64)),
        ((8, 16), (8, 16)),
        ([16, 8], (16, 8)),
    ],
)
def test_parse_size_reads_height_first(value: object, expected: tuple[int, int]) -> None:
    assert parse_size(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    ["", "x", "512x", "x512", "8x8x8", "0", "0x64", "64x0", "-3", "1.5", "12px", "²", True, 0,
     -1, 2.0, (8,), (8, 0), (8.0, 16), (True, 8), None],
)  # fmt: skip
def test_parse_size_rejects_everything_else(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)  # type: ignore[arg-type]
    assert str(info.value) == SIZE_ERROR + repr(value)


# -- image tensors ---------------------------------------------------------------------------


def test_check_image_tensor_messages_name_the_argument() -> None:
    good = torch.rand(1, 3, 4, 4)
    assert check_image_tensor(good, "images") is good
    cases = [
        ([[0.5]], TypeError, "images: expected a tensor; got list"),
        (
            torch.zeros(3, 2, 2, dtype=torch.uint8),
            ValueError,
            "images: tensors must be float in [0, 1]; got torch.uint8 (divide 8-bit pixels by 255)",
        ),
        (torch.zeros(0, 3, 2, 2), ValueError, "images: empty tensor (0, 3, 2, 2)"),
        (
            torch.tensor([0.5, float("nan"), float("inf")]),
            ValueError,
            "images: values must be finite and lie in [0, 1]; got 2 NaN/Inf value(s)",
        ),
        (
            torch.tensor([-0.25, 1.5]),
            ValueError,
            "images: values must lie in [0, 1]; got [-0.25, 1.5]",
        ),
    ]  # fmt: skip
    for value, kind, message in cases:
        with pytest.raises(kind) as info:
            check_image_tensor(value, "images")
        assert str(info.value) == message
    assert check_image_tensor(torch.ones(2, 2, dtype=torch.bfloat16), "x").dtype == torch.bfloat16
