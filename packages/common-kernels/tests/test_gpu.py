"""GPU lane (``nox -s gpu``): every backend compiled on CUDA against an fp64 oracle, forward and
every gradient, in fp32/fp16/bf16; the bitwise-reproducible triton backward; and the hot path
of a prepared dictionary, which must launch kernels without synchronising with the host.

Tolerances, relative to max(1, max |expected|): fp32 1e-3 (TF32-safe), fp16 1e-2, bf16 6e-2,
the same for gradients. The oracle sees the inputs after rounding to the tested dtype.
"""

from __future__ import annotations

import pytest
import torch

from common_kernels import KNNDictionary, knn_attention, knn_graph
from common_kernels.runtime.testing import AttentionCase as Case
from common_kernels.runtime.testing import neighbour_lists

pytestmark = pytest.mark.gpu

BACKENDS = ("reference", "mask", "gather", "triton", "flex", "tiles")
BITMASK_BACKENDS = ("flex", "tiles")  # refuse duplicate neighbours
TOLERANCE = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 6e-2}


CASES = [
    Case("k1_n37", 2, 2, 37, 16, 1),  # K = 1; N not a multiple of any block
    Case("k_eq_n_bias", 2, 2, 37, 32, 37, bias="H"),  # K = N
    Case("per_head_bias", 1, 3, 50, 32, 7, per_head=True, bias="H"),
    Case("blocks_batch_bias", 2, 4, 300, 64, 40, bias="B1"),  # several 128-token tiles
    Case("duplicates", 2, 2, 45, 16, 9, per_head=True, duplicates=True, bias="H"),
    Case("windows_d128", 16, 2, 64, 128, 16, bias="H"),  # SemanIR-like: many windows
]


def problem(case: Case, dtype: torch.dtype, seed: int = 0):
    """CUDA leaves q, k, v (, bias) in ``dtype`` and the neighbour lists."""
    g = torch.Generator().manual_seed(seed)
    idx = neighbour_lists(case, g)
    tensors = {name: torch.randn((case.B, case.H, case.N, case.d), generator=g) for name in "qkv"}
    if case.bias is not None:
        tensors["bias"] = torch.randn(case.bias_shape, generator=g)
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


def oracle_params():
    """(backend, case, dtype) triples. FlexAttention compiles each shape variant (~20 s on an
    H100): it gets every case in bf16 and one case in the other dtypes, which keeps the lane
    within 5 minutes. Bitmask backends refuse duplicates (checked on the CPU)."""
    for backend in BACKENDS:
        for case in CASES:
            if backend in BITMASK_BACKENDS and case.duplicates:
                continue
            for dtype in TOLERANCE:
                if backend == "flex" and dtype != torch.bfloat16 and case is not CASES[1]:
                    continue
                name = f"{backend}-{case.name}-{str(dtype).split('.')[-1]}"
                yield pytest.param(backend, case, dtype, id=name)


@pytest.mark.parametrize(("backend", "case", "dtype"), list(oracle_params()))
def test_backend_matches_fp64_oracle_on_cuda(backend, case, dtype) -> None:
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
@pytest.mark.parametrize("backend", ["triton", "tiles"])
def test_deterministic_backward_is_bitwise_reproducible(backend, dtype) -> None:
    case = CASES[-2] if backend == "triton" else CASES[2]  # tiles: no duplicates
    results = []
    for _ in range(2):
        leaves, idx = problem(case, dtype, seed=3)
        results.append(run(leaves, KNNDictionary(idx), backend, deterministic=True)[1])
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


def test_stage_dictionary_is_built_without_synchronising() -> None:
    """What SemanIR does once per stage: knn_graph of the windows, a dictionary over it, and
    the structures of the tiles and flex backends: kernels only, no host synchronisation."""
    g = torch.Generator(device="cuda").manual_seed(0)
    windows = torch.randn(64, 256, 32, generator=g, device="cuda")
    windows[:, 128:] = windows[:, :1]  # ties: identical tokens
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        dictionary = KNNDictionary.from_unique(knn_graph(windows, 64, similarity="cosine"))
        dictionary.prepare("tiles").prepare("flex")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    idx = dictionary.idx.cpu().long()  # (64, 256, 64)
    unit = torch.nn.functional.normalize(windows.cpu().double(), dim=-1)
    sim = unit @ unit.transpose(-1, -2)  # (64, 256, 256)
    kth = sim.topk(64, dim=-1).values[..., -1:]  # (64, 256, 1)
    assert (sim.gather(-1, idx) >= kth - 1e-5).all()  # the 64 most similar, up to rounding
    assert (idx.sort(dim=-1).values.diff(dim=-1) > 0).all()  # distinct
    tied = idx[:, 128:]  # the identical tokens list identical tokens first
    assert (sim[:, 128:].gather(-1, tied) > 1 - 1e-6)[..., :64].all()


def test_auto_picks_a_compiled_backend_on_cuda() -> None:
    from common_kernels import select_backend

    leaves, idx = problem(CASES[3], torch.float16)
    pick = select_backend(leaves["q"], leaves["k"], leaves["v"], KNNDictionary(idx))
    assert pick in BACKENDS and pick != "reference"
