"""Exact, deterministic k-nearest-neighbour graphs over token features, global or per window."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _cpu_kernels
from ._checks import all_finite, check_float, check_ndim, check_positive_int, values_checked
from .dictionary import KNNDictionary
from .windows import window_partition

SIMILARITIES = ("dot", "cosine")
BACKENDS = ("auto", "reference", "chunked")
AUTO_REFERENCE_MAX_PAIRS = 2048 * 2048  # "auto" uses the full N x N matrix up to this many pairs
CHUNK_BLOCK_BYTES = 64 * 2**20  # default chunk keeps one similarity block near 64 MB


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _similarity_features(x: Tensor, similarity: str) -> Tensor:
    """Features whose pairwise dot products are the similarities (fp32 for fp16/bf16 input)."""
    feats = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return F.normalize(feats, dim=-1) if similarity == "cosine" else feats


def _similarity_block(queries: Tensor, keys: Tensor) -> Tensor:
    """(G, M, C) queries x (G, N, C) keys -> (G, M, N) similarities; every block is made here."""
    return queries @ keys.transpose(-2, -1)


def _exact_topk(sim: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest entries of each row, ordered by (value desc, index asc).

    ``topk`` alone does not break ties by index. On the CPU a ``topk`` of k + 1 entries tells
    which rows have a tie at the boundary and only those take the tie-breaking path; on CUDA
    that branch would wait for the GPU, so every row takes one ``topk`` over distinct keys.

    Args:
        sim: (..., M, N) similarities (fp32, or fp64).
        k: entries to keep per row, ``1 <= k <= N``.

    Returns:
        (..., M, k) int64 indices.
    """
    if sim.is_cuda:
        return _keyed_topk(sim, k)
    n = sim.shape[-1]
    values, indices = sim.topk(min(k + 1, n), dim=-1)  # (..., M, k[+1]) descending
    tied = (values[..., 1:] == values[..., :-1]).any(dim=-1).reshape(-1)  # (rows,)
    chosen = indices[..., :k].reshape(-1, k)  # (rows, k)
    if bool(tied.any()):  # a CPU tensor: no synchronisation
        rows = tied.nonzero().squeeze(1)  # (tied rows,)
        kth = values.reshape(-1, values.shape[-1])[rows, k - 1 : k]  # (tied rows, 1)
        chosen = chosen.index_copy(0, rows, _tie_broken_topk(sim.reshape(-1, n)[rows], kth, k))
    return chosen.view(*sim.shape[:-1], k)  # (..., M, k)


def _tie_broken_topk(sim: Tensor, kth: Tensor, k: int) -> Tensor:
    """Exact top-k with ties to the lower index; ``kth`` (..., M, 1) is each row's k-th value."""
    above = sim > kth
    tied = sim == kth
    ties_needed = k - above.sum(dim=-1, keepdim=True, dtype=torch.int32)
    keep = above | (tied & (tied.cumsum(dim=-1, dtype=torch.int32) <= ties_needed))
    # exactly k entries kept per row; nonzero() lists them row by row in ascending index order
    chosen = keep.nonzero()[:, -1].view(*sim.shape[:-1], k)  # (..., M, k)
    order = sim.gather(-1, chosen).sort(dim=-1, descending=True, stable=True).indices
    return chosen.gather(-1, order)


def _top_k_membership(sim: Tensor, k: int) -> Tensor:
    """(..., M, N) similarities -> (..., M, N) bool, True at each row's k largest entries with
    ties broken to the lower index: the set :func:`_exact_topk` lists, without listing it.

    One ``topk`` of k + 1 values (unsorted) gives each row's (k+1)-th largest value v; the
    entries above v are the row's k largest unless the k-th equals v (a tie at the boundary):
    those rows add the tied entries of lowest index. On the CPU only such rows (found without
    a device round trip) take that path; on CUDA, and in a ``torch.compile`` graph (where the
    branch would break the graph), every row does (no host synchronisation).
    """
    n = sim.shape[-1]
    if k == n:
        return torch.ones(sim.shape, dtype=torch.bool, device=sim.device)
    if _cpp_membership_runs(sim):
        rows = sim.detach().reshape(-1, n)  # (rows, N), contiguous
        return _cpu_kernels.ops().topk_membership(rows, k).view(sim.shape)
    floor = sim.topk(k + 1, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)  # (..., M, 1)
    member = sim > floor  # (..., M, N): k per row, fewer where the k-th value equals the floor
    if sim.is_cuda or torch.compiler.is_compiling():
        return _with_boundary_ties(sim, member, floor, k)
    short = member.sum(dim=-1, dtype=torch.int32) < k  # (..., M)
    if bool(short.any()):  # a CPU tensor: no synchronisation
        rows = short.nonzero(as_tuple=True)
        member[rows] = _with_boundary_ties(sim[rows], member[rows], floor[rows], k)
    return member


# The C++ membership: rows of 64 on AVX-512 by a bitwise search of the (k+1)-th value (4x faster
# than the topk path on one thread of this project's AMD EPYC); other rows count, for each entry,
# the entries ordered before it, N^2 comparisons where topk selects in about N (2 threads, 400k
# similarities: 1.2x faster at N=128, 0.6x at 256).
CPP_MEMBERSHIP_MAX_N = 128


