"""Table-driven choice of the ``knn_attention`` backend for ``backend="auto"``.

A policy table (``policies/<device type>.json``, written by ``benchmarks/run.py
--write-policy``) lists measured points: the problem (N, K, B * heads, fwd or fwd+bwd, with or
without bias, dtype) and the median time of every backend there. ``auto`` finds the measured
point nearest to the call (distance in log2 N, log2 K and log2 B*heads, plus penalties for a
different mode, bias or dtype) and picks the fastest backend of that point that can run on the
inputs. At a measured point that is the fastest measured backend itself.
"""

from __future__ import annotations

import functools
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


@functools.cache
def load_table(device_type: str) -> dict[str, Any] | None:
    """The shipped policy table of ``device_type`` ("cpu", "cuda"), or None if there is none."""
    path = resources.files("common_kernels") / "policies" / f"{device_type}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def choose(table: dict[str, Any], problem: Problem, runnable: set[str]) -> str | None:
    """The fastest runnable backend of the measured point nearest to ``problem``.

    Points where none of the runnable backends was measured are skipped; None when no point
    has one.
    """
    best: tuple[float, int, str] | None = None
    for order, point in enumerate(table["points"]):
        timed = {b: ms for b, ms in point["ms"].items() if b in runnable and ms is not None}
        if not timed:
            continue
        candidate = (problem.distance(point), order, min(timed, key=timed.__getitem__))
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    return None if best is None else best[2]
