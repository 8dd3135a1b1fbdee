"""Benchmark every knn_attention backend against dense attention, and knn_graph's backends.

Grids (``--grids``, all by default):

- ``grid``: one sequence (B=1) of N tokens, K random distinct neighbours per query, no bias.
- ``windowed``: SemanIR's regime: many windows of N tokens, neighbours from ``knn_graph`` of
  the window features, a (heads, N, N) position bias; the baseline is dense attention with the
  same bias (the dense-window twin).
- ``dispatch`` (CUDA): the cost of a call with a prepared ``KNNDictionary`` against a raw idx
  tensor (validated, with host synchronisation, on every call).
- ``graph``: ``knn_graph`` reference vs chunked.
- ``between`` (CPU): points the policy table does not hold (between its N, K and B x heads,
  crossovers included), never written into the table: how ``auto``'s prediction fares where
  nothing was measured (each row flags a pick over 1.5x the fastest).

Every attention point is measured forward and forward+backward, in fp32 on the CPU and in
fp16 and bf16 on CUDA, for every backend that runs there (``triton`` and ``tiles`` only on
CUDA: on the CPU they only interpret). Times are medians; each row also gives its ratio to the
fastest KNN backend at the point and checks that ``backend="auto"`` picks one within 10% of it.

On CUDA every configuration is timed two ways: per call (``triton.testing.do_bench``: an event
pair around each call, so the host's launch work shows whenever it exceeds the GPU's) and
replayed as a CUDA graph (``do_bench_cudagraph``: the kernels alone, no host work); the tables
give the per-call times and a second table the graph-replay times over dense attention's.

    python benchmarks/run.py --threads 1                 # CPU, about 40 minutes on 1 core
    python benchmarks/run.py --quick                     # a small grid for a smoke run
    python benchmarks/run.py --device cuda --write-policy  # GPU; writes the CUDA policy table
    python benchmarks/run.py --device cuda --quick         # GPU, under 5 minutes on an H100

``--write-policy`` writes ``src/common_kernels/policies/<device>.json`` (what ``auto`` reads)
from this run's fastest backends. On the CPU every configuration runs in a fresh subprocess
(peak RSS); on CUDA in this process (peak allocated memory). Finished configurations are
appended to ``<out>/<stem>.partial.jsonl``, and a rerun skips them, so an interrupted run
resumes where it stopped; ``--from-results`` re-renders tables, plot and policy from a saved
JSON without measuring.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from common_kernels.attention import CPP_MAX_BACKWARD_N
from common_kernels.runtime.cli import check_benchmark_setup, cpu_model
from common_kernels.runtime.files import write_text

HERE = Path(__file__).resolve().parent
POLICY_DIR = HERE.parent / "src" / "common_kernels" / "policies"
KNN_BACKENDS = ("reference", "mask", "gather", "triton", "flex", "tiles", "cpp")
INTERPRETED_ON_CPU = ("triton", "tiles")
CPU_ONLY = ("cpp",)
FORWARD_ONLY_ON_CPU = ("flex",)
BASELINE = "dense"
AUTO_TOLERANCE = 1.10
BETWEEN_TOLERANCE = 1.5  # auto's pick / the fastest where the table holds no point
GRIDS = ("grid", "windowed", "dispatch", "graph", "between")
POLICY_GRIDS = ("grid", "windowed")  # the grids a policy table is written from
MAX_DENSE_BYTES = {"cpu": 8 * 2**30, "cuda": 16 * 2**30}  # skip N x N backends beyond this
MAX_CPU_FLEX_BYTES = 2**29  # unfused FlexAttention on the CPU holds several N x N tensors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="small grids for a smoke run")
    parser.add_argument("--grids", default=",".join(GRIDS), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument(
        "--write-policy", action="store_true", help="write the device's policy table"
    )
    parser.add_argument(
        "--from-results", type=Path, help="re-render a saved results JSON without measuring"
    )
    args = parser.parse_args(argv)
    unknown = set(args.grids.split(",")) - set(GRIDS)
    if unknown:
        parser.error(f"--grids takes a subset of {', '.join(GRIDS)}, got {sorted(unknown)}")
    if args.device == "cuda" and not torch.cuda.is_available() and args.from_results is None:
        parser.error("--device cuda: no CUDA device is available here")
    return args


def environment(device: str, threads: int) -> dict:
    cpu = cpu_model()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device,
        "torch": torch.__version__,
        "triton": triton_version,
        "cpu": cpu,
        "cuda": torch.cuda.get_device_name() if device == "cuda" else None,
        "threads": threads if device == "cpu" else None,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }


def backends_for(device: str, mode: str) -> list[str]:
    """KNN backends measured on ``device``: nothing interpreted, the C++ kernel on the CPU only,
    FlexAttention there forward only."""
    if device == "cuda":
        return [b for b in KNN_BACKENDS if b not in CPU_ONLY]
    return [
        b
        for b in KNN_BACKENDS
        if b not in INTERPRETED_ON_CPU and (b not in FORWARD_ONLY_ON_CPU or mode == "fwd")
    ]


def _attention_specs(
    device: str, grid: str, points, dtypes, threads, quick, bias: bool | None = None
) -> list[dict]:
    bias = grid == "windowed" if bias is None else bias
    specs = []
    for mode in ("fwd", "fwd+bwd"):
        for dtype in dtypes:
            for batch, heads, n, d, k in points:
                for backend in (*backends_for(device, mode), BASELINE):
                    specs.append(
                        {
                            "op": "attention", "grid": grid, "backend": backend, "mode": mode,
                            "dtype": dtype, "batch": batch, "heads": heads, "n": n, "d": d,
                            "k": k, "bias": bias, "index": "dictionary",
                            "device": device, "threads": threads,
                            "repeats": 3 if quick else (15 if n <= 1024 else 5),
                            "budget_s": 20.0,
                        }
                    )  # fmt: skip
    return specs


def grid_specs(device: str, quick: bool, threads: int) -> list[dict]:
    """B=1 sequences, N x K, no bias."""
    if device == "cuda":
        ns, ks, heads, dtypes = (
            (1024, 4096, 16384, 65536),
            (16, 64, 256),
            4,
            ("float16", "bfloat16"),
        )
        if quick:
            ns, ks, dtypes = (4096,), (16, 64), ("float16",)
    else:
        ns, ks, heads, dtypes = (256, 1024, 4096, 16384), (16, 64, 256), 2, ("float32",)
        if quick:
            ns, ks = (256, 1024), (16, 64)
    points = [(1, heads, n, 32, k) for n in ns for k in ks if k <= n]
    return _attention_specs(device, "grid", points, dtypes, threads, quick)


def windowed_specs(device: str, quick: bool, threads: int) -> list[dict]:
    """Many windows with a position bias: (windows, heads, N, d, K) of SemanIR's models."""
    tiny = [(1152, 2, 64, 16, 16), (1152, 2, 64, 16, 32)]  # tiny denoiser, 8 x 96^2 batch
    if device == "cuda":
        points = [
            (4096, 2, 64, 16, 16), (4096, 2, 64, 16, 32),  # tiny denoiser, 4 x 256^2
            (256, 3, 256, 32, 64), (256, 3, 256, 32, 128),  # base U-net, window 16
            (64, 6, 1024, 32, 256), (64, 6, 1024, 32, 512),  # small SR, window 32
        ]  # fmt: skip
        dtypes = ("bfloat16", "float16")
        if quick:  # one point per SemanIR model size
            points, dtypes = points[::2], ("bfloat16",)
    else:
        points = [*tiny, (64, 3, 256, 32, 64), (64, 3, 256, 32, 128), (16, 6, 1024, 32, 256)]
        dtypes = ("float32",)
        if quick:
            points = [tiny[0], (64, 3, 256, 32, 64)]
    return _attention_specs(device, "windowed", points, dtypes, threads, quick)


