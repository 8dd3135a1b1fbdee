"""GPU lane (``nox -s gpu``): every backend compiled on CUDA against an fp64 oracle, forward and
every gradient, in fp32/fp16/bf16; the bitwise-reproducible triton backward; and the hot path
of a prepared dictionary, which must launch kernels without synchronising with the host.

Tolerances, relative to max(1, max |expected|): fp32 1e-3 (TF32-safe), fp16 1e-2, bf16 6e-2,
the same for gradients. The oracle sees the inputs after rounding to the tested dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from common_kernels import KNNDictionary, knn_attention

pytestmark = pytest.mark.gpu

BACKENDS = ("reference", "mask", "gather", "triton", "flex")
TOLERANCE = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 6e-2}


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    heads: int
    n: int
    d: int
    k: int
    per_head: bool = False
    duplicates: bool = False
    bias: str | None = None  # "H" (heads, N, N), "B1" (B, 1, N, N)


CASES = [
    Case("k1_n37", 2, 2, 37, 16, 1),  # K = 1; N not a multiple of any block
    Case("k_eq_n_bias", 2, 2, 37, 32, 37, bias="H"),  # K = N
    Case("per_head_bias", 1, 3, 50, 32, 7, per_head=True, bias="H"),
    Case("blocks_batch_bias", 2, 4, 300, 64, 40, bias="B1"),  # several 128-token tiles
    Case("duplicates", 2, 2, 45, 16, 9, per_head=True, duplicates=True, bias="H"),
]


def problem(case: Case, dtype: torch.dtype, seed: int = 0):
    """CUDA leaves q, k, v (, bias) in ``dtype`` and the neighbour lists."""
    g = torch.Generator().manual_seed(seed)
    shape = (case.batch, case.heads, case.n, case.d)
    lead = (case.batch, case.heads, case.n) if case.per_head else (case.batch, case.n)
    if case.duplicates:
        idx = torch.randint(0, case.n, (*lead, case.k), generator=g)
        idx[..., -1] = idx[..., 0]
    else:
        idx = torch.rand((*lead, case.n), generator=g).argsort(dim=-1)[..., : case.k]
    tensors = {name: torch.randn(shape, generator=g) for name in "qkv"}
    if case.bias == "H":
        tensors["bias"] = torch.randn(case.heads, case.n, case.n, generator=g)
    elif case.bias == "B1":
        tensors["bias"] = torch.randn(case.batch, 1, case.n, case.n, generator=g)
    leaves = {n: t.to("cuda", dtype).requires_grad_(True) for n, t in tensors.items()}
    return leaves, idx.cuda()


def run(leaves, index, backend, deterministic=True):
    """Forward and backward with fixed output weights; returns out and the grads."""
    out = knn_attention(
        leaves["q"], leaves["k"], leaves["v"], index, bias=leaves.get("bias"),
        backend=backend, deterministic=deterministic,
    )  # fmt: skip
    weights = torch.linspace(-1, 1, out.numel(), device=out.device).view(out.shape)
    (out.float() * weights).sum().backward()
    return out, {name: t.grad for name, t in leaves.items()}


def oracle(leaves, idx):
    """fp64 reference on the CPU from the rounded inputs."""
    cpu = {n: t.detach().cpu().double().requires_grad_(True) for n, t in leaves.items()}
    return run(cpu, idx.cpu(), "reference")


def assert_close(actual, expected, dtype, what):
    atol = TOLERANCE[dtype] * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(
        actual.detach().cpu().double(), expected.detach(), atol=atol, rtol=TOLERANCE[dtype],
        msg=lambda m: f"{what}: {m}",
    )  # fmt: skip


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=lambda t: str(t).split(".")[-1])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_fp64_oracle_on_cuda(backend, case, dtype) -> None:
    if backend == "flex" and case.duplicates:
        pytest.skip("flex refuses duplicate neighbours (tested on the CPU)")
    leaves, idx = problem(case, dtype)
    expected_out, expected_grads = oracle(leaves, idx)
    dictionary = KNNDictionary(idx)
    out, grads = run(leaves, dictionary, backend)
    assert out.dtype == dtype and out.shape == leaves["q"].shape
    assert_close(out, expected_out, dtype, f"{backend} out")
    for name, grad in grads.items():
        assert grad.dtype == dtype and grad.shape == leaves[name].shape
        assert_close(grad, expected_grads[name], dtype, f"{backend} d{name}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_triton_atomic_backward_matches_oracle(case) -> None:
    leaves, idx = problem(case, torch.float32)
    expected_out, expected_grads = oracle(leaves, idx)
    out, grads = run(leaves, KNNDictionary(idx), "triton", deterministic=False)
    assert_close(out, expected_out, torch.float32, "out")
    for name, grad in grads.items():
        assert_close(grad, expected_grads[name], torch.float32, f"d{name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_deterministic_triton_backward_is_bitwise_reproducible(dtype) -> None:
    case = CASES[-1]
    results = []
    for _ in range(2):
        leaves, idx = problem(case, dtype, seed=3)
        results.append(run(leaves, KNNDictionary(idx), "triton", deterministic=True)[1])
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_prepared_dictionary_call_does_not_synchronise(backend) -> None:
    case = Case("hot", 4, 2, 256, 32, 64, bias="H")
    leaves, idx = problem(case, torch.bfloat16)
    dictionary = KNNDictionary(idx).prepare(backend, torch.bfloat16)  # the build may sync
    run(leaves, dictionary, backend)  # warm-up: compiles kernels
    for t in leaves.values():
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = knn_attention(
            leaves["q"], leaves["k"], leaves["v"], dictionary, bias=leaves["bias"],
            backend=backend,
        )  # fmt: skip
        out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all() and all(t.grad is not None for t in leaves.values())


def test_auto_picks_a_compiled_backend_on_cuda() -> None:
    from common_kernels import select_backend

    leaves, idx = problem(CASES[3], torch.float16)
    pick = select_backend(leaves["q"], leaves["k"], leaves["v"], KNNDictionary(idx))
    assert pick in ("triton", "mask", "gather", "flex")
