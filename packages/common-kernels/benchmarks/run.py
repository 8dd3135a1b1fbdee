"""Benchmark every knn_attention backend against dense SDPA, and knn_graph's two backends.

Each configuration runs in a fresh subprocess (worker.py) so its peak RSS is its own. Times are
medians over repeats after a warm-up; the tables also give each backend's ratio to the fastest
backend at the same point, and check that ``backend="auto"`` picks one within 10% of it.

    python benchmarks/run.py            # the full grid (about 15 minutes on 2 cores)
    python benchmarks/run.py --quick    # N in {256, 1024}, K in {16, 64}

Finished configurations are appended to ``<out>/<full|quick>.partial.jsonl`` as they complete,
and a rerun skips them, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ATTENTION_BACKENDS = ("reference", "mask", "gather", "triton")
AUTO_TOLERANCE = 1.10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid for a smoke run")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    return parser.parse_args()


def environment(threads: int) -> dict:
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "cpu": cpu,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "threads": threads,
        "python": platform.python_version(),
    }


def run_worker(spec: dict) -> dict:
    """Measure ``spec`` in a fresh process; a failure (e.g. out of memory) is recorded."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    proc = subprocess.run(
        [sys.executable, str(HERE / "worker.py"), json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        return {**spec, "error": f"exit {proc.returncode}: {last}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def attention_grid(quick: bool, threads: int) -> list[dict]:
    ns = (256, 1024) if quick else (256, 1024, 4096, 16384)
    ks = (16, 64) if quick else (16, 64, 256)
    on_gpu = torch.cuda.is_available()
    backends = [b for b in ATTENTION_BACKENDS if b != "triton" or on_gpu]
    specs = []
    for mode in ("fwd", "fwd+bwd"):
        for n in ns:
            for k in ks:
                for backend in (*backends, "sdpa"):
                    specs.append(
                        {
                            "op": "attention", "backend": backend, "mode": mode, "n": n, "k": k,
                            "batch": 1, "heads": 2, "d": 32, "threads": threads,
                            "repeats": _repeats(quick, n), "budget_s": 20.0,
                        }
                    )  # fmt: skip
    return specs


def _repeats(quick: bool, n: int) -> int:
    """Short configurations are noisier on a shared machine: repeat them more."""
    if quick:
        return 3
    return 15 if n <= 1024 else 5


def knn_graph_grid(quick: bool, threads: int) -> list[dict]:
    ns = (256, 1024) if quick else (256, 1024, 4096, 16384)
    return [
        {
            "op": "knn_graph", "backend": backend, "n": n, "k": 32, "batch": 1, "channels": 32,
            "threads": threads, "repeats": 3 if quick else 5, "budget_s": 20.0,
        }
        for n in ns
        for backend in ("reference", "chunked")
    ]  # fmt: skip


def progress(items: list[dict], label: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=label, unit="config")


def auto_pick(spec: dict) -> str:
    """What ``backend="auto"`` picks for this configuration, asked of the installed code."""
    from common_kernels import select_backend

    shape = (spec["batch"], spec["heads"], spec["n"], spec["d"])
    q = torch.empty(shape, requires_grad=spec["mode"] == "fwd+bwd")
    idx = torch.empty(spec["batch"], spec["n"], spec["k"], dtype=torch.long)
    return select_backend(q, q, q, idx)


def add_ratios(results: list[dict]) -> None:
    """Per point (mode, N, K): each backend's time over the fastest KNN backend; auto's check."""
    points: dict[tuple, list[dict]] = {}
    for r in results:
        if r["op"] == "attention" and "error" not in r:
            points.setdefault((r["mode"], r["n"], r["k"]), []).append(r)
    for rows in points.values():
        pick = auto_pick(rows[0])
        knn = [r for r in rows if r["backend"] != "sdpa"]
        fastest = min(r["median_ms"] for r in knn)
        by_backend = {r["backend"]: r for r in knn}
        for r in rows:
            r["vs_fastest"] = r["median_ms"] / fastest
            r["auto_pick"] = pick
            picked = by_backend.get(pick)
            r["auto_ok"] = picked is not None and picked["median_ms"] <= AUTO_TOLERANCE * fastest


def attention_table(results: list[dict]) -> str:
    """One row per (mode, N, K): each backend's median ms and peak MiB, and auto's pick."""
    rows = [r for r in results if r["op"] == "attention"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    header = " | ".join("dense SDPA" if b == "sdpa" else b for b in backends)
    lines = [
        f"| mode | N | K | {header} | fastest KNN | auto picks (x fastest) |",
        "|---|---:|---:|" + "---:|" * len(backends) + "---|---|",
    ]
    points: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        points.setdefault((r["mode"], r["n"], r["k"]), {})[r["backend"]] = r
    for (mode, n, k), by_backend in points.items():
        cells = [_cell(by_backend.get(b)) for b in backends]
        timed = {b: r for b, r in by_backend.items() if "error" not in r and b != "sdpa"}
        fastest = min(timed, key=lambda b: timed[b]["median_ms"]) if timed else "-"
        auto = "-"
        if timed:
            pick = next(iter(timed.values()))["auto_pick"]
            ratio = timed[pick]["vs_fastest"] if pick in timed else float("nan")
            mark = "" if ratio <= AUTO_TOLERANCE else " **over 10%**"
            auto = f"{pick} ({ratio:.2f}){mark}"
        lines.append(f"| {mode} | {n} | {k} | {' | '.join(cells)} | {fastest} | {auto} |")
    return "\n".join(lines)


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return "failed"
    return f"{r['median_ms']:.1f} ms / {r['peak_mib']:.0f} MiB"


def knn_graph_table(results: list[dict]) -> str:
    rows = [r for r in results if r["op"] == "knn_graph"]
    lines = ["| N | backend | median ms (min-max) | peak MiB |", "|---:|---|---|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['backend']} | {r['error']} | |")
            continue
        lines.append(
            f"| {r['n']} | {r['backend']} | {r['median_ms']:.2f} "
            f"({r['min_ms']:.2f}-{r['max_ms']:.2f}) | {r['peak_mib']:.0f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    """Time and peak memory vs N (log-log), per backend, from the saved results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attention = [r for r in results if r["op"] == "attention" and "error" not in r]
    ks = sorted({r["k"] for r in attention})
    k_mid = ks[len(ks) // 2]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    for col, mode in enumerate(("fwd", "fwd+bwd")):
        for backend in sorted({r["backend"] for r in attention}):
            rows = [
                r
                for r in attention
                if r["mode"] == mode and r["backend"] == backend and r["k"] == k_mid
            ]
            ns = [r["n"] for r in rows]
            style = "k--" if backend == "sdpa" else "o-"
            label = "dense SDPA" if backend == "sdpa" else backend
            axes[0, col].plot(ns, [r["median_ms"] for r in rows], style, label=label)
            axes[1, col].plot(ns, [r["peak_mib"] for r in rows], style, label=label)
        axes[0, col].set_title(f"knn_attention {mode}, K={k_mid}: time")
        axes[1, col].set_title(f"knn_attention {mode}, K={k_mid}: peak memory")
        axes[0, col].set_ylabel("median ms")
        axes[1, col].set_ylabel("peak RSS growth, MiB")
    graph = [r for r in results if r["op"] == "knn_graph" and "error" not in r]
    for backend in ("reference", "chunked"):
        rows = [r for r in graph if r["backend"] == backend]
        axes[0, 2].plot([r["n"] for r in rows], [r["median_ms"] for r in rows], "o-", label=backend)
        axes[1, 2].plot([r["n"] for r in rows], [r["peak_mib"] for r in rows], "o-", label=backend)
    axes[0, 2].set_title("knn_graph (C=32, k=32): time")
    axes[1, 2].set_title("knn_graph (C=32, k=32): peak memory")
    for ax in axes.flat:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N tokens")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_all(specs: list[dict], journal: Path) -> list[dict]:
    """Measure every spec, reusing (and appending to) the journal of finished ones."""
    done = {}
    if journal.exists():
        for line in journal.read_text().splitlines():
            result = json.loads(line)
            done[_spec_key(result)] = result
    with journal.open("a") as f:
        for spec in progress(specs, "benchmark"):
            if _spec_key(spec) not in done:
                done[_spec_key(spec)] = run_worker(spec)
                f.write(json.dumps(done[_spec_key(spec)]) + "\n")
                f.flush()
    return [done[_spec_key(spec)] for spec in specs]


def _spec_key(spec: dict) -> str:
    keys = ("op", "backend", "mode", "n", "k", "batch", "heads", "d", "channels", "threads")
    return json.dumps([spec.get(key) for key in keys])


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "quick" if args.quick else "full"
    specs = attention_grid(args.quick, args.threads) + knn_graph_grid(args.quick, args.threads)
    results = run_all(specs, args.out / f"{stem}.partial.jsonl")
    add_ratios(results)
    report = {"environment": environment(args.threads), "quick": args.quick, "results": results}
    write_atomically(args.out / f"{stem}.json", json.dumps(report, indent=1))
    tables = (
        f"### knn_attention (B=1, heads=2, d=32, {args.threads} threads): median time / "
        "peak RSS growth\n\n"
        f"{attention_table(results)}\n\n### knn_graph\n\n{knn_graph_table(results)}\n"
    )
    write_atomically(args.out / f"{stem}.md", tables)
    plot(results, args.out / f"{stem}.png")
    print(json.dumps(report["environment"]))
    print(tables)
    misses = [r for r in results if r.get("backend") == r.get("auto_pick") and not r["auto_ok"]]
    errors = [r for r in results if "error" in r]
    print(
        f"auto within 10% of the fastest at every point: {not misses}; "
        f"failed configs: {len(errors)}"
    )
    print(f"results: {args.out / stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
