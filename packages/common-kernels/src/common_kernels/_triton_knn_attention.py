"""Triton backend of KNN-sparse attention: fused gather + online softmax, CSR or atomic backward.

Query ``i`` of batch ``b`` and head ``h`` attends to the ``K`` keys listed in ``idx[b, (h,) i]``:

    s_ij = scale * q_i . k_idx[i,j] + bias[b, h, i, idx[i,j]]
    out_i = sum_j softmax_j(s_ij) * v_idx[i,j]

The kernels gather the listed key/value rows tile by tile in registers, so the gathered
(N, K, d) tensors never exist in memory. The forward keeps a flash-attention style running max
and running sum and stores the log-sum-exp ``lse`` (fp32) for the backward.

Backward, with ``p_ij = exp(s_ij - lse_i)`` and ``delta_i = dO_i . out_i``:

    ds_ij = p_ij * (dO_i . v_idx[i,j] - delta_i)
    dq_i = scale * sum_j ds_ij k_idx[i,j]
    dk_n = scale * sum_{(i,j): idx[i,j]=n} ds_ij q_i,   dv_n = sum_{(i,j): idx[i,j]=n} p_ij dO_i

``dq`` comes from a query-major kernel. ``dk``/``dv`` come either from a key-major kernel that
walks a transposed (CSR) neighbour list, so each program owns its output rows
(``deterministic=True``), or from ``tl.atomic_add`` in the query-major kernel.
"""

from __future__ import annotations

import os

import torch

from .dictionary import KNNDictionary, as_dictionary

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # triton is optional: the torch backends work without it
    triton = tl = None
    TRITON_IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    TRITON_IMPORT_ERROR = None

BLOCK_M = 16  # queries per program (forward and query-major backward)
BLOCK_K = 16  # neighbour slots per loop step
BLOCK_N = 16  # keys per program (key-major backward)
BLOCK_E = 16  # transposed-list entries per loop step
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _jit(fn):
    """``triton.jit`` when triton is importable, else the plain function (never launched)."""
    return fn if triton is None else triton.jit(fn)


@_jit
def _program_ids(H):
    """This program's (B*H) head ``bh`` (int64: offsets past 2**31 elements), its batch ``b``
    and head ``h``, and its block along the sequence (grid axis 1)."""
    bh = tl.program_id(0).to(tl.int64)
    return bh, bh // H, bh % H, tl.program_id(1)


