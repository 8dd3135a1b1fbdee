"""PCA-to-RGB: recovers planted directions, deterministic, both eigen paths agree, PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffeat.viz import pca_components, pca_rgb, save_pca_pngs


def planted(batch=2, channels=12, height=10, width=14, seed=0):
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(channels, 3, generator=generator, dtype=torch.float64))[0].T
    n = batch * height * width
    scores = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    scores = torch.linalg.qr(scores - scores.mean(0))[0]  # centred, exactly uncorrelated
    scores = scores * torch.tensor([5.0, 3.0, 2.0], dtype=torch.float64) * n**0.5
    noise = 0.01 * torch.randn(
        batch * height * width, channels, generator=generator, dtype=torch.float64
    )
    pixels = scores @ basis + noise + 4.0  # (N, C), offset removed by the PCA mean
    feature = pixels.reshape(batch, height, width, channels).permute(0, 3, 1, 2)  # (B, C, h, w)
    return feature.float(), basis


def test_components_recover_planted_directions_in_order():
    feature, basis = planted()
    mean, components = pca_components(feature)
    assert components.shape == (3, 12) and mean.shape == (12,)
    overlap = (components @ basis.T).abs()  # (3, 3), ~identity
    torch.testing.assert_close(overlap, torch.eye(3, dtype=torch.float64), atol=1e-3, rtol=0)
    peaks = components.abs().argmax(1)
    assert torch.all(components[torch.arange(3), peaks] > 0)  # sign convention


def test_gram_path_matches_covariance_path_when_channels_exceed_pixels():
    feature, basis = planted(batch=1, channels=300, height=4, width=5)
    _, components = pca_components(feature)  # 20 pixels < 300 channels: Gram trick
    overlap = (components @ basis.T).abs()
    torch.testing.assert_close(overlap, torch.eye(3, dtype=torch.float64), atol=5e-3, rtol=0)


def test_rgb_images_shape_determinism_and_pngs(tmp_path):
    feature, _ = planted()
    rgb = pca_rgb(feature, size=(20, 28))
    assert rgb.shape == (2, 20, 28, 3) and rgb.dtype == np.uint8
    assert rgb.min() == 0 and rgb.max() == 255
    assert np.array_equal(rgb, pca_rgb(feature, size=(20, 28)))
    assert np.array_equal(pca_rgb(feature[0]), pca_rgb(feature[:1]))
    paths = [tmp_path / "a.png", tmp_path / "sub" / "b.png"]
    save_pca_pngs(feature, paths, size=(20, 28))
    for path, image in zip(paths, rgb, strict=True):
        assert np.array_equal(np.asarray(Image.open(path)), image)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "b.png", "sub"]  # no temp files
    with pytest.raises(ValueError, match="paths: 1 paths for 2 images"):
        save_pca_pngs(feature, paths[:1])
    few = pca_rgb(torch.rand(1, 2, 4, 4))  # fewer channels than components: zero third channel
    assert few.shape == (1, 4, 4, 3)
