"""Table-driven choice of the ``knn_attention`` backend for ``backend="auto"``.

A policy table (``policies/<device type>.json``, written by ``benchmarks/run.py
--write-policy``) lists measured points: the problem (N, K, B * heads, fwd or fwd+bwd, with or
without bias, dtype) and the median time of every backend there. ``auto`` predicts each
runnable backend's time at the call from the measured points around it: the points at most
one unit farther than the nearest (distance in log2 N, log2 K and log2 B*heads, plus penalties
for a different mode, bias or dtype), each weighted by the inverse square of its distance,
their log-times averaged; it picks the fastest prediction among the backends measured at the
nearest point (a backend timed only farther away is not picked on that alone). At a measured
point (distance 0) the prediction is its time, so ``auto`` is the fastest measured backend
there; between points the neighbours on every side count, which finds a crossover between two
points that the nearest point alone misses (0.2.2 picked `mask` at N=2048, K=16 for training
on the CPU, 2x slower than `gather`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

MODES = ("fwd", "fwd+bwd")
MODE_PENALTY = 4.0  # a forward-only point says little about training, and vice versa
BIAS_PENALTY = 0.5
DTYPE_PENALTY = 0.25
BATCH_WEIGHT = 0.5  # B * heads matters less than N and K (more programs, same kernel)
# Points up to this much farther than the nearest one take part in a prediction (one doubling
# of N or K): the neighbours around the call, not the far side of the table.
NEIGHBOURHOOD = 1.0


@dataclass(frozen=True)
class Problem:
    """What the policy looks at: sizes, whether a backward will run, bias and dtype."""

    n: int
    k: int
    batch_heads: int
    mode: str
    bias: bool
    dtype: str

    def distance(self, point: dict[str, Any]) -> float:
        """How far a measured point is from this problem (0 when it is the same point)."""
        return (
            abs(math.log2(self.n) - math.log2(point["n"]))
            + abs(math.log2(self.k) - math.log2(point["k"]))
            + BATCH_WEIGHT * abs(math.log2(self.batch_heads) - math.log2(point["batch_heads"]))
            + MODE_PENALTY * (self.mode != point["mode"])
            + BIAS_PENALTY * (self.bias != point["bias"])
            + DTYPE_PENALTY * (self.dtype != point["dtype"])
        )


def _read_tables() -> dict[str, dict[str, Any]]:
    """Every shipped policy table by device type, read once at import: a lookup then reads no
    file (``torch.compile`` traces through it without a graph break)."""
    folder = resources.files("common_kernels") / "policies"
    return {
        entry.name.removesuffix(".json"): json.loads(entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    }


TABLES = _read_tables()


def load_table(device_type: str) -> dict[str, Any] | None:
    """The shipped policy table of ``device_type`` ("cpu", "cuda"), or None if there is none."""
    return TABLES.get(device_type)


def choose(table: dict[str, Any], problem: Problem, runnable: set[str]) -> str | None:
    """The runnable backend with the fastest predicted time at ``problem`` (see the module
    docstring); None when no point measured a runnable backend."""
    scored = []  # (distance, {backend: ms}) of every point that timed a runnable backend
    for point in table["points"]:
        timed = {b: ms for b, ms in point["ms"].items() if b in runnable and ms is not None}
        if timed:
            scored.append((problem.distance(point), timed))
    if not scored:
        return None
    nearest = min(distance for distance, _ in scored)
    if nearest == 0:  # a measured point: its own times
        timed = next(timed for distance, timed in scored if distance == 0)
        return min(timed, key=timed.__getitem__)
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for distance, timed in scored:
        if distance > nearest + NEIGHBOURHOOD:
            continue
        for backend, ms in timed.items():
            sums[backend] = sums.get(backend, 0.0) + math.log(ms) / distance**2
            weights[backend] = weights.get(backend, 0.0) + 1 / distance**2
    candidates = {b for distance, timed in scored if distance == nearest for b in timed}
    return min(candidates, key=lambda backend: (sums[backend] / weights[backend], backend))