@_jit
def _block_rows(H, N, D, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """:func:`_program_ids` as the offsets every kernel starts from: ``bh``, ``b``, ``h``, the
    block's BLOCK rows (queries or keys), the BLOCK_D feature offsets, which rows are < N, and
    the head's first element in a contiguous (B, H, N, D) tensor."""
    bh, b, h, pid = _program_ids(H)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    return bh, b, h, rows, tl.arange(0, BLOCK_D), rows < N, bh * N * D


@_jit
def _load_rows(base, rows, valid, offs_d, D):
    """Load ``base[rows, :D]`` as an fp32 (R, BLOCK_D) tile.

    Args:
        base: pointer to a contiguous (rows, D) matrix.
        rows: (R,) row ids.
        valid: (R,) mask; masked rows read 0.
        offs_d: (BLOCK_D,) feature offsets.
        D: number of features.
    """
    ptrs = base + rows[:, None] * D + offs_d[None, :]
    mask = valid[:, None] & (offs_d < D)[None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@_jit
def _store_rows(base, rows, valid, offs_d, D, tile):
    """Store an (R, BLOCK_D) tile into ``base[rows, :D]``, cast to the destination dtype.

    Args:
        base: pointer to a contiguous (rows, D) matrix.
        rows: (R,) row ids.
        valid: (R,) mask of rows to write.
        offs_d: (BLOCK_D,) feature offsets.
        D: number of features.
        tile: (R, BLOCK_D) values.
    """
    ptrs = base + rows[:, None] * D + offs_d[None, :]
    mask = valid[:, None] & (offs_d < D)[None, :]
    tl.store(ptrs, tile.to(base.dtype.element_ty), mask=mask)


@_jit
def _gather_rows(base, rows, valid, offs_d, D):
    """Gather ``base[rows[r, c], :D]`` as an fp32 (R, C, BLOCK_D) register tile.

    Args:
        base: pointer to a contiguous (rows, D) matrix.
        rows: (R, C) row ids.
        valid: (R, C) mask; masked entries read 0.
        offs_d: (BLOCK_D,) feature offsets.
        D: number of features.
    """
    ptrs = base + rows[:, :, None] * D + offs_d[None, None, :]
    mask = valid[:, :, None] & (offs_d < D)[None, None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@_jit
def _logits(a, b, bias_ptrs, valid, scale, HAS_BIAS: tl.constexpr):
    """Return ``scale * sum_d a * b (+ bias)`` as an fp32 (R, C) tile.

    Args:
        a, b: fp32 tiles broadcastable to (R, C, BLOCK_D) (queries and keys).
        bias_ptrs: (R, C) pointers to the bias entry of each (query, key) pair.
        valid: (R, C) mask for the bias load.
        scale: softmax scale.
        HAS_BIAS: whether to add the bias.
    """
    s = tl.sum(a * b, axis=2) * scale
    if HAS_BIAS:
        s += tl.load(bias_ptrs, mask=valid, other=0.0).to(tl.float32)
    return s


@_jit
def _knn_fwd_kernel(
    Q, K, V, IDX, BIAS, OUT, LSE,
    H, N, KNB, D, scale,
    stride_idx_b, stride_idx_h,
    stride_bias_b, stride_bias_h, stride_bias_i, stride_bias_n,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Forward for BLOCK_M queries of one (batch, head): online softmax over KNB slots.

    Args:
        Q, K, V, OUT: contiguous (B, H, N, D) tensors.
        IDX: (B, H or 1, N, KNB) neighbour ids, last two dims contiguous.
        BIAS: (B, H, N, N) bias view (stride 0 over broadcast dims); unused without bias.
        LSE: (B, H, N) fp32 log-sum-exp output.
        KNB: neighbours per query.
    """
    bh, b, h, offs_m, offs_d, row_ok, head = _block_rows(H, N, D, BLOCK_M, BLOCK_D)
    q = _load_rows(Q + head, offs_m, row_ok, offs_d, D)  # (BLOCK_M, BLOCK_D)
    idx_rows = IDX + b * stride_idx_b + h * stride_idx_h + offs_m[:, None] * KNB
    bias_rows = BIAS + b * stride_bias_b + h * stride_bias_h + offs_m[:, None] * stride_bias_i

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for k0 in range(0, KNB, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        slot_ok = offs_k < KNB
        valid = row_ok[:, None] & slot_ok[None, :]  # (BLOCK_M, BLOCK_K)
        nbr = tl.load(idx_rows + offs_k[None, :], mask=valid, other=0)
        keys = _gather_rows(K + head, nbr, valid, offs_d, D)  # (BLOCK_M, BLOCK_K, BLOCK_D)
        s = _logits(q[:, None, :], keys, bias_rows + nbr * stride_bias_n, valid, scale, HAS_BIAS)
        s = tl.where(slot_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])  # (BLOCK_M, BLOCK_K)
        values = _gather_rows(V + head, nbr, valid, offs_d, D)  # (BLOCK_M, BLOCK_K, BLOCK_D)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * values, axis=1)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    _store_rows(OUT + head, offs_m, row_ok, offs_d, D, acc / l_i[:, None])
    tl.store(LSE + bh * N + offs_m, m_i + tl.log(l_i), mask=row_ok)


@_jit
def _knn_bwd_query_kernel(
    Q, K, V, IDX, BIAS, OUT, DO, LSE, DELTA, DQ, DK, DV, DS,
    H, N, KNB, D, scale,
    stride_idx_b, stride_idx_h,
    stride_bias_b, stride_bias_h, stride_bias_i, stride_bias_n,
    HAS_BIAS: tl.constexpr, ATOMIC_KV: tl.constexpr, STORE_DS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Query-major backward for BLOCK_M queries of one (batch, head).

    Writes dq and ``delta = dO . out`` of its queries (which the key-major kernel, launched
    after it, reads); with ATOMIC_KV also adds into the fp32 (B, H, N, D) buffers DK and DV;
    with STORE_DS also writes ds per slot into the fp32 (B, H, N, KNB) buffer DS (bias grad).

    Args:
        Q, K, V, OUT, DO, DQ: contiguous (B, H, N, D) tensors.
        IDX: (B, H or 1, N, KNB) neighbour ids, last two dims contiguous.
        BIAS: (B, H, N, N) bias view (stride 0 over broadcast dims); unused without bias.
        LSE: (B, H, N) fp32 log-sum-exp; DELTA: (B, H, N) fp32 output.
    """
    bh, b, h, offs_m, offs_d, row_ok, head = _block_rows(H, N, D, BLOCK_M, BLOCK_D)
    q = _load_rows(Q + head, offs_m, row_ok, offs_d, D)  # (BLOCK_M, BLOCK_D)
    do = _load_rows(DO + head, offs_m, row_ok, offs_d, D)  # (BLOCK_M, BLOCK_D)
    out = _load_rows(OUT + head, offs_m, row_ok, offs_d, D)  # (BLOCK_M, BLOCK_D)
    delta = tl.sum(do * out, axis=1)  # (BLOCK_M,) fp32
    tl.store(DELTA + bh * N + offs_m, delta, mask=row_ok)
    lse = tl.load(LSE + bh * N + offs_m, mask=row_ok, other=0.0)
    idx_rows = IDX + b * stride_idx_b + h * stride_idx_h + offs_m[:, None] * KNB
    bias_rows = BIAS + b * stride_bias_b + h * stride_bias_h + offs_m[:, None] * stride_bias_i

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for k0 in range(0, KNB, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        valid = row_ok[:, None] & (offs_k < KNB)[None, :]  # (BLOCK_M, BLOCK_K)
        nbr = tl.load(idx_rows + offs_k[None, :], mask=valid, other=0)
        keys = _gather_rows(K + head, nbr, valid, offs_d, D)  # (BLOCK_M, BLOCK_K, BLOCK_D)
        values = _gather_rows(V + head, nbr, valid, offs_d, D)  # (BLOCK_M, BLOCK_K, BLOCK_D)
        s = _logits(q[:, None, :], keys, bias_rows + nbr * stride_bias_n, valid, scale, HAS_BIAS)
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.sum(do[:, None, :] * values, axis=2)
        ds = p * (dp - delta[:, None])  # (BLOCK_M, BLOCK_K)
        dq += tl.sum(ds[:, :, None] * keys, axis=1)
        if ATOMIC_KV:
            kv_ptrs = head + nbr[:, :, None] * D + offs_d[None, None, :]
            kv_mask = valid[:, :, None] & (offs_d < D)[None, None, :]
            tl.atomic_add(DK + kv_ptrs, (ds * scale)[:, :, None] * q[:, None, :], mask=kv_mask)
            tl.atomic_add(DV + kv_ptrs, p[:, :, None] * do[:, None, :], mask=kv_mask)
        if STORE_DS:
            ds_ptrs = DS + bh * N * KNB + offs_m[:, None] * KNB + offs_k[None, :]
            tl.store(ds_ptrs, ds, mask=valid)
    _store_rows(DQ + head, offs_m, row_ok, offs_d, D, dq * scale)


@_jit
def _knn_bwd_key_kernel(
    Q, K, V, BIAS, DO, LSE, DELTA, ROW_PTR, COLS, DK, DV,
    H, N, KNB, D, scale,
    stride_ptr_b, stride_ptr_h, stride_cols_b, stride_cols_h,
    stride_bias_b, stride_bias_h, stride_bias_i, stride_bias_n,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Key-major backward: dk, dv for BLOCK_N keys of one (batch, head), without atomics.

    Each key walks its transposed list (the flat slots ``i * KNB + j`` whose neighbour it is) in
    a fixed order, so the result is reproducible.

    Args:
        Q, K, V, DO, DK, DV: contiguous (B, H, N, D) tensors.
        BIAS: (B, H, N, N) bias view (stride 0 over broadcast dims); unused without bias.
        LSE, DELTA: (B, H, N) fp32 log-sum-exp and dO . out.
        ROW_PTR: (B, H, N + 1) view; key n owns COLS[row_ptr[n]:row_ptr[n + 1]].
        COLS: (B, H, N * KNB) view of flat slot ids.
    """
    bh, b, h, offs_n, offs_d, key_ok, head = _block_rows(H, N, D, BLOCK_N, BLOCK_D)
    row_ptr = ROW_PTR + b * stride_ptr_b + h * stride_ptr_h
    start = tl.load(row_ptr + offs_n, mask=key_ok, other=0)
    count = tl.load(row_ptr + offs_n + 1, mask=key_ok, other=0) - start
    cols = COLS + b * stride_cols_b + h * stride_cols_h
    keys = _load_rows(K + head, offs_n, key_ok, offs_d, D)  # (BLOCK_N, BLOCK_D)
    values = _load_rows(V + head, offs_n, key_ok, offs_d, D)  # (BLOCK_N, BLOCK_D)
    bias_cols = BIAS + b * stride_bias_b + h * stride_bias_h + offs_n[:, None] * stride_bias_n

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for e0 in range(0, tl.max(count, axis=0), BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        valid = offs_e[None, :] < count[:, None]  # (BLOCK_N, BLOCK_E)
        slot = tl.load(cols + start[:, None] + offs_e[None, :], mask=valid, other=0)
        query = slot // KNB  # (BLOCK_N, BLOCK_E)
        q = _gather_rows(Q + head, query, valid, offs_d, D)  # (BLOCK_N, BLOCK_E, BLOCK_D)
        do = _gather_rows(DO + head, query, valid, offs_d, D)  # (BLOCK_N, BLOCK_E, BLOCK_D)
        lse = tl.load(LSE + bh * N + query, mask=valid, other=0.0)
        delta = tl.load(DELTA + bh * N + query, mask=valid, other=0.0)
        s = _logits(q, keys[:, None, :], bias_cols + query * stride_bias_i, valid, scale, HAS_BIAS)
        p = tl.where(valid, tl.exp(s - lse), 0.0)
        dp = tl.sum(do * values[:, None, :], axis=2)
        ds = p * (dp - delta)  # (BLOCK_N, BLOCK_E)
        dk += tl.sum(ds[:, :, None] * q, axis=1)
        dv += tl.sum(p[:, :, None] * do, axis=1)
    _store_rows(DK + head, offs_n, key_ok, offs_d, D, dk * scale)
    _store_rows(DV + head, offs_n, key_ok, offs_d, D, dv)


def triton_status(device: torch.device) -> tuple[bool, str]:
    """Whether the triton kernels can run on ``device``, and if not, why in words.

    Reads ``TRITON_INTERPRET`` from the environment at call time.

    Args:
        device: device the attention tensors live on.
    """
    device = torch.device(device)
    if TRITON_IMPORT_ERROR is not None:
        return False, f"triton is not installed: {TRITON_IMPORT_ERROR}"
    if device.type == "cuda":
        return True, ""
    if device.type != "cpu":
        return False, (
            f"tensors are on {device.type}; triton runs only on CUDA devices "
            "(or on cpu with TRITON_INTERPRET=1)"
        )
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False, (
            "tensors are on cpu and TRITON_INTERPRET=1 is not set; "
            "triton compiles only for CUDA devices"
        )
    if isinstance(_knn_fwd_kernel, triton.runtime.JITFunction):
        return False, (
            "tensors are on cpu but the triton kernels were compiled for CUDA because "
            "TRITON_INTERPRET=1 was set after common_kernels imported triton; "
            "set it before the first import"
        )
    return True, ""


def _bias_grad(ds: torch.Tensor, dictionary: KNNDictionary, bias: torch.Tensor) -> torch.Tensor:
    """Scatter per-slot ``ds`` into a dense bias gradient reduced to ``bias``'s shape.

    Duplicate neighbours of one query are added one multiplicity level at a time (the levels
    are known to the dictionary, so nothing synchronises), so no two non-zero terms meet in one
    ``scatter_add_`` and the result is reproducible on every device.

    Args:
        ds: (B, H, N, K) fp32 ds per slot.
        dictionary: the neighbour lists.
        bias: the (B or 1, H or 1, N, N) bias.
    """
    B, H, N, K = ds.shape
    nbr = dictionary.idx4.long().expand(B, H, N, K)  # (B, H, N, K)
    dense = ds.new_zeros(B, H, N, N)
    if dictionary.max_multiplicity == 1:
        dense.scatter_add_(-1, nbr, ds)
    else:
        rank = dictionary.duplicate_ranks().expand(B, H, N, K)  # (B, H, N, K)
        for level in range(dictionary.max_multiplicity):
            dense.scatter_add_(-1, nbr, torch.where(rank == level, ds, 0.0))
    broadcast_dims = [dim for dim in (0, 1) if bias.shape[dim] == 1]
    if broadcast_dims:
        dense = dense.sum(dim=broadcast_dims, keepdim=True)  # bias.shape
    return dense.to(bias.dtype)


def _index_strides(dictionary: KNNDictionary) -> tuple[int, int]:
    """(batch, head) strides of the contiguous idx; head stride 0 when shared across heads."""
    idx = dictionary.idx
    return (idx.stride(0), idx.stride(1)) if dictionary.per_head else (idx.stride(0), 0)


def _bias_view(
    bias: torch.Tensor | None, shape: tuple[int, int, int, int], fallback: torch.Tensor
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Return (tensor, strides) for the kernels: the bias broadcast to ``shape`` by stride 0.

    Args:
        bias: None or a (B or 1, H or 1, N, N) tensor.
        shape: (B, H, N, N).
        fallback: any tensor passed as a never-read pointer when there is no bias.
    """
    if bias is None:
        return fallback, (0, 0, 0, 0)
    view = bias.expand(shape)  # (B, H, N, N), stride 0 over broadcast dims
    return view, view.stride()


def _block_d(d: int) -> int:
    """Feature block: the next power of two >= max(d, 16)."""
    return triton.next_power_of_2(max(d, 16))


def _num_warps(block_d: int) -> int:
    """Warps per program, grown with the (16, 16, BLOCK_D) gathered tile to limit spills."""
    return 4 if block_d <= 32 else 8 if block_d <= 64 else 16


def triton_knn_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor | KNNDictionary,
    scale: float,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward only, returning the output and the fp32 log-sum-exp of the logits.

    Args:
        q, k, v: (B, H, N, d) tensors of one dtype (fp16, bf16 or fp32) on one device.
        idx: a KNNDictionary, or (B, N, K) / (B, H, N, K) int32/int64 neighbour ids in [0, N).
        scale: softmax scale.
        bias: None or a (B or 1, H or 1, N, N) additive bias.

    Returns:
        out: (B, H, N, d) in q's dtype.
        lse: (B, H, N) fp32 log-sum-exp of each query's logits.
    """
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"the triton backend supports float16, bfloat16 and float32, got {q.dtype}; "
            "use the reference backend for float64"
        )
    dictionary = as_dictionary(idx)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, H, N, d = q.shape
    knb = dictionary.k
    out = torch.empty_like(q)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    bias_arg, bias_strides = _bias_view(bias, (B, H, N, N), q)
    block_d = _block_d(d)
    grid = (B * H, triton.cdiv(N, BLOCK_M))  # B * H on axis 0: grid axis 1 stops at 65535
    _knn_fwd_kernel[grid](
        q, k, v, dictionary.idx, bias_arg, out, lse,
        H, N, knb, d, scale,
        *_index_strides(dictionary), *bias_strides,
        HAS_BIAS=bias is not None, BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K, BLOCK_D=block_d,
        num_warps=_num_warps(block_d),
    )  # fmt: skip
    return out, lse


def _backward(
    saved: tuple[torch.Tensor, ...],
    dictionary: KNNDictionary,
    grad_out: torch.Tensor,
    scale: float,
    deterministic: bool,
    need_ds: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Compute dq, dk, dv and (when ``need_ds``) the fp32 (B, H, N, K) ds per slot.

    Args:
        saved: contiguous q, k, v, the bias (or None), out and lse from the forward.
        dictionary: the neighbour lists (their transposed list is cached there).
        grad_out: (B, H, N, d) gradient of the output.
        scale: softmax scale.
        deterministic: CSR key-major kernel for dk/dv if True, atomics if False.
        need_ds: whether to return ds for the bias gradient.
    """
    q, k, v, bias, out, lse = saved
    B, H, N, d = q.shape
    knb = dictionary.k
    do = grad_out.contiguous()
    delta = torch.empty_like(lse)  # (B, H, N) fp32 dO . out, written by the query kernel
    dq = torch.empty_like(q)
    if deterministic:
        dk_acc = dv_acc = dq  # never written: the key-major kernel below owns dk and dv
    else:
        dk_acc = torch.zeros(B, H, N, d, device=q.device, dtype=torch.float32)
        dv_acc = torch.zeros_like(dk_acc)
    ds = torch.empty(B, H, N, knb, device=q.device, dtype=torch.float32) if need_ds else None
    bias_arg, bias_strides = _bias_view(bias, (B, H, N, N), q)
    block_d = _block_d(d)
    _knn_bwd_query_kernel[(B * H, triton.cdiv(N, BLOCK_M))](
        q, k, v, dictionary.idx, bias_arg, out, do, lse, delta, dq, dk_acc, dv_acc,
        lse if ds is None else ds,
        H, N, knb, d, scale,
        *_index_strides(dictionary), *bias_strides,
        HAS_BIAS=bias is not None, ATOMIC_KV=not deterministic, STORE_DS=need_ds,
        BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K, BLOCK_D=block_d, num_warps=_num_warps(block_d),
    )  # fmt: skip
    if not deterministic:
        return dq, dk_acc.to(k.dtype), dv_acc.to(v.dtype), ds

    row_ptr, cols = dictionary.transposed()  # (B, H or 1, N + 1), (B, H or 1, N * K)
    row_ptr = row_ptr.expand(B, H, N + 1)  # (B, H, N + 1), stride 0 over heads when shared
    cols = cols.expand(B, H, N * knb)  # (B, H, N * K), stride 0 over heads when shared
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    _knn_bwd_key_kernel[(B * H, triton.cdiv(N, BLOCK_N))](
        q, k, v, bias_arg, do, lse, delta, row_ptr, cols, dk, dv,
        H, N, knb, d, scale,
        row_ptr.stride(0), row_ptr.stride(1), cols.stride(0), cols.stride(1), *bias_strides,
        HAS_BIAS=bias is not None, BLOCK_N=BLOCK_N, BLOCK_E=BLOCK_E, BLOCK_D=block_d,
        num_warps=_num_warps(block_d),
    )  # fmt: skip
    return dq, dk, dv, ds


def _forward_saved(ctx, forward, q, k, v, dictionary, scale, bias) -> torch.Tensor:
    """An autograd forward: ``forward`` (the output and the log-sum-exp) on contiguous q, k
    and v, with what the backward reads kept in ``ctx``; returns the output."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out, lse = forward(q, k, v, dictionary, scale, bias)
    ctx.save_for_backward(q, k, v, bias, out, lse)
    ctx.dictionary = dictionary
    ctx.scale = scale
    return out


class _TritonKNNAttention(torch.autograd.Function):
    """Autograd wrapper: triton forward, triton backward (CSR or atomic dk/dv)."""

    @staticmethod
    def forward(ctx, q, k, v, dictionary, scale, bias, deterministic):
        ctx.deterministic = deterministic
        return _forward_saved(ctx, triton_knn_attention_forward, q, k, v, dictionary, scale, bias)

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        bias = saved[3]
        need_dbias = bias is not None and ctx.needs_input_grad[5]
        dq, dk, dv, ds = _backward(
            saved, ctx.dictionary, grad_out, ctx.scale, ctx.deterministic, need_dbias
        )
        dbias = _bias_grad(ds, ctx.dictionary, bias) if need_dbias else None
        return dq, dk, dv, None, None, dbias, None


def triton_knn_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor | KNNDictionary,
    scale: float,
    bias: torch.Tensor | None = None,
    deterministic: bool = True,
) -> torch.Tensor:
    """KNN-sparse attention with triton kernels, differentiable in q, k, v and bias.

    Inputs are validated by the dispatcher (``knn_attention``); this function only rejects
    float64, which the fp32-accumulating kernels would silently downgrade.

    Args:
        q, k, v: (B, H, N, d) tensors of one dtype (fp16, bf16 or fp32), d in [1, 256].
        idx: a KNNDictionary (its transposed list and duplicate ranks are reused), or ids
            (B, N, K) shared across heads or (B, H, N, K), int32/int64 values in [0, N);
            duplicate ids count as separate softmax terms.
        scale: softmax scale.
        bias: None or an additive (B or 1, H or 1, N, N) bias gathered at the neighbours; its
            gradient (same shape) is computed only when it requires grad.
        deterministic: if True, dk/dv come from a key-major kernel over the transposed (CSR)
            neighbour list (reproducible, no atomics); if False, from fp32 atomic adds.

    Returns:
        (B, H, N, d) output in q's dtype.
    """
    dictionary = as_dictionary(idx)
    return _TritonKNNAttention.apply(q, k, v, dictionary, float(scale), bias, deterministic)
