"""The ``tiles`` backend (dense tensor-core tiles over the neighbour bitmask), interpreted on
the CPU, against an fp64 oracle written independently of the package: dense logits, -inf off
the neighbour sets, softmax, matmul, and autograd for every gradient.

Tolerances: fp32 kernels within rtol 1e-4 and atol 1e-4 x max(1, max |expected|) of the oracle;
fp16 within 4e-3 of it (a few units in the last place). The interpreter's bf16 ``tl.dot`` is
wrong (a known interpreter gap), so bf16 is checked on CUDA only (tests/test_gpu.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("triton")

from common_kernels import KNNDictionary, can_run, knn_attention
from common_kernels import _triton_tiles as tiles
from common_kernels.runtime.testing import AttentionCase, neighbour_lists

BACKEND = "tiles"
pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("backend_runs")]


@dataclass(frozen=True)
class Case(AttentionCase):
    """One problem (duplicate-free: the tiles backend refuses duplicates)."""

    local: bool = False  # neighbours within blocks of 10 tokens: most tiles empty


CASES = [
    Case("n37_k5_d16", 2, 2, 37, 16, 5),  # N not a multiple of the tile
    Case("k1_d8", 2, 1, 20, 8, 1, bias="H"),  # K = 1, d below tl.dot's 16
    Case("k_eq_n_d32", 3, 2, 64, 32, 64, bias="1H"),  # K = N, one full tile
    Case("per_head_batch_bias_d64", 2, 3, 70, 64, 20, per_head=True, bias="B1"),
    Case("several_tiles_bh_bias", 2, 2, 150, 16, 40, bias="BH"),
    Case("empty_tiles", 2, 2, 150, 16, 8, bias="11", local=True),
    Case("d128", 1, 2, 40, 128, 9, bias="H"),
]


def make_problem(case: Case, dtype=torch.float32, seed: int = 0):
    """q, k, v (and bias) leaves in ``dtype`` and duplicate-free int64 neighbour lists."""
    g = torch.Generator().manual_seed(seed)
    if case.local:  # each query's neighbours lie in its own block of 10 tokens
        block_start = (torch.arange(case.N) // 10 * 10).clamp(max=case.N - 10)  # (N,)
        offsets = torch.rand((*case.lead, 10), generator=g).argsort(dim=-1)[..., : case.K]
        idx = block_start[:, None] + offsets  # (B, [H,] N, K)
    else:
        idx = neighbour_lists(case, g)
    shape = (case.B, case.H, case.N, case.d)
    q, k, v = (torch.randn(shape, generator=g).to(dtype).requires_grad_() for _ in range(3))
    bias = None
    if case.bias is not None:
        bias = torch.randn(case.bias_shape, generator=g).to(dtype).requires_grad_()
    return q, k, v, idx, bias


def oracle(q, k, v, idx, scale, bias):
    """fp64 dense attention restricted to the listed neighbours (a membership matrix)."""
    B, H, N, _ = q.shape
    ids = idx if idx.ndim == 4 else idx[:, None].expand(B, H, N, idx.shape[-1])  # (B, H, N, K)
    member = torch.zeros(B, H, N, N, dtype=torch.bool)
    b, h, i = torch.meshgrid(torch.arange(B), torch.arange(H), torch.arange(N), indexing="ij")
    member[b[..., None], h[..., None], i[..., None], ids] = True
    logits = scale * q @ k.transpose(-1, -2)  # (B, H, N, N)
    if bias is not None:
        logits = logits + bias
    logits = logits.masked_fill(~member, float("-inf"))
    return logits.softmax(dim=-1) @ v


def assert_close_to(actual, expected, rel=1e-4, what=""):
    atol = rel * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(
        actual.double(), expected.detach(), rtol=rel, atol=atol, msg=lambda m: f"{what}: {m}"
    )


def check_against_oracle(case: Case, dtype=torch.float32, rel=1e-4) -> None:
    q, k, v, idx, bias = make_problem(case, dtype)
    scale = 1 / math.sqrt(case.d)
    out = knn_attention(q, k, v, KNNDictionary(idx), scale=scale, bias=bias, backend="tiles")
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad_out.to(dtype))

    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_bias = None if bias is None else bias.detach().double().requires_grad_()
    expected = oracle(*leaves, idx, scale, ref_bias)
    expected.backward(grad_out.double())
    assert out.dtype == dtype and out.shape == q.shape
    assert_close_to(out, expected, rel, "out")
    for name, got, ref in zip("qkv", (q, k, v), leaves, strict=True):
        assert got.grad.dtype == dtype and got.grad.shape == got.shape
        assert_close_to(got.grad, ref.grad, rel, f"d{name}")
    if bias is not None:
        assert bias.grad.shape == bias.shape and bias.grad.dtype == dtype
        assert_close_to(bias.grad, ref_bias.grad, rel, "dbias")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_forward_and_every_gradient_match_fp64_oracle(case: Case) -> None:
    check_against_oracle(case)


def test_fp16_matches_oracle() -> None:
    check_against_oracle(Case("fp16", 2, 2, 50, 16, 12, bias="H"), torch.float16, rel=4e-3)


def test_bias_gradient_sums_window_groups_exactly(monkeypatch) -> None:
    """Fewer partial sums than windows (several windows per program) give the same gradient."""
    case = Case("groups", 7, 2, 70, 16, 20, bias="H")
    monkeypatch.setattr(tiles, "DBIAS_TARGET_PROGRAMS", 4)  # 7 windows -> 2 groups of 4
    assert tiles.dbias_groups(7, 2, 4, per_window=False) == (1, 7)
    assert tiles.dbias_groups(7, 1, 1, per_window=False) == (4, 2)
    assert tiles.dbias_groups(7, 2, 4, per_window=True) == (7, 1)
    check_against_oracle(case)


def test_forward_log_sum_exp_is_base_two_of_the_masked_logits() -> None:
    case = Case("lse", 2, 2, 45, 16, 9, bias="H")
    q, k, v, idx, bias = make_problem(case)
    with torch.no_grad():
        _, lse = tiles.tiles_forward(q, k, v, KNNDictionary(idx), 0.5, bias.unsqueeze(0))
        member = torch.zeros(2, 2, 45, 45, dtype=torch.bool)
        member.scatter_(-1, idx[:, None].expand(2, 2, 45, 9), True)
        logits = (0.5 * q.double() @ k.double().transpose(-1, -2) + bias.double()).masked_fill(
            ~member, float("-inf")
        )
    assert lse.dtype == torch.float32 and lse.shape == (2, 2, 45)
    assert_close_to(lse * math.log(2), torch.logsumexp(logits, dim=-1), what="lse")


def test_gradients_are_bitwise_reproducible() -> None:
    case = Case("repro", 3, 2, 70, 16, 20, bias="1H")

    def grads():
        q, k, v, idx, bias = make_problem(case, seed=4)
        out = knn_attention(q, k, v, KNNDictionary(idx), bias=bias, backend="tiles")
        out.backward(torch.ones_like(out))
        return out, [t.grad for t in (q, k, v, bias)]

    (out1, first), (out2, second) = grads(), grads()
    assert torch.equal(out1, out2)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "case", [CASES[-2], Case("one_tile", 2, 1, 40, 8, 5)], ids=["local_n150", "one_tile_n40"]
)
def test_tile_map_lists_exactly_the_occupied_tiles(case: Case) -> None:
    """Local neighbourhoods leave most tiles empty and the map lists only occupied ones; a
    window that fits one tile gets a constant map (no work per list)."""
    _, _, _, idx, _ = make_problem(case)
    dictionary = KNNDictionary(idx)
    tile_map = dictionary.tile_map(*tiles.tile_sizes(case.N))
    side = tiles.tile_sizes(case.N)[0]
    blocks = -(-case.N // side)
    expected = torch.zeros(case.B, 1, blocks, blocks, dtype=torch.int8)
    for b, i, j in zip(
        *torch.where(torch.ones(case.B, case.N, case.K, dtype=torch.bool)), strict=True
    ):
        expected[b, 0, i // side, idx[b, i, j] // side] = 1
    assert torch.equal(tile_map.occupied, expected)
    if blocks > 1:
        assert expected.sum() < expected.numel()  # some tiles are skipped
    counts, ids = tile_map.query_tiles
    for b, qb in zip(*torch.where(torch.ones(case.B, blocks, dtype=torch.bool)), strict=True):
        listed = ids[b, 0, qb, : counts[b, 0, qb]].tolist()
        assert listed == torch.where(expected[b, 0, qb] == 1)[0].tolist()
    counts, ids = tile_map.key_tiles
    for b, kb in zip(*torch.where(torch.ones(case.B, blocks, dtype=torch.bool)), strict=True):
        listed = ids[b, 0, kb, : counts[b, 0, kb]].tolist()
        assert listed == torch.where(expected[b, 0, :, kb] == 1)[0].tolist()


def test_tiles_refuses_duplicates_float64_and_wide_heads() -> None:
    q = torch.zeros(1, 1, 20, 16)
    dup = torch.zeros(1, 20, 3, dtype=torch.long)
    ok, reason = can_run("tiles", q, q, q, dup)
    assert not ok and "repeats a neighbour in one list (up to 3x)" in reason
    assert "the tiles kernel's bitmask cannot count duplicates" in reason
    unique = torch.arange(3).expand(1, 20, 3)
    ok, reason = can_run("tiles", q.double(), q.double(), q.double(), unique)
    assert not ok and reason.startswith("the tiles kernels take float16/bfloat16/float32")
    wide = torch.zeros(1, 1, 20, 129)
    ok, reason = can_run("tiles", wide, wide, wide, unique)
    assert (ok, reason) == (False, "head dim 129 exceeds the tiles kernel's 128")
    with pytest.raises(RuntimeError, match="backend 'tiles' cannot run here: head dim 129"):
        knn_attention(wide, wide, wide, unique, backend="tiles")


@pytest.mark.parametrize(("n", "expected"), [(8, 16), (20, 32), (64, 64), (1024, 64)])
def test_tile_sizes_follow_the_window(n: int, expected: int) -> None:
    assert tiles.tile_sizes(n) == (expected, expected)
