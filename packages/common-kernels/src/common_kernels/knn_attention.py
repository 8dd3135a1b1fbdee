"""KNN-sparse attention: each query attends to its K neighbours only.

out[b, h, i] = sum_j softmax_j(scale * q_i . k_{idx[i, j]} + bias[i, idx[i, j]]) * v_{idx[i, j]}

Duplicate entries in ``idx`` are separate softmax terms (the sum runs over the K slots), and every
backend agrees on that: the dense backends add log(multiplicity) to the logits.

Backends (NATTEN-style, chosen explicitly or by ``"auto"``):

- ``reference``: dense N x N logits with -inf outside the neighbours, plain matmul + softmax.
  Runs in any float dtype, fp64 included; the oracle for tests.
- ``mask``: dense masked ``scaled_dot_product_attention`` (the paper's Torch-Mask); O(N^2) memory
  for the additive mask.
- ``gather``: torch gather of the neighbours' K/V rows (Torch-Gather); O(N K d) memory.
- ``triton``: fused gather + online softmax that never materialises the gathered K/V, saves the
  log-sum-exp, and has a deterministic (transposed neighbour list) or atomic backward.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from common_kernels import _triton_knn_attention as _tk
from common_kernels._checks import check_float, check_index, check_ndim, check_tensor

Backend = Literal["auto", "reference", "mask", "gather", "triton"]
BACKENDS: tuple[str, ...] = ("reference", "mask", "gather", "triton")

# CPU policy of "auto", measured by benchmarks/run.py on a 2-core x86_64 machine (tables in the
# package README): gathering wins once the neighbour sets are a small share of the sequence; the
# share is smaller with a backward pass, whose scatter-add into dK/dV is memory bound. Otherwise
# the dense masked SDPA wins.
_GATHER_MAX_K_SHARE = {False: 1 / 64, True: 1 / 256}  # keyed by "needs a backward"
# Registers hold a (BLOCK_M, BLOCK_K, head_dim) tile per program; past this it spills.
_TRITON_MAX_HEAD_DIM = 256


def knn_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    *,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    backend: Backend = "auto",
    deterministic: bool = True,
) -> torch.Tensor:
    """Attention of every query over its K neighbours.

    Args:
        q, k, v: (B, heads, N, d) tensors of one floating dtype on one device.
        idx: (B, N, K) neighbour indices shared across heads, or (B, heads, N, K) per head;
            int32/int64 values in [0, N). Duplicates count as separate softmax terms.
        scale: logit scale; defaults to d ** -0.5.
        bias: optional additive bias table (heads, N, N) or (B|1, heads|1, N, N), gathered at
            the neighbours (e.g. a relative-position bias). Differentiable.
        backend: "auto", "reference", "mask", "gather" or "triton".
        deterministic: triton only: backward through a transposed neighbour list (bitwise
            reproducible) instead of atomics.

    Returns:
        (B, heads, N, d) tensor in q's dtype.
    """
    bias = _validate(q, k, v, idx, bias)
    scale = q.shape[-1] ** -0.5 if scale is None else _check_scale(scale)
    if backend == "auto":
        backend = select_backend(q, k, v, idx, bias)
    elif backend not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto', *BACKENDS)}, got {backend!r}")
    ok, reason = _can_run_validated(backend, q, bias)
    if not ok:
        raise RuntimeError(f"backend {backend!r} cannot run here: {reason}")
    if backend == "reference":
        return _reference(q, k, v, idx, scale, bias)
    if backend == "mask":
        return _masked_sdpa(q, k, v, idx, scale, bias)
    if backend == "gather":
        return _gather(q, k, v, idx, scale, bias)
    return _tk.triton_knn_attention(q, k, v, idx, scale, bias, deterministic=deterministic)


def can_run(
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> tuple[bool, str]:
    """Whether ``backend`` can run on these inputs, and if not, why (in words).

    Invalid inputs raise the same errors as :func:`knn_attention`.
    """
    bias = _validate(q, k, v, idx, bias)
    if backend == "auto":
        return True, ""
    if backend not in BACKENDS:
        return False, f"unknown backend {backend!r}; choose one of {('auto', *BACKENDS)}"
    return _can_run_validated(backend, q, bias)


def select_backend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> str:
    """The backend ``"auto"`` picks for validated inputs.

    CUDA with Triton: ``triton``. On the CPU (where Triton only interprets, for tests) the policy
    measured by the benchmark: ``gather`` when K <= N/64 (K <= N/256 when a backward will run),
    else ``mask``.
    """
    if q.is_cuda and _can_run_validated("triton", q, bias)[0]:
        return "triton"
    tensors = (q, k, v) if bias is None else (q, k, v, bias)
    needs_backward = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    n, n_neighbours = q.shape[-2], idx.shape[-1]
    if n_neighbours <= _GATHER_MAX_K_SHARE[needs_backward] * n:
        return "gather"
    return "mask"


def _can_run_validated(
    backend: str, q: torch.Tensor, bias: torch.Tensor | None
) -> tuple[bool, str]:
    if backend in ("reference", "gather"):
        return True, ""
    if backend == "mask":
        if q.dtype == torch.float64 and q.is_cuda:
            return False, "scaled_dot_product_attention has no float64 kernel on CUDA"
        return True, ""
    ok, reason = _tk.triton_status(q.device)
    if not ok:
        return False, reason
    if q.dtype == torch.float64:
        return (
            False,
            "the triton kernels take float16/bfloat16/float32; use 'reference' for float64",
        )
    if q.shape[-1] > _TRITON_MAX_HEAD_DIM:
        return False, f"head dim {q.shape[-1]} exceeds the triton kernel's {_TRITON_MAX_HEAD_DIM}"
    return True, ""


def _check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float, got {scale!r}")
    return float(scale)


def _validate(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor | None:
    """Check shapes, dtypes, devices and values; return bias as a 4-D table (or None)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_ndim(name, check_float(name, t), (4,), "(B, heads, N, d)")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k and v must have the same shape (B, heads, N, d), got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(
            f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}"
        )
    batch, heads, n, _ = q.shape
    check_ndim("idx", check_tensor("idx", idx), (3, 4), "(B, N, K) or (B, heads, N, K)")
    if idx.device != q.device:
        raise ValueError(f"idx must be on q's device {q.device}, got {idx.device}")
    expected = (batch, n) if idx.ndim == 3 else (batch, heads, n)
    if tuple(idx.shape[:-1]) != expected:
        layout = "(B, N, K)" if idx.ndim == 3 else "(B, heads, N, K)"
        raise ValueError(
            f"idx must have shape {layout} = {(*expected, 'K')}, got {tuple(idx.shape)}"
        )
    if not 1 <= idx.shape[-1] <= n:
        raise ValueError(
            f"idx must hold K in [1, N={n}] neighbours per query, got K={idx.shape[-1]}"
        )
    check_index("idx", idx, n)
    if bias is None:
        return None
    check_ndim("bias", check_float("bias", bias), (3, 4), "(heads, N, N) or (B|1, heads|1, N, N)")
    bias = bias.unsqueeze(0) if bias.ndim == 3 else bias  # (B|1, heads|1, N, N)
    b_ok = bias.shape[0] in (1, batch) and bias.shape[1] in (1, heads)
    if not b_ok or tuple(bias.shape[2:]) != (n, n):
        raise ValueError(
            f"bias must broadcast to (B, heads, N, N) = {(batch, heads, n, n)}, "
            f"got {tuple(bias.shape)}"
        )
    if bias.device != q.device:
        raise ValueError(f"bias must be on q's device {q.device}, got {bias.device}")
    return bias


