"""PAMR against a per-pixel loop written from the method's description."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from itaclip.refinement import pamr


def reference_pamr(image: np.ndarray, mask: np.ndarray, iterations: int, dilations) -> np.ndarray:
    """image (C, H, W), mask (Q, H, W); replicate padding == clamped coordinates."""
    _c, h, w = image.shape
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]

    def at(arr, y, x):
        return arr[:, min(max(y, 0), h - 1), min(max(x, 0), w - 1)]

    aff = np.zeros((8 * len(dilations), h, w))
    for y in range(h):
        for x in range(w):
            samples = [at(image, y + d * dy, x + d * dx) for d in dilations for dy, dx in offsets]
            std = np.std(np.stack(samples), axis=0, ddof=1)  # (C,)
            logits = []
            for d in dilations:
                for dy, dx in offsets:
                    if (dy, dx) == (0, 0):
                        continue
                    diff = np.abs(at(image, y + d * dy, x + d * dx) - image[:, y, x])
                    logits.append(np.mean(-diff / (1e-8 + 0.1 * std)))
            logits = np.array(logits)
            e = np.exp(logits - logits.max())
            aff[:, y, x] = e / e.sum()
    for _ in range(iterations):
        new = np.zeros_like(mask)
        for y in range(h):
            for x in range(w):
                k = 0
                for d in dilations:
                    for dy, dx in offsets:
                        if (dy, dx) == (0, 0):
                            continue
                        new[:, y, x] += aff[k, y, x] * at(mask, y + d * dy, x + d * dx)
                        k += 1
        mask = new
    return mask


@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_pamr_matches_reference_for_any_chunk(chunk):
    rng = np.random.default_rng(0)
    image = rng.random((3, 9, 11))
    mask = rng.standard_normal((5, 9, 11))
    expected = reference_pamr(image, mask, 3, (1, 2))
    out = pamr(torch.from_numpy(image)[None], torch.from_numpy(mask)[None], 3, (1, 2), chunk)
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_pamr_default_dilations_on_small_image_and_constant_mask():
    image = torch.rand(1, 3, 20, 24)
    mask = torch.full((1, 4, 20, 24), 0.5)
    out = pamr(image, mask)  # 10 iterations, dilations (8, 16): rows of weights sum to 1
    torch.testing.assert_close(out, mask)


def test_pamr_shape_error():
    with pytest.raises(ValueError, match="must share B, H, W"):
        pamr(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 8, 9))
