"""KNN-sparse attention: each query attends to its K neighbours only.

out[b, h, i] = sum_j softmax_j(scale * q_i . k_{idx[i, j]} + bias[i, idx[i, j]]) * v_{idx[i, j]}

Duplicate entries in ``idx`` are separate softmax terms (the sum runs over the K slots), and every
backend agrees on that: the dense backends add log(multiplicity) to the logits.

The neighbour lists come as a raw ``idx`` tensor (validated on every call, with a host
synchronisation) or as a :class:`~common_kernels.KNNDictionary`, validated once when it is made
and holding what each backend derives from the lists (masks, transposed list, BlockMask). With a
dictionary a call checks only shapes, dtypes and devices: on CUDA it launches kernels and never
synchronises with the host.

Backends (NATTEN-style, chosen explicitly or by ``"auto"``):

- ``reference``: dense N x N logits with -inf outside the neighbours, plain matmul + softmax.
  Runs in any float dtype, fp64 included; the oracle for tests.
- ``mask``: dense masked ``scaled_dot_product_attention`` (the paper's Torch-Mask) with the
  dictionary's cached additive mask; O(N^2) memory for the mask.
- ``gather``: torch gather of the neighbours' K/V rows (Torch-Gather); O(N K d) memory.
- ``triton``: fused gather + online softmax that never materialises the gathered K/V, saves the
  log-sum-exp, and has a deterministic (transposed neighbour list) or atomic backward.
- ``flex``: FlexAttention over a neighbour bitmask with a BlockMask built from the lists, the bias
  as a score_mod: tensor-core tiles for the windowed regime where K is a large share of N.
- ``tiles``: this package's Triton kernel of the same idea in the FlashAttention pattern: dense
  ``tl.dot`` tiles restricted by the bitmask, empty tiles skipped through a tile map, the bias
  read in the kernel, a backward without atomics (bitwise reproducible).
- ``cpp``: this package's C++ CPU kernel (``_cpu_kernels.cpp``, compiled on first use): per
  (window, head), tiles of 8 queries' logits in registers and a small scratch, the dictionary's
  mask (its bool mask, or the additive one that counts duplicates) and the bias added there,
  softmax and the value sum in the same pass; float32. Its backward (FlashAttention-2's, from
  the saved log-sum-exp) recomputes each (window, head)'s probabilities in cache and returns
  the bias gradient too. The fast CPU path for windows (see ``_cpu_kernels``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from common_kernels import _cpu_kernels, _flex, _policy
from common_kernels._checks import (
    all_finite,
    check_float,
    check_ndim,
    check_positive_int,
    check_tensor,
    values_checked,
)
from common_kernels._checks import value_checks as value_checks  # public here since 0.1
from common_kernels.dictionary import KNNDictionary, as_dictionary

Backend = Literal["auto", "reference", "mask", "gather", "triton", "flex", "tiles", "cpp"]
BACKENDS: tuple[str, ...] = ("reference", "mask", "gather", "triton", "flex", "tiles", "cpp")
IndexLike = torch.Tensor | KNNDictionary

NORM_EPS = 1e-12  # cosine attention: F.normalize's eps (a zero query or key stays zero)
# Registers hold a (BLOCK_M, BLOCK_K, head_dim) tile per program; past this it spills.
_TRITON_MAX_HEAD_DIM = 256
# Used when a device has no policy table (or none of its points has a runnable backend).
_FALLBACK_ORDER = ("triton", "mask", "gather", "reference")
# The C++ backward's per-thread scratch holds two N x N float32 matrices (8 MiB at N=1024, the
# largest SemanIR window: 32 x 32).
CPP_MAX_BACKWARD_N = 1024
# Never picked by "auto" on the CPU: the Triton interpreter is for tests.
_NOT_AUTO_ON_CPU = frozenset({"triton", "tiles"})


def knn_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: IndexLike,
    *,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    cosine_scale: torch.Tensor | None = None,
    backend: Backend = "auto",
    deterministic: bool = True,
    check_values: bool | None = None,
) -> torch.Tensor:
    """Attention of every query over its K neighbours.

    Args:
        q: queries, (B, heads, N, d), of a floating dtype.
        k: keys, the shape, dtype and device of ``q``.
        v: values, the shape, dtype and device of ``q``.
        idx: a :class:`KNNDictionary` (validated once; no host synchronisation here), or raw
            neighbour ids (B, N, K) shared across heads or (B, heads, N, K) per head, int32/int64
            values in [0, N) (validated on every call). Duplicates are separate softmax terms.
        scale: logit scale; defaults to d ** -0.5.
        bias: optional additive bias table (heads, N, N) or (B|1, heads|1, N, N), gathered at
            the neighbours (e.g. a relative-position bias). Differentiable.
        cosine_scale: cosine attention (Swin V2): (heads,) logit multipliers; q and k are
            L2-normalised (eps 1e-12, as ``F.normalize``) and head h's logits multiplied by
            ``cosine_scale[h]``; ``scale`` must be left unset. The ``cpp`` kernel normalises in
            its own pass (and differentiates it in its backward), the other backends first.
        backend: "auto", "reference", "mask", "gather", "triton", "flex", "tiles" or "cpp".
        deterministic: triton only: backward through a transposed neighbour list (bitwise
            reproducible) instead of atomics.
        check_values: require finite q, k, v and bias (one host synchronisation). None: on
            the CPU yes, on CUDA no, unless :func:`value_checks` says otherwise.

    Returns:
        (B, heads, N, d) tensor in q's dtype.
    """
    dictionary, bias = _validate(q, k, v, idx, bias, check_values)
    return _attend(q, k, v, dictionary, scale, bias, cosine_scale, backend, deterministic, None)


def knn_attention_packed(
    qkv: torch.Tensor,
    idx: IndexLike | None,
    *,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    cosine_scale: torch.Tensor | None = None,
    backend: Backend = "auto",
    deterministic: bool = True,
    check_values: bool | None = None,
) -> torch.Tensor:
    """:func:`knn_attention` on the output of a packed qkv projection, as transformer layers
    make it: ``qkv = linear(x).view(B, N, 3, heads, d)``; returns ``(B, N, heads * d)``, the
    output projection's input.

    The same maths as ``knn_attention(q, k, v, ...)`` with ``q, k, v = qkv.unbind(2)`` moved
    to (B, heads, N, d). What the layout buys: the ``cpp`` kernel reads q, k and v where the
    projection wrote them and, in training, writes their gradients into one tensor of qkv's
    layout (no permutes and no copies on either pass; with cosine attention the normalisation
    and the ``cosine_scale`` gradient run inside the kernel too). The other backends get q, k
    and v made contiguous in one copy (with autograd) and cosine-normalised in one multiply.

    Args:
        qkv: (B, N, 3, heads, d): queries, keys and values of every token.
        idx: a :class:`KNNDictionary` or raw neighbour ids, as for :func:`knn_attention`; or
            ``None``: every query attends to all N tokens (the dense-window baseline) through
            ``scaled_dot_product_attention``, whatever ``backend`` says.
        scale: as for :func:`knn_attention`.
        bias: as for :func:`knn_attention`.
        cosine_scale: as for :func:`knn_attention`.
        backend: as for :func:`knn_attention`.
        deterministic: as for :func:`knn_attention`.
        check_values: as for :func:`knn_attention`.

    Returns:
        (B, N, heads * d) tensor in qkv's dtype.
    """
    check_ndim("qkv", check_float("qkv", qkv, finite=False), (5,), "(B, N, 3, heads, d)")
    batch, n, three, heads, d = qkv.shape
    if three != 3:
        raise ValueError(
            f"qkv must have shape (B, N, 3, heads, d) (queries, keys, values), got "
            f"{tuple(qkv.shape)}"
        )
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d) views
    if idx is None:
        _, bias = _validate(q, k, v, None, bias, check_values)
        if cosine_scale is not None:
            cosine_scale = _check_cosine_scale(q, cosine_scale, scale)
        q, k, v, scale = _packed_queries_keys_values(qkv, scale, cosine_scale)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    else:
        dictionary, bias = _validate(q, k, v, idx, bias, check_values)
        out = _attend(q, k, v, dictionary, scale, bias, cosine_scale, backend, deterministic, qkv)
    return out.transpose(1, 2).reshape(batch, n, heads * d)  # (B, N, heads * d)


def _attend(q, k, v, dictionary, scale, bias, cosine_scale, backend, deterministic, packed):
    """:func:`knn_attention` after validation; ``packed``: the (B, N, 3, heads, d) tensor q,
    k and v are views of, or None."""
    if cosine_scale is not None:
        cosine_scale = _check_cosine_scale(q, cosine_scale, scale)
        scale = 1.0
    scale = q.shape[-1] ** -0.5 if scale is None else _check_scale(scale)
    backward = _needs_backward(q, k, v, bias, cosine_scale)
    if backend == "auto":
        backend = _select(q, k, v, dictionary, bias, backward)
    elif backend not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto', *BACKENDS)}, got {backend!r}")
    ok, reason = _can_run_validated(backend, q, k, v, dictionary, bias, backward)
    if not ok:
        raise RuntimeError(f"backend {backend!r} cannot run here: {reason}")
    if backend == "cpp":  # normalises q and k itself
        return _cpp(q, k, v, dictionary, scale, bias, cosine_scale, backward, packed)
    if packed is not None:
        q, k, v, scale = _packed_queries_keys_values(packed, scale, cosine_scale)
    elif cosine_scale is not None:
        q, k = _cosine_normalised(q, k, cosine_scale)
    if backend == "reference":
        return _reference(q, k, v, dictionary, scale, bias)
    if backend == "mask":
        return _masked_sdpa(q, k, v, dictionary, scale, bias)
    if backend == "gather":
        return _gather(q, k, v, dictionary, scale, bias)
    if backend == "flex":
        return _flex.flex_knn_attention(q, k, v, dictionary, scale, bias)
    if backend == "tiles":
        return _triton_tiles().tiles_knn_attention(q, k, v, dictionary, scale, bias)
    return _triton_kernels().triton_knn_attention(
        q, k, v, dictionary, scale, bias, deterministic=deterministic
    )


def _triton_kernels():
    """The ``triton`` backend's module, imported on first use: importing triton and defining
    the kernels takes 0.15 s that a CPU user, who never runs them, would pay at every start."""
    from common_kernels import _triton_knn_attention

    return _triton_knn_attention


def _triton_tiles():
    """The ``tiles`` backend's module, imported on first use (see :func:`_triton_kernels`)."""
    from common_kernels import _triton_tiles

    return _triton_tiles


