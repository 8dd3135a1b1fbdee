"""Lanczos regions vs PIL, streamed tiled decode vs common_kernels.tiled_apply, tiled encode,
BigTIFF and PIL writers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from common_kernels import tiled_apply
from pixelsmith.images import LanczosImage, MemmapImage, PILLanczosImage, TensorImage
from pixelsmith.io import check_output_path, collect_uint8, to_uint8, write_image, write_tiff
from pixelsmith.lanczos import axis_weights
from pixelsmith.tiling import decoded_rows, encode_tiled


def pil_float_resize(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """PIL's Lanczos on each channel as a mode 'F' image (double coefficients)."""
    channels = [
        np.asarray(Image.fromarray(c.numpy(), mode="F").resize((width, height), Image.LANCZOS))
        for c in pixels.float()
    ]
    return torch.from_numpy(np.stack(channels))


@pytest.mark.parametrize(
    ("src", "dst"), [((13, 17), (40, 29)), ((16, 16), (32, 32)), ((30, 24), (17, 50))]
)
def test_lanczos_matches_pil_float(src, dst):
    pixels = torch.rand(3, *src, generator=torch.Generator().manual_seed(0)) * 2 - 1
    image = LanczosImage(TensorImage(pixels), *dst)
    full = image.source.read(0, 0, *src)
    assert torch.equal(full, pixels)
    expected = pil_float_resize(pixels, *dst).clamp(-1, 1)
    torch.testing.assert_close(image.read(0, 0, *dst), expected, atol=2e-5, rtol=0)
    region = image.read(5, 3, dst[0] - 9, dst[1] - 7)  # any region equals the crop
    torch.testing.assert_close(
        region, expected[:, 5 : dst[0] - 4, 3 : dst[1] - 4], atol=2e-5, rtol=0
    )


def test_axis_weights_rows_sum_to_one_and_support():
    first, weights = axis_weights(10, 25, 0, 25)
    assert first == 0 and weights.shape == (25, 10)
    torch.testing.assert_close(weights.sum(1), torch.ones(25, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"output range must satisfy 0 <= start < stop <= 25"):
        axis_weights(10, 25, 20, 30)


@pytest.mark.parametrize(("height", "width"), [(48, 40), (36, 30)])  # 2x and 1.5x
def test_pil_lanczos_regions_equal_full_resize(height, width):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))
    full = np.asarray(image.resize((width, height), Image.LANCZOS), dtype=np.float32)
    full = torch.from_numpy(full / 127.5 - 1).permute(2, 0, 1)
    whole = PILLanczosImage(image, height, width)  # small: one resize, as the official code
    assert torch.equal(whole.read(0, 0, height, width), full)
    assert torch.equal(whole.read(8, 16, 24, 12), full[:, 8:32, 16:28])
    boxes = PILLanczosImage(image, height, width, max_pixels=100)  # region by region
    diff = (boxes.read(8, 16, 24, 12) - full[:, 8:32, 16:28]).abs().max()
    if height == 48:  # dyadic scale: box resizes are exact crops
        assert diff == 0
    else:  # PIL's coefficient rounding: at most one 8-bit level
        assert diff <= 2 / 255 + 1e-6


def test_memmap_image_round_trip(tmp_path):
    pixels = torch.rand(3, 10, 12) * 2 - 1
    store = MemmapImage(tmp_path / "img.f16", 10, 12)
    store.write_rows(0, pixels[:, :4])
    store.write_rows(4, pixels[:, 4:])
    assert torch.equal(store.read(2, 3, 5, 6), pixels[:, 2:7, 3:9].half().float())
    with pytest.raises(ValueError, match=r"is not inside the 10x12 image"):
        store.read(8, 0, 5, 2)


