"""Every bundled model restores one real image to the PSNR its README row states, to 0.005 dB.

The rows are read from the "Pinned outputs" table of the package README, so a change in the
block's maths, in the weights or in the degradations shows up here. The images come from the
repository's shared data folder (``$SEMANIR_DATA`` or ``../shared/data``): skipped without it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from semanir.bundled import BUNDLED_MODELS
from semanir.data.datasets import index_generator
from semanir.data.degradations import (
    add_gaussian_noise,
    bicubic_downscale,
    bicubic_resize,
    jpeg_compress,
)
from semanir.inference import load_model, restore
from semanir.io import read_image
from semanir.metrics import psnr

# Tight enough that a transposed position bias (-0.013 dB on the gray model) fails, loose
# enough for the last digits of fp32 arithmetic on another CPU.
TOLERANCE_DB = 0.005
README = Path(__file__).resolve().parents[1] / "README.md"
DATA = Path(
    os.environ.get("SEMANIR_DATA", Path(__file__).resolve().parents[3].parent / "shared" / "data")
)
ROW = re.compile(
    r"^\| `(?P<model>\w+)` \| `(?P<image>[\w/.]+)` \| (?P<degradation>[^|]+?) \| "
    r"(?P<before>[\d.]+) \| (?P<after>[\d.]+) \|$"
)


def pinned_rows() -> list[dict[str, str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("### Pinned outputs", 1)[1].split("\n#", 1)[0]
    return [m.groupdict() for line in section.splitlines() if (m := ROW.match(line.strip()))]


def degrade(image: torch.Tensor, degradation: str) -> tuple[torch.Tensor, dict, int]:
    """The degraded image, the metric options and the upscale of a README degradation."""
    if match := re.fullmatch(r"Gaussian noise sigma (\d+), seed (\d+)", degradation):
        sigma, seed = float(match[1]), int(match[2])
        return add_gaussian_noise(image, sigma, index_generator(seed, 0)), {}, 1
    if match := re.fullmatch(r"JPEG quality (\d+)", degradation):
        return jpeg_compress(image, int(match[1])), {}, 1
    if match := re.fullmatch(r"bicubic x(\d), Y channel, border (\d)", degradation):
        scale = int(match[1])
        options = {"y_channel": True, "crop_border": int(match[2])}
        return bicubic_downscale(image, scale), options, scale
    raise AssertionError(f"unknown degradation in the README: {degradation!r}")


def test_every_bundled_model_has_a_pinned_row() -> None:
    assert {row["model"] for row in pinned_rows()} == set(BUNDLED_MODELS)


@pytest.mark.parametrize("row", pinned_rows(), ids=lambda row: row["model"])
def test_bundled_model_restores_to_the_pinned_psnr(row: dict[str, str]) -> None:
    path = DATA / row["image"]
    if not path.is_file():
        pytest.skip(f"{path} is not here (set SEMANIR_DATA to the shared data folder)")
    entry = BUNDLED_MODELS[row["model"]]
    image = read_image(path, channels=entry.channels)
    if entry.scale > 1:  # SR: the high-resolution image cropped to a multiple of the scale
        image = image[:, : image.shape[1] // entry.scale * entry.scale,
                      : image.shape[2] // entry.scale * entry.scale]  # fmt: skip
    degraded, options, scale = degrade(image, row["degradation"])
    restored = restore(load_model(row["model"]), degraded[None])[0]
    baseline = bicubic_resize(degraded, scale) if scale > 1 else degraded
    before = float(psnr(baseline, image, **options))
    after = float(psnr(restored, image, **options))
    assert abs(before - float(row["before"])) < TOLERANCE_DB, before
    assert abs(after - float(row["after"])) < TOLERANCE_DB, after
