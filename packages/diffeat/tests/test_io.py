"""diffeat.io on common_kernels.runtime.files: image reading, sizes, and the permissions of what is
written
(feature files, PNGs, head folders)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffeat.heads.label_scarce import PixelMLPEnsemble
from diffeat.io import load_features, load_image, parse_size, save_features, save_png


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_16bit_images_are_rounded_to_8_bits_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    image = load_image(tmp_path / "g16.png")
    assert image.mode == "RGB"
    assert np.asarray(image)[0, :, 1].tolist() == [0, 1, 156, 255]  # PIL's convert: 0, 255, ...


def test_load_image_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.png does not exist$"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(IsADirectoryError, match=r"is a folder, not an image file$"):
        load_image(tmp_path)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot read .*notes\.png as an image: cannot identify"):
        load_image(tmp_path / "notes.png")


def test_parse_size_names_the_argument() -> None:
    assert parse_size(None) is None
    assert parse_size("64x96") == (64, 96)  # height x width
    assert parse_size(64) == (64, 64)
    with pytest.raises(ValueError) as info:
        parse_size("8x", "original_size")
    assert str(info.value) == (
        "original_size: expected S or HxW (height x width) in pixels, positive integers, got '8x'"
    )


def test_written_files_have_the_usual_permissions(tmp_path: Path, umask_022: None) -> None:
    features = {"unet-in": torch.zeros(1, 2, 3, 3)}
    save_features(tmp_path / "sub" / "f.safetensors", features, {"layers": ["unet-in"]})
    loaded, meta = load_features(tmp_path / "sub" / "f.safetensors")
    assert torch.equal(loaded["unet-in"], features["unet-in"]) and meta == {"layers": ["unet-in"]}
    save_png(tmp_path / "p.png", np.zeros((2, 2, 3), np.uint8))
    torch.manual_seed(0)
    PixelMLPEnsemble(4, 2, members=1, hidden=(4,)).save_pretrained(tmp_path / "head")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"f.safetensors", "p.png", "model.safetensors"}
    assert {p.stat().st_mode & 0o777 for p in written} == {0o644}  # safetensors alone: 0o600
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file or folder left
    restored = PixelMLPEnsemble.from_pretrained(tmp_path / "head")
    assert len(restored.members) == 1
