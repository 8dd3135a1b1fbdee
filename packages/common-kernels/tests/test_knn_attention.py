"""Every knn_attention backend against the fp64 reference, forward and every gradient.

Tolerances: backends run in fp32 and are compared with the reference run in fp64 on the same
values: outputs within atol=2e-5, rtol=1e-4; gradients within atol=1e-4, rtol=1e-3 (gradients
sum over up to N terms). The reference itself is checked by torch.autograd.gradcheck in fp64.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from common_kernels.attention import (
    KNNAttention,
    can_run,
    knn_attention,
    knn_attention_packed,
    select_backend,
    value_checks,
)
from common_kernels.runtime.testing import AttentionCase as Case
from common_kernels.runtime.testing import neighbour_lists

FWD_TOL = {"atol": 2e-5, "rtol": 1e-4}
GRAD_TOL = {"atol": 1e-4, "rtol": 1e-3}


CASES = [
    Case("k1_n37", 2, 1, 37, 8, 1),  # K=1; N not a multiple of the block size
    Case("k_eq_n_bias", 2, 2, 37, 16, 37, bias="H"),  # K=N
    Case("per_head_dups_bias", 1, 3, 50, 32, 7, per_head=True, duplicates=True, bias="H"),
    Case("dups_d64", 2, 4, 20, 64, 5, duplicates=True),
    Case("per_head_batch_bias", 2, 4, 33, 8, 16, per_head=True, bias="B1"),
]


def make_inputs(case: Case, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp64 leaves q, k, v (and bias) and an int64 idx for ``case``."""
    g = torch.Generator().manual_seed(seed)
    shape = (case.B, case.H, case.N, case.d)
    tensors = {name: torch.randn(shape, generator=g, dtype=torch.float64) for name in "qkv"}
    tensors["idx"] = neighbour_lists(case, g)
    if case.bias is not None:
        tensors["bias"] = torch.randn(case.bias_shape, generator=g, dtype=torch.float64)
    return tensors


def forward_backward(inputs: dict[str, torch.Tensor], dtype: torch.dtype, **kwargs):
    """Run knn_attention on copies of ``inputs`` cast to ``dtype``; return out and grads in fp64."""
    leaves = {
        name: t.detach().to(dtype).requires_grad_(True)
        for name, t in inputs.items()
        if name != "idx"
    }
    out = knn_attention(
        leaves["q"], leaves["k"], leaves["v"], inputs["idx"], bias=leaves.get("bias"), **kwargs
    )
    weights = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view(out.shape)
    (out.double() * weights).sum().backward()
    return out.double(), {name: t.grad.double() for name, t in leaves.items()}


def assert_matches_reference(case: Case, backend: str, **kwargs) -> None:
    inputs = make_inputs(case)
    ref_out, ref_grads = forward_backward(inputs, torch.float64, backend="reference")
    out, grads = forward_backward(inputs, torch.float32, backend=backend, **kwargs)
    torch.testing.assert_close(out, ref_out, **FWD_TOL)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], **GRAD_TOL, msg=f"d{name} ({backend})")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("backend", ["mask", "gather"])
def test_torch_backends_match_reference(case: Case, backend: str) -> None:
    assert_matches_reference(case, backend)


