"""The table-driven ``auto`` policy: within 10% of the fastest at every measured point, and,
measured here, within 50% of the fastest at points between the measured ones (CPU, slow):
the prediction cannot know a crossover that no point measured, but the 0.2.2 policy (the
nearest point only) was 2.4x slower than the fastest at N=2048, K=16 and fails here."""

from __future__ import annotations

import pytest
import torch

from common_kernels import KNNDictionary, _policy, select_backend
from common_kernels.knn_attention import BACKENDS, policy_problem

TOLERANCE = 1.10
BETWEEN_POINTS_TOLERANCE = 1.5  # auto's pick / the fastest, timed here, between table points


def point_problem(point: dict) -> _policy.Problem:
    return _policy.Problem(
        n=point["n"],
        k=point["k"],
        batch_heads=point["batch_heads"],
        mode=point["mode"],
        bias=point["bias"],
        dtype=point["dtype"],
    )


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_shipped_table_is_well_formed(device: str) -> None:
    table = _policy.load_table(device)
    assert table is not None and table["device"] == device and table["source"]
    assert table["points"]
    for point in table["points"]:
        assert point["mode"] in _policy.MODES
        assert set(point["ms"]) <= set(BACKENDS) and point["ms"]
        assert all(ms > 0 for ms in point["ms"].values())


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_auto_is_within_ten_percent_of_the_fastest_at_every_measured_point(device: str) -> None:
    table = _policy.load_table(device)
    for point in table["points"]:
        pick = _policy.choose(table, point_problem(point), set(point["ms"]))
        fastest = min(point["ms"].values())
        assert point["ms"][pick] <= TOLERANCE * fastest, (point, pick)


def test_choose_takes_the_nearest_point_with_a_runnable_backend() -> None:
    table = {
        "points": [
            {"n": 256, "k": 16, "batch_heads": 2, "mode": "fwd", "bias": False,
             "dtype": "float32", "ms": {"mask": 1.0, "gather": 2.0}},
            {"n": 16384, "k": 16, "batch_heads": 2, "mode": "fwd", "bias": False,
             "dtype": "float32", "ms": {"mask": 9.0, "gather": 1.0}},
            {"n": 16384, "k": 16, "batch_heads": 2, "mode": "fwd+bwd", "bias": False,
             "dtype": "float32", "ms": {"mask": 1.0, "gather": 9.0}},
        ]
    }  # fmt: skip
    near_small = _policy.Problem(512, 16, 2, "fwd", False, "float32")
    near_large = _policy.Problem(8192, 16, 2, "fwd", False, "float32")
    training = _policy.Problem(8192, 16, 2, "fwd+bwd", False, "float32")
    assert _policy.choose(table, near_small, {"mask", "gather"}) == "mask"
    assert _policy.choose(table, near_large, {"mask", "gather"}) == "gather"
    assert _policy.choose(table, training, {"mask", "gather"}) == "mask"  # same mode wins
    assert _policy.choose(table, near_large, {"mask"}) == "mask"  # only runnable backends
    assert _policy.choose(table, near_large, {"triton"}) is None


def test_distance_is_zero_at_the_point_and_grows_with_every_feature() -> None:
    point = {"n": 1024, "k": 64, "batch_heads": 8, "mode": "fwd", "bias": True, "dtype": "bfloat16"}
    same = _policy.Problem(1024, 64, 8, "fwd", True, "bfloat16")
    assert same.distance(point) == 0
    assert _policy.Problem(2048, 64, 8, "fwd", True, "bfloat16").distance(point) == 1
    assert _policy.Problem(1024, 32, 8, "fwd", True, "bfloat16").distance(point) == 1
    assert _policy.Problem(1024, 64, 16, "fwd", True, "bfloat16").distance(point) == 0.5
    assert _policy.Problem(1024, 64, 8, "fwd+bwd", True, "bfloat16").distance(point) == 4
    assert _policy.Problem(1024, 64, 8, "fwd", False, "bfloat16").distance(point) == 0.5
    assert _policy.Problem(1024, 64, 8, "fwd", True, "float16").distance(point) == 0.25


def test_select_backend_on_cpu_follows_the_shipped_table() -> None:
    table = _policy.load_table("cpu")
    runnable = {"reference", "mask", "gather", "flex"}
    for point in table["points"]:
        grad = point["mode"] == "fwd+bwd"
        heads = 2 if point["batch_heads"] % 2 == 0 else 1
        batch = point["batch_heads"] // heads
        q = torch.zeros(batch, heads, point["n"], 4, requires_grad=grad)
        idx = torch.zeros(batch, point["n"], point["k"], dtype=torch.int32)
        bias = torch.zeros(heads, point["n"], point["n"]) if point["bias"] else None
        dictionary = KNNDictionary.from_unique(idx)
        problem = policy_problem(q, q, q, point["k"], bias)
        assert problem == point_problem({**point, "batch_heads": batch * heads})
        expected = _policy.choose(table, problem, runnable - ({"flex"} if grad else set()))
        assert select_backend(q, q, q, dictionary, bias) == expected


# Between the CPU table's points: (mode, B, heads, N, K, bias). Crossovers included: at
# N=2048, K=16 training gather wins where N=1024 favours mask and N=4096 gather.
BETWEEN_POINTS = [
    ("fwd", 1, 2, 512, 32, False),
    ("fwd", 1, 2, 2048, 32, False),
    ("fwd+bwd", 1, 2, 512, 128, False),
    ("fwd+bwd", 1, 2, 2048, 16, False),
    ("fwd", 128, 2, 128, 32, True),
    ("fwd+bwd", 128, 2, 128, 32, True),
]


@pytest.mark.slow
@pytest.mark.parametrize("point", BETWEEN_POINTS, ids=lambda p: "-".join(map(str, p)))
def test_auto_is_within_the_margin_of_the_fastest_between_measured_points(point) -> None:
    """Times every CPU backend at a point the table does not hold (one thread, rounds of one
    call per backend, interleaved; the minimum over rounds, since a shared machine's
    scheduling only ever adds time) and checks ``auto``'s pick against the fastest."""
    import time

    from common_kernels import knn_attention, knn_graph

    mode, batch, heads, n, k, with_bias = point
    grad = mode == "fwd+bwd"
    g = torch.Generator().manual_seed(0)
    q, k_, v = (torch.randn(batch, heads, n, 32, generator=g, requires_grad=grad) for _ in "qkv")
    if with_bias:  # the windowed regime: neighbours from knn_graph, a position bias
        idx = knn_graph(torch.randn(batch, n, 16, generator=g), k)
        bias = torch.randn(heads, n, n, generator=g, requires_grad=grad)
    else:
        idx, bias = torch.rand(batch, n, n, generator=g).argsort(dim=-1)[..., :k], None
    dictionary = KNNDictionary.from_unique(idx)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pick = select_backend(q, k_, v, dictionary, bias)
        backends = ("reference", "mask", "gather")
        times: dict[str, list[float]] = {b: [] for b in backends}

        def step(backend: str) -> None:
            out = knn_attention(q, k_, v, dictionary, bias=bias, backend=backend)
            if grad:
                out.sum().backward()

        for backend in backends:
            step(backend)  # warm-up: the dictionary's structures
        for _ in range(9):
            for backend in backends:
                start = time.perf_counter()
                step(backend)
                times[backend].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    best = {b: min(t) for b, t in times.items()}
    assert pick in best
    assert best[pick] <= BETWEEN_POINTS_TOLERANCE * min(best.values()), (pick, best)
