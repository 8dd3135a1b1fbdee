"""KNNDictionary: checks at build time, and every derived structure against a plain re-statement.

The derived structures are compared with loops over the lists in Python (exact integer or
fp64 results), the attention through a dictionary with the attention through the raw lists
(bitwise: the same kernels run), and the caches by identity (built once, reused).
"""

from __future__ import annotations

import math

import pytest
import torch

from common_kernels import KNNDictionary, _flex, knn_attention, knn_dictionary, knn_graph, knn_mask
from common_kernels.dictionary import as_dictionary, pack_neighbour_bits, transposed_neighbours


def random_lists(batch, n, k, heads=None, duplicates=False, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lead = (batch, n) if heads is None else (batch, heads, n)
    if duplicates:
        idx = torch.randint(0, n, (*lead, k), generator=g)
        idx[..., -1] = idx[..., 0]
        return idx
    return torch.rand((*lead, n), generator=g).argsort(dim=-1)[..., :k]


def test_build_keeps_int32_lists_and_shape_fields() -> None:
    idx = random_lists(2, 10, 3)
    d = KNNDictionary(idx)
    assert d.idx.dtype == torch.int32 and d.idx.is_contiguous()
    assert torch.equal(d.idx.long(), idx)
    assert (d.batch, d.heads, d.n, d.k, d.per_head) == (2, None, 10, 3, False)
    assert d.idx4.shape == (2, 1, 10, 3)
    per_head = KNNDictionary(random_lists(2, 10, 3, heads=4))
    assert (per_head.heads, per_head.per_head, per_head.idx4.shape) == (4, True, (2, 4, 10, 3))
    assert "N=10, K=3" in repr(d) and "heads=4" in repr(per_head)
    assert as_dictionary(d) is d


@pytest.mark.parametrize(
    ("idx", "error", "message"),
    [
        ([[0, 1]], TypeError, "idx must be a torch.Tensor"),
        (torch.zeros(4, 2, dtype=torch.long), ValueError, r"idx must have shape \(B, N, K\)"),
        (torch.zeros(1, 4, 2), TypeError, "idx must be an int32 or int64 tensor"),
        (torch.zeros(1, 4, 5, dtype=torch.long), ValueError, r"K in \[1, N=4\].*K=5"),
        (torch.zeros(1, 4, 0, dtype=torch.long), ValueError, r"K in \[1, N=4\].*K=0"),
        (torch.full((1, 4, 2), 4), IndexError, r"idx values must lie in \[0, 3\].*max 4"),
        (torch.full((1, 4, 2), -1), IndexError, r"idx values must lie in \[0, 3\].*min -1"),
    ],
    ids=["list", "2d", "float", "K>N", "K=0", "too-large", "negative"],
)
def test_bad_lists_are_rejected_at_build(idx, error, message) -> None:
    with pytest.raises(error, match=message):
        KNNDictionary(idx)


def test_max_multiplicity_counts_repeats_per_query() -> None:
    idx = torch.tensor([[[0, 1, 2], [1, 1, 1], [2, 0, 2]]])  # (1, 3, 3)
    assert KNNDictionary(idx).max_multiplicity == 3
    assert KNNDictionary(random_lists(2, 9, 4)).max_multiplicity == 1
    ranks = KNNDictionary(idx).duplicate_ranks()
    assert ranks.tolist() == [[[[0, 0, 0], [0, 1, 2], [0, 0, 1]]]]
    assert KNNDictionary.from_unique(idx[:, :1, :1].expand(1, 3, 1)).max_multiplicity == 1


def test_additive_mask_is_log_count_or_minus_inf() -> None:
    idx = random_lists(2, 7, 5, heads=3, duplicates=True)
    mask = KNNDictionary(idx).additive_mask(torch.float64)
    assert mask.shape == (2, 3, 7, 7)
    for b in range(2):
        for h in range(3):
            for i in range(7):
                for j in range(7):
                    count = idx[b, h, i].tolist().count(j)
                    expected = math.log(count) if count else -math.inf
                    assert mask[b, h, i, j].item() == pytest.approx(expected, abs=1e-15)


def test_derived_structures_are_built_once_per_key() -> None:
    d = KNNDictionary(random_lists(2, 12, 4))
    assert d.additive_mask(torch.float32) is d.additive_mask(torch.float32)
    assert d.additive_mask(torch.float64) is not d.additive_mask(torch.float32)
    assert d.transposed()[0] is d.transposed()[0]
    assert d.gather_rows(3) is d.gather_rows(3)
    assert d.bitmask() is d.bitmask()
    assert d.flex_blocks() is d.flex_blocks()
    assert d.tile_map(16, 16) is d.tile_map(16, 16)


def test_mask_is_built_outside_autocast_and_autograd() -> None:
    """The 0.1 mask crashed under autocast: log() autocast to fp32 met a half-precision mask."""
    d = KNNDictionary(random_lists(1, 9, 4, duplicates=True))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.enable_grad():
        mask = d.additive_mask(torch.bfloat16)
    assert mask.dtype == torch.bfloat16 and not mask.requires_grad
    expected = d.additive_mask(torch.float64).to(torch.bfloat16)
    assert torch.equal(mask, expected)


def test_gather_rows_index_a_flat_batch_head_view() -> None:
    idx = random_lists(2, 5, 3)
    rows = KNNDictionary(idx).gather_rows(heads=2)
    assert rows.shape == (2, 2, 5, 3) and rows.dtype == torch.int64
    for b in range(2):
        for h in range(2):
            assert torch.equal(rows[b, h], idx[b] + (b * 2 + h) * 5)


def test_transposed_list_holds_every_slot_once_in_order() -> None:
    idx = random_lists(2, 11, 4, heads=3, duplicates=True, seed=7)
    row_ptr, cols = KNNDictionary(idx).transposed()
    assert row_ptr.shape == (2, 3, 12) and cols.shape == (2, 3, 44)
    assert cols.dtype == torch.int32 and row_ptr.dtype == torch.int32
    for b in range(2):
        for h in range(3):
            flat = idx[b, h].reshape(-1)  # (N * K,)
            for n in range(11):
                slots = cols[b, h, row_ptr[b, h, n] : row_ptr[b, h, n + 1]].long()
                assert torch.equal(slots, (flat == n).nonzero().flatten())
    assert torch.equal(transposed_neighbours(idx, 11)[1], cols)


@pytest.mark.parametrize("duplicates", [False, True], ids=["unique", "dup"])
def test_bitmask_sets_exactly_the_neighbour_bits(duplicates: bool) -> None:
    # 70 keys: 3 words, the last one partial; unique lists add bits, repeated ones take a grid
    idx = random_lists(2, 70, 9, seed=3, duplicates=duplicates)
    bits = KNNDictionary(idx).bitmask()
    assert bits.shape == (2, 1, 70, 3) and bits.dtype == torch.int32
    for b in range(2):
        for i in range(70):
            members = {
                word * 32 + bit
                for word in range(3)
                for bit in range(32)
                if (int(bits[b, 0, i, word]) >> bit) & 1
            }
            assert members == set(idx[b, i].tolist())
    assert torch.equal(pack_neighbour_bits(idx.unsqueeze(1), 70), bits)
    if not duplicates:
        assert torch.equal(pack_neighbour_bits(idx.unsqueeze(1), 70, unique=True), bits)


@pytest.mark.parametrize(("n", "k", "block"), [(50, 7, 16), (40, 40, 16), (37, 30, 8)])
def test_block_mask_marks_partial_and_full_tiles(n: int, k: int, block: int) -> None:
    idx = random_lists(2, n, k, heads=2, seed=n)
    d = KNNDictionary(idx)
    bm = _flex.build_block_mask(d, block_size=block)
    member = torch.zeros(2, 2, n, n, dtype=torch.bool).scatter_(-1, idx, True)
    tiles = -(-n // block)
    padded = torch.zeros(2, 2, tiles * block, tiles * block, dtype=torch.bool)
    padded[..., :n, :n] = member
    pairs = padded.view(2, 2, tiles, block, tiles, block).sum(dim=(3, 5))  # (B, H, QB, KB)
    sizes = torch.tensor([min(block, n - t * block) for t in range(tiles)])
    area = sizes[:, None] * sizes[None, :]
    expected_full = pairs == area
    expected_any = pairs > 0
    dense = bm.to_dense().bool()  # (B, H, QB, KB): tiles the kernel visits (partial or full)
    assert torch.equal(dense, expected_any)
    full = torch.zeros_like(expected_full)
    for b in range(2):
        for h in range(2):
            for qb in range(tiles):
                count = int(bm.full_kv_num_blocks[b, h, qb])
                full[b, h, qb, bm.full_kv_indices[b, h, qb, :count].long()] = True
    assert torch.equal(full, expected_full)
    # the mask_mod answers membership for every pair, including the padded last tile's
    mask_mod = bm.mask_mod
    b, h, q, kv = (
        t.reshape(-1) for t in torch.meshgrid(*map(torch.arange, (2, 2, n, n)), indexing="ij")
    )
    assert torch.equal(mask_mod(b, h, q, kv).view(2, 2, n, n), member)


def test_prepare_derives_what_a_backend_needs() -> None:
    d = KNNDictionary(random_lists(1, 20, 4))
    assert d.prepare("mask", torch.float16) is d
    assert ("mask", torch.float16) in d._cache
    d.prepare("triton")
    assert ("csr",) in d._cache and ("ranks",) in d._cache
    d.prepare("flex")
    assert ("flex_blocks", 128) in d._cache and ("bitmask",) in d._cache
    d.prepare("tiles")
    assert ("tiles", 32, 32) in d._cache
    with pytest.raises(ValueError, match=r"backend must be one of.*got 'dense'"):
        d.prepare("dense")


@pytest.mark.parametrize("backend", ["reference", "mask", "gather"])
def test_attention_through_a_dictionary_equals_raw_lists(backend: str) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 30, 8, generator=g) for _ in range(3))
    bias = torch.randn(3, 30, 30, generator=g)
    idx = random_lists(2, 30, 6, duplicates=True)
    raw = knn_attention(q, k, v, idx, bias=bias, backend=backend)
    prepared = knn_attention(q, k, v, KNNDictionary(idx), bias=bias, backend=backend)
    assert torch.equal(raw, prepared)