# Between the CPU table's points (B, heads, N, d, K): N=2048 and B x heads = 256 are not in it,
# and the training crossover at N=2048, K=16 (mask at N=1024, gather at N=4096) is where 0.2.2's
# nearest-point policy picked a backend 2.4x slower than the fastest.
BETWEEN_SEQUENCES = [(1, 2, 512, 32, 32), (1, 2, 2048, 32, 32), (1, 2, 512, 32, 128),
                     (1, 2, 2048, 32, 16)]  # fmt: skip
BETWEEN_WINDOWS = [(128, 2, 128, 32, 32)]  # with a position bias


def between_specs(device: str, quick: bool, threads: int) -> list[dict]:
    """Points between the CPU policy table's (CPU only: the CUDA table is a denser grid)."""
    if device != "cpu":
        return []
    sequences = BETWEEN_SEQUENCES[-1:] if quick else BETWEEN_SEQUENCES
    windows = [] if quick else BETWEEN_WINDOWS
    return _attention_specs(
        device, "between", sequences, ("float32",), threads, quick, bias=False
    ) + _attention_specs(device, "between", windows, ("float32",), threads, quick, bias=True)


def dispatch_specs(device: str, quick: bool, threads: int) -> list[dict]:
    """Triton with a prepared dictionary vs a raw idx tensor (CUDA only)."""
    if device != "cuda":
        return []
    points = [(1024, 16), (4096, 64)] if quick else [(1024, 16), (4096, 64), (16384, 64)]
    specs = []
    for mode in ("fwd", "fwd+bwd"):
        for n, k in points:
            for index in ("dictionary", "tensor"):
                specs.append(
                    {
                        "op": "attention", "grid": "dispatch", "backend": "triton", "mode": mode,
                        "dtype": "float16", "batch": 1, "heads": 4, "n": n, "d": 32, "k": k,
                        "bias": False, "index": index, "device": device, "threads": threads,
                        "repeats": 0, "budget_s": 0.0,
                    }
                )  # fmt: skip
    return specs


