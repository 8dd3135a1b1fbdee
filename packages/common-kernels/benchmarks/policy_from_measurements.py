"""Derive the CUDA policy table from reference measurements taken on an H100 with 0.1 code.

Until ``benchmarks/run.py --device cuda --write-policy`` has run on a GPU, the shipped
``policies/cuda.json`` comes from the measurements file of the repository's shared folder
(``../shared/measurements/h100-2026-11-22.json``: knn_attention on an H100, torch 2.11,
common-kernels 0.1). How its columns map to 0.2 backends:

- ``knn_attention_grid`` (B=1, heads=4, d=32, fp16, no bias): ``triton``, ``gather`` and
  ``mask`` as measured. They include 0.1's per-call validation (about 0.4 ms of host
  synchronisation) and 0.1's per-call mask, so small problems look slower than 0.2 makes them.
- ``windowed_regime`` (bf16, many windows, position bias): ``triton`` as measured; ``mask`` is
  the ``sdpa_bool`` column (an additive mask built from idx, plus the bias, into plain SDPA:
  what 0.2's ``mask`` backend computes, except that 0.2 builds the neighbour mask once per
  dictionary instead of per call, so the column is an upper bound).
- ``flex`` is left out: the file timed FlexAttention uncompiled with ``create_block_mask`` on
  every call, which says nothing about 0.2's compiled flex with a cached BlockMask.

    python benchmarks/policy_from_measurements.py ../shared/measurements/h100-2026-11-22.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from run import POLICY_DIR

from common_kernels.files import write_text

GRID_BACKENDS = {"triton": "triton", "gather": "gather", "mask": "mask"}
WINDOWED_BACKENDS = {"triton": "triton", "sdpa_bool": "mask"}


def grid_points(rows: list[dict]) -> list[dict]:
    """One policy point per row of ``knn_attention_grid`` (cells are [ms, MiB])."""
    points = []
    for row in rows:
        timed = {ours: row[theirs][0] for theirs, ours in GRID_BACKENDS.items() if theirs in row}
        points.append(
            {
                "n": row["N"], "k": row["K"], "batch_heads": row["H"], "mode": row["mode"],
                "bias": False, "dtype": row["dtype"], "grid": "grid", "ms": timed,
            }
        )  # fmt: skip
    return points


def windowed_points(rows: list[dict]) -> list[dict]:
    """One policy point per row of ``windowed_regime`` (cells are ms)."""
    points = []
    for row in rows:
        timed = {ours: row[theirs] for theirs, ours in WINDOWED_BACKENDS.items() if theirs in row}
        points.append(
            {
                "n": row["N"], "k": row["K"], "batch_heads": row["windows"] * row["heads"],
                "mode": row["mode"], "bias": True, "dtype": "bfloat16", "grid": "windowed",
                "ms": timed,
            }
        )  # fmt: skip
    return points


def derive(measurements: dict, path: Path) -> dict:
    return {
        "device": "cuda",
        "source": (
            f"derived by benchmarks/policy_from_measurements.py from {path.name} "
            f"({measurements['what']}); not yet measured with benchmarks/run.py --device cuda"
        ),
        "environment": {"device": "cuda", "cuda": "NVIDIA H100 80GB", "torch": "2.11.0+cu130"},
        "points": grid_points(measurements["knn_attention_grid"]["rows"])
        + windowed_points(measurements["windowed_regime"]["rows"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measurements", type=Path, help="the h100-*.json measurements file")
    args = parser.parse_args(argv)
    table = derive(json.loads(args.measurements.read_text()), args.measurements)
    POLICY_DIR.mkdir(parents=True, exist_ok=True)
    write_text(POLICY_DIR / "cuda.json", json.dumps(table, indent=1) + "\n")
    print(f"{len(table['points'])} points written to {POLICY_DIR / 'cuda.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