def test_dictionary_must_match_q() -> None:
    q = torch.randn(2, 3, 30, 8)
    with pytest.raises(ValueError, match=r"idx \(a KNNDictionary\) must have shape \(B, N, K\)"):
        knn_attention(q, q, q, KNNDictionary(random_lists(1, 30, 4)))
    with pytest.raises(ValueError, match=r"must have shape \(B, heads, N, K\) = \(2, 3, 30"):
        knn_attention(q, q, q, KNNDictionary(random_lists(2, 30, 4, heads=2)))


def test_from_unique_wraps_knn_graph_output_without_checks() -> None:
    x = torch.randn(3, 40, 8, generator=torch.Generator().manual_seed(2))
    idx = knn_graph(x, 6, similarity="cosine")
    d = KNNDictionary.from_unique(idx)
    assert d.max_multiplicity == 1 and torch.equal(d.idx.long(), idx)
    assert torch.equal(
        d.additive_mask(torch.float32), KNNDictionary(idx).additive_mask(torch.float32)
    )


def test_from_mask_gives_every_backend_the_lists_of_the_same_sets() -> None:
    """A dictionary made from knn_mask's mask: the dense backends use the mask, the list
    backends get ascending ids from it; every backend equals the knn_graph dictionary's output
    (the same sets; the gather backend sums its K terms in another order)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 30, 8, generator=g)
    q, k, v = (torch.randn(2, 3, 30, 8, generator=g) for _ in range(3))
    bias = torch.randn(3, 30, 30, generator=g)
    graph = knn_graph(x, 7, similarity="cosine")
    masked = KNNDictionary.from_mask(knn_mask(x, 7, similarity="cosine"), 7)
    listed = KNNDictionary.from_unique(graph)
    assert (masked.batch, masked.n, masked.k, masked.per_head) == (2, 30, 7, False)
    assert masked.max_multiplicity == 1 and masked.device == x.device
    assert torch.equal(masked.idx.long(), graph.sort(dim=-1).values)
    assert masked.idx.dtype == torch.int32
    assert torch.equal(masked.membership(), listed.membership())
    assert torch.equal(masked.additive_mask(torch.float32), listed.additive_mask(torch.float32))
    assert torch.equal(masked.additive_mask(torch.float64), listed.additive_mask(torch.float64))
    for backend in ("reference", "mask", "gather"):
        torch.testing.assert_close(
            knn_attention(q, k, v, masked, bias=bias, backend=backend),
            knn_attention(q, k, v, listed, bias=bias, backend=backend),
            rtol=1e-6, atol=1e-6,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("backend", "as_mask"),
    [("auto", True), ("mask", True), ("reference", True), ("gather", False), ("flex", False)],
)
def test_knn_dictionary_is_built_in_the_form_its_backend_consumes(backend, as_mask) -> None:
    """A mask for the dense backends (and auto on the CPU), lists otherwise; the same sets."""
    x = torch.randn(2, 30, 8, generator=torch.Generator().manual_seed(5))
    d = knn_dictionary(x, 6, similarity="cosine", backend=backend)
    assert (d._member is not None) == as_mask and (d._idx is None) == as_mask
    graph = knn_graph(x, 6, similarity="cosine")
    assert torch.equal(d.membership(), KNNDictionary.from_unique(graph).membership())
    if not as_mask:
        assert torch.equal(d.idx.long(), graph)  # knn_graph's order kept


@pytest.mark.parametrize(("n", "k"), [(37, 5), (37, 37), (32, 20)])
def test_flex_blocks_are_the_partial_and_full_tiles_of_the_membership(n: int, k: int) -> None:
    """Tiles of 16 over N=37 leave a short last block (5 tokens): its area is 16 x 5."""
    d = KNNDictionary(random_lists(2, n, k))
    member = d.membership()  # (B, 1, N, N)
    starts = range(0, n, 16)
    pairs = torch.stack(
        [
            torch.stack([member[..., i : i + 16, j : j + 16].sum(dim=(-2, -1)) for j in starts], -1)
            for i in starts
        ],
        -2,
    )  # (B, 1, QB, KB)
    sizes = torch.tensor([min(16, n - i) for i in starts])
    full = pairs == sizes.view(-1, 1) * sizes.view(1, -1)
    partial = (pairs > 0) & ~full
    partial_num, partial_idx, full_num, full_idx = d.flex_blocks(16)
    for num, idx, expected in ((partial_num, partial_idx, partial), (full_num, full_idx, full)):
        assert torch.equal(num, expected.sum(-1).int())
        for row, count in zip(idx.flatten(0, -2), num.flatten(), strict=True):
            assert torch.equal(row[:count].sort().values, row[:count].long())  # ascending
        listed = torch.zeros_like(expected).scatter_(
            -1, idx.long(), torch.arange(idx.shape[-1]).expand_as(idx) < num.unsqueeze(-1)
        )
        assert torch.equal(listed, expected)
    if k == n:
        assert full.all() and not partial.any()