def graph_specs(device: str, quick: bool, threads: int) -> list[dict]:
    if device == "cuda":
        ns = (4096, 16384) if quick else (4096, 16384, 65536)
    else:
        ns = (256, 1024) if quick else (256, 1024, 4096, 16384)
    return [
        {
            "op": "knn_graph", "grid": "graph", "backend": backend, "n": n, "k": 32, "batch": 1,
            "channels": 32, "device": device, "threads": threads,
            "repeats": 3 if quick else 5, "budget_s": 20.0,
        }
        for n in ns
        for backend in ("reference", "chunked")
        if not (backend == "reference" and n * n * 4 > MAX_DENSE_BYTES[device])
    ]  # fmt: skip


def dense_bytes(spec: dict) -> int:
    """Bytes of one N x N tensor per (batch, head) of the configuration (mask or logits)."""
    size = torch.finfo(getattr(torch, spec["dtype"])).bits // 8
    return spec["batch"] * spec["heads"] * spec["n"] ** 2 * size


def too_big(spec: dict) -> bool:
    """Whether a backend that materialises N x N tensors would not fit at this point (on the
    CPU FlexAttention runs unfused and materialises them too)."""
    if spec["op"] != "attention":
        return False
    if spec["backend"] == "flex" and spec["device"] == "cpu":
        return dense_bytes(spec) > MAX_CPU_FLEX_BYTES
    return spec["backend"] in ("reference", "mask") and (
        dense_bytes(spec) > MAX_DENSE_BYTES[spec["device"]]
    )


def run_worker(spec: dict) -> dict:
    """Measure ``spec``; a failure (out of memory, a backend error) is recorded, not raised."""
    if too_big(spec):
        gib = dense_bytes(spec) / 2**30
        return {**spec, "error": f"skipped: one N x N tensor per head is {gib:.0f} GiB"}
    training = spec.get("mode") == "fwd+bwd"
    if spec.get("backend") == "cpp" and training and spec["n"] > CPP_MAX_BACKWARD_N:
        return {**spec, "error": f"skipped: the C++ backward takes N <= {CPP_MAX_BACKWARD_N}"}
    if spec["device"] == "cuda":
        import worker

        return worker.measure_cuda(spec)
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


def progress(items: list[dict], label: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=label, unit="config")


def _spec_key(spec: dict) -> str:
    keys = (
        "op", "grid", "backend", "mode", "dtype", "n", "k", "batch", "heads", "d", "bias",
        "index", "channels", "device", "threads",
    )  # fmt: skip
    return json.dumps([spec.get(key) for key in keys])


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


def _point_key(r: dict) -> tuple:
    return (
        r["grid"], r["mode"], r["dtype"], r["batch"], r["heads"], r["n"], r["d"], r["k"],
        r["bias"],
    )  # fmt: skip