@pytest.mark.triton
@pytest.mark.parametrize("deterministic", [True, False], ids=["csr", "atomic"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_triton_backend_matches_reference(case: Case, deterministic: bool) -> None:
    pytest.importorskip("triton")
    assert_matches_reference(case, "triton", deterministic=deterministic)


def test_reference_gradcheck_fp64() -> None:
    inputs = make_inputs(Case("gradcheck", 1, 2, 9, 4, 4, duplicates=True, bias="H"))
    idx = inputs.pop("idx")
    leaves = [inputs[name].clone().requires_grad_(True) for name in ("q", "k", "v", "bias")]

    def fn(q, k, v, bias):
        return knn_attention(q, k, v, idx, bias=bias, backend="reference")

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


def test_reference_is_dense_softmax_restricted_to_neighbours() -> None:
    """Independent formula: softmax over the K slots of the gathered logits, in fp64."""
    case = Case("slots", 1, 1, 12, 4, 5, duplicates=True)
    inp = make_inputs(case)
    q, k, v, idx = inp["q"][0, 0], inp["k"][0, 0], inp["v"][0, 0], inp["idx"][0]
    expected = torch.stack(
        [torch.softmax(case.d**-0.5 * k[idx[i]] @ q[i], 0) @ v[idx[i]] for i in range(case.N)]
    )
    out = knn_attention(inp["q"], inp["k"], inp["v"], inp["idx"], backend="reference")
    torch.testing.assert_close(out[0, 0], expected, atol=1e-12, rtol=1e-12)


def slot_oracle(q, k, v, idx, scale, bias=None):
    """fp64 loops over (batch, head, query): a softmax over the query's K slots of
    scale * q . k + bias[b, h, i, j] (duplicates are separate slots), then the weighted values.
    Written from the definition; shares nothing with the package."""
    B, H, N, _ = q.shape
    out = torch.empty_like(q)
    for b in range(B):
        for h in range(H):
            lists = idx[b, h] if idx.ndim == 4 else idx[b]  # (N, K)
            table = None
            if bias is not None:
                table = bias.expand(B, H, N, N)[b, h] if bias.ndim == 4 else bias[h]  # (N, N)
            for i in range(N):
                nbrs = lists[i]
                logits = scale * (k[b, h, nbrs] @ q[b, h, i])  # (K,)
                if table is not None:
                    logits = logits + table[i, nbrs]
                out[b, h, i] = logits.softmax(0) @ v[b, h, nbrs]
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("backend", ["reference", "mask", "gather", "flex"])
def test_every_cpu_backend_matches_the_slot_oracle_with_bias_and_per_head_lists(
    case: Case, backend: str
) -> None:
    """Bias tables (heads, N, N) and (B, 1, N, N), per-head lists, duplicates: forward for every
    backend that runs on the CPU, and every gradient except flex's (no CPU backward)."""
    if backend == "flex" and case.duplicates:
        pytest.skip("flex refuses duplicate neighbours")
    inputs = make_inputs(case)
    scale = 0.7
    leaves = {name: t.clone().requires_grad_(backend != "flex") for name, t in inputs.items()
              if name != "idx"}  # fmt: skip
    out = knn_attention(leaves["q"], leaves["k"], leaves["v"], inputs["idx"], scale=scale,
                        bias=leaves.get("bias"), backend=backend)  # fmt: skip
    oracle_leaves = {name: t.detach().clone().requires_grad_() for name, t in leaves.items()}
    expected = slot_oracle(oracle_leaves["q"], oracle_leaves["k"], oracle_leaves["v"],
                           inputs["idx"], scale, oracle_leaves.get("bias"))  # fmt: skip
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-9)
    if backend == "flex":
        return
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for name, leaf in leaves.items():
        expected_grad = oracle_leaves[name].grad
        torch.testing.assert_close(leaf.grad, expected_grad, atol=1e-10, rtol=1e-9, msg=name)


def test_full_neighbourhood_equals_dense_attention() -> None:
    inp = make_inputs(Case("full", 2, 2, 10, 8, 10))
    dense = F.scaled_dot_product_attention(inp["q"], inp["k"], inp["v"])
    for backend in ("reference", "mask", "gather"):
        out = knn_attention(inp["q"], inp["k"], inp["v"], inp["idx"], backend=backend)
        torch.testing.assert_close(out, dense, atol=1e-12, rtol=1e-10)


def test_shared_idx_equals_per_head_copies() -> None:
    inp = make_inputs(Case("shared", 2, 3, 16, 8, 5, bias="H"))
    per_head = inp["idx"].unsqueeze(1).expand(-1, 3, -1, -1)
    for backend in ("reference", "mask", "gather"):
        shared = knn_attention(inp["q"], inp["k"], inp["v"], inp["idx"], bias=inp["bias"])
        copied = knn_attention(
            inp["q"], inp["k"], inp["v"], per_head, bias=inp["bias"], backend=backend
        )
        torch.testing.assert_close(shared, copied, atol=1e-12, rtol=1e-10)


def test_int32_idx_and_explicit_scale() -> None:
    inp = make_inputs(Case("int32", 1, 2, 16, 8, 4))
    out64 = knn_attention(inp["q"], inp["k"], inp["v"], inp["idx"], scale=0.3, backend="gather")
    out32 = knn_attention(inp["q"], inp["k"], inp["v"], inp["idx"].int(), scale=0.3, backend="mask")
    torch.testing.assert_close(out32, out64, atol=1e-12, rtol=1e-10)


def packed_problem(case: Case, cosine: bool):
    """fp64 leaves: a (B, N, 3, H, d) qkv, the bias and (cosine) per-head scales."""
    inp = make_inputs(case)
    qkv = torch.stack([inp["q"], inp["k"], inp["v"]]).permute(1, 3, 0, 2, 4).contiguous()
    leaves = {"qkv": qkv.requires_grad_()}
    if "bias" in inp:
        leaves["bias"] = inp["bias"].requires_grad_()
    if cosine:
        leaves["cosine_scale"] = torch.linspace(2.0, 9.0, case.H, dtype=torch.float64)
        leaves["cosine_scale"].requires_grad_()
    return leaves, inp["idx"]


def gradients(out: torch.Tensor, leaves: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    return list(torch.autograd.grad((out * weights).sum(), list(leaves.values())))


@pytest.mark.parametrize("cosine", [False, True], ids=["scaled", "cosine"])
@pytest.mark.parametrize("case", [CASES[1], CASES[4]], ids=lambda c: c.name)
@pytest.mark.parametrize("backend", ["reference", "mask", "gather"])
def test_packed_equals_knn_attention_on_the_views(backend: str, case: Case, cosine: bool) -> None:
    """knn_attention_packed(qkv) is knn_attention(q, k, v) with q, k, v = qkv's slices, as
    (B, N, H * d), forward and every gradient (fp64)."""
    leaves, idx = packed_problem(case, cosine)
    extra = {name: t for name, t in leaves.items() if name != "qkv"}
    out = knn_attention_packed(leaves["qkv"], idx, backend=backend, **extra)
    q, k, v = leaves["qkv"].permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d)
    expected = knn_attention(q, k, v, idx, backend="reference", **extra)
    expected = expected.transpose(1, 2).reshape(out.shape)  # (B, N, H * d)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    for got, want in zip(gradients(out, leaves), gradients(expected, leaves), strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("cosine", [False, True], ids=["scaled", "cosine"])
def test_packed_without_idx_is_dense_attention_with_the_bias(cosine: bool) -> None:
    """idx=None: every query attends to the whole window (the dense-window baseline): the
    softmax of q k^T (cosine: normalised, times the head's scale) plus the bias, forward and
    backward, against a re-statement in plain torch ops."""
    leaves, _ = packed_problem(Case("dense", 2, 3, 12, 8, 12, bias="H"), cosine)
    out = knn_attention_packed(leaves["qkv"], None, **{n: t for n, t in leaves.items()
                                                       if n != "qkv"})  # fmt: skip
    q, k, v = leaves["qkv"].permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d)
    if cosine:
        scale = leaves["cosine_scale"].view(1, -1, 1, 1)
        logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2) * scale
    else:
        logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    expected = (logits + leaves["bias"]).softmax(-1) @ v  # (B, H, N, d)
    expected = expected.transpose(1, 2).reshape(out.shape)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    for got, want in zip(gradients(out, leaves), gradients(expected, leaves), strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_packed_bad_inputs_name_the_argument() -> None:
    shape = r"qkv must have shape \(B, N, 3, heads, d\)"
    with pytest.raises(ValueError, match=shape + r", got \(2, 9, 12\)"):
        knn_attention_packed(torch.randn(2, 9, 12), None)
    with pytest.raises(ValueError, match=shape + r" \(queries, keys, values\), got \(2, 9, 2, 4"):
        knn_attention_packed(torch.randn(2, 9, 2, 4, 4), None)
    with pytest.raises(TypeError, match="qkv must be a floating"):
        knn_attention_packed(torch.zeros(2, 9, 3, 4, 4, dtype=torch.long), None)
    with pytest.raises(ValueError, match=r"bias must broadcast to \(B, heads, N, N\)"):
        knn_attention_packed(torch.randn(2, 9, 3, 4, 4), None, bias=torch.randn(3, 9, 9))


def test_module_matches_functional_and_dense_mha() -> None:
    torch.manual_seed(0)
    module = KNNAttention(16, 4, backend="gather").double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    full = torch.arange(9).expand(2, 9, 9)
    q, k, v = module.qkv(x).view(2, 9, 3, 4, 4).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d)
    dense = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 9, 16)
    torch.testing.assert_close(module(x, full), module.proj(dense), atol=1e-12, rtol=1e-10)
    assert module(x, full[..., :3]).shape == (2, 9, 16)
    with pytest.raises(ValueError, match="dim must be a multiple of heads"):
        KNNAttention(10, 4)
    with pytest.raises(ValueError, match=r"heads must be >= 1, got 0"):
        KNNAttention(16, 0)
    with pytest.raises(ValueError, match="backend must be one of"):
        KNNAttention(16, 4, backend="dense")


