"""Triton backend ``tiles``: KNN attention as dense tensor-core tiles over the neighbour bitmask.

In SemanIR's windows a query's K neighbours are a large share of the window's N tokens, so
gathering K rows per query (the ``triton`` backend) leaves the matrix units idle. This backend
computes attention the FlashAttention way, one (query tile x key tile) block of ``tl.dot`` at a
time, and restricts it to the neighbour sets with the dictionary's packed bitmask:

    s_ij = scale * q_i . k_j + bias[b, h, i, j]       if j is a neighbour of i, else -inf
    out_i = sum_j softmax_j(s_ij) v_j

- The bitmask (B, heads|1, N, ceil(N/32)) int32 is shared by the heads; a program loads the
  words of its (query tile, key tile) and expands them to membership bits in registers.
- A tile map, derived once per dictionary, lists for every query tile the key tiles that hold
  at least one neighbour (and the transpose for the backward): empty tiles are never visited.
- The bias is read inside the kernel from its (B|1, heads|1, N, N) table through strides, so a
  table shared by all windows is never expanded per window.
- The softmax is online (running max and sum, base 2), and the forward stores the log-sum-exp.
- Backward as in Triton's fused-attention tutorial, split so that every program owns its
  outputs (no atomics, bitwise reproducible): ``dq`` over key tiles per query tile (it also
  writes ``delta = rowsum(dO * out)``), ``dk``/``dv`` over query tiles per key tile, and the
  bias gradient over windows per (query tile, key tile): each program sums a group of windows
  into its own partial, and one reduction adds the partials up.

Neighbour lists must be free of duplicates (a bitmask cannot count them), as ``knn_graph``
gives them. On the CPU the kernels run under ``TRITON_INTERPRET=1`` (tests only).
"""

from __future__ import annotations

import math

import torch

from ._triton_knn_attention import (
    SUPPORTED_DTYPES,
    _forward_saved,
    _jit,
    _program_ids,
    tl,
    triton,
)
from .dictionary import KNNDictionary, tile_sizes

MAX_HEAD_DIM = 128  # q, acc and a (64, d) key tile stay in registers up to here
LOG2E = 1.4426950408889634  # the kernels work in base 2: exp(x) = exp2(x * log2 e)
# The bias gradient sums windows in groups: as many groups as it takes for about this many
# programs (enough to fill a GPU), and no more, so that the partial sums stay small.
DBIAS_TARGET_PROGRAMS = 1024


@_jit
def _load_tile(base, rows, n_rows, offs_d, D):
    """Load ``base[rows, :D]`` of a contiguous (n_rows, D) matrix as an (R, BLOCK_D) tile in the
    matrix's dtype; rows past ``n_rows`` and features past ``D`` read 0."""
    mask = (rows < n_rows)[:, None] & (offs_d < D)[None, :]
    return tl.load(base + rows[:, None] * D + offs_d[None, :], mask=mask, other=0.0)


@_jit
def _store_tile(base, rows, n_rows, offs_d, D, tile):
    """Store an (R, BLOCK_D) tile into ``base[rows, :D]``, cast to the destination dtype."""
    mask = (rows < n_rows)[:, None] & (offs_d < D)[None, :]
    tl.store(base + rows[:, None] * D + offs_d[None, :], tile.to(base.dtype.element_ty), mask=mask)


