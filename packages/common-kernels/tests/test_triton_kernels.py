"""Triton KNN-attention kernels, interpreted on the CPU, against a float64 oracle.

Tolerances: fp32 kernels vs the fp64 oracle use rtol 1e-4 and atol 1e-4 times the largest
magnitude of the expected tensor (at least 1). Half-precision runs compare against the same
oracle with tolerances of a few units in the last place of the format.

Without a GPU the repository's conftest sets ``TRITON_INTERPRET=1`` before any test module
imports triton; on a GPU machine these CPU-tensor tests skip (``tests/test_gpu.py`` runs the
compiled kernels there).
"""

import math
from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("triton")

from common_kernels import _triton_knn_attention as tka
from common_kernels.runtime.testing import AttentionCase

_RUNNABLE, _REASON = tka.triton_status(torch.device("cpu"))
if not _RUNNABLE:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.triton


def _expand_idx(idx: torch.Tensor, heads: int) -> torch.Tensor:
    """Return idx as int64 (B, H, N, K), broadcasting a shared (B, N, K) over heads."""
    nbr = idx.long() if idx.ndim == 4 else idx.long()[:, None]  # (B, H or 1, N, K)
    return nbr.expand(nbr.shape[0], heads, *nbr.shape[2:])  # (B, H, N, K)


def oracle(q, k, v, idx, scale, bias=None):
    """Float64 KNN attention by direct gather (differentiable); returns (out, logits (B,H,N,K))."""
    B, H, N, _ = q.shape
    nbr = _expand_idx(idx, H)  # (B, H, N, K)
    b = torch.arange(B)[:, None, None, None]
    h = torch.arange(H)[None, :, None, None]
    keys, values = k.double()[b, h, nbr], v.double()[b, h, nbr]  # (B, H, N, K, d) each
    logits = scale * torch.einsum("bhid,bhikd->bhik", q.double(), keys)
    if bias is not None:
        logits = logits + bias.double().expand(B, H, N, N).gather(-1, nbr)
    out = torch.einsum("bhik,bhikd->bhid", logits.softmax(dim=-1), values)
    return out, logits


def dense_masked_logits(q, k, idx, scale, bias=None):
    """Float64 (B, H, N, N) logits, -inf off the neighbour set, + log(multiplicity) on it."""
    B, H, N, _ = q.shape
    nbr = _expand_idx(idx, H)  # (B, H, N, K)
    counts = torch.zeros(B, H, N, N, dtype=torch.float64).scatter_add_(
        -1, nbr, torch.ones(nbr.shape, dtype=torch.float64)
    )
    logits = scale * q.double() @ k.double().transpose(-1, -2)  # (B, H, N, N)
    if bias is not None:
        logits = logits + bias.double()
    return logits + counts.log()


def assert_close_to(actual, expected, rel=1e-4):
    """``actual`` within rtol ``rel`` and atol ``rel * max(1, max|expected|)`` of ``expected``."""
    atol = rel * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual.double(), expected.detach(), rtol=rel, atol=atol)


@dataclass(frozen=True)
class Case(AttentionCase):
    """One attention problem, with the kernels' own variations of its inputs."""

    bias_grad: bool = True
    idx_dtype: torch.dtype = torch.int64
    noncontiguous: bool = False


CASES = [
    Case("n37_k5_shared_d8", 2, 1, 37, 8, 5, idx_dtype=torch.int32),
    Case("k1_per_head_d16_noncontig", 2, 2, 37, 16, 1, per_head=True, noncontiguous=True),
    Case("k_eq_n_bias_1H_d32", 2, 4, 20, 32, 20, bias="1H"),
    Case("dups_per_head_bias_B1_d64", 2, 3, 45, 64, 17, per_head=True, duplicates=True, bias="B1"),
    Case("dups_frozen_bias_d24", 2, 2, 37, 24, 18, duplicates=True, bias="BH", bias_grad=False),
    Case("d1_and_k33", 2, 2, 37, 1, 33, per_head=True, duplicates=True, idx_dtype=torch.int32),
    Case("d130", 2, 1, 20, 130, 7, bias="1H"),
]


