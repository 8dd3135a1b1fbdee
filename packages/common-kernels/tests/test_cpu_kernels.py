"""The C++ CPU kernels (compiled on first use) against fp64 oracles written independently of
the package: the ``cpp`` backend against dense logits (cosine: F.normalize of q and k), -inf off
the neighbour sets, log(multiplicity) on repeated neighbours, softmax, matmul; the top-k
membership against a stable sort of (value desc, index asc); the fused residual against
x + F.layer_norm(y).

Tolerances: float32 outputs within rtol 1e-4 and atol 1e-4 x max(1, max |expected|) of the
oracle (a few units in the last place: the kernel sums in another order and its exponential is
a degree-5 polynomial of 2^f); memberships exactly.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend
from torch.library import opcheck

from common_kernels import (
    KNNDictionary,
    _cpu_kernels,
    add_layer_norm_,
    bias_gelu_,
    can_run,
    knn_attention,
    knn_attention_packed,
    knn_mask,
    select_backend,
)
from common_kernels.runtime.testing import AttentionCase, neighbour_lists

BACKEND = "cpp"
pytestmark = pytest.mark.usefixtures("backend_runs")


@dataclass(frozen=True)
class Case(AttentionCase):
    """One problem; ``cosine``: the kernel normalises q and k and scales each head."""

    cosine: bool = False


CASES = [
    Case("semanir_window", 3, 2, 64, 16, 32, bias="H", cosine=True),  # SemanIR's shapes
    Case("tails_n37_d12", 2, 2, 37, 12, 5),  # N and d not multiples of the vector or tile
    Case("k1_d8_bias_1H", 2, 1, 20, 8, 1, bias="1H"),
    Case("k_eq_n_d32_bias_BH", 2, 3, 24, 32, 24, bias="BH"),
    Case("per_head_bias_B1", 2, 3, 30, 16, 9, per_head=True, bias="B1", cosine=True),
    Case("duplicates_bias_11", 2, 2, 40, 16, 7, duplicates=True, bias="11"),
    Case("d40_n70", 1, 2, 70, 40, 20, bias="H"),
]


def make_problem(case: Case, seed: int = 0):
    """float32 q, k, v (as strided views of one qkv tensor, like SemanIR's), lists, bias."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(case.B, case.N, 3, case.H, case.d, generator=g)  # (B, N, 3, H, d)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d) views, rows unit-stride
    idx = neighbour_lists(case, g)
    bias = None if case.bias is None else torch.randn(case.bias_shape, generator=g)
    head_scale = torch.rand(case.H, generator=g) * 20 + 1 if case.cosine else None
    return q, k, v, idx, bias, head_scale


def oracle(q, k, v, idx, bias, head_scale):
    """fp64 attention over the listed neighbours, each repeat a separate softmax term."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, N, d = q.shape
    ids = idx if idx.ndim == 4 else idx[:, None].expand(B, H, N, idx.shape[-1])  # (B, H, N, K)
    counts = torch.zeros(B, H, N, N, dtype=torch.float64)
    counts.scatter_add_(-1, ids, torch.ones(ids.shape, dtype=torch.float64))
    if head_scale is None:
        logits = q @ k.transpose(-1, -2) * d**-0.5  # (B, H, N, N)
    else:
        qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        logits = qn @ kn.transpose(-1, -2) * head_scale.double().view(1, H, 1, 1)
    if bias is not None:
        logits = logits + bias.double()
    logits = logits + counts.log()  # -inf off the lists, log(repeats) on them
    return logits.softmax(dim=-1) @ v


def assert_close_to(actual, expected, rel=1e-4):
    atol = rel * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual.double(), expected, rtol=rel, atol=atol)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_attention_matches_the_fp64_oracle(case: Case) -> None:
    q, k, v, idx, bias, head_scale = make_problem(case)
    dictionary = KNNDictionary(idx)
    out = knn_attention(q, k, v, dictionary, bias=bias, cosine_scale=head_scale, backend="cpp")
    assert out.shape == q.shape and out.dtype == torch.float32
    assert out.transpose(1, 2).is_contiguous()  # laid out as (B, N, H, d) for the projection
    assert_close_to(out, oracle(q, k, v, idx, bias, head_scale))


@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=lambda c: c.name)
def test_cosine_scale_on_the_pytorch_backends_matches_the_oracle_forward_and_backward(
    case: Case,
) -> None:
    """The other backends normalise in PyTorch, differentiably: values and every gradient."""
    q, k, v, idx, bias, head_scale = make_problem(case)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, head_scale)]
    out = knn_attention(*leaves[:3], KNNDictionary(idx), bias=bias, cosine_scale=leaves[3],
                        backend="reference")  # fmt: skip
    expected_leaves = [t.detach().double().requires_grad_() for t in (q, k, v, head_scale)]
    expected = oracle(*expected_leaves[:3], idx, bias, expected_leaves[3])
    assert_close_to(out, expected.detach())
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad)
    expected.backward(grad.double())
    for leaf, reference in zip(leaves, expected_leaves, strict=True):
        assert_close_to(leaf.grad, reference.grad)


def trainable(case: Case, seed: int = 0):
    """A problem whose qkv, bias and head scales are leaves, and its fp64 twin: q, k, v views
    of one (B, N, 3, H, d) qkv leaf (the packed projection's layout)."""
    q, k, v, idx, bias, head_scale = make_problem(case, seed)
    qkv = torch.stack([q, k, v]).permute(1, 3, 0, 2, 4)  # (B, N, 3, H, d)
    leaves = [None if t is None else t.detach().clone().requires_grad_()
              for t in (qkv.contiguous(), bias, head_scale)]  # fmt: skip
    doubles = [None if t is None else t.detach().double().requires_grad_() for t in leaves]
    return leaves, doubles, idx


def oracle_backward(doubles, idx, grad: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The fp64 oracle's output and the gradients of its leaves (None where absent)."""
    qkv, bias, head_scale = doubles
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d)
    expected = oracle(q, k, v, idx, bias, head_scale)
    expected.backward(grad.double())
    return expected.detach(), [None if t is None else t.grad for t in doubles]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_backward_matches_the_fp64_oracle_for_q_k_v_bias_and_cosine_scale(case: Case) -> None:
    """The training pair (forward with the log-sum-exp, backward recomputing the
    probabilities) through ``knn_attention``: every bias layout is summed over the dims it
    broadcasts, cosine attention is differentiated through the normalisation and the scale."""
    (qkv, bias, head_scale), doubles, idx = trainable(case)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d) strided views
    out = knn_attention(q, k, v, KNNDictionary(idx), bias=bias, cosine_scale=head_scale,
                        backend="cpp")  # fmt: skip
    assert type(out.grad_fn).__name__ == "_CppAttentionBackward"
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad)
    expected, grads = oracle_backward(doubles, idx, grad)
    assert_close_to(out, expected)
    for leaf, reference in zip((qkv, bias, head_scale), grads, strict=True):
        if leaf is not None:
            assert leaf.grad.shape == leaf.shape
            assert_close_to(leaf.grad, reference)


