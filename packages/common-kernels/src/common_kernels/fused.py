"""Fused elementwise steps of a transformer layer's inference, on the C++ CPU kernels where they
run and in PyTorch elsewhere (the same values within float rounding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common_kernels import _cpu_kernels


def add_layer_norm_(x: Tensor, y: Tensor, norm: nn.LayerNorm) -> Tensor:
    """``x += norm(y)`` in place: a post-norm residual. Returns ``x``.

    On the CPU without autograd (float32, contiguous, a LayerNorm over the last dim with weight
    and bias) one C++ pass per row reads ``y`` and updates ``x`` (2-2.6x faster than
    ``x.add_(norm(y))`` at C = 20-64 on this project's CPU); otherwise exactly that.

    Args:
        x: (..., C) tensor, updated in place.
        y: (..., C) tensor of x's shape.
        norm: the ``nn.LayerNorm`` of normalized shape (C,).
    """
    if _fused_runs(x, y, norm):
        return _cpu_kernels.ops().add_layer_norm_(x, y, norm.weight, norm.bias, norm.eps)
    return x.add_(norm(y))


def bias_gelu_(x: Tensor, bias: Tensor | None) -> Tensor:
    """``gelu(x + bias)`` (erf GELU, as ``F.gelu``), in ``x``'s memory where the kernel runs: an
    MLP's activation over its first linear layer's output (``bias=None``), or over a product
    made without the bias. Returns the result; do not use ``x`` after.

    On the CPU without autograd (float32, contiguous) one C++ pass adds the bias and applies
    the GELU in place (torch's erf formula, its exponential by the attention's polynomial:
    within 5e-7 x max(1, |x|) of the fp64 GELU; 0.82x ``F.gelu``'s time on one core of this
    project's CPU); otherwise
    ``F.gelu(x + bias)``, a new tensor.

    Args:
        x: (..., C) tensor.
        bias: (C,) tensor or ``None``.
    """
    if _plain_cpu_inference(x) and (bias is None or bias.shape == x.shape[-1:]):
        return _cpu_kernels.ops().bias_gelu_(x, bias)
    return F.gelu(x if bias is None else x + bias)


def _plain_cpu_inference(x: Tensor) -> bool:
    """Whether an in-place C++ pass may take ``x``: on the CPU, float32, contiguous, without
    autograd and outside ``torch.compile`` (where inductor fuses the elementwise work itself),
    with the kernels loaded."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or x.device.type != "cpu":
        return False
    if x.dtype != torch.float32 or not x.is_contiguous() or x.ndim == 0:
        return False
    return _cpu_kernels.status()[0]


def _fused_runs(x: Tensor, y: Tensor, norm: nn.LayerNorm) -> bool:
    plain = y.dtype == torch.float32 and x.shape == y.shape and y.is_contiguous()
    affine = norm.weight is not None and norm.bias is not None
    if not (plain and affine and tuple(norm.normalized_shape) == x.shape[-1:]):
        return False
    return _plain_cpu_inference(x)