def _packed_queries_keys_values(
    qkv: torch.Tensor, scale: float | None, cosine_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(B, N, 3, heads, d) -> q, k, v (B, heads, N, d) and the logit scale left to apply.

    Cosine attention folds its scale into the queries: q / |q| * scale and k / |k| (norms at
    least in fp32), in one multiply by a per-row factor. With autograd q, k and v are made
    contiguous in one copy and multiplied together (v by exactly 1): the attention's matmuls
    would copy each, and slices would zero-fill their gradients. Without, q, k and v stay
    views (the attention reads strides) and v is left alone.
    """
    autograd = torch.is_grad_enabled()
    qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d)
    if autograd:
        qkv = qkv.contiguous()
    if cosine_scale is None:
        q, k, v = qkv.unbind(0)
        return q, k, v, q.shape[-1] ** -0.5 if scale is None else _check_scale(scale)
    exact = torch.promote_types(qkv.dtype, torch.float32)
    norms = torch.linalg.vector_norm(qkv[:2], dim=-1, keepdim=True, dtype=exact)
    inverse = norms.clamp_min(NORM_EPS).reciprocal()  # (2, B, heads, N, 1)
    factors = [inverse[:1] * cosine_scale.view(-1, 1, 1), inverse[1:]]
    if not autograd:
        q, k = (qkv[:2] * torch.cat(factors).to(qkv.dtype)).unbind(0)
        return q, k, qkv[2], 1.0
    factors.append(torch.ones_like(inverse[:1]))  # v's
    q, k, v = (qkv * torch.cat(factors).to(qkv.dtype)).unbind(0)
    return q, k, v, 1.0


def can_run(
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: IndexLike,
    bias: torch.Tensor | None = None,
) -> tuple[bool, str]:
    """Whether ``backend`` can run on these inputs, and if not, why (in words).

    Invalid inputs raise the same errors as :func:`knn_attention`.
    """
    dictionary, bias = _validate(q, k, v, idx, bias, None)
    if backend == "auto":
        return True, ""
    if backend not in BACKENDS:
        return False, f"unknown backend {backend!r}; choose one of {('auto', *BACKENDS)}"
    return _can_run_validated(backend, q, k, v, dictionary, bias, _needs_backward(q, k, v, bias))


def select_backend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: IndexLike,
    bias: torch.Tensor | None = None,
) -> str:
    """The backend ``"auto"`` picks for these inputs.

    The policy table of the device (``common_kernels/policies/<cpu|cuda>.json``, measured by
    ``benchmarks/run.py``) is looked up at the measured point nearest to the inputs (N, K,
    B * heads, whether a backward will run, bias, dtype) and its fastest backend that can run
    here is taken (never the Triton interpreter on the CPU). Without a table: triton, mask,
    gather, reference, the first that can run.
    """
    dictionary, bias = _validate(q, k, v, idx, bias, None)
    return _select(q, k, v, dictionary, bias, _needs_backward(q, k, v, bias))


def policy_problem(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_neighbours: int,
    bias: torch.Tensor | None,
    backward: bool | None = None,
) -> _policy.Problem:
    """The point the policy table is looked up at for these inputs (``backward``: whether a
    backward will run; None: whether q, k, v or the bias require grad under grad mode)."""
    batch, heads, n, _ = q.shape
    return _policy.Problem(
        n=n,
        k=n_neighbours,
        batch_heads=max(1, batch * heads),
        mode="fwd+bwd"
        if (_needs_backward(q, k, v, bias) if backward is None else backward)
        else "fwd",
        bias=bias is not None,
        dtype=str(q.dtype).removeprefix("torch."),
    )


def _select(q, k, v, dictionary: KNNDictionary, bias, backward: bool) -> str:
    excluded = _NOT_AUTO_ON_CPU if q.device.type == "cpu" else frozenset()
    runnable = {
        b
        for b in BACKENDS
        if b not in excluded and _can_run_validated(b, q, k, v, dictionary, bias, backward)[0]
    }
    table = _policy.load_table(q.device.type)
    if table is not None:
        problem = policy_problem(q, k, v, dictionary.k, bias, backward)
        choice = _policy.choose(table, problem, runnable)
        if choice is not None:
            return choice
    return next(b for b in _FALLBACK_ORDER if b in runnable)


def _needs_backward(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will differentiate through any of ``tensors`` (None: absent)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _can_run_validated(
    backend: str, q, k, v, dictionary: KNNDictionary, bias, backward: bool
) -> tuple[bool, str]:
    """Whether ``backend`` runs on validated inputs (and their backward, when ``backward``),
    and if not, why (in words)."""
    if backend in ("reference", "gather"):
        return True, ""
    if backend == "mask":
        if q.dtype == torch.float64 and q.is_cuda:
            return False, "scaled_dot_product_attention has no float64 kernel on CUDA"
        return True, ""
    if backend == "flex":
        ok, reason = _flex.flex_status(q.device, backward)
        if not ok:
            return False, reason
        return _counts_no_duplicates(dictionary, "a FlexAttention mask")
    if backend == "cpp":
        return _cpp_status(q, backward)
    ok, reason = _triton_kernels().triton_status(q.device)
    if not ok:
        return False, reason
    if q.dtype == torch.float64:
        return (
            False,
            f"the {backend} kernels take float16/bfloat16/float32; use 'reference' for float64",
        )
    limit = _triton_tiles().MAX_HEAD_DIM if backend == "tiles" else _TRITON_MAX_HEAD_DIM
    if q.shape[-1] > limit:
        return False, f"head dim {q.shape[-1]} exceeds the {backend} kernel's {limit}"
    if backend == "tiles":
        return _counts_no_duplicates(dictionary, "the tiles kernel's bitmask")
    return True, ""


def _counts_no_duplicates(dictionary: KNNDictionary, what: str) -> tuple[bool, str]:
    """Bitmask backends hold each (query, key) pair once: refuse repeated neighbours."""
    if dictionary.max_multiplicity > 1:
        return False, (
            f"idx repeats a neighbour in one list (up to {dictionary.max_multiplicity}x); "
            f"{what} cannot count duplicates, use 'mask' or 'triton'"
        )
    return True, ""


def _check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float, got {scale!r}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0 (it multiplies the logits), got {scale!r}")
    return float(scale)


def _validate(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: IndexLike | None,
    bias: torch.Tensor | None,
    check_values: bool | None,
) -> tuple[KNNDictionary | None, torch.Tensor | None]:
    """Check shapes, dtypes, devices (and values); return the dictionary (None for dense
    attention, ``idx=None``) and a 4-D bias."""
    finite = values_checked(check_values, q.device)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_ndim(name, check_float(name, t, finite=False), (4,), "(B, heads, N, d)")
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
    dictionary = None if idx is None else _check_idx(q, idx)
    if bias is not None:
        bias = _check_bias(q, bias)
    if finite:
        tensors = (("q", q), ("k", k), ("v", v)) + ((("bias", bias),) if bias is not None else ())
        for name, t in tensors:
            if t.numel() and not all_finite(t):
                raise ValueError(f"{name} contains NaN or Inf values; all entries must be finite")
    return dictionary, bias


def _check_idx(q: torch.Tensor, idx: IndexLike) -> KNNDictionary:
    """The dictionary of ``idx`` (built and validated here for a raw tensor), matched to q."""
    batch, heads, n, _ = q.shape
    if isinstance(idx, KNNDictionary):
        shape = (idx.batch, idx.heads, idx.n) if idx.per_head else (idx.batch, idx.n)
        expected = (batch, heads, n) if idx.per_head else (batch, n)
        name = "idx (a KNNDictionary)"
    else:
        check_ndim("idx", check_tensor("idx", idx), (3, 4), "(B, N, K) or (B, heads, N, K)")
        shape = tuple(idx.shape[:-1])
        expected = (batch, n) if idx.ndim == 3 else (batch, heads, n)
        name = "idx"
    if shape != expected:
        layout = "(B, heads, N, K)" if len(expected) == 3 else "(B, N, K)"
        raise ValueError(
            f"{name} must have shape {layout} = {(*expected, 'K')} for q of shape "
            f"{tuple(q.shape)}, got {(*shape, 'K')}"
        )
    dictionary = as_dictionary(idx)
    if dictionary.device != q.device:
        raise ValueError(f"idx must be on q's device {q.device}, got {dictionary.device}")
    return dictionary


def _check_bias(q: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A (B|1, heads|1, N, N) view of ``bias``; errors name the accepted shapes."""
    batch, heads, n, _ = q.shape
    check_ndim(
        "bias", check_float("bias", bias, finite=False), (3, 4),
        "(heads, N, N) or (B|1, heads|1, N, N)",
    )  # fmt: skip
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


def _reference(q, k, v, dictionary: KNNDictionary, scale, bias) -> torch.Tensor:
    """Dense logits, -inf outside the neighbours, softmax, matmul; in q's dtype."""
    logits = _scaled(q, scale) @ k.transpose(-1, -2)  # (B, heads, N, N)
    # in place: the matmul's backward does not need its output
    logits.add_(dictionary.additive_mask(logits.dtype))
    if bias is not None:
        logits.add_(bias.to(logits.dtype))
    return logits.softmax(dim=-1).to(v.dtype) @ v


def _scaled(q: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * q``, without a copy when the scale is 1 (e.g. folded into q by the caller)."""
    return q if scale == 1.0 else scale * q


def _cpp_status(q, backward: bool) -> tuple[bool, str]:
    """Whether the C++ CPU kernel runs on these inputs (the cheap refusals before a build)."""
    if q.device.type != "cpu":
        return False, f"the C++ kernel runs on the CPU, tensors are on {q.device.type}"
    if q.dtype != torch.float32:
        return False, f"the C++ kernel takes float32, got {q.dtype}; use 'reference' or 'mask'"
    if backward and q.shape[2] > CPP_MAX_BACKWARD_N:
        return False, (
            f"the C++ backward keeps a (window, head)'s N x N probabilities in a scratch, up to "
            f"N={CPP_MAX_BACKWARD_N}; N={q.shape[2]}: use 'mask' or 'gather' to train"
        )
    return _cpu_kernels.status()  # duplicates count: the mask holds log(multiplicity)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` with unit-stride rows (the C++ kernel's one layout demand; any other strides go)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _cpp(q, k, v, dictionary: KNNDictionary, scale, bias, cosine_scale, backward, packed):
    """The C++ CPU kernel with the dictionary as its neighbour mask (a dictionary made from a
    mask: that bool mask itself; else the cached additive mask, which counts duplicates) and
    the bias; the output is laid out as (B, N, heads, d): ``out.transpose(1, 2)`` is
    contiguous. With ``backward`` it runs the kernel's training pair (:class:`_CppAttention`,
    or :class:`_CppPackedAttention` whose gradient is ``packed``'s)."""
    if dictionary.made_from_mask:
        mask = dictionary.membership()  # (B, heads|1, N, N) bool, as knn_mask made it
    else:
        mask = dictionary.additive_mask(torch.float32)  # (B, heads|1, N, N), cached
    bias = None if bias is None else _unit_rows(bias)
    if not backward:
        q, k, v = _unit_rows(q), _unit_rows(k), _unit_rows(v)
        return _cpu_kernels.ops().masked_attention(q, k, v, mask, bias, scale, cosine_scale)
    if packed is not None and packed.stride(-1) == 1:
        return _CppPackedAttention.apply(packed, mask, bias, cosine_scale, scale)
    q, k, v = _unit_rows(q), _unit_rows(k), _unit_rows(v)
    return _CppAttention.apply(q, k, v, mask, bias, cosine_scale, scale)


def _cpp_forward(ctx, q, k, v, mask, bias, cosine_scale, scale: float) -> torch.Tensor:
    """The training forward of both C++ autograd functions: the output and each query's
    log-sum-exp (B, heads, N), saved with the inputs for the backward."""
    out, lse = _cpu_kernels.ops().masked_attention_lse(q, k, v, mask, bias, scale, cosine_scale)
    ctx.save_for_backward(q, k, v, mask, bias, cosine_scale, out, lse)
    ctx.scale = scale
    return out


def _cpp_backward(ctx, grad_out, bias_grad: bool, scale_grad: bool):
    """dqkv (B, N, 3, heads, d) and the gradients of the bias and of the cosine scales."""
    q, k, v, mask, bias, cosine_scale, out, lse = ctx.saved_tensors
    dqkv, dbias, dscale = _cpu_kernels.ops().masked_attention_backward(
        _unit_rows(grad_out), q, k, v, mask, bias, out, lse, ctx.scale, cosine_scale, bias_grad,
        scale_grad,
    )  # fmt: skip
    return dqkv, dbias if bias_grad else None, dscale if scale_grad else None


class _CppAttention(torch.autograd.Function):
    """The C++ kernel for training: its forward keeps each query's log-sum-exp and the
    backward recomputes the probabilities from it, one (window, head) at a time in cache,
    and returns the gradients of q, k, v, the bias (summed over the dims it broadcasts) and
    the cosine scales (cosine attention is normalised inside the kernel, both ways)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, bias, cosine_scale, scale: float) -> torch.Tensor:
        return _cpp_forward(ctx, q, k, v, mask, bias, cosine_scale, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        dqkv, dbias, dscale = _cpp_backward(
            ctx, grad_out, ctx.needs_input_grad[4], ctx.needs_input_grad[5]
        )
        dq, dk, dv = dqkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d) views
        return dq, dk, dv, None, dbias, dscale, None


class _CppPackedAttention(torch.autograd.Function):
    """:class:`_CppAttention` on a (B, N, 3, heads, d) qkv tensor: q, k and v are read where
    the projection wrote them and the gradient comes back in that layout (no copies)."""

    @staticmethod
    def forward(ctx, qkv, mask, bias, cosine_scale, scale: float) -> torch.Tensor:
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d) views
        return _cpp_forward(ctx, q, k, v, mask, bias, cosine_scale, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        dqkv, dbias, dscale = _cpp_backward(
            ctx, grad_out, ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        )
        return dqkv, None, dbias, dscale, None


def _check_cosine_scale(q: torch.Tensor, cosine_scale: torch.Tensor, scale) -> torch.Tensor:
    """(heads,) view of ``cosine_scale``; errors name the accepted forms."""
    heads = q.shape[1]
    check_float("cosine_scale", cosine_scale, finite=False)
    if cosine_scale.numel() != heads or cosine_scale.ndim not in (1, 3, 4):
        raise ValueError(
            f"cosine_scale must hold one multiplier per head: (heads,), (heads, 1, 1) or "
            f"(1, heads, 1, 1) with heads={heads}, got {tuple(cosine_scale.shape)}"
        )
    if cosine_scale.device != q.device:
        raise ValueError(
            f"cosine_scale must be on q's device {q.device}, got {cosine_scale.device}"
        )
    if scale is not None:
        raise ValueError(
            f"scale={scale!r} and cosine_scale exclude each other: cosine logits are scaled by "
            "cosine_scale alone"
        )
    return cosine_scale.reshape(heads)


def _cosine_normalised(q, k, cosine_scale) -> tuple[torch.Tensor, torch.Tensor]:
    """q / |q| * cosine_scale[h] and k / |k| (norms at least in fp32, as ``F.normalize``)."""
    exact = torch.promote_types(q.dtype, torch.float32)
    norm_q = torch.linalg.vector_norm(q, dim=-1, keepdim=True, dtype=exact)  # (B, heads, N, 1)
    norm_k = torch.linalg.vector_norm(k, dim=-1, keepdim=True, dtype=exact)
    factor_q = norm_q.clamp_min(NORM_EPS).reciprocal() * cosine_scale.view(1, -1, 1, 1)
    factor_k = norm_k.clamp_min(NORM_EPS).reciprocal()
    return q * factor_q.to(q.dtype), k * factor_k.to(k.dtype)


def _masked_sdpa(q, k, v, dictionary: KNNDictionary, scale, bias) -> torch.Tensor:
    """Dense fused SDPA with the dictionary's additive mask (plus the bias, when given)."""
    mask = dictionary.additive_mask(q.dtype)  # (B, heads|1, N, N)
    if bias is not None:
        mask = mask + bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _gather_neighbour_rows(
    x: torch.Tensor, dictionary: KNNDictionary, via_embedding: bool | None = None
) -> torch.Tensor:
    """(B, heads, N, d) -> (B, heads, N, K, d): the rows of each query's neighbours.

    On the CPU ``F.embedding`` over a flat (B*heads*N, d) view is the fastest torch row gather.
    On CUDA its backward may read segment counts back to the host, so ``torch.gather`` is used
    there: its backward is a scatter-add that only launches kernels. ``via_embedding``
    overrides the choice (None: by device).
    """
    batch, heads, n, d = x.shape
    if via_embedding if via_embedding is not None else x.device.type == "cpu":
        rows = dictionary.gather_rows(heads)  # (B, heads, N, K) ids into x.view(B*heads*N, d)
        return F.embedding(rows, x.reshape(-1, d))  # (B, heads, N, K, d)
    index = dictionary.gather_index(heads)  # (B, heads, N*K, 1)
    rows = torch.gather(x, 2, index.expand(batch, heads, n * dictionary.k, d))  # (B, H, NK, d)
    return rows.view(batch, heads, n, dictionary.k, d)  # (B, heads, N, K, d)


def _gather(q, k, v, dictionary: KNNDictionary, scale, bias) -> torch.Tensor:
    """Gather the K neighbour rows of k and v per query, then a K-wide softmax."""
    batch, heads, n, _ = q.shape
    k_nb = _gather_neighbour_rows(k, dictionary)  # (B, heads, N, K, d)
    v_nb = _gather_neighbour_rows(v, dictionary)  # (B, heads, N, K, d)
    logits = torch.einsum("bhnd,bhnkd->bhnk", _scaled(q, scale), k_nb)  # (B, heads, N, K)
    if bias is not None:
        table = bias.to(logits.dtype).expand(batch, heads, n, n)  # (B, heads, N, N)
        index = dictionary.gather_index(heads).view(batch, heads, n, dictionary.k)
        logits = logits + table.gather(-1, index)  # bias at the neighbours: (B, heads, N, K)
    weights = logits.softmax(dim=-1).to(v_nb.dtype)
    return torch.einsum("bhnk,bhnkd->bhnd", weights, v_nb)


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
        check_positive_int("dim", dim)
        check_positive_int("heads", heads)
        if dim % heads:
            raise ValueError(f"dim must be a multiple of heads, got dim={dim}, heads={heads}")
        if backend not in ("auto", *BACKENDS):
            raise ValueError(f"backend must be one of {('auto', *BACKENDS)}, got {backend!r}")
        self.heads = heads
        self.backend = backend
        self.deterministic = deterministic
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(
        self, x: torch.Tensor, idx: IndexLike, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args:
            x: (B, N, C) tokens.
            idx: a :class:`KNNDictionary`, or (B, N, K) / (B, heads, N, K) neighbour indices.
            bias: optional (heads, N, N) additive bias table.

        Returns:
            (B, N, C) tokens.
        """
        batch, n, dim = x.shape
        qkv = self.qkv(x).view(batch, n, 3, self.heads, dim // self.heads)  # (B, N, 3, h, d)
        out = knn_attention_packed(
            qkv, idx, bias=bias, backend=self.backend, deterministic=self.deterministic
        )  # (B, N, C)
        return self.proj(out)
