"""Time one model configuration's forward pass in this (fresh) process; print one JSON line.

Peak memory is the growth of the process's peak RSS (``ru_maxrss``) over its value after the
model and the input were built, so each configuration needs its own process; run.py starts one
per configuration. The model is randomly initialised (seed ``spec["seed"]``): the forward time
does not depend on the weight values.

    python worker.py '{"config": "semanir_tiny_denoise_gray", "overrides": {},
        "dictionary": "stage", "k": 16, "size": 256, "threads": 2, "repeats": 5,
        "budget_s": 30.0, "seed": 0}'
"""

from __future__ import annotations

import dataclasses
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from semanir.models import count_parameters, dense_window_attention, get_config, model_from_config

MIN_RUNS = 3


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(spec: dict[str, Any]) -> tuple[nn.Module, Tensor]:
    """The eval-mode model and the (1, C, size, size) input of a spec.

    Args:
        spec: ``config`` (a registry name), ``overrides`` (config fields), ``dictionary``
            ("stage", "layer" or "dense": the config's dense window-attention twin), ``size``
            and ``seed``.
    """
    config = get_config(spec["config"], **spec["overrides"])
    if spec["dictionary"] == "dense":
        config = dense_window_attention(config)
    else:
        config = dataclasses.replace(config, dictionary=spec["dictionary"])
    torch.manual_seed(spec["seed"])
    model = model_from_config(config).eval()
    generator = torch.Generator().manual_seed(spec["seed"])
    size = spec["size"]
    image = torch.rand(1, config.in_channels, size, size, generator=generator)
    return model, image


def timed_runs(step: Callable[[], object], repeats: int, budget_s: float) -> list[float]:
    """Seconds per call of ``step``: ``repeats`` calls, fewer (at least 3) past the budget."""
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeats and (len(times) < MIN_RUNS or time.perf_counter() < deadline):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm up once (the peak-memory run), then time ``spec["repeats"]`` forwards.

    Args:
        spec: see :func:`build`, plus ``k`` (None for dense), ``threads``, ``repeats`` and
            ``budget_s`` (seconds after which repeats stop once 3 runs are done).

    Returns:
        ``spec`` plus window, params, median/min/max ms, runs, megapixels/s (median), the
        absolute peak RSS and its growth over the RSS after building, in MiB.
    """
    torch.set_num_threads(spec["threads"])
    model, image = build(spec)
    before = peak_rss_mib()
    with torch.inference_mode():
        model(image, k=spec["k"])  # warm-up; also the peak-memory run
        peak = peak_rss_mib()
        times = timed_runs(lambda: model(image, k=spec["k"]), spec["repeats"], spec["budget_s"])
    median = statistics.median(times)
    return {
        **spec,
        "window": model.config.window_size,
        "params": count_parameters(model),
        "median_ms": 1e3 * median,
        "min_ms": 1e3 * min(times),
        "max_ms": 1e3 * max(times),
        "runs": len(times),
        "mpix_per_s": spec["size"] ** 2 / 1e6 / median,
        "peak_rss_mib": peak,
        "peak_growth_mib": peak - before,
    }


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
