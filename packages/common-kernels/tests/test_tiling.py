import pytest
import torch
import torch.nn.functional as F

from common_kernels.tiling import OverlapAccumulator, Tile, blend_weights, tile_grid, tiled_apply

BLENDS = ["none", "linear", "gaussian"]


def dyadic_image(*shape: int, seed: int = 0) -> torch.Tensor:
    """Values k/8 with |k| < 64: few significant bits, so blended sums are exact."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-63, 64, shape, generator=gen).float() / 8


def expected_offsets(size: int, tile: int, stride: int) -> list[int]:
    count = max(size - tile + stride - 1, 0) // stride + 1
    return [max(min(i * stride, size - tile), 0) for i in range(count)]


def test_tile_slices() -> None:
    t = Tile(top=2, left=3, height=4, width=5)
    assert t.slices == (slice(2, 6), slice(3, 8))
    assert torch.zeros(10, 10)[t.slices].shape == (4, 5)


def test_tile_grid_example() -> None:
    tiles = tile_grid(10, 11, 4, 3)
    assert sorted({t.top for t in tiles}) == [0, 3, 6]
    assert sorted({t.left for t in tiles}) == [0, 3, 6, 7]
    assert len(tiles) == 12
    assert tiles[:5] == [
        Tile(0, 0, 4, 4),
        Tile(0, 3, 4, 4),
        Tile(0, 6, 4, 4),
        Tile(0, 7, 4, 4),
        Tile(3, 0, 4, 4),
    ]


@pytest.mark.parametrize("tile", [1, 4, 7])
def test_tile_grid_formula_border_and_coverage(tile: int) -> None:
    for size in range(1, 26):
        for stride in range(1, tile + 1):
            tiles = tile_grid(size, size + 3, tile, stride)
            for axis_size, offsets, lengths in [
                (size, [t.top for t in tiles], [t.height for t in tiles]),
                (size + 3, [t.left for t in tiles], [t.width for t in tiles]),
            ]:
                assert sorted(set(offsets)) == expected_offsets(axis_size, tile, stride)
                assert set(lengths) == {min(tile, axis_size)}
                assert max(o + n for o, n in zip(offsets, lengths, strict=True)) == axis_size
            covered = torch.zeros(size, size + 3, dtype=torch.int64)
            for t in tiles:
                covered[t.slices] += 1
            assert bool((covered > 0).all())


def test_tile_grid_pairs_and_row_major_order() -> None:
    tiles = tile_grid(9, 20, (4, 8), (3, 5))
    assert len(tiles) == 3 * 4
    assert [(t.top, t.left) for t in tiles] == [
        (top, left) for top in (0, 3, 5) for left in (0, 5, 10, 12)
    ]
    assert {(t.height, t.width) for t in tiles} == {(4, 8)}


def test_image_smaller_than_tile_is_clipped() -> None:
    assert tile_grid(3, 5, 8, 4) == [Tile(0, 0, 3, 5)]
    assert tile_grid(3, 10, 8, 4) == [Tile(0, 0, 3, 8), Tile(0, 2, 3, 8)]
    assert tile_grid(8, 8, 8, 1) == [Tile(0, 0, 8, 8)]


def test_tile_grid_errors() -> None:
    with pytest.raises(
        ValueError, match=r"stride\[0\] must be in \[1, tile\[0\]\] = \[1, 4\].*got 5"
    ):
        tile_grid(10, 10, 4, 5)
    with pytest.raises(
        ValueError, match=r"stride\[1\] must be in \[1, tile\[1\]\] = \[1, 3\].*got 4"
    ):
        tile_grid(10, 10, (4, 3), 4)
    with pytest.raises(ValueError, match=r"stride\[0\] must be >= 1, got 0"):
        tile_grid(10, 10, 4, 0)
    with pytest.raises(ValueError, match=r"tile\[1\] must be >= 1, got 0"):
        tile_grid(10, 10, (4, 0), 1)
    with pytest.raises(ValueError, match=r"tile must be an int >= 1 or an \(h, w\) pair"):
        tile_grid(10, 10, (4, 4, 4), 1)
    with pytest.raises(TypeError, match=r"tile must be an int >= 1 or an \(h, w\) pair.*float"):
        tile_grid(10, 10, 4.0, 1)
    with pytest.raises(TypeError, match=r"stride\[1\] must be an int, got float"):
        tile_grid(10, 10, 4, (1, 2.0))
    with pytest.raises(ValueError, match=r"height must be >= 1, got 0"):
        tile_grid(0, 10, 4, 2)


@pytest.mark.parametrize("kind", BLENDS)
@pytest.mark.parametrize(("height", "width"), [(1, 1), (2, 5), (8, 8), (13, 6), (64, 33)])
def test_blend_weights_are_positive_fp32(kind: str, height: int, width: int) -> None:
    w = blend_weights(height, width, kind)
    assert w.shape == (height, width) and w.dtype == torch.float32
    assert bool((w > 0).all()) and bool((w <= 1).all())
    assert torch.equal(w, w.flip(0)) and torch.equal(w, w.flip(1))
    assert torch.equal(w * 4096, (w * 4096).round())  # multiples of 1/64 per axis


def test_blend_weight_profiles() -> None:
    assert torch.equal(blend_weights(4, 6, "none"), torch.ones(4, 6))
    linear = blend_weights(1, 16, "linear")[0]
    assert torch.equal(linear[:8], torch.arange(1, 9) / 8)  # ramp up from the edge
    gaussian = blend_weights(1, 32, "gaussian")[0]
    pos = torch.arange(32)
    ideal = torch.exp(-0.5 * ((pos - 15.5) / 8) ** 2)
    assert (gaussian - ideal).abs().max() <= 0.5 / 64
    assert bool((gaussian[:16].diff() >= 0).all())
    with pytest.raises(ValueError, match=r"kind must be one of 'none', 'linear', 'gaussian'"):
        blend_weights(4, 4, "cosine")


@pytest.mark.parametrize("blend", BLENDS)
def test_accumulator_reassembles_identity_tiles_exactly(blend: str) -> None:
    x = dyadic_image(2, 3, 13, 10)
    acc = OverlapAccumulator(x.shape, blend=blend)
    for t in tile_grid(13, 10, (5, 4), (2, 3)):
        acc.add(t, x[(..., *t.slices)])
    assert torch.equal(acc.result(), x)


def test_accumulator_averages_with_weights() -> None:
    acc = OverlapAccumulator((1, 3))
    acc.add(Tile(0, 0, 1, 2), torch.tensor([[1.0, 2.0]]))
    acc.add(Tile(0, 1, 1, 2), torch.tensor([[4.0, 6.0]]))
    assert torch.equal(acc.result(), torch.tensor([[1.0, 3.0, 6.0]]))


def test_accumulator_errors() -> None:
    acc = OverlapAccumulator((2, 6, 6), blend="linear")
    acc.add(Tile(0, 0, 4, 4), torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match=r"20 canvas pixels were never covered.*row 0, col 4"):
        acc.result()
    with pytest.raises(ValueError, match=r"values must have shape \(2, 4, 4\).*got \(2, 4, 3\)"):
        acc.add(Tile(0, 0, 4, 4), torch.ones(2, 4, 3))
    with pytest.raises(ValueError, match=r"values must have shape \(2, 4, 4\).*got \(3, 4, 4\)"):
        acc.add(Tile(0, 0, 4, 4), torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match=r"tile must lie inside the canvas of size \(6, 6\)"):
        acc.add(Tile(4, 0, 4, 4), torch.ones(2, 4, 4))
    with pytest.raises(TypeError, match=r"values must be a floating tensor"):
        acc.add(Tile(0, 0, 4, 4), torch.ones(2, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"shape must be \(\.\.\., H, W\)"):
        OverlapAccumulator((5,))
    with pytest.raises(ValueError, match=r"shape\[1\] must be >= 1, got 0"):
        OverlapAccumulator((5, 0))
    with pytest.raises(ValueError, match=r"^blend must be one of 'none', 'linear', 'gaussian'"):
        OverlapAccumulator((5, 5), blend="box")


SWEEP = [
    ((1, 1), 4, 1),
    ((5, 7), 4, 1),
    ((5, 7), 4, 3),
    ((16, 16), 4, 4),
    ((17, 9), 4, 2),
    ((17, 9), (8, 5), (3, 2)),
    ((17, 9), (8, 5), (8, 5)),
    ((6, 30), (8, 5), (8, 1)),
]


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize(("size", "tile", "stride"), SWEEP)
def test_tiled_identity_returns_input_exactly(blend: str, size, tile, stride) -> None:
    x = dyadic_image(2, 3, *size)
    for batch_size in (1, 3):
        y = tiled_apply(
            lambda t: t, x, tile=tile, stride=stride, blend=blend, batch_size=batch_size
        )
        assert torch.equal(y, x)


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize(("size", "tile", "stride"), SWEEP)
def test_tiled_nearest_upsample_equals_full_image(blend: str, size, tile, stride) -> None:
    x = dyadic_image(1, 2, *size, seed=1)

    def upsample(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, scale_factor=2, mode="nearest")

    y = tiled_apply(upsample, x, tile=tile, stride=stride, scale=2, blend=blend, batch_size=2)
    assert torch.equal(y, upsample(x))


def test_tiled_identity_on_random_data_is_close() -> None:
    x = torch.randn(1, 3, 23, 19, generator=torch.Generator().manual_seed(2))
    for blend in BLENDS:
        y = tiled_apply(lambda t: t, x, tile=8, stride=5, blend=blend)
        assert torch.allclose(y, x, rtol=1e-6, atol=1e-6)


def test_fn_may_change_channels_and_dtype() -> None:
    x = dyadic_image(2, 3, 11, 12)
    y = tiled_apply(lambda t: torch.cat([t, 2 * t], dim=1).double(), x, tile=5, stride=3)
    assert y.dtype == torch.float64
    assert torch.equal(y, torch.cat([x, 2 * x], dim=1).double())
    y16 = tiled_apply(lambda t: t.half(), x, tile=5, stride=3, blend="gaussian")
    assert y16.dtype == torch.float16 and torch.equal(y16, x.half())


def test_batching_stacks_crops_along_dim_0() -> None:
    x = dyadic_image(2, 1, 10, 10)
    calls = []

    def record(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape[0])
        return t

    tiled_apply(record, x, tile=4, stride=3, batch_size=4)  # 3 x 3 = 9 tiles of 2 images
    assert calls == [8, 8, 2]
    calls.clear()
    tiled_apply(record, x, tile=4, stride=3, batch_size=5)
    assert calls == [10, 8]
    calls.clear()
    tiled_apply(record, x, tile=4, stride=3, batch_size=100)
    assert calls == [18]


def test_tile_progress_is_reported_through_common_kernels_progress(monkeypatch) -> None:
    """Asked for, the tiles' progress goes through ``common_kernels.runtime.progress`` (a bar on a
    terminal, plain lines in a log): one item per tile, with the tile count as total."""
    from common_kernels import tiling

    x = dyadic_image(1, 1, 8, 8)
    calls = []

    def recording(iterable, **kwargs):
        calls.append(kwargs)
        items = list(iterable)
        calls[-1]["items"] = len(items)
        return iter(items)

    monkeypatch.setattr(tiling, "show_progress", recording)
    assert torch.equal(tiled_apply(lambda t: t, x, tile=4, stride=4, progress=True), x)
    assert calls == [{"desc": "tiles", "total": 4, "unit": "tiles", "disable": False, "items": 4}]
    tiled_apply(lambda t: t, x, tile=4, stride=4)
    assert calls[-1]["disable"] is True


def test_tiled_apply_errors() -> None:
    x = dyadic_image(1, 3, 10, 10)
    with pytest.raises(ValueError, match=r"fn output must have shape \(1, C_out, 8, 8\).*got"):
        tiled_apply(lambda t: t, x, tile=4, stride=2, scale=2)
    with pytest.raises(ValueError, match=r"fn output must have shape \(3, C_out, 4, 4\).*got"):
        tiled_apply(lambda t: t[:1], x, tile=4, stride=2, batch_size=3)
    with pytest.raises(TypeError, match=r"fn output must be a torch.Tensor"):
        tiled_apply(lambda t: t.numpy(), x, tile=4, stride=2)
    with pytest.raises(ValueError, match=r"stride\[0\] must be in \[1, tile\[0\]\] = \[1, 4\]"):
        tiled_apply(lambda t: t, x, tile=4, stride=6)
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\)"):
        tiled_apply(lambda t: t, x[0], tile=4, stride=2)
    with pytest.raises(ValueError, match=r"scale must be >= 1, got 0"):
        tiled_apply(lambda t: t, x, tile=4, stride=2, scale=0)
    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0"):
        tiled_apply(lambda t: t, x, tile=4, stride=2, batch_size=0)
    with pytest.raises(ValueError, match=r"^blend must be one of 'none', 'linear', 'gaussian'"):
        tiled_apply(lambda t: t, x, tile=4, stride=2, blend="box")
    for bad in (float("nan"), float("inf")):
        poisoned = x.clone()
        poisoned[0, 0, 1, 1] = bad
        with pytest.raises(ValueError, match=r"x contains NaN or Inf values"):
            tiled_apply(lambda t: t, poisoned, tile=4, stride=2)
