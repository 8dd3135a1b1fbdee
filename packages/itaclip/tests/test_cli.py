"""``itaclip segment`` writes overlays with a legend and label maps equal to the API's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from common_kernels.runtime.cli import size_type as parse_size_option
from itaclip import Segmenter
from itaclip.cli import main, parse_class_option
from itaclip.viz import LEGEND_ROW, LEGEND_WIDTH, overlay, palette


def test_segment_cli(tmp_path, tiny_dir):
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (40, 56, 4), dtype=np.uint8), "RGBA")
    gray = Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8), "L")
    rgba.save(tmp_path / "a.png")
    gray.save(tmp_path / "b.png")
    out = tmp_path / "out"
    status = main([
        "segment", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
        "--classes", "cat,dog|puppy,sky", "-o", str(out), "--model", f"local-dir:{tiny_dir}",
        "--pretrained", "", "--stride", "224", "--cache-dir", str(tmp_path / "cache"),
    ])  # fmt: skip
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "a_labels.png", "a_overlay.png", "b_labels.png", "b_overlay.png",
    ]  # fmt: skip
    seg = Segmenter.from_pretrained(
        f"local-dir:{tiny_dir}", None, preset=None, stride=224, cache_dir=tmp_path / "cache"
    )
    expected = seg(rgba, [["cat"], ["dog", "puppy"], ["sky"]]).labels
    labels = torch.from_numpy(np.asarray(Image.open(out / "a_labels.png")).astype(np.int64))
    assert torch.equal(labels, expected)
    with Image.open(out / "a_overlay.png") as image:
        legend_height = LEGEND_ROW * (len(expected.unique()) + 1)
        assert image.size == (56 + LEGEND_WIDTH, max(40, legend_height)) and image.mode == "RGB"


def test_overlay_colours_and_legend():
    image = torch.zeros(3, 4, 6)
    labels = torch.zeros(4, 6, dtype=torch.long)
    labels[:, 3:] = 2
    canvas = overlay(image, labels, ["a", "b", "c"], opacity=1.0)
    pixels = np.asarray(canvas)
    colours = palette(3)
    assert (pixels[0, 0] == colours[0]).all() and (pixels[0, 5] == colours[2]).all()
    assert len({tuple(c) for c in palette(200)}) == 200
    legend = pixels[:, 6:]
    assert (legend != 255).any()  # swatches and names drawn


def test_class_option_parsing_and_errors(capsys):
    assert parse_class_option("person|man, dog") == [["person", "man"], ["dog"]]
    assert main(["segment", "x.png", "-o", "out"]) == 2  # --classes missing
    error = "itaclip segment: error: the following arguments are required: --classes\n"
    assert capsys.readouterr().err == error


def test_segment_cli_output_size_engineering_aux_file_and_background(tmp_path, tiny_dir):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    aux = tmp_path / "defs.txt"
    aux.write_text("cat >= a small pet\npuppy >= a young dog\n")
    out = tmp_path / "out"
    status = main([
        "segment", str(tmp_path / "a.png"), "--classes", "sky|wall,cat,dog|puppy",
        "-o", str(out), "--model", f"local-dir:{tiny_dir}", "--pretrained", "",
        "--stride", "224", "--short-side", "64", "--cache-dir", str(tmp_path / "cache"),
        "--output-size", "30x45", "--no-img-engineering", "--aux-file", str(aux),
        "--alpha", "0.4", "--background", "wall", "--no-pamr",
    ])  # fmt: skip
    assert status == 0
    seg = Segmenter.from_pretrained(
        f"local-dir:{tiny_dir}", None, preset=None, stride=224, short_side=64, alpha=0.4,
        img_engineering=False, pamr=False, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    classes = [["sky", "wall"], ["cat"], ["dog", "puppy"]]
    texts = [None, "a small pet", "a young dog"]
    expected = seg(pixels, classes, texts, background=0, output_size=(30, 45)).labels
    labels = torch.from_numpy(np.asarray(Image.open(out / "a_labels.png")).astype(np.int64))
    assert labels.shape == (30, 45) and torch.equal(labels, expected)
    with Image.open(out / "a_overlay.png") as image:
        legend_height = LEGEND_ROW * (len(expected.unique()) + 1)
        assert image.size == (45 + LEGEND_WIDTH, max(30, legend_height))


SIZE_ERROR = "expected S or HxW (height x width) in pixels, positive integers, got "


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--output-size", "30x"], f"{SIZE_ERROR}'30x'"),
        (["--output-size", "0x5"], f"{SIZE_ERROR}'0x5'"),
        (["--output-size", "5x5x5"], f"{SIZE_ERROR}'5x5x5'"),
    ],
)
def test_segment_cli_bad_output_size(tmp_path, capsys, extra, message):
    assert main(["segment", "x.png", "--classes", "a,b", "-o", str(tmp_path), *extra]) == 2
    error = f"itaclip segment: error: argument --output-size: {message}\n"
    assert capsys.readouterr().err == error


def test_output_size_is_height_by_width_or_one_side_for_a_square():
    assert parse_size_option("30x45") == (30, 45)  # 30 px high, 45 px wide
    assert parse_size_option("30X45") == (30, 45)
    assert parse_size_option("30") == (30, 30)


def test_segment_cli_aux_file_and_background_errors(tmp_path, tiny_dir, capsys):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    aux = tmp_path / "defs.txt"
    aux.write_text("cat >= a small pet\ndog: a pet\n")
    common = ["segment", str(tmp_path / "a.png"), "--classes", "sky,cat,dog", "-o",
              str(tmp_path / "out"), "--model", f"local-dir:{tiny_dir}", "--pretrained", "",
              "--cache-dir", str(tmp_path / "cache"), "--aux-file", str(aux)]  # fmt: skip

    def error_of(*extra: str) -> str:
        assert main([*common, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("itaclip segment: error: ")
        return err.removeprefix("itaclip segment: error: ")

    assert error_of("--background", "0").startswith(f"--aux-file: {aux}:2: expected 'name >=")
    aux.write_text("cat >= a small pet\nbird >= a pet\n")
    assert error_of("--background", "sky").startswith(f"--aux-file: {aux}:2: expected a text for")
    assert error_of("--background", "tree").startswith("--background 'tree' names none of")
    assert error_of("--background", "3") == "--background 3 is not a class index in [0, 3)\n"
    assert not (tmp_path / "out").exists()
    assert main([*common, "--background", "0", "--aux-ignore-names", "--stride", "224"]) == 0
