"""Measure benchmark configurations and print one JSON line per configuration.

On the CPU each configuration runs in a fresh process (run.py starts one per configuration):
peak memory is the growth of the process's peak RSS (ru_maxrss) over the RSS after the inputs
were built. On CUDA run.py imports this module and measures in-process: peak memory is
``torch.cuda.max_memory_allocated`` over the allocation after the inputs were built; time is
the median of ``triton.testing.do_bench`` (an event pair per call: host launch work included
where it exceeds the GPU's) and, as ``graph_ms``, of ``triton.testing.do_bench_cudagraph``
(the call captured once and replayed as a CUDA graph: kernels only). A call that cannot be
captured (one that synchronises, e.g. raw idx validated per call) has no ``graph_ms``.

Usage: python worker.py '{"op": "attention", "backend": "gather", "n": 1024, "k": 64, ...}'
"""

from __future__ import annotations

import functools
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@functools.cache
def distinct_neighbours(batch: int, n: int, k: int, device: torch.device) -> torch.Tensor:
    """(batch, n, k) int64: k distinct uniformly random keys per query (topk of random
    scores, 1024 rows at a time so that N x N scores never exist); cached per process."""
    g = torch.Generator(device=device).manual_seed(1)
    rows = []
    for _ in range(batch):
        for start in range(0, n, 1024):
            scores = torch.rand(min(1024, n - start), n, generator=g, device=device)
            rows.append(scores.topk(k, dim=-1).indices)
    return torch.cat(rows).view(batch, n, k)


@functools.cache
def semantic_neighbours(batch: int, n: int, k: int, device: torch.device) -> torch.Tensor:
    """(batch, n, k) neighbours as SemanIR builds them: knn_graph of random window features."""
    from common_kernels import knn_graph

    g = torch.Generator(device=device).manual_seed(1)
    feats = torch.randn(batch, n, 32, generator=g, device=device)
    return knn_graph(feats, k, similarity="cosine")


def attention_inputs(spec: dict, device: torch.device):
    """q, k, v, a prepared KNNDictionary (or raw idx), bias and the output-gradient weights."""
    from common_kernels import KNNDictionary

    g = torch.Generator(device=device).manual_seed(0)
    dtype = DTYPES[spec["dtype"]]
    batch, heads, n, d = spec["batch"], spec["heads"], spec["n"], spec["d"]
    grad = spec["mode"] == "fwd+bwd"
    make_idx = semantic_neighbours if spec["grid"] == "windowed" else distinct_neighbours
    idx = make_idx(batch, n, spec["k"], device)

    def leaf(*shape):
        t = torch.randn(*shape, generator=g, device=device)
        return t.to(dtype).requires_grad_(grad)

    q, k, v = (leaf(batch, heads, n, d) for _ in range(3))
    bias = leaf(heads, n, n) if spec["bias"] else None
    index = KNNDictionary.from_unique(idx) if spec["index"] == "dictionary" else idx
    return q, k, v, index, bias


def attention_step(spec: dict, device: torch.device) -> Callable[[], None]:
    """Build inputs for one attention configuration; return a closure running one step."""
    import torch.nn.functional as F

    from common_kernels import knn_attention

    q, k, v, index, bias = attention_inputs(spec, device)
    if spec["backend"] == "dense":  # dense attention over all N tokens (+ bias): the baseline

        def forward():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    else:

        def forward():
            return knn_attention(q, k, v, index, bias=bias, backend=spec["backend"])

    if spec["mode"] == "fwd":
        return forward
    leaves = [t for t in (q, k, v, bias) if t is not None]

    def step():
        forward().sum().backward()
        for t in leaves:
            t.grad = None

    return step


def knn_graph_step(spec: dict, device: torch.device) -> Callable[[], torch.Tensor]:
    from common_kernels import knn_graph

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(spec["batch"], spec["n"], spec["channels"], generator=g, device=device)
    return lambda: knn_graph(x, spec["k"], backend=spec["backend"])


def build_step(spec: dict, device: torch.device) -> Callable:
    builders = {"attention": attention_step, "knn_graph": knn_graph_step}
    return builders[spec["op"]](spec, device)


def measure_cpu(spec: dict) -> dict:
    """Median/min/max wall time over repeats and peak-RSS growth, in this process."""
    torch.set_num_threads(spec["threads"])
    step = build_step(spec, torch.device("cpu"))
    before = peak_rss_mib()
    with torch.inference_mode(spec.get("mode") != "fwd+bwd"):
        step()  # warm-up (derives the dictionary's caches); also the peak-memory run
        peak = peak_rss_mib() - before
        times = []
        deadline = time.perf_counter() + spec["budget_s"]
        while len(times) < spec["repeats"] and (len(times) < 2 or time.perf_counter() < deadline):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return {
        **spec,
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "max_ms": 1e3 * max(times),
        "runs": len(times),
        "peak_mib": peak,
    }


def measure_cuda(spec: dict) -> dict:
    """Median time of ``triton.testing.do_bench`` and peak allocated memory, in this process."""
    from triton.testing import do_bench

    device = torch.device("cuda")
    torch.cuda.empty_cache()
    try:
        step = build_step(spec, device)
        with torch.inference_mode(spec.get("mode") != "fwd+bwd"):
            step()  # warm-up: compiles kernels, derives the dictionary's caches
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            quantiles = do_bench(step, warmup=25, rep=100, quantiles=[0.5, 0.0, 1.0])
            graph = (
                {"graph_error": "not captured: raw idx is checked with a host sync per call"}
                if spec.get("index") == "tensor"
                else graph_time(step)
            )
    except torch.OutOfMemoryError as error:
        return {**spec, "error": f"OutOfMemoryError: {str(error).splitlines()[0]}"}
    except Exception as error:  # recorded as a failed configuration, like on the CPU
        return {**spec, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    finally:
        step = None
        torch.cuda.empty_cache()
    median, low, high = quantiles
    return {
        **spec,
        "median_ms": median,
        "min_ms": low,
        "max_ms": high,
        "runs": None,
        "peak_mib": peak,
        **graph,
    }


def graph_time(step: Callable[[], None]) -> dict:
    """``{"graph_ms": median}`` of the step replayed as a CUDA graph, or the reason it could
    not be captured as ``{"graph_error": ...}``."""
    from triton.testing import do_bench_cudagraph

    try:
        return {"graph_ms": do_bench_cudagraph(step, rep=100, return_mode="median")}
    except Exception as error:  # e.g. a host synchronisation inside the capture
        torch.cuda.synchronize()
        return {"graph_error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}


if __name__ == "__main__":
    print(json.dumps(measure_cpu(json.loads(sys.argv[1]))))
