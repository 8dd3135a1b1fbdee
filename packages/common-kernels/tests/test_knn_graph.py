import importlib

import pytest
import torch

from common_kernels.graph import knn_graph, knn_mask
from common_kernels.windows import window_partition

knn_module = importlib.import_module("common_kernels.graph")


def brute_similarity(x: torch.Tensor, similarity: str) -> torch.Tensor:
    """(B, N, C) -> (B, N, N) similarities in fp64, computed independently of the module."""
    x = x.double()
    if similarity == "cosine":
        x = x / x.norm(dim=-1, keepdim=True)
    return torch.einsum("bic,bjc->bij", x, x)


def brute_tie_broken(sim: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k by (similarity desc, index asc) through a full stable sort."""
    return sim.sort(dim=-1, descending=True, stable=True).indices[..., :k]


def integer_features(*shape: int, seed: int = 0) -> torch.Tensor:
    """Small integer-valued features: exact dot products with many ties."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, shape, generator=gen).float()


def sign_features(*shape: int, seed: int = 0) -> torch.Tensor:
    """+-1 features: all norms equal, so cosine ties stay exact after normalisation."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=gen).float() * 2 - 1


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_matches_brute_force_where_gap_is_clear(similarity: str, backend: str) -> None:
    k, eps = 6, 1e-4
    x = torch.randn(2, 50, 8, generator=torch.Generator().manual_seed(1))
    idx = knn_graph(x, k, similarity=similarity, backend=backend, chunk=7)
    assert idx.shape == (2, 50, k) and idx.dtype == torch.int64
    sim = brute_similarity(x, similarity)
    ranked = sim.sort(dim=-1, descending=True).values
    clear_gap = ranked[..., k - 1] - ranked[..., k] > eps  # (B, N)
    expected = brute_tie_broken(sim, k)
    checked = 0
    for b, i in clear_gap.nonzero().tolist():
        assert set(idx[b, i].tolist()) == set(expected[b, i].tolist())
        checked += 1
    assert checked > 0.9 * clear_gap.numel()
    picked = sim.gather(-1, idx)  # similarities of the neighbours, must be non-increasing
    assert bool((picked[..., :-1] >= picked[..., 1:] - eps).all())


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("force_self", [False, True])
def test_ties_follow_lower_index_rule_on_every_backend(similarity: str, force_self: bool) -> None:
    x = integer_features(3, 40, 3) if similarity == "dot" else sign_features(3, 40, 4)
    k = 9
    sim = brute_similarity(x, similarity)
    if force_self:
        sim = sim - torch.diag_embed(torch.full((3, 40), float("inf"), dtype=sim.dtype))
        own = torch.arange(40).expand(3, 40).unsqueeze(-1)
        expected = torch.cat([own, brute_tie_broken(sim, k - 1)], dim=-1)
    else:
        expected = brute_tie_broken(sim, k)
    runs = [
        knn_graph(x, k, similarity=similarity, force_self=force_self, backend=backend, chunk=chunk)
        for backend, chunk in [("reference", None), ("auto", None), ("chunked", 1), ("chunked", 7)]
    ]
    runs += [knn_graph(x, k, similarity=similarity, force_self=force_self, backend="chunked")]
    for idx in runs:
        assert torch.equal(idx, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("force_self", [False, True])
def test_cuda_tie_breaking_without_a_branch_gives_the_same_graphs(
    dtype: torch.dtype, force_self: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA takes the keyed topk (no data-dependent branch, no host sync); forced on the CPU
    here, it follows the same lower-index rule on ties, negative values and signed zeros."""
    x = integer_features(3, 40, 3).to(dtype)
    x[:, :5] = 0.0
    x[:, 5:8] = -0.0  # signed zeros: equal similarities, different bits
    expected = brute_tie_broken(
        brute_similarity(x, "dot")
        - (torch.diag_embed(torch.full((3, 40), float("inf"), dtype=dtype)) if force_self else 0),
        8 if force_self else 9,
    )
    if force_self:
        expected = torch.cat([torch.arange(40).expand(3, 40).unsqueeze(-1), expected], dim=-1)
    monkeypatch.setattr(knn_module, "_exact_topk", knn_module._keyed_topk)
    for backend, chunk in [("reference", None), ("chunked", 7)]:
        idx = knn_graph(x, 9, force_self=force_self, backend=backend, chunk=chunk)
        assert torch.equal(idx, expected)


def test_all_equal_features_give_index_order() -> None:
    x = torch.ones(1, 10, 4)
    expected = torch.arange(4).expand(1, 10, 4)
    assert torch.equal(knn_graph(x, 4), expected)
    assert torch.equal(knn_graph(x, 4, backend="chunked", chunk=3), expected)


def test_equal_across_backends_on_random_data() -> None:
    x = torch.randn(2, 200, 16, generator=torch.Generator().manual_seed(2))
    reference = knn_graph(x, 12, backend="reference")
    for chunk in (7, 64, 199, 200, 1000):
        assert torch.equal(knn_graph(x, 12, backend="chunked", chunk=chunk), reference)
    assert torch.equal(knn_graph(x, 12, backend="reference"), reference)


@pytest.mark.parametrize("force_self", [False, True])
@pytest.mark.parametrize("data", ["random", "ties"])
def test_prefix_property(force_self: bool, data: str) -> None:
    if data == "random":
        x = torch.randn(2, 30, 5, generator=torch.Generator().manual_seed(3))
    else:
        x = integer_features(2, 30, 2, seed=3)
    k = 12
    full = knn_graph(x, k, force_self=force_self)
    for prefix in range(1, k + 1):
        assert torch.equal(full[..., :prefix], knn_graph(x, prefix, force_self=force_self))


def test_plain_topk_does_not_force_self() -> None:
    # token 0 is tiny: its most similar token (by dot product) is the large token 1, not itself
    x = torch.tensor([[[0.1, 0.0], [5.0, 0.0], [-1.0, 0.0]]])
    assert knn_graph(x, 1)[0, :, 0].tolist() == [1, 1, 2]
    assert knn_graph(x, 1, force_self=True)[0, :, 0].tolist() == [0, 1, 2]
    assert knn_graph(x, 2, force_self=True)[0].tolist() == [[0, 1], [1, 0], [2, 0]]


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_force_self_puts_token_first_then_best_others(backend: str) -> None:
    x = torch.randn(2, 25, 6, generator=torch.Generator().manual_seed(4))
    idx = knn_graph(x, 5, force_self=True, backend=backend, chunk=4)
    assert torch.equal(idx[..., 0], torch.arange(25).expand(2, 25))
    assert not bool((idx[..., 1:] == idx[..., :1]).any())
    sim = brute_similarity(x, "dot")
    sim = sim - torch.diag_embed(torch.full((2, 25), float("inf"), dtype=sim.dtype))
    assert torch.equal(idx[..., 1:], brute_tie_broken(sim, 4))
    assert torch.equal(knn_graph(x, 1, force_self=True, backend=backend)[..., 0], idx[..., 0])


@pytest.mark.parametrize("data", ["random", "ties"])
def test_windowed_graph_equals_global_graph_of_each_window(data: str) -> None:
    if data == "random":
        x = torch.randn(2, 8, 12, 4, generator=torch.Generator().manual_seed(5))
    else:
        x = integer_features(2, 8, 12, 4, seed=5)
    idx = knn_graph(x, 5, window=4, similarity="cosine")
    windows = window_partition(x, 4)  # (B*nW, 16, C)
    assert idx.shape == (2 * 2 * 3, 16, 5)
    assert torch.equal(idx, knn_graph(windows, 5, similarity="cosine"))
    for w in range(windows.shape[0]):
        assert torch.equal(idx[w], knn_graph(windows[w : w + 1], 5, similarity="cosine")[0])
    assert torch.equal(idx, knn_graph(x, 5, window=4, similarity="cosine", backend="chunked"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_use_fp32_similarity(dtype: torch.dtype) -> None:
    x = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(6)).to(dtype)
    for similarity in ("dot", "cosine"):
        expected = knn_graph(x.float(), 8, similarity=similarity)
        for backend in ("reference", "chunked"):
            got = knn_graph(x, 8, similarity=similarity, backend=backend, chunk=5)
            assert torch.equal(got, expected)


def test_fp64_input_stays_fp64(monkeypatch: pytest.MonkeyPatch) -> None:
    dtypes = []
    original = knn_module._similarity_block

    def spy(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        dtypes.append(queries.dtype)
        return original(queries, keys)

    monkeypatch.setattr(knn_module, "_similarity_block", spy)
    knn_graph(torch.randn(1, 10, 3, dtype=torch.float64), 3)
    knn_graph(torch.randn(1, 10, 3).half(), 3)
    assert dtypes == [torch.float64, torch.float32]


def record_block_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap the module's similarity-block function; return the list it appends numels to."""
    sizes: list[int] = []
    original = knn_module._similarity_block

    def wrapped(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        block = original(queries, keys)
        sizes.append(block.numel())
        return block

    monkeypatch.setattr(knn_module, "_similarity_block", wrapped)
    return sizes


@pytest.mark.parametrize("chunk", [1, 5, 39, 40, 41, 80, 130])
@pytest.mark.parametrize("force_self", [False, True])
def test_chunked_memory_bound(
    monkeypatch: pytest.MonkeyPatch, chunk: int, force_self: bool
) -> None:
    batch, n, k = 3, 40, 7
    x = integer_features(batch, n, 3, seed=7)
    reference = knn_graph(x, k, force_self=force_self, backend="reference")
    sizes = record_block_sizes(monkeypatch)
    idx = knn_graph(x, k, force_self=force_self, backend="chunked", chunk=chunk)
    assert torch.equal(idx, reference)
    assert max(sizes) <= chunk * n
    assert sum(sizes) == batch * n * n  # every pair computed exactly once


def test_auto_switches_to_chunked_with_default_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 50
    x = torch.randn(2, n, 4, generator=torch.Generator().manual_seed(8))
    reference = knn_graph(x, 6, backend="reference")
    sizes = record_block_sizes(monkeypatch)
    assert torch.equal(knn_graph(x, 6), reference)
    assert sizes == [2 * n * n]  # small N: one full reference block

    sizes.clear()
    monkeypatch.setattr(knn_module, "AUTO_REFERENCE_MAX_PAIRS", n * n - 1)
    monkeypatch.setattr(knn_module, "CHUNK_BLOCK_BYTES", 8 * n * 4)  # default chunk = 8 rows
    assert torch.equal(knn_graph(x, 6), reference)
    assert max(sizes) == 8 * n and len(sizes) == 2 * 7


def test_errors() -> None:
    x = torch.randn(1, 16, 4)
    with pytest.raises(TypeError, match=r"x must be a floating tensor"):
        knn_graph(torch.ones(1, 16, 4, dtype=torch.int64), 2)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
        knn_graph([[0.0]], 2)
    bad = x.clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x contains NaN or Inf"):
        knn_graph(bad, 2)
    bad[0, 3, 1] = float("inf")
    with pytest.raises(ValueError, match=r"x contains NaN or Inf"):
        knn_graph(bad, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, N, C\), got \(16, 4\)"):
        knn_graph(x[0], 2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, H, W, C\) when window is given"):
        knn_graph(x, 2, window=2)
    with pytest.raises(ValueError, match=r"k must be in \[1, 16\], got 0"):
        knn_graph(x, 0)
    with pytest.raises(ValueError, match=r"k must be in \[1, 16\], got 17"):
        knn_graph(x, 17)
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\], got 5"):
        knn_graph(torch.randn(1, 4, 4, 2), 5, window=2)
    with pytest.raises(TypeError, match=r"k must be an int"):
        knn_graph(x, 2.0)
    with pytest.raises(ValueError, match=r"window must divide H and W .*H=4.*W=6.*window=4"):
        knn_graph(torch.randn(1, 4, 6, 2), 2, window=4)
    with pytest.raises(ValueError, match=r"similarity must be one of 'dot', 'cosine', got 'l2'"):
        knn_graph(x, 2, similarity="l2")
    with pytest.raises(
        ValueError, match=r"backend must be one of 'auto', 'reference', 'chunked', got 'triton'"
    ):
        knn_graph(x, 2, backend="triton")
    with pytest.raises(ValueError, match=r"chunk must be >= 1, got 0"):
        knn_graph(x, 2, backend="chunked", chunk=0)
    with pytest.raises(TypeError, match=r"chunk must be an int"):
        knn_graph(x, 2, backend="chunked", chunk=2.5)
    with pytest.raises(ValueError, match=r"non-finite similarities"):
        knn_graph(torch.full((1, 4, 2), 1e30), 2)


def test_keyed_topk_orders_signed_zeros_and_infinities_by_value_then_index() -> None:
    sim = torch.tensor([[0.0, -0.0, -0.0, 0.0, 1.0, -1.0, float("-inf"), -2.5]])
    assert knn_module._keyed_topk(sim, 4).tolist() == [[4, 0, 1, 2]]  # 1, then zeros by index
    assert knn_module._keyed_topk(sim, 8).tolist() == [[4, 0, 1, 2, 3, 5, 7, 6]]
    assert knn_module._keyed_topk(sim.double(), 8).tolist() == [[4, 0, 1, 2, 3, 5, 7, 6]]


# ---------------------------------------------------------------------------- knn_mask


def as_mask(idx: torch.Tensor, n: int) -> torch.Tensor:
    """(B, N, K) ids -> (B, N, n) bool membership, True at the listed ids."""
    return torch.zeros(*idx.shape[:-1], n, dtype=torch.bool).scatter_(-1, idx, True)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("data", ["integer", "sign", "random", "equal"])
def test_knn_mask_holds_the_sets_of_the_tie_broken_brute_force(similarity: str, data: str) -> None:
    """The mask is the set of knn_graph's lists, and of the brute-force (similarity desc, index
    asc) top-k where fp32 similarities are exact (integer dot products, +-1 cosines, equal
    features: many ties at the boundary), for every k up to N."""
    x = {
        "integer": integer_features(3, 40, 3),
        "sign": sign_features(3, 40, 4),
        "random": torch.randn(3, 40, 8, generator=torch.Generator().manual_seed(3)),
        "equal": torch.ones(3, 40, 4),
    }[data]
    sim = brute_similarity(x, similarity)
    for k in (1, 2, 9, 20, 39, 40):
        mask = knn_mask(x, k, similarity=similarity)
        assert mask.shape == (3, 40, 40) and mask.dtype == torch.bool
        assert torch.equal(mask.sum(-1), torch.full((3, 40), k))
        assert torch.equal(mask, as_mask(knn_graph(x, k, similarity=similarity), 40)), k
        if data != "random" and (data, similarity) != ("integer", "cosine"):
            assert torch.equal(mask, as_mask(brute_tie_broken(sim, k), 40)), k


def test_knn_mask_without_a_branch_settles_boundary_ties_the_same_way() -> None:
    """CUDA settles ties in every row (no host sync); done for all rows here, the masks agree."""
    x = integer_features(4, 64, 3, seed=5)
    sim = knn_module._similarity_block(x, x)
    for k in (5, 32, 63):
        floor = sim.topk(k + 1, dim=-1).values[..., -1:]
        branchless = knn_module._with_boundary_ties(sim, sim > floor, floor, k)
        assert torch.equal(branchless, knn_module._top_k_membership(sim, k))
        assert torch.equal(branchless, as_mask(brute_tie_broken(sim.double(), k), 64))


def test_knn_mask_errors() -> None:
    x = torch.randn(1, 16, 4)
    with pytest.raises(ValueError, match=r"k must be in \[1, 16\], got 17"):
        knn_mask(x, 17)
    with pytest.raises(ValueError, match=r"x must have shape \(B, N, C\), got \(16, 4\)"):
        knn_mask(x[0], 2)
    with pytest.raises(TypeError, match=r"x must be a floating tensor"):
        knn_mask(torch.ones(1, 16, 4, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match=r"similarity must be one of 'dot', 'cosine', got 'l2'"):
        knn_mask(x, 2, similarity="l2")
    bad = x.clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x contains NaN or Inf"):
        knn_mask(bad, 2)
    assert knn_mask(bad, 2, check_values=False).shape == (1, 16, 16)  # the caller checked
    with pytest.raises(ValueError, match=r"non-finite similarities"):
        knn_mask(torch.full((1, 4, 2), 1e30), 2)
