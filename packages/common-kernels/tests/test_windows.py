import pytest
import torch

from common_kernels.windows import window_partition, window_reverse


@pytest.mark.parametrize(
    ("height", "width", "window"), [(8, 8, 4), (6, 9, 3), (4, 4, 4), (5, 7, 1)]
)
def test_round_trip_is_exact(height: int, width: int, window: int) -> None:
    x = torch.randn(2, height, width, 3)
    windows = window_partition(x, window)
    n_windows = (height // window) * (width // window)
    assert windows.shape == (2 * n_windows, window * window, 3)
    assert torch.equal(window_reverse(windows, window, height, width), x)


def test_swin_ordering_on_arange() -> None:
    batch, height, width, window = 2, 4, 6, 2
    x = torch.arange(batch * height * width).view(batch, height, width, 1)
    windows = window_partition(x, window)[..., 0]  # (B*nW, w*w)
    n_rows, n_cols = height // window, width // window
    for b in range(batch):
        for wh in range(n_rows):
            for ww in range(n_cols):
                expected = x[b, wh * window : (wh + 1) * window, ww * window : (ww + 1) * window]
                got = windows[(b * n_rows + wh) * n_cols + ww]
                assert torch.equal(got, expected.reshape(-1))
    # first window of the first image is rows 0-1, cols 0-1 in row-major order
    assert windows[0].tolist() == [0, 1, 6, 7]
    assert windows[1].tolist() == [2, 3, 8, 9]


def test_partition_errors() -> None:
    with pytest.raises(ValueError, match=r"window must divide H and W .*H=6.*W=8.*window=4"):
        window_partition(torch.zeros(1, 6, 8, 2), 4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, H, W, C\)"):
        window_partition(torch.zeros(6, 8, 2), 2)
    with pytest.raises(ValueError, match=r"window must be >= 1"):
        window_partition(torch.zeros(1, 6, 8, 2), 0)
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        window_partition([[1.0]], 2)


def test_reverse_errors() -> None:
    windows = torch.zeros(8, 4, 3)
    with pytest.raises(ValueError, match=r"window must divide H and W .*H=5"):
        window_reverse(windows, 2, 5, 4)
    with pytest.raises(ValueError, match=r"windows must have shape \(B\*4, 4, C\)"):
        window_reverse(torch.zeros(6, 4, 3), 2, 4, 4)
    with pytest.raises(ValueError, match=r"windows must have shape \(B\*4, 9, C\)"):
        window_reverse(windows, 3, 6, 6)
    with pytest.raises(ValueError, match=r"height must be >= 1"):
        window_reverse(windows, 2, 0, 4)
