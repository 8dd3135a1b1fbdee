"""Peak memory and time of ``restore`` against megapixels: the whole image, and ``tile="auto"``
under a memory budget, each beside the estimate that ``tile="auto"`` plans with.

    python packages/semanir/benchmarks/memory.py [--sizes 512 1024 2048] [--budget-gib 1]
        [--threads 1] [--out DIR]

The bundled gray denoiser restores a random (1, 1, S, S) image with ``tile=None`` (the whole
image at once) and with ``tile="auto"`` and ``memory_budget`` set to the budget (whole when the
estimate fits in 80% of it, else the largest tiles that do). Each configuration runs in a fresh
process (``--worker``): peak memory is the growth of the process's peak RSS over its value after
the model and the image were built; time is one call, after a warm-up on a 64 px image. Writes
``<out>/memory.json`` and ``memory.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from common_kernels.runtime.cli import check_benchmark_setup
from common_kernels.runtime.files import write_text
from semanir.inference import load_model, plan_tile, restore
from semanir.memory import estimate_peak_bytes

HERE = Path(__file__).resolve().parent


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(size: int, budget: int | None, threads: int) -> dict:
    """One restore in this process: tile, time, peak RSS growth, and the estimate."""
    torch.set_num_threads(threads)
    model = load_model()
    image = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    restore(model, torch.rand(1, 1, 64, 64), tile=None)  # warm-up, small
    tile = None if budget is None else plan_tile(model, tuple(image.shape), memory_budget=budget)
    before = peak_rss_mib()
    start = time.perf_counter()
    restore(model, image, tile=tile)
    seconds = time.perf_counter() - start
    config = model.config.to_dict()
    side = size if tile is None else tile
    return {
        "size": size,
        "megapixels": size * size / 1e6,
        "budget_mib": None if budget is None else budget / 2**20,
        "tile": tile,
        "seconds": seconds,
        "peak_growth_mib": peak_rss_mib() - before,
        "estimate_mib": estimate_peak_bytes(config, side, side) / 2**20,
    }


def run_worker(size: int, budget: int | None, threads: int) -> dict:
    spec = json.dumps({"size": size, "budget": budget, "threads": threads})
    result = subprocess.run(
        [sys.executable, __file__, "--worker", spec], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        budget_mib = None if budget is None else budget / 2**20
        return {"size": size, "budget_mib": budget_mib, "error": result.stderr.strip()[-300:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], threads: int) -> str:
    lines = [
        f"restore of the bundled gray denoiser, {threads} thread(s), peak RSS growth in a fresh "
        "process; estimate: what tile='auto' plans with (semanir.memory, margin included)",
        "",
        "| size | MP | mode | tile | time s | peak MiB | estimate MiB |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | | failed | | | | |")
            continue
        mode = "whole" if r["budget_mib"] is None else f"auto, {r['budget_mib'] / 1024:g} GiB"
        tile = "-" if r["tile"] is None else str(r["tile"])
        lines.append(
            f"| {r['size']} | {r['megapixels']:.2f} | {mode} | {tile} | {r['seconds']:.1f} "
            f"| {r['peak_growth_mib']:.0f} | {r['estimate_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--budget-gib", type=float, default=1.0, help="tile='auto' budget")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(measure(spec["size"], spec["budget"], spec["threads"])))
        return 0
    check_benchmark_setup("memory.py", "semanir", folders={"--out": args.out})
    budget = int(args.budget_gib * 2**30)
    rows = []
    for size in args.sizes:
        for mode_budget in (None, budget):
            rows.append(run_worker(size, mode_budget, args.threads))
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "memory.json", json.dumps({"threads": args.threads, "rows": rows}))
    text = markdown(rows, args.threads)
    write_text(args.out / "memory.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
