"""``KNNDictionary``: neighbour lists validated once, with what every backend derives from them.

SemanIR builds one key-semantic dictionary per stage and every layer of the stage attends
through it. Everything a backend derives from the neighbour lists is a function of the lists
alone, so it is derived once, on first use, and cached on the dictionary:

- ``mask``/``reference``: the additive (B, heads|1, N, N) neighbour mask (0 on a neighbour,
  log(multiplicity) for duplicates, -inf elsewhere), per dtype;
- ``triton``: the transposed (CSR) neighbour list of the deterministic backward, and the
  duplicate ranks of the bias gradient;
- ``gather``: the neighbour ids in the layout of the row gather, per number of heads;
- ``flex``: the packed neighbour bitmask and the block lists of the FlexAttention ``BlockMask``;
- ``tiles``: the packed neighbour bitmask and the tile map (which key tiles hold a neighbour
  of each query tile, and the transpose).

Building a dictionary from a raw ``idx`` checks its dtype, shape and range with one host
synchronisation; calls of :func:`~common_kernels.knn_attention` with a dictionary then check
only shapes, dtypes and devices, so on CUDA they launch kernels without synchronising.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._checks import INDEX_DTYPES, check_index_range, check_ndim, check_tensor

BITS_PER_WORD = 32
FLEX_BLOCK_SIZE = 128  # FlexAttention's default sparse block


class TileMap(NamedTuple):
    """Which (query tile, key tile) blocks hold at least one neighbour pair.

    Attributes:
        query_tiles: ``(counts, ids)``: counts (B, heads|1, QB) int32 and ids (B, heads|1,
            QB, KB) int32: for each query tile, its occupied key tiles first, ascending.
        key_tiles: the transpose: counts (B, heads|1, KB), ids (B, heads|1, KB, QB).
        occupied: (B, heads|1, QB, KB) int8, 1 where a tile holds a neighbour pair.
    """

    query_tiles: tuple[Tensor, Tensor]
    key_tiles: tuple[Tensor, Tensor]
    occupied: Tensor


class FlexBlocks(NamedTuple):
    """The block lists of a FlexAttention ``BlockMask`` of one dictionary (B, heads|1, QB[,
    KB] int32): partial tiles (the mask_mod is applied there) and full tiles (all pairs are
    neighbours)."""

    kv_num: Tensor
    kv_idx: Tensor
    full_num: Tensor
    full_idx: Tensor


def tile_sizes(n: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) of the ``tiles`` kernel for windows of ``n`` tokens: 64 x 64 tiles,
    smaller for windows of fewer tokens (at least 16, the smallest ``tl.dot``)."""
    side = min(64, max(16, 1 << max(0, n - 1).bit_length()))
    return side, side