def packed_against_the_oracle(case: Case, dictionary_of, seed: int) -> torch.Tensor:
    """Runs ``knn_attention_packed`` (cpp) forward and backward with the dictionary
    ``dictionary_of(idx)`` and checks its output and every gradient against the fp64 oracle;
    returns the output, (B, N, H * d)."""
    (qkv, bias, head_scale), doubles, idx = trainable(case)
    scale = None if head_scale is not None else case.d**-0.5
    out = knn_attention_packed(qkv, dictionary_of(idx), bias=bias, cosine_scale=head_scale,
                               scale=scale, backend="cpp")  # fmt: skip
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    out.backward(grad)
    heads_grad = grad.view(case.B, case.N, case.H, case.d).transpose(1, 2)  # (B, H, N, d)
    expected, grads = oracle_backward(doubles, idx, heads_grad)
    assert_close_to(out.view(case.B, case.N, case.H, case.d).transpose(1, 2), expected)
    assert qkv.grad.is_contiguous() and qkv.grad.shape == qkv.shape
    for leaf, reference in zip((qkv, bias, head_scale), grads, strict=True):
        if leaf is not None:
            assert_close_to(leaf.grad, reference)
    return out


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[4]], ids=lambda c: c.name)
def test_packed_attention_returns_the_gradient_in_the_projections_layout(case: Case) -> None:
    """knn_attention_packed: the output as (B, N, H * d) and qkv's gradient written by the
    kernel in qkv's own layout, both matching the fp64 oracle."""
    out = packed_against_the_oracle(case, KNNDictionary, seed=2)
    assert out.shape == (case.B, case.N, case.H * case.d) and out.is_contiguous()


