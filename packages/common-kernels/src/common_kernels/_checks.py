"""Input validation shared by every kernel: each error names the argument and the accepted range."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


_value_checks_override: bool | None = None


@contextlib.contextmanager
def value_checks(enabled: bool = True) -> Iterator[None]:
    """Check (or not) that the inputs of ``knn_attention`` and ``fft_phase_fusion`` are finite
    in every call inside.

    By default the values are checked on the CPU and not on CUDA, where the check would
    synchronise with the host on every call; switch them on to debug NaNs on a GPU, e.g.
    ``with value_checks(): model(x)``. Not thread-local.

    Args:
        enabled: check values (True) or skip the checks (False) inside the block.
    """
    global _value_checks_override
    previous, _value_checks_override = _value_checks_override, bool(enabled)
    try:
        yield
    finally:
        _value_checks_override = previous


def values_checked(check_values: bool | None, device: torch.device) -> bool:
    """Whether a call checks its input values: ``check_values`` if given, else the innermost
    :func:`value_checks` block, else only on the CPU (a check on CUDA syncs with the host)."""
    if check_values is not None:
        return bool(check_values)
    if _value_checks_override is not None:
        return _value_checks_override
    return device.type == "cpu"


def check_tensor(name: str, t: object) -> torch.Tensor:
    """Raise ``TypeError`` unless ``t`` is a tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_float(name: str, t: torch.Tensor, *, finite: bool = True) -> torch.Tensor:
    """Require a floating tensor (fp16/bf16/fp32/fp64) and, by default, finite values."""
    check_tensor(name, t)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), "
            f"got {t.dtype}"
        )
    if finite and t.numel() and not all_finite(t):
        raise ValueError(f"{name} contains NaN or Inf values; all entries must be finite")
    return t


def all_finite(t: torch.Tensor) -> bool:
    """One reduction pass (NaN propagates through min/max, Inf shows as an extreme)."""
    low, high = torch.aminmax(t.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high))


def check_ndim(name: str, t: torch.Tensor, ndims: Sequence[int], layout: str) -> torch.Tensor:
    """Require ``t.ndim`` in ``ndims``; ``layout`` describes the expected shape in words."""
    if t.ndim not in tuple(ndims):
        raise ValueError(f"{name} must have shape {layout}, got {tuple(t.shape)}")
    return t


def check_index_range(name: str, low: int, high: int, upper: int) -> None:
    """Raise ``IndexError`` unless ``0 <= low`` and ``high < upper`` (an index tensor's range)."""
    if low < 0 or high >= upper:
        raise IndexError(
            f"{name} values must lie in [0, {upper - 1}] (N={upper}), got min {low} and max {high}"
        )


def check_positive_int(name: str, value: object, *, upper: int | None = None) -> int:
    """Require an int in ``[1, upper]`` (``upper`` inclusive when given)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1 or (upper is not None and value > upper):
        accepted = f"in [1, {upper}]" if upper is not None else ">= 1"
        raise ValueError(f"{name} must be {accepted}, got {value}")
    return value