@_jit
def _neighbours(bits, offs_m, offs_n, N, stride_bits_i):
    """(BLOCK_M, BLOCK_N) membership: is key ``offs_n`` in the list of query ``offs_m``.

    Args:
        bits: pointer to the query rows' words of one (window, head): row i holds ceil(N/32)
            int32 words, bit j % 32 of word j // 32 set iff key j is a neighbour of query i.
        offs_m, offs_n: query and key ids; out-of-range ones are never neighbours.
        stride_bits_i: words per query row.
    """
    valid = (offs_m < N)[:, None] & (offs_n < N)[None, :]
    words = tl.load(
        bits + offs_m[:, None] * stride_bits_i + (offs_n // 32)[None, :], mask=valid, other=0
    )
    return ((words >> (offs_n % 32)[None, :]) & 1) != 0


@_jit
def _scores(q, k_tile, bias, offs_m, offs_n, N, qk_scale, stride_bias_i, stride_bias_j,
            HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """Base-2 logits ``(scale * q k^T + bias) * log2(e)`` of one tile, fp32 (BLOCK_M, BLOCK_N).

    Args:
        q: (BLOCK_M, BLOCK_D) queries; k_tile: (BLOCK_N, BLOCK_D) keys.
        bias: pointer to the bias table of this (window, head); read only with HAS_BIAS.
        qk_scale: scale * log2(e).
    """
    s = tl.dot(q, tl.trans(k_tile), input_precision=PRECISION) * qk_scale
    if HAS_BIAS:
        valid = (offs_m < N)[:, None] & (offs_n < N)[None, :]
        ptrs = bias + offs_m[:, None] * stride_bias_i + offs_n[None, :] * stride_bias_j
        s += tl.load(ptrs, mask=valid, other=0.0).to(tl.float32) * 1.4426950408889634
    return s


@_jit
def _tiles_fwd_kernel(
    Q, K, V, BITS, TILE_NUM, TILE_IDX, BIAS, OUT, LSE,
    H, N, D, KB, qk_scale,
    stride_bits_b, stride_bits_h, stride_bits_i,
    stride_map_b, stride_map_h,
    stride_bias_b, stride_bias_h, stride_bias_i, stride_bias_j,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Forward of one query tile of one (window, head): online softmax over its key tiles.

    Args:
        Q, K, V, OUT: contiguous (B, H, N, D).
        BITS: (B, H|1, N, W) int32 bitmask (head stride 0 when shared).
        TILE_NUM: (B, H|1, QB) key tiles per query tile; TILE_IDX: (B, H|1, QB, KB) their ids.
        BIAS: (B, H, N, N) strided view (stride 0 over broadcast dims); read with HAS_BIAS.
        LSE: (B, H, N) fp32 base-2 log-sum-exp of each query's logits.
        qk_scale: scale * log2(e).
    """
    bh, b, h, pid_m = _program_ids(H)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    head = bh * N * D
    q = _load_tile(Q + head, offs_m, N, offs_d, D)  # (BLOCK_M, BLOCK_D)
    bits = BITS + b * stride_bits_b + h * stride_bits_h
    bias = BIAS + b * stride_bias_b + h * stride_bias_h
    tile_map = b * stride_map_b + h * stride_map_h
    n_tiles = tl.load(TILE_NUM + tile_map + pid_m)
    tiles = TILE_IDX + tile_map * KB + pid_m * KB

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for t in range(0, n_tiles):
        offs_n = tl.load(tiles + t) * BLOCK_N + tl.arange(0, BLOCK_N)
        k_tile = _load_tile(K + head, offs_n, N, offs_d, D)  # (BLOCK_N, BLOCK_D)
        v_tile = _load_tile(V + head, offs_n, N, offs_d, D)  # (BLOCK_N, BLOCK_D)
        s = _scores(q, k_tile, bias, offs_m, offs_n, N, qk_scale, stride_bias_i, stride_bias_j,
                    HAS_BIAS, PRECISION)  # fmt: skip
        s = tl.where(_neighbours(bits, offs_m, offs_n, N, stride_bits_i), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no neighbour yet
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])  # (BLOCK_M, BLOCK_N), 0 off the neighbour set
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v_tile.dtype), v_tile, input_precision=PRECISION)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # only rows past N have no neighbour
    _store_tile(OUT + head, offs_m, N, offs_d, D, acc / l_safe[:, None])
    tl.store(LSE + bh * N + offs_m, m_i + tl.log2(l_safe), mask=offs_m < N)


@_jit
def _tiles_bwd_dq_kernel(
    Q, K, V, OUT, DO, LSE, DELTA, DQ, BITS, TILE_NUM, TILE_IDX, BIAS,
    H, N, D, KB, qk_scale, scale,
    stride_bits_b, stride_bits_h, stride_bits_i,
    stride_map_b, stride_map_h,
    stride_bias_b, stride_bias_h, stride_bias_i, stride_bias_j,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """dq of one query tile of one (window, head) over its key tiles; also writes the tile's
    ``delta = rowsum(dO * out)`` (fp32), which the dk/dv and bias kernels launched after read.

    Args: as :func:`_tiles_fwd_kernel`, plus DO, DQ (B, H, N, D) and DELTA (B, H, N) fp32.
    """
    bh, b, h, pid_m = _program_ids(H)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    head = bh * N * D
    q = _load_tile(Q + head, offs_m, N, offs_d, D)  # (BLOCK_M, BLOCK_D)
    do = _load_tile(DO + head, offs_m, N, offs_d, D)  # (BLOCK_M, BLOCK_D)
    out = _load_tile(OUT + head, offs_m, N, offs_d, D)
    delta = tl.sum(do.to(tl.float32) * out.to(tl.float32), axis=1)  # (BLOCK_M,)
    tl.store(DELTA + bh * N + offs_m, delta, mask=offs_m < N)
    lse = tl.load(LSE + bh * N + offs_m, mask=offs_m < N, other=0.0)
    bits = BITS + b * stride_bits_b + h * stride_bits_h
    bias = BIAS + b * stride_bias_b + h * stride_bias_h
    tile_map = b * stride_map_b + h * stride_map_h
    n_tiles = tl.load(TILE_NUM + tile_map + pid_m)
    tiles = TILE_IDX + tile_map * KB + pid_m * KB

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for t in range(0, n_tiles):
        offs_n = tl.load(tiles + t) * BLOCK_N + tl.arange(0, BLOCK_N)
        k_tile = _load_tile(K + head, offs_n, N, offs_d, D)  # (BLOCK_N, BLOCK_D)
        v_tile = _load_tile(V + head, offs_n, N, offs_d, D)  # (BLOCK_N, BLOCK_D)
        s = _scores(q, k_tile, bias, offs_m, offs_n, N, qk_scale, stride_bias_i, stride_bias_j,
                    HAS_BIAS, PRECISION)  # fmt: skip
        member = _neighbours(bits, offs_m, offs_n, N, stride_bits_i)
        p = tl.where(member, tl.exp2(s - lse[:, None]), 0.0)  # (BLOCK_M, BLOCK_N)
        dp = tl.dot(do, tl.trans(v_tile), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k_tile.dtype), k_tile, input_precision=PRECISION)
    _store_tile(DQ + head, offs_m, N, offs_d, D, dq * scale)


@_jit
def _tiles_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, BITS, TILE_NUM, TILE_IDX, BIAS,
    H, N, D, QB, qk_scale, scale,
    stride_bits_b, stride_bits_h, stride_bits_i,
    stride_map_b, stride_map_h,
    stride_bias_b, stride_bias_h, stride_bias_i, stride_bias_j,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """dk and dv of one key tile of one (window, head) over the query tiles that list it.

    Args: as :func:`_tiles_bwd_dq_kernel`; TILE_NUM (B, H|1, KB) and TILE_IDX (B, H|1, KB, QB)
        are the transposed tile map (query tiles per key tile).
    """
    bh, b, h, pid_n = _program_ids(H)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    head = bh * N * D
    k_tile = _load_tile(K + head, offs_n, N, offs_d, D)  # (BLOCK_N, BLOCK_D)
    v_tile = _load_tile(V + head, offs_n, N, offs_d, D)  # (BLOCK_N, BLOCK_D)
    bits = BITS + b * stride_bits_b + h * stride_bits_h
    bias = BIAS + b * stride_bias_b + h * stride_bias_h
    tile_map = b * stride_map_b + h * stride_map_h
    n_tiles = tl.load(TILE_NUM + tile_map + pid_n)
    tiles = TILE_IDX + tile_map * QB + pid_n * QB

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for t in range(0, n_tiles):
        offs_m = tl.load(tiles + t) * BLOCK_M + tl.arange(0, BLOCK_M)
        q = _load_tile(Q + head, offs_m, N, offs_d, D)  # (BLOCK_M, BLOCK_D)
        do = _load_tile(DO + head, offs_m, N, offs_d, D)  # (BLOCK_M, BLOCK_D)
        lse = tl.load(LSE + bh * N + offs_m, mask=offs_m < N, other=0.0)
        delta = tl.load(DELTA + bh * N + offs_m, mask=offs_m < N, other=0.0)
        s = _scores(q, k_tile, bias, offs_m, offs_n, N, qk_scale, stride_bias_i, stride_bias_j,
                    HAS_BIAS, PRECISION)  # fmt: skip
        member = _neighbours(bits, offs_m, offs_n, N, stride_bits_i)
        p = tl.where(member, tl.exp2(s - lse[:, None]), 0.0)  # (BLOCK_M, BLOCK_N)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v_tile), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    _store_tile(DK + head, offs_n, N, offs_d, D, dk * scale)
    _store_tile(DV + head, offs_n, N, offs_d, D, dv)


@_jit
def _tiles_bwd_dbias_kernel(
    Q, K, V, DO, LSE, DELTA, BITS, OCCUPIED, BIAS, PARTIAL,
    B, H, N, D, QB, KB, WINDOWS_PER_GROUP, qk_scale,
    stride_bits_b, stride_bits_h, stride_bits_i,
    stride_occ_b, stride_occ_h,
    stride_bias_b, stride_bias_h, stride_bias_i, stride_bias_j,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The bias gradient ``ds`` of one (query tile, key tile) of one head, summed over a group
    of windows into the group's own fp32 partial (G, H, N, N): no two programs share an output.

    Args: as :func:`_tiles_bwd_dq_kernel`; OCCUPIED (B, H|1, QB, KB) int8 marks the tiles that
        hold a neighbour; window ``g * WINDOWS_PER_GROUP + w`` adds into ``PARTIAL[g]``.
    """
    gh = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    g = gh // H
    h = gh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for w in range(0, WINDOWS_PER_GROUP):
        b = g * WINDOWS_PER_GROUP + w
        occupied = tl.load(
            OCCUPIED + b * stride_occ_b + h * stride_occ_h + pid_m * KB + pid_n,
            mask=b < B, other=0,
        )  # fmt: skip
        if occupied != 0:
            head = (b * H + h) * N * D
            q = _load_tile(Q + head, offs_m, N, offs_d, D)  # (BLOCK_M, BLOCK_D)
            do = _load_tile(DO + head, offs_m, N, offs_d, D)  # (BLOCK_M, BLOCK_D)
            k_tile = _load_tile(K + head, offs_n, N, offs_d, D)  # (BLOCK_N, BLOCK_D)
            v_tile = _load_tile(V + head, offs_n, N, offs_d, D)  # (BLOCK_N, BLOCK_D)
            rows = (b * H + h) * N + offs_m
            lse = tl.load(LSE + rows, mask=offs_m < N, other=0.0)
            delta = tl.load(DELTA + rows, mask=offs_m < N, other=0.0)
            bias = BIAS + b * stride_bias_b + h * stride_bias_h
            s = _scores(q, k_tile, bias, offs_m, offs_n, N, qk_scale, stride_bias_i,
                        stride_bias_j, HAS_BIAS, PRECISION)  # fmt: skip
            bits = BITS + b * stride_bits_b + h * stride_bits_h
            member = _neighbours(bits, offs_m, offs_n, N, stride_bits_i)
            p = tl.where(member, tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v_tile), input_precision=PRECISION)
            acc += p * (dp - delta[:, None])
    valid = (offs_m < N)[:, None] & (offs_n < N)[None, :]
    ptrs = PARTIAL + gh * N * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(ptrs, acc, mask=valid)


def _block_d(d: int) -> int:
    """Feature block: the next power of two >= max(d, 16) (``tl.dot`` needs 16)."""
    return triton.next_power_of_2(max(d, 16))


def _num_warps(block_m: int, block_d: int) -> int:
    """Warps per program: 4 for the usual 64 x 64 tiles, 8 for wide heads."""
    return 8 if block_m * block_d > 64 * 64 else 4


def _precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: exact fp32 products for fp32 (TF32 would lose 3 digits)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _map_strides(tensor: torch.Tensor, per_head: bool) -> tuple[int, int]:
    """(window, head) strides of a (B, H|1, ...) dictionary structure; head stride 0 if shared."""
    return tensor.stride(0), tensor.stride(1) if per_head else 0


def _bias_args(bias: torch.Tensor | None, shape: tuple[int, int, int, int], fallback):
    """(tensor, 4 strides) of the bias as a strided (B, H, N, N) view (stride 0 where it is
    broadcast), or a never-read pointer and zeros."""
    if bias is None:
        return fallback, (0, 0, 0, 0)
    view = bias.expand(shape)  # (B, H, N, N), no copy
    return view, view.stride()


class _Launch:
    """What the three kernels share for one call: sizes, tile map, bitmask and bias views."""

    def __init__(self, q: torch.Tensor, dictionary: KNNDictionary, bias, scale: float) -> None:
        self.B, self.H, self.N, self.D = q.shape
        self.block_m, self.block_n = tile_sizes(self.N)
        self.block_d = _block_d(self.D)
        self.qb = triton.cdiv(self.N, self.block_m)
        self.kb = triton.cdiv(self.N, self.block_n)
        self.dictionary = dictionary
        self.tiles = dictionary.tile_map(self.block_m, self.block_n)
        self.bits = dictionary.bitmask()  # (B, H|1, N, W)
        self.bias, self.bias_strides = _bias_args(bias, (self.B, self.H, self.N, self.N), q)
        self.has_bias = bias is not None
        self.scale = scale
        self.qk_scale = scale * LOG2E
        self.precision = _precision(q.dtype)

    def bits_strides(self) -> tuple[int, int, int]:
        bits = self.bits
        return (*_map_strides(bits, self.dictionary.per_head), bits.stride(2))

    def constants(self) -> dict:
        return dict(
            HAS_BIAS=self.has_bias, PRECISION=self.precision, BLOCK_M=self.block_m,
            BLOCK_N=self.block_n, BLOCK_D=self.block_d,
            num_warps=_num_warps(max(self.block_m, self.block_n), self.block_d),
        )  # fmt: skip


def tiles_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dictionary: KNNDictionary,
    scale: float,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward only: the output and the fp32 base-2 log-sum-exp (B, H, N) of the logits.

    Args:
        q, k, v: contiguous (B, H, N, d) tensors of one dtype (fp16, bf16 or fp32).
        dictionary: neighbour lists without duplicates.
        scale: logit scale.
        bias: None or a (B|1, H|1, N, N) additive table.
    """
    run = _Launch(q, dictionary, bias, scale)
    out = torch.empty_like(q)
    lse = torch.empty(run.B, run.H, run.N, device=q.device, dtype=torch.float32)
    num, ids = run.tiles.query_tiles  # (B, H|1, QB), (B, H|1, QB, KB)
    _tiles_fwd_kernel[(run.B * run.H, run.qb)](
        q, k, v, run.bits, num, ids, run.bias, out, lse,
        run.H, run.N, run.D, run.kb, run.qk_scale,
        *run.bits_strides(), *_map_strides(num, dictionary.per_head), *run.bias_strides,
        **run.constants(),
    )  # fmt: skip
    return out, lse


def dbias_groups(batch: int, heads: int, tiles: int, per_window: bool) -> tuple[int, int]:
    """(groups, windows per group) of the bias gradient's partial sums.

    A bias given per window is not summed over windows (one group per window). Otherwise the
    windows are split into as few groups as give about ``DBIAS_TARGET_PROGRAMS`` programs of
    (group, head, tile): fewer groups mean smaller partials, more mean more parallel work.
    """
    if per_window:
        return batch, 1
    groups = min(batch, max(1, math.ceil(DBIAS_TARGET_PROGRAMS / (heads * tiles))))
    per_group = math.ceil(batch / groups)
    return math.ceil(batch / per_group), per_group


def tiles_backward(
    saved: tuple[torch.Tensor, ...],
    dictionary: KNNDictionary,
    grad_out: torch.Tensor,
    scale: float,
    need_dbias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """dq, dk, dv and (when ``need_dbias``) the bias gradient in the bias's own shape.

    Args:
        saved, grad_out, scale: as in the gather kernels' ``_backward``.
        dictionary: the neighbour lists (bitmask and tile maps cached there).
        need_dbias: whether the bias requires a gradient.
    """
    q, k, v, bias, out, lse = saved
    run = _Launch(q, dictionary, bias, scale)
    do = grad_out.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(lse)  # (B, H, N) fp32, written by the dq kernel
    num, ids = run.tiles.query_tiles  # (B, H|1, QB), (B, H|1, QB, KB)
    _tiles_bwd_dq_kernel[(run.B * run.H, run.qb)](
        q, k, v, out, do, lse, delta, dq, run.bits, num, ids, run.bias,
        run.H, run.N, run.D, run.kb, run.qk_scale, scale,
        *run.bits_strides(), *_map_strides(num, dictionary.per_head), *run.bias_strides,
        **run.constants(),
    )  # fmt: skip
    num, ids = run.tiles.key_tiles  # (B, H|1, KB), (B, H|1, KB, QB)
    _tiles_bwd_dkdv_kernel[(run.B * run.H, run.kb)](
        q, k, v, do, lse, delta, dk, dv, run.bits, num, ids, run.bias,
        run.H, run.N, run.D, run.qb, run.qk_scale, scale,
        *run.bits_strides(), *_map_strides(num, dictionary.per_head), *run.bias_strides,
        **run.constants(),
    )  # fmt: skip
    dbias = _bias_gradient(run, q, k, v, do, lse, delta, bias) if need_dbias else None
    return dq, dk, dv, dbias


def _bias_gradient(run: _Launch, q, k, v, do, lse, delta, bias: torch.Tensor) -> torch.Tensor:
    """Per-group partial sums of ds over windows, reduced to ``bias``'s shape in one sum."""
    groups, per_group = dbias_groups(run.B, run.H, run.qb * run.kb, bias.shape[0] > 1)
    partial = torch.empty(groups, run.H, run.N, run.N, device=q.device, dtype=torch.float32)
    occupied = run.tiles.occupied  # (B, H|1, QB, KB) int8
    _tiles_bwd_dbias_kernel[(groups * run.H, run.qb, run.kb)](
        q, k, v, do, lse, delta, run.bits, occupied, run.bias, partial,
        run.B, run.H, run.N, run.D, run.qb, run.kb, per_group, run.qk_scale,
        *run.bits_strides(), *_map_strides(occupied, run.dictionary.per_head), *run.bias_strides,
        **run.constants(),
    )  # fmt: skip
    summed = [dim for dim in (0, 1) if bias.shape[dim] == 1]
    if summed:
        partial = partial.sum(dim=summed, keepdim=True)  # bias.shape
    return partial.to(bias.dtype)


class _TilesKNNAttention(torch.autograd.Function):
    """Autograd wrapper: tile forward, split tile backward (no atomics)."""

    @staticmethod
    def forward(ctx, q, k, v, dictionary, scale, bias):
        return _forward_saved(ctx, tiles_forward, q, k, v, dictionary, scale, bias)

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        need_dbias = saved[3] is not None and ctx.needs_input_grad[5]
        dq, dk, dv, dbias = tiles_backward(saved, ctx.dictionary, grad_out, ctx.scale, need_dbias)
        return dq, dk, dv, None, None, dbias


def tiles_knn_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dictionary: KNNDictionary,
    scale: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """KNN attention over dense tiles of the neighbour bitmask; differentiable in q, k, v, bias.

    Inputs are validated by the dispatcher (``knn_attention``), which also refuses duplicate
    neighbours, float64 and head dims above :data:`MAX_HEAD_DIM` for this backend.

    Args:
        q, k, v: (B, H, N, d) tensors of one dtype (fp16, bf16 or fp32).
        dictionary: neighbour lists without duplicates (e.g. from ``knn_graph``).
        scale: logit scale.
        bias: None or an additive (B|1, H|1, N, N) table, read in place; its gradient (same
            shape) is computed only when it requires grad.

    Returns:
        (B, H, N, d) output in q's dtype.
    """
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the tiles backend takes float16, bfloat16 or float32, got {q.dtype}")
    return _TilesKNNAttention.apply(q, k, v, dictionary, float(scale), bias)