@pytest.mark.parametrize("case", [c for c in CASES if not c.duplicates], ids=lambda c: c.name)
def test_a_mask_dictionary_matches_the_fp64_oracle_forward_and_backward(case: Case) -> None:
    """A dictionary made from a mask (as SemanIR builds it with knn_mask) reaches the kernel
    as bool membership, expanded to 0 / -inf lanes a vector at a time (and a lane at a time
    in the tail where N is not a multiple of the vector): values and every gradient."""

    def mask_dictionary(idx: torch.Tensor) -> KNNDictionary:
        member = KNNDictionary(idx).membership()  # (B, H|1, N, N)
        member = member if case.per_head else member.squeeze(1)  # knn_mask's (B, N, N) if shared
        assert member.dtype == torch.bool
        return KNNDictionary.from_mask(member, idx.shape[-1])

    packed_against_the_oracle(case, mask_dictionary, seed=4)


def test_logits_beyond_floats_exponent_range_underflow_to_zero_and_off_the_dictionary_too() -> None:
    """Logits spread over hundreds (the largest cosine scale, 100, and a bias of +-80): the
    probabilities below 2^-126 of a row's maximum underflow to 0 in the kernel's exponential,
    as in fp64 they are below float's range, so values and gradients still match the oracle;
    off the dictionary the probabilities and the per-window bias's gradient are exactly 0."""
    case = Case("wide_logits", 2, 2, 24, 16, 9, bias="BH", cosine=True)
    (qkv, bias, head_scale), doubles, idx = trainable(case, seed=5)
    with torch.no_grad():
        for leaf in (bias, doubles[1]):
            leaf.mul_(80.0 / leaf.abs().max())
        for leaf in (head_scale, doubles[2]):
            leaf.fill_(100.0)
    out = knn_attention_packed(qkv, KNNDictionary(idx), bias=bias, cosine_scale=head_scale,
                               backend="cpp")  # fmt: skip
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
    out.backward(grad)
    heads_grad = grad.view(case.B, case.N, case.H, case.d).transpose(1, 2)  # (B, H, N, d)
    expected, grads = oracle_backward(doubles, idx, heads_grad)
    assert_close_to(out.view(case.B, case.N, case.H, case.d).transpose(1, 2), expected)
    for leaf, reference in zip((qkv, bias, head_scale), grads, strict=True):
        assert_close_to(leaf.grad, reference)
    member = KNNDictionary(idx).membership().expand(case.B, case.H, case.N, case.N)
    assert bias.grad[~member].abs().max().item() == 0.0
    assert (bias.grad[member] == 0).any()  # some listed entries underflowed to exactly 0 too


def test_backward_is_bitwise_reproducible() -> None:
    """Fixed window groups sum the shared bias's gradient in one order: two runs agree."""
    case = CASES[0]
    results = []
    for _ in range(2):
        (qkv, bias, head_scale), _, idx = trainable(case)
        out = knn_attention_packed(qkv, KNNDictionary(idx), bias=bias, cosine_scale=head_scale,
                                   backend="cpp")  # fmt: skip
        out.square().sum().backward()
        results.append((qkv.grad, bias.grad, head_scale.grad))
    for first, second in zip(*results, strict=True):
        assert torch.equal(first, second)


def test_a_zero_query_or_key_gets_the_gradient_of_f_normalize() -> None:
    """Where the norm is clamped to eps, F.normalize's gradient is the output's over eps."""
    case = CASES[0]
    (qkv, bias, head_scale), doubles, idx = trainable(case)
    with torch.no_grad():
        for t in (qkv, doubles[0]):
            t[0, 3, 0, 0] = 0.0  # a query
            t[1, 5, 1, 1] = 0.0  # a key
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    out = knn_attention(q, k, v, KNNDictionary(idx), bias=bias, cosine_scale=head_scale,
                        backend="cpp")  # fmt: skip
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    out.backward(grad)
    expected, grads = oracle_backward(doubles, idx, grad)
    assert_close_to(out, expected)
    assert_close_to(qkv.grad, grads[0], rel=1e-3)  # entries of order 1e12 there