def attention_points(results: list[dict]) -> dict[tuple, dict[str, dict]]:
    """Successful prepared-dictionary attention rows by point, then by backend."""
    points: dict[tuple, dict[str, dict]] = {}
    for r in results:
        if r["op"] == "attention" and r["index"] == "dictionary" and r["grid"] != "dispatch":
            points.setdefault(_point_key(r), {})[r["backend"]] = r
    return points


def policy_table(results: list[dict], env: dict, command: str) -> dict:
    """The policy table ``auto`` reads: per measured point, every KNN backend's median ms."""
    points = []
    for key, rows in attention_points(results).items():
        if key[0] not in POLICY_GRIDS:
            continue
        timed = {
            b: round(r["median_ms"], 4)
            for b, r in rows.items()
            if b != BASELINE and "error" not in r
        }
        if not timed:
            continue
        r = next(iter(rows.values()))
        points.append(
            {
                "n": r["n"], "k": r["k"], "batch_heads": r["batch"] * r["heads"],
                "mode": r["mode"], "bias": r["bias"], "dtype": r["dtype"], "grid": r["grid"],
                "ms": timed,
            }
        )  # fmt: skip
    return {"device": env["device"], "source": command, "environment": env, "points": points}


def tolerance_of(grid: str) -> float:
    """How far from the fastest ``auto``'s pick may be: 10% at the table's own points, 1.5x
    between them (a prediction cannot know a crossover that no point measured)."""
    return BETWEEN_TOLERANCE if grid == "between" else AUTO_TOLERANCE


def add_ratios(results: list[dict], table: dict | None) -> None:
    """Per point: each row's time over the fastest KNN backend, and what auto picks there."""
    from common_kernels import _policy

    for key, rows in attention_points(results).items():
        knn = {b: r for b, r in rows.items() if b != BASELINE and "error" not in r}
        if not knn:
            continue
        fastest = min(r["median_ms"] for r in knn.values())
        sample = next(iter(knn.values()))
        problem = _policy.Problem(
            n=sample["n"],
            k=sample["k"],
            batch_heads=sample["batch"] * sample["heads"],
            mode=sample["mode"],
            bias=sample["bias"],
            dtype=sample["dtype"],
        )
        pick = _policy.choose(table, problem, set(knn)) if table else None
        for r in rows.values():
            if "error" in r:
                continue
            r["vs_fastest"] = r["median_ms"] / fastest
            r["auto_pick"] = pick
            r["auto_ok"] = pick in knn and knn[pick]["median_ms"] <= tolerance_of(key[0]) * fastest


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return "skipped" if r["error"].startswith("skipped") else "failed"
    return f"{r['median_ms']:.3g} ms / {r['peak_mib']:.0f} MiB"


def attention_table(results: list[dict], grid: str) -> str:
    """One row per point of ``grid``: each backend's median time and peak memory, auto's pick."""
    points = {k: v for k, v in attention_points(results).items() if k[0] == grid}
    if not points:
        return ""
    backends = [b for b in (*KNN_BACKENDS, BASELINE) if any(b in p for p in points.values())]
    names = [
        "dense" + (" + bias" if grid == "windowed" else "") if b == BASELINE else b
        for b in backends
    ]
    lines = [
        f"| mode | dtype | B x heads | N | K | {' | '.join(names)} | fastest KNN "
        "| x dense | auto picks (x fastest) |",
        "|---|---|---:|---:|---:|" + "---:|" * len(backends) + "---|---:|---|",
    ]
    tolerance = tolerance_of(grid)
    for (_, mode, dtype, batch, heads, n, _, k, bias), rows in points.items():
        if bias and grid == "between":
            mode += " + bias"
        cells = [_cell(rows.get(b)) for b in backends]
        timed = {b: r for b, r in rows.items() if "error" not in r and b != BASELINE}
        fastest, auto, vs_dense = "-", "-", "-"
        if timed:
            fastest = min(timed, key=lambda b: timed[b]["median_ms"])
            dense = rows.get(BASELINE)
            if dense is not None and "error" not in dense:
                vs_dense = f"{timed[fastest]['median_ms'] / dense['median_ms']:.2f}"
            pick = timed[fastest].get("auto_pick")
            if pick is not None:
                ratio = timed[pick]["vs_fastest"] if pick in timed else float("nan")
                mark = "" if ratio <= tolerance else f" **over {tolerance:.2f}x**"
                auto = f"{pick} ({ratio:.2f}){mark}"
        lines.append(
            f"| {mode} | {dtype} | {batch} x {heads} | {n} | {k} | {' | '.join(cells)} "
            f"| {fastest} | {vs_dense} | {auto} |"
        )
    return "\n".join(lines)