class KNNDictionary:
    """A validated neighbour list plus the per-backend structures derived from it (cached).

    Do not modify ``idx`` after building a dictionary from it: the cached structures would no
    longer match.

    Args:
        idx: (B, N, K) neighbour ids shared across heads, or (B, heads, N, K) per head;
            int32/int64 values in [0, N), K in [1, N]. Duplicates count as separate softmax
            terms. Checked here with one host synchronisation.
    """

    def __init__(self, idx: Tensor) -> None:
        check_ndim("idx", check_tensor("idx", idx), (3, 4), "(B, N, K) or (B, heads, N, K)")
        n, n_neighbours = idx.shape[-2], idx.shape[-1]
        if not 1 <= n_neighbours <= n:
            raise ValueError(
                f"idx must hold K in [1, N={n}] neighbours per query, got K={n_neighbours}"
            )
        if idx.dtype not in INDEX_DTYPES:
            raise TypeError(f"idx must be an int32 or int64 tensor, got {idx.dtype}")
        self._init(idx, max_multiplicity=None if idx.numel() else 1)
        if not idx.numel():
            return
        ranks = self.duplicate_ranks()
        # range and multiplicity in one host synchronisation
        low, high, top = torch.stack([idx.min().long(), idx.max().long(), ranks.max()]).tolist()
        check_index_range("idx", low, high, n)
        self._max_multiplicity = top + 1

    @classmethod
    def from_mask(cls, member: Tensor, k: int) -> KNNDictionary:
        """A dictionary over a neighbour mask with ``k`` neighbours in every row, without checks.

        For the output of :func:`~common_kernels.knn_mask` (the set ``knn_graph`` lists, as a
        mask): the dense backends (``mask``, ``reference``) use it as it is; the list backends
        (``gather``, ``triton``, ``flex``, ``tiles``) get the neighbour ids from it on first use,
        in ascending order. No host synchronisation.

        Args:
            member: (B, N, N) or (B, heads, N, N) bool, True at each query's neighbours.
            k: the number of True entries in every row.
        """
        dictionary = cls.__new__(cls)
        dictionary._member = member
        dictionary.per_head = member.ndim == 4
        dictionary.batch = member.shape[0]
        dictionary.heads = member.shape[1] if dictionary.per_head else None
        dictionary.n = member.shape[-1]
        dictionary.k = k
        dictionary._idx = None
        dictionary._max_multiplicity = 1
        dictionary._cache = {}
        return dictionary

    @classmethod
    def from_unique(cls, idx: Tensor) -> KNNDictionary:
        """A dictionary over lists known to be valid and free of duplicates, without checks.

        For the output of :func:`~common_kernels.knn_graph` (in range by construction, one
        entry per key): no host synchronisation at all.

        Args:
            idx: (B, N, K) or (B, heads, N, K) int32/int64 ids in [0, N), no duplicate per row.
        """
        dictionary = cls.__new__(cls)
        dictionary._init(idx, max_multiplicity=1)
        return dictionary

    def _init(self, idx: Tensor, max_multiplicity: int | None) -> None:
        """Set the fields; ``max_multiplicity`` None until the constructor's checks find it."""
        self._idx = idx.to(torch.int32).contiguous()  # (B, [heads,] N, K)
        self._member = None
        self.per_head = idx.ndim == 4
        self.batch = idx.shape[0]
        self.heads = idx.shape[1] if self.per_head else None
        self.n = idx.shape[-2]
        self.k = idx.shape[-1]
        self._max_multiplicity = max_multiplicity
        self._cache: dict[tuple, Any] = {}

    def __repr__(self) -> str:
        layout = f"heads={self.heads}" if self.per_head else "shared across heads"
        return (
            f"KNNDictionary(batch={self.batch}, N={self.n}, K={self.k}, {layout}, "
            f"device={self.device})"
        )

    @property
    def device(self) -> torch.device:
        return (self._idx if self._idx is not None else self._member).device

    @property
    def idx(self) -> Tensor:
        """(B, [heads,] N, K) int32 neighbour ids (from the mask, ascending, for a dictionary
        made by :meth:`from_mask`)."""
        if self._idx is None:
            with torch.no_grad():
                ids = self._member.nonzero()[:, -1]  # row by row, ascending ids
                self._idx = ids.view(*self._member.shape[:-1], self.k).to(torch.int32)
        return self._idx

    @property
    def made_from_mask(self) -> bool:
        """Whether the dictionary was made from a neighbour mask (:meth:`from_mask`): that mask
        is its membership, and it holds no duplicates."""
        return self._member is not None

    def membership(self) -> Tensor:
        """(B, heads|1, N, N) bool: True at each query's neighbours."""
        if self._member is not None:
            return self._member if self.per_head else self._member.unsqueeze(1)
        return self.cached(("member",), lambda: membership_from_ids(self.idx4, self.n))

    @property
    def idx4(self) -> Tensor:
        """(B, heads|1, N, K) int32 view of the neighbour ids."""
        return self.idx if self.per_head else self.idx.unsqueeze(1)

    @property
    def max_multiplicity(self) -> int:
        """The largest number of times one key appears in one query's list (1: no duplicates).

        Found by the checks of the constructor; known without them for :meth:`from_unique`.
        """
        return self._max_multiplicity

    def cached(self, key: tuple, build: Callable[[], Any]) -> Any:
        """``build()`` once per ``key``, run without autocast and without autograd."""
        if key not in self._cache:
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                self._cache[key] = build()
        return self._cache[key]

    def additive_mask(self, dtype: torch.dtype) -> Tensor:
        """(B, heads|1, N, N) mask in ``dtype``: log(multiplicity) at neighbours, else -inf."""
        return self.cached(("mask", dtype), lambda: neighbour_log_multiplicity(self, dtype))

    def duplicate_ranks(self) -> Tensor:
        """(B, heads|1, N, K) int64: how many earlier slots of the query hold the same key."""
        return self.cached(("ranks",), lambda: duplicate_rank(self.idx4.long()))

    def transposed(self) -> tuple[Tensor, Tensor]:
        """The transposed (CSR) list: ``row_ptr`` (B, heads|1, N + 1), ``cols`` (B, heads|1,
        N * K); key n is the neighbour of the flat slots ``cols[..., row_ptr[n]:row_ptr[n+1]]``
        (``i * K + j``), in ascending order."""
        return self.cached(("csr",), lambda: transposed_neighbours(self.idx4, self.n))

    def gather_rows(self, heads: int) -> Tensor:
        """(B, heads, N, K) int64 row ids into a (B * heads * N, d) view of keys or values."""

        def build() -> Tensor:
            rows = self.idx4.long().expand(self.batch, heads, self.n, self.k)  # (B, H, N, K)
            offsets = torch.arange(self.batch * heads, device=self.device) * self.n
            return rows + offsets.view(self.batch, heads, 1, 1)  # (B, H, N, K)

        return self.cached(("rows", heads), build)

    def gather_index(self, heads: int) -> Tensor:
        """(B, heads, N * K, 1) int64 neighbour ids along the token axis, for ``torch.gather``."""

        def build() -> Tensor:
            ids = self.idx4.long().expand(self.batch, heads, self.n, self.k)  # (B, H, N, K)
            return ids.reshape(self.batch, heads, self.n * self.k, 1)  # (B, H, N*K, 1)

        return self.cached(("index", heads), build)

    def bitmask(self) -> Tensor:
        """(B, heads|1, N, ceil(N / 32)) int32: bit j % 32 of word j // 32 set iff j is a
        neighbour of the query."""
        unique = self.max_multiplicity == 1
        return self.cached(("bitmask",), lambda: pack_neighbour_bits(self.idx4, self.n, unique))

    def tile_map(self, block_m: int, block_n: int) -> TileMap:
        """The :class:`TileMap` of (block_m query x block_n key) tiles."""

        def build() -> TileMap:
            if self.n <= min(block_m, block_n):  # one tile, never empty: no per-list work
                lead = (self.batch, self.idx4.shape[1])
                one = torch.ones((), dtype=torch.int32, device=self.device).expand(*lead, 1)
                first = torch.zeros((), dtype=torch.int32, device=self.device).expand(*lead, 1, 1)
                occupied = torch.ones((), dtype=torch.int8, device=self.device)
                return TileMap((one, first), (one, first), occupied.expand(*lead, 1, 1))
            pairs = neighbour_pairs_per_tile(self.idx4, self.n, block_m, block_n)
            occupied = pairs > 0  # (B, heads|1, QB, KB)
            return TileMap(
                query_tiles=occupied_first(occupied),
                key_tiles=occupied_first(occupied.transpose(-1, -2)),
                occupied=occupied.to(torch.int8),
            )

        return self.cached(("tiles", block_m, block_n), build)

    def flex_blocks(self, block_size: int = FLEX_BLOCK_SIZE) -> FlexBlocks:
        """The partial and full (block_size x block_size) tiles of a FlexAttention
        ``BlockMask``, from the ids in O(N K) (no N x N evaluation): a tile is *partial* when
        some but not all of its pairs are neighbours and *full* when all are."""

        def build() -> FlexBlocks:
            n_blocks = -(-self.n // block_size)
            pairs = neighbour_pairs_per_tile(self.idx4, self.n, block_size, block_size)
            # from device arithmetic: writing a Python int into one element is a host-to-device
            # copy, which waits for the GPU (the sync-debug GPU test caught it on an H200)
            starts = torch.arange(n_blocks, device=pairs.device) * block_size  # (QB,)
            sizes = (self.n - starts).clamp_(max=block_size)  # (QB,) the last may be short
            area = sizes.view(-1, 1) * sizes.view(1, -1)  # (QB, KB) pairs per tile
            full = pairs == area  # (B, heads|1, QB, KB)
            partial = (pairs > 0) & ~full
            return FlexBlocks(*occupied_first(partial), *occupied_first(full))

        return self.cached(("flex_blocks", block_size), build)

    def prepare(self, backend: str, dtype: torch.dtype = torch.float32) -> KNNDictionary:
        """Derive now what ``backend`` will need (otherwise derived on first use); returns self.

        Args:
            backend: "reference", "mask", "gather", "triton", "flex" or "tiles".
            dtype: compute dtype of the attention (the mask is kept per dtype).
        """
        if backend in ("reference", "mask"):
            self.additive_mask(dtype)
        elif backend == "triton":
            self.transposed()
            self.duplicate_ranks()
        elif backend == "flex":
            self.bitmask()
            self.flex_blocks()
        elif backend == "tiles":
            self.bitmask()
            self.tile_map(*tile_sizes(self.n))
        elif backend != "gather":
            raise ValueError(
                "backend must be one of 'reference', 'mask', 'gather', 'triton', 'flex', "
                f"'tiles', got {backend!r}"
            )
        return self


def as_dictionary(idx: Tensor | KNNDictionary) -> KNNDictionary:
    """``idx`` itself if it is a dictionary, else a new (validated) dictionary over it."""
    return idx if isinstance(idx, KNNDictionary) else KNNDictionary(idx)


def membership_from_ids(idx: Tensor, n_keys: int) -> Tensor:
    """(B, Hc, N, K) ids -> (B, Hc, N, n_keys) bool, True at the listed keys."""
    member = torch.zeros((*idx.shape[:-1], n_keys), dtype=torch.bool, device=idx.device)
    return member.scatter_(-1, idx.long(), True)


def neighbour_log_multiplicity(dictionary: KNNDictionary, dtype: torch.dtype) -> Tensor:
    """Dense (B, heads|1, N, N) additive mask: log(count of j in idx[i]), -inf where absent.

    Without duplicates the neighbours get 0 directly (from the dictionary's mask when it was
    made from one); otherwise log() runs on the N*K neighbour entries only (log(0) over the
    whole N x N grid is slow).
    """
    if dictionary._member is not None:  # 1 / {1, 0} = {1, inf}; 1 - that = {0, -inf}
        member = dictionary.membership().to(dtype)  # (B, heads|1, N, N)
        return torch.reciprocal(member).neg_().add_(1.0)  # one pass each, masked_fill is slower
    idx4 = dictionary.idx4.long()  # (B, heads|1, N, K)
    grid = (*idx4.shape[:-1], dictionary.n)
    mask = torch.full(grid, float("-inf"), dtype=dtype, device=idx4.device)
    if dictionary.max_multiplicity == 1:
        return mask.scatter_(-1, idx4, 0.0)
    exact = torch.promote_types(dtype, torch.float32)  # log(count) at least in fp32
    ones = torch.ones(idx4.shape, dtype=exact, device=idx4.device)
    counts = torch.zeros(grid, dtype=exact, device=idx4.device).scatter_add_(-1, idx4, ones)
    return mask.scatter_(-1, idx4, counts.gather(-1, idx4).log().to(dtype))


def duplicate_rank(idx: Tensor) -> Tensor:
    """For each slot, how many earlier slots of the same query hold the same neighbour.

    Args:
        idx: (..., K) int64 neighbour ids.
    """
    sorted_idx, order = torch.sort(idx, dim=-1, stable=True)
    pos = torch.arange(idx.shape[-1], device=idx.device).expand_as(idx)
    run_start = torch.ones_like(idx, dtype=torch.bool)
    run_start[..., 1:] = sorted_idx[..., 1:] != sorted_idx[..., :-1]
    first = torch.where(run_start, pos, 0).cummax(dim=-1).values
    return torch.empty_like(pos).scatter_(-1, order, pos - first)


def transposed_neighbours(idx: Tensor, n_keys: int) -> tuple[Tensor, Tensor]:
    """Build the transposed (CSR) neighbour list: for each key, the slots that point at it.

    The slots of key ``n`` are the flat positions ``i * K + j`` with ``idx[..., i, j] == n``,
    in ascending order (a stable sort), so a backward sums them in a reproducible order.

    Args:
        idx: (B, Hc, N, K) neighbour ids, Hc = 1 when shared across heads.
        n_keys: number of keys N.

    Returns:
        row_ptr: (B, Hc, n_keys + 1) int32 (int64 when N * K does not fit); key n owns
            ``cols[..., row_ptr[n]:row_ptr[n + 1]]``.
        cols: (B, Hc, N * K) flat slot ids, int32 when they fit.
    """
    B, Hc, N, K = idx.shape
    flat = idx.reshape(B, Hc, N * K)  # (B, Hc, N * K)
    sorted_keys, cols = torch.sort(flat, dim=-1, stable=True)  # (B, Hc, N * K) each
    bounds = torch.arange(n_keys + 1, device=idx.device, dtype=idx.dtype)
    bounds = bounds.expand(B, Hc, n_keys + 1).contiguous()  # (B, Hc, N + 1)
    slot_dtype = torch.int32 if N * K < 2**31 else torch.int64
    row_ptr = torch.searchsorted(sorted_keys.contiguous(), bounds)  # (B, Hc, N + 1)
    return row_ptr.to(slot_dtype), cols.to(slot_dtype)


def pack_neighbour_bits(idx: Tensor, n_keys: int, unique: bool = False) -> Tensor:
    """(B, Hc, N, K) ids -> (B, Hc, N, ceil(n_keys / 32)) int32 words of membership bits.

    Lists without duplicates add each neighbour's bit into its word (distinct bits of one word
    add without carries: the sum is the OR), in O(N K). Lists with duplicates go through an
    N x N membership grid, which sets a repeated bit once.
    """
    words = -(-n_keys // BITS_PER_WORD)
    idx = idx.long()
    if unique:
        packed = torch.zeros(*idx.shape[:-1], words, dtype=torch.int64, device=idx.device)
        packed.scatter_add_(-1, idx // BITS_PER_WORD, 1 << (idx % BITS_PER_WORD))
    else:
        member = torch.zeros(
            (*idx.shape[:-1], words * BITS_PER_WORD), dtype=torch.bool, device=idx.device
        )
        member.scatter_(-1, idx, True)  # (B, Hc, N, W * 32)
        member = member.view(*idx.shape[:-1], words, BITS_PER_WORD)  # (B, Hc, N, W, 32)
        weights = torch.ones(BITS_PER_WORD, dtype=torch.int64, device=idx.device)
        weights = weights << torch.arange(BITS_PER_WORD, device=idx.device)  # (32,) 2**b
        packed = (member.long() * weights).sum(-1)  # (B, Hc, N, W) in [0, 2**32)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def neighbour_pairs_per_tile(idx: Tensor, n_keys: int, block_m: int, block_n: int) -> Tensor:
    """How many (query, neighbour) pairs fall in each (query tile, key tile) block, in O(N K).

    Args:
        idx: (B, Hc, N, K) neighbour ids.
        n_keys: number of keys N.
        block_m, block_n: query and key tile sizes.

    Returns:
        (B, Hc, ceil(N / block_m), ceil(N / block_n)) int64 counts.
    """
    batch, heads, n, k = idx.shape
    q_blocks, k_blocks = -(-n // block_m), -(-n_keys // block_n)
    rows = torch.arange(n, device=idx.device) // block_m  # (N,) query tile of each row
    tile = rows.view(1, 1, n, 1) * k_blocks + idx.long() // block_n  # (B, Hc, N, K) tile id
    pairs = torch.zeros(batch, heads, q_blocks * k_blocks, dtype=torch.int64, device=idx.device)
    tile = tile.reshape(batch, heads, n * k)  # (B, Hc, N*K)
    pairs.scatter_add_(-1, tile, torch.ones_like(tile))
    return pairs.view(batch, heads, q_blocks, k_blocks)  # (B, Hc, QB, KB)


def occupied_first(selected: Tensor) -> tuple[Tensor, Tensor]:
    """(..., R, C) bool -> counts (..., R) int32 and column ids (..., R, C) int32 with the
    selected columns first, ascending (a stable sort)."""
    counts = selected.sum(dim=-1, dtype=torch.int32)  # (..., R)
    order = torch.sort((~selected).to(torch.uint8), dim=-1, stable=True).indices
    return counts, order.to(torch.int32).contiguous()