def test_a_zero_query_or_key_stays_zero_as_with_f_normalize() -> None:
    case = CASES[0]
    q, k, v, idx, bias, head_scale = make_problem(case)
    q, k = q.clone(), k.clone()
    q[0, 0, 3] = 0.0
    k[1, 1, 5] = 0.0
    out = knn_attention(q, k, v, KNNDictionary(idx), bias=bias, cosine_scale=head_scale,
                        backend="cpp")  # fmt: skip
    assert torch.isfinite(out).all()
    assert_close_to(out, oracle(q, k, v, idx, bias, head_scale))


def sorted_membership(sim: torch.Tensor, k: int) -> torch.Tensor:
    """The oracle: the first k of a stable descending sort (equal values: lower index first)."""
    order = torch.sort(sim.double(), dim=-1, descending=True, stable=True).indices
    member = torch.zeros(sim.shape, dtype=torch.bool)
    return member.scatter_(-1, order[..., :k], True)


@pytest.mark.parametrize("n", [64, 48, 100])  # 64: the AVX-512 / AVX2 search; others: general
@pytest.mark.parametrize("k", [1, 16, 32, 47])
def test_topk_membership_equals_a_stable_sort_ties_and_signed_zeros_included(
    n: int, k: int
) -> None:
    g = torch.Generator().manual_seed(n + k)
    sim = torch.randn(5, n, n, generator=g).round(decimals=1)  # many equal values
    sim[0, 0] = 0.25  # a whole row tied
    sim[1, 2, ::2] = -0.0  # signed zeros tie with zeros
    sim[1, 2, 1::2] = 0.0
    sim[2, 3, :10] = torch.finfo(torch.float32).max
    sim[2, 4, :10] = -torch.finfo(torch.float32).max
    sim[3, 5, 1::3] = float("inf")
    sim[3, 6, 2::3] = float("-inf")
    rows = sim.reshape(-1, n)  # (rows, N)
    member = _cpu_kernels.ops().topk_membership(rows, k).view(sim.shape)
    assert torch.equal(member, sorted_membership(sim, k))
    assert (member.sum(dim=-1) == k).all()


def test_knn_mask_takes_the_kernel_and_keeps_its_sets() -> None:
    """knn_mask on the CPU (fp32, N <= 128) goes through the kernel: the same sets as a sort."""
    x = torch.randn(4, 64, 16, generator=torch.Generator().manual_seed(0))
    x[0, :8] = x[0, 8]  # identical tokens: tied similarities
    member = knn_mask(x, 24, similarity="cosine")
    feats = F.normalize(x, dim=-1)
    assert torch.equal(member, sorted_membership(feats @ feats.transpose(-1, -2), 24))


def test_the_ops_fake_implementations_pass_torch_library_opcheck() -> None:
    """What torch.compile traces the ops with (their fake implementations) agrees with what
    they return (shapes, strides, dtypes), and their schemas with what they do."""
    q, k, v, idx, bias, head_scale = make_problem(CASES[0])
    mask = KNNDictionary(idx).additive_mask(torch.float32)
    ops = _cpu_kernels.ops()
    opcheck(ops.topk_membership.default, (torch.randn(8, 64), 16))
    attention = (q, k, v, mask, bias, 1.0, head_scale)
    opcheck(ops.masked_attention.default, attention)
    opcheck(ops.masked_attention_lse.default, attention)
    out, lse = ops.masked_attention_lse(*attention)
    grad = torch.randn(out.shape).transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, N, d)
    for wanted in ((True, True), (False, False)):
        backward = (grad, q, k, v, mask, bias, out, lse, 1.0, head_scale, *wanted)
        opcheck(ops.masked_attention_backward.default, backward)


