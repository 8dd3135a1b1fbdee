"""Measure one benchmark configuration in this (fresh) process and print one JSON line.

Peak memory is the growth of the process's peak RSS (ru_maxrss) over the RSS after the inputs
were built, so each configuration needs its own process; run.py starts one per configuration.

Usage: python worker.py '{"op": "attention", "backend": "gather", "n": 1024, "k": 64, ...}'
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time

import torch


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def attention_step(spec: dict):
    """Build inputs for one attention configuration; return a closure running one step."""
    from common_kernels.knn_attention import knn_attention

    g = torch.Generator().manual_seed(0)
    shape = (spec["batch"], spec["heads"], spec["n"], spec["d"])
    grad = spec["mode"] == "fwd+bwd"
    q, k, v = (torch.randn(shape, generator=g).requires_grad_(grad) for _ in range(3))
    idx = torch.randint(0, spec["n"], (spec["batch"], spec["n"], spec["k"]), generator=g)
    if spec["backend"] == "sdpa":  # dense attention over all N tokens: the baseline

        def forward():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    else:

        def forward():
            return knn_attention(q, k, v, idx, backend=spec["backend"])

    if not grad:
        return lambda: forward()

    def step():
        forward().sum().backward()
        for t in (q, k, v):
            t.grad = None

    return step


def knn_graph_step(spec: dict):
    from common_kernels.knn_graph import knn_graph

    g = torch.Generator().manual_seed(0)
    x = torch.randn(spec["batch"], spec["n"], spec["channels"], generator=g)
    return lambda: knn_graph(x, spec["k"], backend=spec["backend"])


def measure(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    step = {"attention": attention_step, "knn_graph": knn_graph_step}[spec["op"]](spec)
    before = peak_rss_mib()
    with torch.inference_mode(spec.get("mode") != "fwd+bwd"):
        step()  # warm-up; also the peak-memory run
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


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