def make_problem(case: Case, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Random q, k, v, idx, bias (leaf tensors requiring grad) for ``case``."""
    gen = torch.Generator().manual_seed(seed)
    B, H, N, d, K = case.B, case.H, case.N, case.d, case.K

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    # (B, H, N, d); the non-contiguous q is a transposed view of a (B, N, H, d) tensor
    q = randn(B, N, H, d).transpose(1, 2) if case.noncontiguous else randn(B, H, N, d)
    k, v = randn(B, H, N, d), randn(B, H, N, d)
    if K == N:  # every key exactly once, in a random order per query
        idx = torch.rand(*case.lead, N, generator=gen).argsort(dim=-1)
    else:
        idx = torch.randint(0, N, (*case.lead, K), generator=gen)
    if case.duplicates:
        idx[..., 1] = idx[..., 0]  # (B, (H,) N, K) with a repeated neighbour per query
    idx = idx.to(case.idx_dtype)
    bias = None
    if case.bias is not None:
        bias = randn(*case.bias_shape).requires_grad_(case.bias_grad)
    for t in (q, k, v):
        t.requires_grad_(True)
    return q, k, v, idx, bias


@pytest.mark.parametrize("deterministic", [True, False], ids=["csr", "atomic"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_forward_and_gradients_match_fp64_oracle(case, deterministic):
    q, k, v, idx, bias = make_problem(case)
    scale = 1.0 / math.sqrt(case.d)
    out = tka.triton_knn_attention(q, k, v, idx, scale, bias, deterministic=deterministic)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad_out)

    leaves = [t.detach().double().requires_grad_(t.requires_grad) for t in (q, k, v)]
    ref_bias = None if bias is None else bias.detach().double().requires_grad_(case.bias_grad)
    expected, _ = oracle(*leaves, idx, scale, ref_bias)
    expected.backward(grad_out.double())

    assert out.dtype == torch.float32 and out.shape == q.shape
    assert_close_to(out, expected)
    for name, got, ref in zip("qkv", (q, k, v), leaves, strict=True):
        assert got.grad.shape == got.shape, name
        assert_close_to(got.grad, ref.grad)
    if bias is not None and case.bias_grad:
        assert bias.grad.shape == bias.shape
        assert_close_to(bias.grad, ref_bias.grad)
    elif bias is not None:
        assert bias.grad is None


def test_lse_equals_logsumexp_of_dense_masked_logits():
    case = Case("lse", 2, 3, 37, 16, 9, duplicates=True, bias="B1")
    q, k, v, idx, bias = make_problem(case, seed=3)
    with torch.no_grad():
        out, lse = tka.triton_knn_attention_forward(q, k, v, idx, 0.5, bias)
        _, gathered = oracle(q, k, v, idx, 0.5, bias)
        dense = dense_masked_logits(q, k, idx, 0.5, bias)
    assert lse.dtype == torch.float32 and lse.shape == (2, 3, 37)
    assert_close_to(lse, torch.logsumexp(dense, dim=-1))
    assert_close_to(lse, torch.logsumexp(gathered, dim=-1))
    expected = torch.softmax(dense, dim=-1) @ v.double()  # (B, H, N, d)
    assert_close_to(out, expected)


def test_deterministic_gradients_are_bitwise_reproducible():
    case = Case("repro", 2, 2, 45, 16, 21, duplicates=True, bias="1H")

    def grads(deterministic):
        q, k, v, idx, bias = make_problem(case, seed=5)
        out = tka.triton_knn_attention(q, k, v, idx, 0.25, bias, deterministic=deterministic)
        out.backward(torch.ones_like(out))
        return [t.grad for t in (q, k, v, bias)]

    first, second = grads(True), grads(True)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(first, grads(False), strict=True):
        assert_close_to(a, b.double())


@pytest.mark.parametrize(
    ("dtype", "rel"), [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)], ids=["fp16", "bf16"]
)
def test_half_precision_inputs_match_oracle(dtype, rel):
    # The kernels use no tl.dot, so the interpreter's wrong bf16 tl.dot does not apply here.
    case = Case("half", 2, 2, 37, 16, 9, duplicates=True, bias="1H")
    q, k, v, idx, bias = make_problem(case, seed=11, dtype=dtype)
    out = tka.triton_knn_attention(q, k, v, idx, 0.25, bias)
    out.backward(torch.ones_like(out))
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    expected, _ = oracle(*leaves[:3], idx, 0.25, leaves[3])
    expected.backward(torch.ones_like(expected))
    assert out.dtype == dtype
    assert_close_to(out, expected, rel)
    for got, ref in zip((q, k, v, bias), leaves, strict=True):
        assert got.grad.dtype == dtype
        assert_close_to(got.grad, ref.grad, rel)


def test_float64_is_rejected_with_a_clear_error():
    q = torch.randn(1, 1, 20, 8, dtype=torch.float64)
    idx = torch.zeros(1, 20, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="float64"):
        tka.triton_knn_attention(q, q, q, idx, 1.0)


def test_triton_status_reads_the_environment_at_call_time(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, reason = tka.triton_status(cpu)
    assert not ok
    assert "TRITON_INTERPRET=1 is not set" in reason and "cpu" in reason

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert tka.triton_status(cpu)[0] is False
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert tka.triton_status(cpu) == (True, "")
    assert tka.triton_status(torch.device("cuda")) == (True, "")

    ok, reason = tka.triton_status(torch.device("meta"))
    assert not ok and "meta" in reason and "CUDA" in reason


def test_triton_status_reports_a_missing_triton(monkeypatch):
    monkeypatch.setattr(tka, "TRITON_IMPORT_ERROR", "No module named 'triton'")
    ok, reason = tka.triton_status(torch.device("cuda"))
    assert not ok
    assert reason == "triton is not installed: No module named 'triton'"