def _cpp_membership_runs(sim: Tensor) -> bool:
    """Whether the C++ membership kernel takes these similarities (CPU, fp32, small rows)."""
    if sim.device.type != "cpu" or sim.dtype != torch.float32:
        return False
    return sim.shape[-1] <= CPP_MEMBERSHIP_MAX_N and _cpu_kernels.status()[0]


def _with_boundary_ties(sim: Tensor, member: Tensor, floor: Tensor, k: int) -> Tensor:
    """``member`` plus, per row, the entries equal to ``floor`` of lowest index up to k in all."""
    tied = sim == floor
    needed = k - member.sum(dim=-1, keepdim=True, dtype=torch.int32)
    return member | (tied & (tied.cumsum(dim=-1, dtype=torch.int32) <= needed))


def _keyed_topk(sim: Tensor, k: int) -> Tensor:
    """:func:`_exact_topk` without a branch on the data (nothing waits for the GPU).

    Every entry gets a distinct int64 key in (value desc, index asc) order: the similarity's
    order-preserving integer image in the high 32 bits and ``N - 1 - index`` in the low 32
    bits, and one ``topk`` over the keys is exact. float64 similarities do not fit in 32 bits
    and take a stable descending sort instead.
    """
    n = sim.shape[-1]
    if sim.dtype == torch.float64:
        return sim.sort(dim=-1, descending=True, stable=True).indices[..., :k]
    bits = (sim.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0: one key for 0
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).long()  # monotone in the value
    lower_first = torch.arange(n - 1, -1, -1, device=sim.device)  # (N,) larger for lower ids
    keys = (ordered << 32) | lower_first  # (..., M, N) int64, all distinct in a row
    return keys.topk(k, dim=-1).indices


def _block_neighbours(
    queries: Tensor, keys: Tensor, first_row: int, k: int, force_self: bool, check: bool
) -> Tensor:
    """Neighbours of ``queries`` = ``keys[:, first_row:first_row + M]`` among all ``keys``.

    Args:
        queries: (G, M, C) query rows.
        keys: (G, N, C) all tokens of the same G sequences.
        first_row: token index of the first query row.
        k: neighbours per query.
        force_self: put each token first and pick the other k-1 from the remaining tokens.
        check: require finite similarities (one host synchronisation).

    Returns:
        (G, M, k) int64 neighbour indices.
    """
    sim = _similarity_block(queries, keys)  # (G, M, N)
    if check and not all_finite(sim):
        raise ValueError(
            "x gives non-finite similarities (overflow); accepted: values whose pairwise dot "
            "products are finite, rescale x"
        )
    if not force_self:
        return _exact_topk(sim, k)
    n_seq, n_rows, _ = sim.shape
    rows = torch.arange(first_row, first_row + n_rows, device=sim.device)  # (M,)
    own = rows.expand(n_seq, n_rows).unsqueeze(-1)  # (G, M, 1)
    if k == 1:
        return own
    sim.diagonal(offset=first_row, dim1=-2, dim2=-1).fill_(float("-inf"))
    return torch.cat([own, _exact_topk(sim, k - 1)], dim=-1)


def _row_blocks(batch: int, n: int, chunk: int) -> Iterator[tuple[slice, slice]]:
    """(batch slice, row slice) blocks covering (batch, n) with at most ``chunk * n`` pairs each."""
    if chunk >= n:
        group = chunk // n
        for start in range(0, batch, group):
            yield slice(start, start + group), slice(0, n)
    else:
        for b in range(batch):
            for start in range(0, n, chunk):
                yield slice(b, b + 1), slice(start, start + chunk)


def _chunked_neighbours(feats: Tensor, k: int, force_self: bool, chunk: int, check: bool) -> Tensor:
    """Exact neighbours of (B, N, C) features, holding at most ``chunk * N`` similarities."""
    batch, n, _ = feats.shape
    idx = torch.empty(batch, n, k, dtype=torch.long, device=feats.device)
    for seqs, rows in _row_blocks(batch, n, chunk):
        idx[seqs, rows] = _block_neighbours(
            feats[seqs, rows], feats[seqs], rows.start, k, force_self, check
        )
    return idx


