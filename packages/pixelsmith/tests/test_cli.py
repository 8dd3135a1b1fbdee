"""``pixelsmith tiny-model`` + ``pixelsmith generate`` on the tiny model equal the API."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from pixelsmith import PixelsmithConfig, PixelsmithPipeline, generate_cascade
from pixelsmith.cli import main
from pixelsmith.config import parse_size

SMALL = ["--patch-size", "8", "--band", "2", "--vae-tile", "8", "--vae-overlap", "2"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "tiny"
    assert main(["tiny-model", str(folder)]) == 0
    return folder


def test_generate_png_and_tif_equal_api(tiny_dir, tmp_path, capsys):
    png, tif = tmp_path / "cat.png", tmp_path / "cat.tif"
    common = [
        "--model",
        str(tiny_dir),
        "--sizes",
        "64",
        "128x96",
        "--slider",
        "2",
        "--steps",
        "2",
        "--seed",
        "3",
        "--quiet",
        *SMALL,
    ]
    assert main(["generate", "a cat", "-o", str(png), *common]) == 0
    assert main(["generate", "a cat", "-o", str(tif), *common, "--save-intermediate"]) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    pipe = PixelsmithPipeline.from_pretrained(tiny_dir)
    pipe.set_progress_bar_config(disable=True)
    expected = generate_cascade(
        pipe,
        "a cat",
        [64, (128, 96)],
        [2],
        num_inference_steps=2,
        seed=3,
        progress=False,
        config=PixelsmithConfig(patch_size=8, band=2, vae_tile=8, vae_overlap=2),
    )
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(expected))
    assert np.array_equal(tifffile.imread(tif), np.asarray(expected))
    assert tifffile.imread(tmp_path / "cat_64x64.tif").shape == (64, 64, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png", "cat.tif", "cat_64x64.tif"]


def test_generate_errors(tiny_dir, tmp_path, capsys):
    status = main(
        [
            "generate",
            "a cat",
            "-o",
            str(tmp_path / "x.png"),
            "--model",
            str(tiny_dir),
            "--sizes",
            "64",
            "128",
            "--slider",
            "9",
            "--steps",
            "2",
            "--quiet",
            *SMALL,
        ]
    )
    assert status == 2
    assert r"sliders[0] must be an int in [1, 2], got 9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "a cat", "--sizes", "64"])  # -o missing
    assert "--output" in capsys.readouterr().err


def test_parse_size():
    assert parse_size("2048") == (2048, 2048)
    assert parse_size("2048x1536") == (2048, 1536)
    assert parse_size((8, 16)) == (8, 16)
    with pytest.raises(ValueError, match="a size must be an int or 'HEIGHTxWIDTH', got '2048x'"):
        parse_size("2048x")