def test_can_run_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    inp = make_inputs(Case("reasons", 1, 1, 8, 8, 2))
    args = (inp["q"], inp["k"], inp["v"], inp["idx"])
    assert can_run("reference", *args) == (True, "")
    assert can_run("gather", *args) == (True, "")
    ok, reason = can_run("triton", *args)
    assert not ok and ("float64" in reason or "triton" in reason)
    ok, reason = can_run("flash", *args)
    assert not ok and "unknown backend 'flash'" in reason
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    fp32 = tuple(t.float() for t in args[:3])
    ok, reason = can_run("triton", *fp32, inp["idx"])
    assert not ok and "TRITON_INTERPRET" in reason
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run here"):
        knn_attention(*fp32, inp["idx"], backend="triton")


def test_auto_never_picks_the_triton_interpreter_on_cpu(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.zeros(1, 2, 64, 8, requires_grad=True)
    idx = torch.zeros(1, 64, 4, dtype=torch.long)
    assert can_run("triton", q.detach(), q.detach(), q.detach(), idx)[0] in (True, False)
    assert select_backend(q, q, q, idx) != "triton"
    with torch.no_grad():
        assert select_backend(q, q, q, idx) != "triton"


@pytest.mark.parametrize("case", [c for c in CASES if not c.duplicates], ids=lambda c: c.name)
def test_flex_forward_matches_reference(case: Case) -> None:
    """FlexAttention runs forward only on the CPU; its gradients are checked on CUDA."""
    inputs = make_inputs(case)
    with torch.no_grad():
        args = (inputs["q"], inputs["k"], inputs["v"], inputs["idx"])
        expected = knn_attention(*args, bias=inputs.get("bias"), backend="reference")
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
            cast = [t.to(dtype) for t in args[:3]]
            bias = inputs.get("bias")
            bias = None if bias is None else bias.to(dtype)
            out = knn_attention(*cast, inputs["idx"], bias=bias, backend="flex")
            assert out.dtype == dtype
            torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol * 10)