def knn_graph(
    x: Tensor,
    k: int,
    *,
    window: int | None = None,
    similarity: str = "dot",
    force_self: bool = False,
    chunk: int | None = None,
    backend: str = "auto",
    check_values: bool | None = None,
) -> Tensor:
    """For every token, its ``k`` most similar tokens, exactly and deterministically.

    Neighbours are sorted by similarity descending; equal similarities put the lower index
    first, so every backend gives the same graph and ``idx[..., :j] == knn_graph(x, j)``.

    Args:
        x: (B, N, C) features, or (B, H, W, C) when ``window`` is given. fp16/bf16 similarities
            are computed in fp32.
        k: neighbours per token, in ``[1, N]`` (``[1, window**2]`` with ``window``).
        window: build the graph inside each non-overlapping ``window x window`` window.
        similarity: ``"dot"`` (x_i . x_j) or ``"cosine"`` (dot of L2-normalised features).
        force_self: make each token its own first neighbour, followed by the top-(k-1) others.
        chunk: query rows per block for the chunked backend (int >= 1).
        backend: ``"reference"`` (full N x N matrix), ``"chunked"`` (at most ``chunk * N``
            similarities alive at once) or ``"auto"`` (reference up to 2048 x 2048 per batch
            element, chunked with ~64 MB blocks beyond).
        check_values: require finite ``x`` and finite similarities (host synchronisations).
            None: on the CPU yes, on CUDA no, unless :func:`~common_kernels.value_checks`
            says otherwise; without checks nothing here synchronises with the host.

    Returns:
        (B, N, k) int64 indices, or (B*nW, window*window, k) window-local indices in
        :func:`~common_kernels.windows.window_partition` order.
    """
    _check_choice("similarity", similarity, SIMILARITIES)
    _check_choice("backend", backend, BACKENDS)
    if chunk is not None:
        check_positive_int("chunk", chunk)
    check_float("x", x, finite=False)
    check = values_checked(check_values, x.device)
    if check and x.numel() and not all_finite(x):
        raise ValueError("x contains NaN or Inf values; all entries must be finite")
    if window is None:
        check_ndim("x", x, (3,), "(B, N, C)")
    else:
        check_ndim("x", x, (4,), "(B, H, W, C) when window is given")
        x = window_partition(x, window)  # (B*nW, w*w, C)
    n = x.shape[1]
    check_positive_int("k", k, upper=n)
    feats = _similarity_features(x, similarity)
    if backend == "reference" or (backend == "auto" and n * n <= AUTO_REFERENCE_MAX_PAIRS):
        return _block_neighbours(feats, feats, 0, k, force_self, check)
    if chunk is None:
        chunk = max(1, CHUNK_BLOCK_BYTES // (n * feats.element_size()))
    return _chunked_neighbours(feats, k, force_self, chunk, check)


def knn_mask(
    x: Tensor,
    k: int,
    *,
    similarity: str = "dot",
    check_values: bool | None = None,
) -> Tensor:
    """The neighbour sets of :func:`knn_graph` as a mask: True where token j is among the ``k``
    most similar tokens of token i (equal similarities: the lower index first, as there).

    The form the dense attention backends consume (:meth:`KNNDictionary.from_mask`): one
    ``topk`` of values and one comparison per row, with no neighbour list to sort, scatter or
    convert. The whole (B, N, N) similarity is made at once (windows of SemanIR's size).

    Args:
        x: (B, N, C) features (fp16/bf16 similarities are computed in fp32).
        k: neighbours per token, in ``[1, N]``.
        similarity: ``"dot"`` or ``"cosine"``.
        check_values: require finite ``x`` and similarities, as in :func:`knn_graph`.

    Returns:
        (B, N, N) bool with exactly ``k`` True entries per row.
    """
    _check_choice("similarity", similarity, SIMILARITIES)
    check_ndim("x", check_float("x", x, finite=False), (3,), "(B, N, C)")
    check_positive_int("k", k, upper=x.shape[1])
    check = values_checked(check_values, x.device)
    if check and x.numel() and not all_finite(x):
        raise ValueError("x contains NaN or Inf values; all entries must be finite")
    feats = _similarity_features(x, similarity)
    sim = _similarity_block(feats, feats)  # (B, N, N)
    if check and not all_finite(sim):
        raise ValueError(
            "x gives non-finite similarities (overflow); accepted: values whose pairwise dot "
            "products are finite, rescale x"
        )
    return _top_k_membership(sim, k)


# The knn_attention backends that attend through a dense N x N mask; "auto" picks them on the
# CPU for windows (its measured policy), and the others derive their lists from a mask on demand.
DENSE_BACKENDS = ("mask", "reference", "cpp")


def knn_dictionary(
    x: Tensor,
    k: int,
    *,
    similarity: str = "dot",
    backend: str = "auto",
    check_values: bool | None = None,
) -> KNNDictionary:
    """The dictionary of each token's ``k`` most similar tokens, built in the form the attention
    ``backend`` consumes: a mask (:func:`knn_mask`) for the dense backends (``mask``,
    ``reference``, and ``auto`` on the CPU), else the lists of :func:`knn_graph`. Both hold the
    same sets (ties to the lower index) and are valid by construction: no checks, and no host
    synchronisation unless ``check_values`` asks for one.

    Args:
        x: (B, N, C) features.
        k: neighbours per token, in ``[1, N]``.
        similarity: ``"dot"`` or ``"cosine"``.
        backend: the :func:`~common_kernels.knn_attention` backend the dictionary is for.
        check_values: as in :func:`knn_graph`.
    """
    if backend in DENSE_BACKENDS or (backend == "auto" and x.device.type == "cpu"):
        member = knn_mask(x, k, similarity=similarity, check_values=check_values)
        return KNNDictionary.from_mask(member, k)  # (B, N, N) neighbours
    idx = knn_graph(x, k, similarity=similarity, check_values=check_values)
    return KNNDictionary.from_unique(idx)  # (B, N, k) neighbours