def _neighbour_log_multiplicity(idx: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Dense (B, heads|1, N, N) additive mask: log(count of j in idx[i]), -inf where absent.

    log() runs on the N*K neighbour entries only: log(0) over the whole N x N grid is slow.
    """
    idx4 = (idx if idx.ndim == 4 else idx.unsqueeze(1)).long()  # (B, heads|1, N, K)
    grid = (*idx4.shape[:-1], n)
    ones = torch.ones(idx4.shape, dtype=dtype, device=idx.device)
    counts = torch.zeros(grid, dtype=dtype, device=idx.device).scatter_add_(-1, idx4, ones)
    mask = torch.full(grid, float("-inf"), dtype=dtype, device=idx.device)
    return mask.scatter_(-1, idx4, counts.gather(-1, idx4).log())  # duplicates write one value


def _reference(q, k, v, idx, scale, bias) -> torch.Tensor:
    """Dense logits, -inf outside the neighbours, softmax, matmul; in q's dtype."""
    logits = (scale * q) @ k.transpose(-1, -2)  # (B, heads, N, N)
    logits = logits + _neighbour_log_multiplicity(idx, q.shape[-2], q.dtype)
    if bias is not None:
        logits = logits + bias.to(q.dtype)
    return logits.softmax(dim=-1) @ v


def _masked_sdpa(q, k, v, idx, scale, bias) -> torch.Tensor:
    """Dense fused SDPA with an additive mask that encodes the neighbour sets (and the bias)."""
    mask = _neighbour_log_multiplicity(idx, q.shape[-2], q.dtype)  # (B, heads|1, N, N)
    if bias is not None:
        mask = mask + bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _gather(q, k, v, idx, scale, bias) -> torch.Tensor:
    """Gather the K neighbour rows of k and v per query, then a K-wide softmax.

    The row gather is ``F.embedding``: on the CPU it is the fastest torch row gather, and its
    backward is a dense scatter-add.
    """
    batch, heads, n, d = q.shape
    idx4 = (idx if idx.ndim == 4 else idx.unsqueeze(1)).long()  # (B, heads|1, N, K)
    idx4 = idx4.expand(batch, heads, n, idx4.shape[-1])  # (B, heads, N, K)
    offsets = torch.arange(batch * heads, device=idx.device).view(batch, heads, 1, 1) * n
    rows = idx4 + offsets  # (B, heads, N, K) row ids into k.view(B*heads*N, d)
    k_nb = F.embedding(rows, k.reshape(-1, d))  # (B, heads, N, K, d)
    v_nb = F.embedding(rows, v.reshape(-1, d))  # (B, heads, N, K, d)
    logits = torch.einsum("bhnd,bhnkd->bhnk", scale * q, k_nb)  # (B, heads, N, K)
    if bias is not None:
        table = bias.to(q.dtype).expand(batch, heads, n, n)  # (B, heads, N, N)
        logits = logits + table.gather(-1, idx4)
    return torch.einsum("bhnk,bhnkd->bhnd", logits.softmax(dim=-1), v_nb)


class KNNAttention(nn.Module):
    """Multi-head self-attention over precomputed KNN neighbour sets.

    Args:
        dim: token width C (a multiple of ``heads``).
        heads: number of attention heads.
        qkv_bias: learn a bias in the q/k/v projection.
        proj_bias: learn a bias in the output projection.
        backend: attention backend, see :func:`knn_attention`.
        deterministic: deterministic triton backward (see :func:`knn_attention`).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        backend: Backend = "auto",
        deterministic: bool = True,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim must be a multiple of heads, got dim={dim}, heads={heads}")
        self.heads = heads
        self.backend = backend
        self.deterministic = deterministic
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(
        self, x: torch.Tensor, idx: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args:
            x: (B, N, C) tokens.
            idx: (B, N, K) or (B, heads, N, K) neighbour indices.
            bias: optional (heads, N, N) additive bias table.

        Returns:
            (B, N, C) tokens.
        """
        qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        out = knn_attention(
            qkv[0],
            qkv[1],
            qkv[2],
            idx,
            bias=bias,
            backend=self.backend,
            deterministic=self.deterministic,
        )  # (B, heads, N, d)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))
