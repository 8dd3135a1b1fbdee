"""Non-overlapping square windows over channels-last feature maps (Swin ordering)."""

from __future__ import annotations

from einops import rearrange
from torch import Tensor

from ._checks import check_ndim, check_positive_int, check_tensor


def _check_window_divides(window: int, height: int, width: int) -> None:
    """Raise ``ValueError`` unless ``window`` divides both ``height`` and ``width``."""
    if height % window or width % window:
        raise ValueError(
            f"window must divide H and W (accepted: a common divisor of H={height} and "
            f"W={width}), got window={window}"
        )


def window_partition(x: Tensor, window: int) -> Tensor:
    """Split a feature map into non-overlapping ``window x window`` windows.

    Args:
        x: (B, H, W, C) tensor; H and W must be multiples of ``window``.
        window: window side length.

    Returns:
        (B*nW, window*window, C) tensor, windows ordered by batch, then window row, then
        window column; tokens inside a window are row-major.
    """
    check_ndim("x", check_tensor("x", x), (4,), "(B, H, W, C)")
    check_positive_int("window", window)
    _check_window_divides(window, x.shape[1], x.shape[2])
    # (B, H, W, C) -> (B*nW, w*w, C)
    return rearrange(x, "b (nh wh) (nw ww) c -> (b nh nw) (wh ww) c", wh=window, ww=window)


def window_reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: (B*nW, window*window, C) tensor in :func:`window_partition` order.
        window: window side length.
        height: H of the original feature map (a multiple of ``window``).
        width: W of the original feature map (a multiple of ``window``).

    Returns:
        (B, H, W, C) tensor.
    """
    check_ndim("windows", check_tensor("windows", windows), (3,), "(B*nW, window*window, C)")
    check_positive_int("window", window)
    check_positive_int("height", height)
    check_positive_int("width", width)
    _check_window_divides(window, height, width)
    n_h, n_w = height // window, width // window
    if windows.shape[1] != window * window or windows.shape[0] % (n_h * n_w):
        raise ValueError(
            f"windows must have shape (B*{n_h * n_w}, {window * window}, C) for window={window}, "
            f"height={height}, width={width}, got {tuple(windows.shape)}"
        )
    # (B*nW, w*w, C) -> (B, H, W, C)
    return rearrange(
        windows,
        "(b nh nw) (wh ww) c -> b (nh wh) (nw ww) c",
        nh=n_h,
        nw=n_w,
        wh=window,
        ww=window,
    )