def test_flex_refuses_duplicates_and_cpu_backward() -> None:
    inputs = make_inputs(Case("flex_dups", 1, 2, 20, 8, 5, duplicates=True))
    args = (inputs["q"].float(), inputs["k"].float(), inputs["v"].float(), inputs["idx"])
    ok, reason = can_run("flex", *args)
    assert not ok and re.search(r"repeats a neighbour in one list \(up to \dx\)", reason)
    unique = make_inputs(Case("flex_unique", 1, 2, 20, 8, 5))["idx"]
    q = args[0].clone().requires_grad_(True)
    ok, reason = can_run("flex", q, args[1], args[2], unique)
    assert not ok and "no backward on the CPU" in reason
    with pytest.raises(RuntimeError, match="backend 'flex' cannot run here: FlexAttention has no"):
        knn_attention(q, args[1], args[2], unique, backend="flex")


def bad_input_cases():
    inp = make_inputs(Case("bad_inputs", 2, 2, 8, 4, 3))
    q, k, v, idx = inp["q"], inp["k"], inp["v"], inp["idx"]
    nan_q = q.clone()
    nan_q[0, 0, 0, 0] = float("nan")
    out_of_range = idx.clone()
    out_of_range[0, 0, 0] = 8
    inf_bias = q.new_full((2, 8, 8), float("inf"))
    return [
        ("q-int", (q.long(), k, v, idx), {}, TypeError, "q must be a floating tensor"),
        ("q-nan", (nan_q, k, v, idx), {}, ValueError, "q contains NaN or Inf"),
        ("q-3d", (q[0], k, v, idx), {}, ValueError, r"q must have shape \(B, heads, N, d\)"),
        ("kv-shape", (q, k[..., :2], v, idx), {}, ValueError, "q, k and v must have the same"),
        ("kv-dtype", (q, k.float(), v, idx), {}, TypeError, "q, k and v must share a dtype"),
        ("idx-float", (q, k, v, idx.double()), {}, TypeError, "idx must be an int32 or int64"),
        ("idx-range", (q, k, v, out_of_range), {}, IndexError, r"idx values must lie in \[0, 7\]"),
        ("idx-neg", (q, k, v, -idx - 1), {}, IndexError, r"idx values must lie in \[0, 7\]"),
        ("idx-shape", (q, k, v, idx[:, :5]), {}, ValueError, "idx must have shape"),
        ("K>N", (q, k, v, idx.repeat(1, 1, 3)), {}, ValueError, r"K in \[1, N=8\].*K=9"),
        ("K<1", (q, k, v, idx[..., :0]), {}, ValueError, r"K in \[1, N=8\].*K=0"),
        ("bias-shape", (q, k, v, idx), {"bias": q[..., :4]}, ValueError, "bias must broadcast"),
        ("bias-nan", (q, k, v, idx), {"bias": inf_bias}, ValueError, "bias contains NaN"),
        ("backend", (q, k, v, idx), {"backend": "dense"}, ValueError, "backend must be one of"),
        ("scale", (q, k, v, idx), {"scale": float("nan")}, ValueError, "scale must be a finite"),
        ("scale<0", (q, k, v, idx), {"scale": -1.0}, ValueError, r"scale must be > 0.*-1.0"),
        ("idx-list", (q, k, v, idx.tolist()), {}, TypeError, "idx must be a torch.Tensor"),
    ]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [case[1:] for case in bad_input_cases()],
    ids=[case[0] for case in bad_input_cases()],
)
def test_bad_inputs_name_the_argument(args, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        knn_attention(*args, **kwargs)


def test_value_checks_default_on_cpu_and_switchable() -> None:
    inp = make_inputs(Case("value_checks", 1, 2, 8, 4, 3))
    q = inp["q"].clone()
    q[0, 1, 2, 3] = float("nan")
    args = (q, inp["k"], inp["v"], inp["idx"])
    with pytest.raises(ValueError, match="q contains NaN or Inf"):
        knn_attention(*args)
    out = knn_attention(*args, check_values=False, backend="gather")
    assert out[0, 1, 2].isnan().all() and not out[0, 0].isnan().any()  # NaN stays in its head
    with value_checks(False):
        assert knn_attention(*args, backend="gather").isnan().any()
        with value_checks(True), pytest.raises(ValueError, match="q contains NaN"):
            knn_attention(*args)
        with pytest.raises(ValueError, match="q contains NaN"):
            knn_attention(*args, check_values=True)
    with pytest.raises(ValueError, match="q contains NaN"):  # the default is back
        knn_attention(*args)


@pytest.mark.parametrize("backend", ["reference", "mask", "gather"])
@pytest.mark.parametrize("duplicates", [False, True], ids=["unique", "dup"])
def test_half_precision_autocast_matches_reference(backend: str, duplicates: bool) -> None:
    """0.1's mask path crashed under autocast (log() autocast to fp32 into a bf16 mask)."""
    case = Case("autocast", 2, 2, 24, 16, 6, duplicates=duplicates, bias="H")
    inputs = make_inputs(case)
    ref_out, ref_grads = forward_backward(inputs, torch.float64, backend="reference")
    leaves = {n: t.detach().float().requires_grad_(True) for n, t in inputs.items() if n != "idx"}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, k, v = (leaves[n].to(torch.bfloat16) for n in "qkv")  # what a Linear would give
        out = knn_attention(
            q, k, v, inputs["idx"], bias=leaves["bias"].to(q.dtype), backend=backend
        )
    assert out.dtype == torch.bfloat16
    weights = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view(out.shape)
    (out.double() * weights).sum().backward()
    torch.testing.assert_close(out.double(), ref_out, atol=3e-2, rtol=3e-2)
    for name, leaf in leaves.items():
        torch.testing.assert_close(leaf.grad.double(), ref_grads[name], atol=3e-2, rtol=5e-2)


def test_both_row_gathers_agree_forward_and_backward() -> None:
    """The CUDA row gather (torch.gather, sync-free backward) checked on the CPU."""
    from common_kernels import KNNDictionary
    from common_kernels.attention import _gather_neighbour_rows

    inp = make_inputs(Case("row_gathers", 2, 3, 19, 8, 5, duplicates=True))
    dictionary = KNNDictionary(inp["idx"])
    grads = []
    for via_embedding in (True, False):
        x = inp["k"].clone().requires_grad_(True)
        rows = _gather_neighbour_rows(x, dictionary, via_embedding=via_embedding)
        expected = torch.stack(
            [torch.stack([x[b, h, inp["idx"][b]] for h in range(3)]) for b in range(2)]
        )  # (B, heads, N, K, d)
        assert torch.equal(rows, expected)
        rows.backward(torch.arange(rows.numel(), dtype=rows.dtype).view(rows.shape))
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=0)