def graph_table(results: list[dict], grid: str) -> str:
    """CUDA-graph replay time (kernels only) of every backend over dense attention's, per point."""
    points = {
        key: rows
        for key, rows in attention_points(results).items()
        if key[0] == grid and any("graph_ms" in r for r in rows.values())
    }
    if not points:
        return ""
    backends = [b for b in KNN_BACKENDS if any(b in rows for rows in points.values())]
    lines = [
        f"| mode | dtype | B x heads | N | K | dense ms | {' | '.join(backends)} |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * len(backends),
    ]
    for (_, mode, dtype, batch, heads, n, _, k, _), rows in points.items():
        dense = rows.get(BASELINE, {}).get("graph_ms")
        cells = []
        for b in backends:
            ms = rows.get(b, {}).get("graph_ms")
            cells.append("-" if ms is None or dense is None else f"{ms / dense:.2f}")
        dense_cell = "-" if dense is None else f"{dense:.4g}"
        lines.append(
            f"| {mode} | {dtype} | {batch} x {heads} | {n} | {k} | {dense_cell} "
            f"| {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def dispatch_table(results: list[dict]) -> str:
    rows = [r for r in results if r["op"] == "attention" and r["grid"] == "dispatch"]
    if not rows:
        return ""
    lines = [
        "| mode | N | K | prepared dictionary ms | raw idx ms | raw / prepared |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    pairs: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        pairs.setdefault((r["mode"], r["n"], r["k"]), {})[r["index"]] = r
    for (mode, n, k), by_index in pairs.items():
        prepared, raw = by_index.get("dictionary"), by_index.get("tensor")
        if prepared is None or raw is None or "error" in prepared or "error" in raw:
            lines.append(f"| {mode} | {n} | {k} | {_cell(prepared)} | {_cell(raw)} | - |")
            continue
        ratio = raw["median_ms"] / prepared["median_ms"]
        lines.append(
            f"| {mode} | {n} | {k} | {prepared['median_ms']:.4f} | {raw['median_ms']:.4f} "
            f"| {ratio:.1f} |"
        )
    return "\n".join(lines)


def knn_graph_table(results: list[dict]) -> str:
    rows = [r for r in results if r["op"] == "knn_graph"]
    if not rows:
        return ""
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


def report(results: list[dict], env: dict) -> str:
    where = env["cuda"] if env["device"] == "cuda" else f"{env['cpu']}, {env['threads']} threads"
    sections = [
        ("knn_attention, one sequence (B=1, d=32, no bias)", attention_table(results, "grid")),
        (
            "knn_attention, windowed (SemanIR: knn_graph neighbours, position bias)",
            attention_table(results, "windowed"),
        ),
        (
            "knn_attention, windowed, replayed as CUDA graphs (kernels only): time / dense + bias",
            graph_table(results, "windowed"),
        ),
        (
            "knn_attention, one sequence, replayed as CUDA graphs: time / dense",
            graph_table(results, "grid"),
        ),
        (
            "knn_attention between the policy table's points (not in the table; auto within "
            f"{BETWEEN_TOLERANCE}x of the fastest)",
            attention_table(results, "between"),
        ),
        ("Dispatch: prepared KNNDictionary vs raw idx (triton, fp16)", dispatch_table(results)),
        ("knn_graph (C=32, k=32)", knn_graph_table(results)),
    ]
    body = "\n\n".join(f"### {title}\n\n{table}" for title, table in sections if table)
    header = (
        f"Device: {where}; torch {env['torch']}, triton {env['triton']}. Cells: median time / "
        "peak memory growth (CPU: RSS, CUDA: allocated).\n\n"
    )
    return header + body + "\n"


def plot(results: list[dict], path: Path) -> None:
    """Time vs N on the one-sequence grid (K=64), windowed times over dense, knn_graph."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "error" not in r]
    fig, axes = plt.subplots(1, 4, figsize=(22, 5))
    grid = [r for r in ok if r["op"] == "attention" and r["grid"] == "grid"]
    dtype = grid[0]["dtype"] if grid else None
    for col, mode in enumerate(("fwd", "fwd+bwd")):
        ax = axes[col]
        rows = [r for r in grid if r["mode"] == mode and r["k"] == 64 and r["dtype"] == dtype]
        for backend in (*KNN_BACKENDS, BASELINE):
            line = sorted((r["n"], r["median_ms"]) for r in rows if r["backend"] == backend)
            if line:
                style = "k--" if backend == BASELINE else "o-"
                ax.plot(*zip(*line, strict=True), style, label=backend)
        ax.set_title(f"one sequence, K=64, {mode} ({dtype})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N tokens")
        ax.set_ylabel("median ms")
    windowed = attention_points(ok)
    labels, ratios = [], {b: [] for b in KNN_BACKENDS}
    for (grid_name, mode, dtype_, _, _, n, _, k, _), rows in windowed.items():
        if grid_name != "windowed" or BASELINE not in rows:
            continue
        labels.append(f"{mode} {dtype_.replace('float', 'fp')}\nN{n} K{k}")
        for b in KNN_BACKENDS:
            r = rows.get(b)
            ratios[b].append(r["median_ms"] / rows[BASELINE]["median_ms"] if r else float("nan"))
    width = 0.8 / len(KNN_BACKENDS)
    for i, b in enumerate(KNN_BACKENDS):
        xs = [x + i * width for x in range(len(labels))]
        axes[2].bar(xs, ratios[b], width, label=b)
    axes[2].axhline(1.0, color="k", linestyle="--", label="dense + bias")
    axes[2].set_xticks([x + 0.4 for x in range(len(labels))], labels, fontsize=6, rotation=60)
    axes[2].set_yscale("log")
    axes[2].set_title("windowed: time / dense attention with the same bias")
    graph = [r for r in ok if r["op"] == "knn_graph"]
    for backend in ("reference", "chunked"):
        line = sorted((r["n"], r["median_ms"]) for r in graph if r["backend"] == backend)
        if line:
            axes[3].plot(*zip(*line, strict=True), "o-", label=backend)
    axes[3].set_title("knn_graph (C=32, k=32)")
    axes[3].set_xscale("log", base=2)
    axes[3].set_yscale("log")
    axes[3].set_xlabel("N tokens")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    policy = POLICY_DIR if args.write_policy else None
    folders = {"--out": args.out, "--write-policy": policy}
    check_benchmark_setup("run.py", "common-kernels", modules=("matplotlib",), folders=folders)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = ("quick" if args.quick else "full") + ("-cuda" if args.device == "cuda" else "")
    if args.from_results is not None:
        saved = json.loads(args.from_results.read_text())
        env, results = saved["environment"], saved["results"]
        command = saved.get("command", "")
        stem = args.from_results.stem
    else:
        env = environment(args.device, args.threads)
        command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
        makers = {
            "grid": grid_specs,
            "windowed": windowed_specs,
            "dispatch": dispatch_specs,
            "graph": graph_specs,
            "between": between_specs,
        }
        specs = [
            spec
            for name in args.grids.split(",")
            for spec in makers[name](args.device, args.quick, args.threads)
        ]
        results = run_all(specs, args.out / f"{stem}.partial.jsonl")
    table = policy_table(results, env, command)
    if args.write_policy:
        POLICY_DIR.mkdir(parents=True, exist_ok=True)
        write_text(POLICY_DIR / f"{env['device']}.json", json.dumps(table, indent=1) + "\n")
        print(f"policy table written: {POLICY_DIR / (env['device'] + '.json')}")
    from common_kernels import _policy

    add_ratios(results, table if args.write_policy else _policy.load_table(env["device"]))
    saved = {"environment": env, "command": command, "quick": args.quick, "results": results}
    write_text(args.out / f"{stem}.json", json.dumps(saved, indent=1))
    text = report(results, env)
    write_text(args.out / f"{stem}.md", text)
    plot(results, args.out / f"{stem}.png")
    print(text)
    picked = [r for r in results if r.get("auto_pick") == r["backend"]]
    misses = [r for r in picked if not r["auto_ok"]]
    errors = [r for r in results if "error" in r and not r["error"].startswith("skipped")]
    print(
        f"auto within 10% of the fastest at every table point and {BETWEEN_TOLERANCE}x between "
        f"them: {not misses} ({len(picked)} points); failed configs: {len(errors)}"
    )
    print(f"results: {args.out / stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