class LocalDecoder(torch.nn.Module):
    """A local 'decoder': 3x3 conv then nearest x8 upsampling (C=4 -> 3 channels)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, z):
        return F.interpolate(torch.tanh(self.conv(z)), scale_factor=8, mode="nearest")


@pytest.mark.parametrize(
    ("shape", "tile", "overlap"), [((20, 18), 8, 2), ((9, 30), 8, 3), ((5, 5), 8, 2)]
)
def test_streamed_decode_equals_tiled_apply(shape, tile, overlap):
    decoder = LocalDecoder()
    latents = torch.randn(1, 4, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        blocks = list(
            decoded_rows(decoder, latents, tile=tile, overlap=overlap, blend="linear", scale=8)
        )
        expected = tiled_apply(
            decoder, latents, tile=tile, stride=tile - overlap, scale=8, blend="linear"
        )
    tops = [top for top, _ in blocks]
    assert tops[0] == 0 and tops == sorted(tops)
    streamed = torch.cat([rows for _, rows in blocks], dim=1)
    assert streamed.shape == (3, shape[0] * 8, shape[1] * 8)
    torch.testing.assert_close(streamed, expected[0], atol=1e-6, rtol=1e-6)


def test_tiled_encode_of_a_local_encoder_is_exact():
    """A pointwise-in-blocks encoder (8x8 average pool) gives the same latent tiled or not."""
    pixels = torch.rand(3, 96, 80, generator=torch.Generator().manual_seed(2)) * 2 - 1

    def encode(x):
        mean = F.avg_pool2d(x, 8)[:, :3]  # (1, 3, h, w)
        mean = torch.cat([mean, mean[:, :1] * 2], 1)  # (1, 4, h, w)
        return mean, mean.abs() + 0.5

    mean, std = encode_tiled(
        encode, TensorImage(pixels), (12, 10), tile=4, overlap=1, blend="linear", scale=8
    )
    full_mean, full_std = encode(pixels[None])
    torch.testing.assert_close(mean, full_mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(std, full_std, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"source must be 96x88 px for a 12x11 latent, got 96x80"):
        encode_tiled(
            encode, TensorImage(pixels), (12, 11), tile=4, overlap=1, blend="linear", scale=8
        )


def make_blocks(pixels: torch.Tensor, cuts: list[int]):
    edges = [0, *cuts, pixels.shape[1]]
    return [(a, pixels[:, a:b]) for a, b in itertools.pairwise(edges)]


def test_bigtiff_streaming_equals_in_memory(tmp_path):
    pixels = torch.rand(3, 70, 45, generator=torch.Generator().manual_seed(3)) * 2.2 - 1.1
    path = write_tiff(iter(make_blocks(pixels, [7, 40, 41])), tmp_path / "x.tif", 70, 45, tile=32)
    expected = collect_uint8(iter(make_blocks(pixels, [30])), 70, 45)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
        assert tif.pages[0].tilelength == 32
        array = tif.asarray()
    assert np.array_equal(array, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tif"]  # no temporary left
    assert expected[0, 0].tolist() == to_uint8(pixels[:, :1, :1])[0, 0].tolist()
    assert expected.dtype == np.uint8 and expected.max() == 255 and expected.min() == 0  # clipped


def test_pil_writer_and_output_checks(tmp_path):
    pixels = torch.rand(3, 20, 16) * 2 - 1
    path = write_image(iter(make_blocks(pixels, [5])), tmp_path / "x.png", 20, 16)
    assert np.array_equal(
        np.asarray(Image.open(path)), collect_uint8(iter(make_blocks(pixels, [])), 20, 16)
    )
    with pytest.raises(ValueError, match=r"output must end with one of \.tif, \.tiff, \.png"):
        check_output_path(tmp_path / "x.gif", 8, 8)
    with pytest.raises(ValueError, match=r"too large for \.png"):
        check_output_path(tmp_path / "x.png", 32768, 32768)
    with pytest.raises(ValueError, match=r"output folder .* does not exist"):
        check_output_path(tmp_path / "missing" / "x.tif", 8, 8)