def test_inside_torch_compile_one_graph_calls_the_kernels_forward_and_backward() -> None:
    """A dictionary built by knn_mask and the attention over it, traced by torch.compile into
    one graph (fullgraph: no break) that calls the C++ top-k and attention: the mask, the
    output and every gradient as in eager."""
    case = CASES[0]

    def layer(qkv, bias, head_scale):
        keys = qkv[:, :, 1].flatten(2)  # (B, N, H * d)
        # values checked by the caller, as SemanIR does (a check is a host synchronisation)
        member = knn_mask(keys, case.K, similarity="cosine", check_values=False)  # (B, N, N)
        dictionary = KNNDictionary.from_mask(member, case.K)
        out = knn_attention_packed(qkv, dictionary, bias=bias, cosine_scale=head_scale,
                                   backend="cpp", check_values=False)  # fmt: skip
        return out, member

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=counter, fullgraph=True)
    results = []
    for run in (layer, compiled):
        leaves = trainable(case)[0]
        out, member = run(*leaves)
        out.square().sum().backward()
        results.append((out, member, *(t.grad for t in leaves)))
    for eager, traced in zip(*results, strict=True):
        torch.testing.assert_close(traced, eager, rtol=1e-6, atol=1e-6)
    assert counter.frame_count == 1
    graphs = [m.graph for m in counter.graphs[0].modules() if hasattr(m, "graph")]
    called = {str(node.target) for graph in graphs for node in graph.nodes}  # and subgraphs'
    assert {"common_kernels_cpu.topk_membership", "common_kernels_cpu.masked_attention_lse",
            "common_kernels_cpu.masked_attention_backward"} <= called  # fmt: skip


LAZY_MODULES = ("torch._dynamo", "sympy", "triton", "torch.nn.attention.flex_attention")


def test_importing_the_package_and_attending_on_the_cpu_leave_heavy_modules_unimported() -> None:
    """What only some backends need loads where they run: torch.compile's machinery (1.5 s to
    import; a module-level torch.compiler.disable decorator had put it on every CLI's start),
    FlexAttention (it imports sympy: 0.5 s) and triton (0.15 s). Neither the import nor an
    ``auto`` attention on the CPU (which asks every backend whether it can run) loads them; the
    flex backend loads FlexAttention at its first call and matches the reference."""
    code = f"""
import sys, torch, common_kernels
lazy = {LAZY_MODULES!r}
print(*(m in sys.modules for m in lazy))
q, k, v = torch.randn(3, 2, 2, 64, 16, generator=torch.Generator().manual_seed(0)).unbind(0)
d = common_kernels.knn_dictionary(q.mean(1), 8)
ref = common_kernels.knn_attention(q, k, v, d, backend="reference")
out = common_kernels.knn_attention(q, k, v, d)
print(*(m in sys.modules for m in lazy), torch.allclose(out, ref, atol=1e-5))
with torch.no_grad():
    out = common_kernels.knn_attention(q, k, v, d, backend="flex")
print("torch.nn.attention.flex_attention" in sys.modules, torch.allclose(out, ref, atol=1e-5))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    imported, attended, flexed = done.stdout.splitlines()
    assert imported.split() == ["False"] * 4
    assert attended.split() == ["False"] * 4 + ["True"]
    assert flexed.split() == ["True", "True"]


def test_a_first_load_inside_torch_compile_runs_outside_the_trace() -> None:
    """Compiling before the library is loaded: the load breaks the graph (dynamo does not
    trace the build) and the kernel runs; the mask is eager's."""
    code = """
import torch
from common_kernels import _cpu_kernels, knn_mask
x = torch.randn(3, 64, 16, generator=torch.Generator().manual_seed(0))
mask = torch.compile(lambda t: knn_mask(t, 8, check_values=False), backend="eager")(x)
print("ops" in _cpu_kernels._state, torch.equal(mask, knn_mask(x, 8)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=True)  # fmt: skip
    assert done.stdout.split() == ["True", "True"]


def test_refusals_name_the_reason() -> None:
    q = torch.randn(1, 2, 8, 4)
    idx = torch.zeros(1, 8, 2, dtype=torch.long)
    idx[..., 1] = 1
    assert can_run("cpp", q.double(), q.double(), q.double(), idx) == (
        False, "the C++ kernel takes float32, got torch.float64; use 'reference' or 'mask'",
    )  # fmt: skip
    long = torch.randn(1, 1, 1025, 4, requires_grad=True)
    ids = torch.zeros(1, 1025, 1, dtype=torch.long)
    assert can_run("cpp", long, long, long, ids) == (False, (
        "the C++ backward keeps a (window, head)'s N x N probabilities in a scratch, up to "
        "N=1024; N=1025: use 'mask' or 'gather' to train"
    ))  # fmt: skip
    with pytest.raises(RuntimeError, match="backend 'cpp' cannot run here: the C\\+\\+ back"):
        knn_attention(long, long, long, ids, backend="cpp")
    with torch.no_grad():  # forward only: any N
        assert can_run("cpp", long, long, long, ids) == (True, "")


def test_cosine_scale_errors_name_the_argument() -> None:
    q = torch.randn(1, 2, 8, 4)
    idx = torch.zeros(1, 8, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"cosine_scale must hold one multiplier per head"):
        knn_attention(q, q, q, idx, cosine_scale=torch.ones(3))
    with pytest.raises(ValueError, match=r"scale=0.5 and cosine_scale exclude each other"):
        knn_attention(q, q, q, idx, scale=0.5, cosine_scale=torch.ones(2))


def test_auto_picks_the_kernel_at_semanir_shapes_for_inference_and_training() -> None:
    """The CPU policy table measured it fastest there, forward and forward+backward
    (benchmarks/run.py --write-policy); single long sequences train with another backend."""
    q, k, v, idx, bias, _ = make_problem(Case("group", 96, 2, 64, 16, 32, bias="H"))
    assert select_backend(q, k, v, KNNDictionary(idx), bias) == "cpp"
    leaf = q.clone().requires_grad_()
    assert select_backend(leaf, k, v, KNNDictionary(idx), bias) == "cpp"
    long = torch.randn(1, 2, 4096, 32, requires_grad=True)
    ids = torch.randint(0, 4096, (1, 4096, 16), generator=torch.Generator().manual_seed(0))
    assert select_backend(long, long, long, ids) != "cpp"


def test_turned_off_by_the_environment_with_the_reason() -> None:
    code = (
        "import torch; from common_kernels import can_run; q = torch.zeros(1, 1, 4, 8); "
        "print(can_run('cpp', q, q, q, torch.zeros(1, 4, 1, dtype=torch.long)))"
    )
    env = {**os.environ, _cpu_kernels.DISABLE_ENV: "0"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = "the C++ CPU kernels are unavailable: COMMON_KERNELS_CPU_KERNELS=0 turns them off"
    assert done.stdout.strip() == str((False, expected))


@pytest.mark.parametrize("channels", [32, 20, 64])  # 20: a vector tail
def test_add_layer_norm_matches_the_fp64_residual_and_updates_x_in_place(channels: int) -> None:
    g = torch.Generator().manual_seed(channels)
    x, y = torch.randn(6, 64, channels, generator=g), torch.randn(6, 64, channels, generator=g)
    norm = torch.nn.LayerNorm(channels)
    with torch.no_grad():
        norm.weight.normal_(generator=g)
        norm.bias.normal_(generator=g)
    expected = x.double() + F.layer_norm(
        y.double() * 3 + 1, (channels,), norm.weight.double(), norm.bias.double(), norm.eps
    )
    target = x.clone()
    with torch.inference_mode():
        out = add_layer_norm_(target, y * 3 + 1, norm)
    assert out.data_ptr() == target.data_ptr()
    assert_close_to(target, expected)


def test_add_layer_norm_keeps_autograd_on_the_pytorch_path() -> None:
    x, y = torch.randn(2, 5, 8), torch.randn(2, 5, 8, requires_grad=True)
    norm = torch.nn.LayerNorm(8)
    out = add_layer_norm_(x.clone(), y, norm)
    out.sum().backward()
    torch.testing.assert_close(out, x + norm(y))
    assert y.grad is not None and norm.weight.grad is not None


def erf_gelu_fp64(x: torch.Tensor) -> torch.Tensor:
    """x (1 + erf(x / sqrt 2)) / 2 in fp64, written out (not F.gelu)."""
    x = x.double()
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


@pytest.mark.parametrize("channels", [64, 20])  # 20: a vector tail
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_bias_gelu_matches_the_fp64_gelu_in_place(channels: int, with_bias: bool) -> None:
    """The kernel's GELU (torch's erf formula, its exp(-z^2) by the attention's polynomial) over
    values from -12 to 12: within 5e-7 x max(1, |x|) of fp64, in x's memory; exact 0 at 0, the
    identity far right, -0 far left. F.gelu is not compared: its error is torch's and differs
    between machines (below 5e-7 on this grid on an AVX2 EPYC, 8-9e-7 on an AVX-512 one)."""
    g = torch.Generator().manual_seed(channels)
    x = torch.linspace(-12, 12, 96 * channels).view(96, channels)
    x = x[torch.randperm(96, generator=g)].contiguous()
    bias = torch.randn(channels, generator=g) if with_bias else None
    expected = erf_gelu_fp64(x if bias is None else x.double() + bias.double())
    target = x.clone()
    with torch.inference_mode():
        out = bias_gelu_(target, bias)
    assert out.data_ptr() == target.data_ptr()
    scale = expected.abs().clamp_min(1.0)
    assert ((out.double() - expected).abs() / scale).max().item() <= 5e-7
    with torch.inference_mode():
        ends = bias_gelu_(torch.tensor([0.0, 30.0, -30.0, -9.0]), None)
    assert ends.tolist()[:2] == [0.0, 30.0] and ends[2].item() == 0.0
    assert abs(ends[3].item()) <= 1e-17


def test_bias_gelu_keeps_autograd_and_odd_layouts_on_the_pytorch_path() -> None:
    """With autograd, or for a non-contiguous x, ``F.gelu(x + bias)`` in a new tensor."""
    x = torch.randn(4, 6, 8)
    bias = torch.randn(8, requires_grad=True)
    out = bias_gelu_(x, bias)
    out.sum().backward()
    torch.testing.assert_close(out, F.gelu(x + bias))
    assert bias.grad is not None and out.data_ptr() != x.data_ptr()
    strided = torch.randn(8, 6).t()  # (6, 8), not contiguous
    with torch.inference_mode():
        kept = strided.clone()
        torch.testing.assert_close(bias_gelu_(strided, None), F.gelu(kept))
    assert torch.equal(strided, kept)


STATUS = "from common_kernels import _cpu_kernels; print(_cpu_kernels.status())"


def run_status(cache: Path, **env: str) -> str:
    """``_cpu_kernels.status()`` in a fresh process whose extensions cache is ``cache``."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache), **env}
    done = subprocess.run([sys.executable, "-c", STATUS], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout.strip()


# Slow lane (nightly, nox -s slow): a second full build in fresh processes (40 s); every default
# run still builds and loads the kernels.
@pytest.mark.slow
def test_a_build_lands_whole_in_the_cache_and_later_processes_need_no_compiler(
    tmp_path: Path,
) -> None:
    """Built in a private folder, then one rename: the cache holds the library and nothing
    else (no lock a killed build could leave behind); the next process only loads it."""
    assert run_status(tmp_path) == str((True, ""))
    (built,) = (tmp_path / "common_kernels").iterdir()  # one file, nothing else
    assert built.name.startswith("common_kernels_cpu_") and built.suffix == ".so"
    assert run_status(tmp_path, CXX="/nonexistent/c++") == str((True, ""))


def test_without_a_compiler_the_reason_is_given(tmp_path: Path) -> None:
    expected = (
        "the C++ CPU kernels are unavailable: no C++ compiler ('/nonexistent/c++' is not on "
        "PATH; install g++ or clang, or set CXX)"
    )
    assert run_status(tmp_path, CXX="/nonexistent/c++") == str((False, expected))


# torch runs its AVX-512 kernels where the CPU has these (its own test of the capability)
AVX512_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
PARITY_TESTS = (
    "test_attention_matches_the_fp64_oracle or test_backward_matches_the_fp64_oracle or "
    "test_topk_membership or test_add_layer_norm_matches or test_bias_gelu_matches or "
    "underflow_to_zero"
)


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def test_the_kernels_use_the_widest_vectors_this_cpu_has() -> None:
    """On a CPU with AVX-512 the library is built for AVX-512 (the tests above check that
    path); on one with AVX2 only, for AVX2."""
    flags = cpu_flags()
    if not {"avx2", "fma"} <= flags:
        pytest.skip("the CPU has no AVX2 (no /proc/cpuinfo, or another architecture)")
    expected = "AVX512" if flags >= AVX512_FLAGS else "AVX2"
    assert torch.backends.cpu.get_cpu_capability() == expected
    assert _cpu_kernels._build_name(expected) in {
        path.stem for path in _cpu_kernels.cache_folder().glob("*.so")
    }


def test_the_avx2_build_passes_the_parity_tests_on_an_avx512_cpu() -> None:
    """An AVX-512 machine also builds and checks the AVX2 code (``ATEN_CPU_CAPABILITY=avx2``:
    torch's kernels and ``at::vec`` at 256 bits), so that both vector widths are tested
    wherever the wider one runs."""
    if not cpu_flags() >= AVX512_FLAGS:
        pytest.skip("the CPU has no AVX-512: the tests above check its AVX2 build")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
               "-k", PARITY_TESTS]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in summary and "skipped" not in summary, summary
