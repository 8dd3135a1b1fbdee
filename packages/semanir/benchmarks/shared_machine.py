# ruff: noqa: E501
"""SemanIR's lead over DnCNN on a shared machine: quiet, beside a busy process, two at once.

A user's machine is rarely idle: a second job, a server with two workers. This benchmark
restores a real gray image (Set12's 512x512 ``05.png`` bicubic-resized to each size) with the
public API, ``semanir.restore(model, x, tile=None)``, in a fresh process per measurement
(``torch.set_num_threads(--threads)``), with the bundled ``semanir_tiny_denoise_gray`` and with a
DnCNN of the published size (``semanir.build_model("dncnn_denoise_gray")``: 17 layers, 64
features, random weights: time does not depend on them), in three cases:

- **quiet**: nothing else runs;
- **loaded**: one busy single-threaded process beside it (``while True: pass``);
- **two processes**: two restores of the same model at once, each with ``--threads`` threads.

Each process warms up once, then times ``--calls`` calls; a run's time is the median of its
calls, the case's time the median of ``--runs`` runs (SemanIR and DnCNN interleaved, run by
run). Reported per size and case: seconds per megapixel, SemanIR's time over DnCNN's, and the
spread of the calls after the first (the slowest over their median) under each case.

``--policy command`` (default) runs every process with OpenMP's idle threads sleeping, as the
``semanir`` command runs (``OMP_WAIT_POLICY=PASSIVE``, :mod:`semanir.openmp`); ``--policy
default`` with GNU OpenMP's own (idle threads spin a while), as a Python program that sets
nothing runs. Nothing else of the command's setup is applied: the restores are the public API's.

    python packages/semanir/benchmarks/shared_machine.py [--sizes 384 1024] [--threads 2]
        [--runs 3] [--calls 4] [--policy command|default] [--quick] [--data DIR] [--out DIR]

Writes ``shared_machine_<policy>.{json,md,png}`` to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
MODELS = {"SemanIR": "semanir_tiny_denoise_gray", "DnCNN": "dncnn_denoise_gray"}
CASES = ("quiet", "loaded", "two processes")
IMAGE = "set12/05.png"  # 512x512 gray: resized to each size
TARGETS = {"quiet": 0.5, "loaded": 0.6, "two processes": None}  # SemanIR / DnCNN, at most
SPREAD_TARGET = 1.5  # loaded: the slowest call after the first over their median
POLICIES = {"command": {"OMP_WAIT_POLICY": "PASSIVE"}, "default": {}}


# -- the worker: one model, one size, in this process ------------------------------------------


def worker(model_name: str, size: int, calls: int, threads: int, data: Path) -> dict:
    """Warm-up, then ``calls`` timed restores; the times in seconds."""
    import numpy as np
    import torch
    from PIL import Image

    import semanir

    torch.set_num_threads(threads)
    with Image.open(data / IMAGE) as image:
        gray = image.convert("L").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)[None, None]  # (1, 1, S, S)
    if model_name.startswith("dncnn"):
        torch.manual_seed(0)
        model = semanir.build_model(model_name)
    else:
        model = semanir.load_model(model_name)
    semanir.restore(model, x, tile=None)  # warm-up: caches, the C++ kernels' first load
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        semanir.restore(model, x, tile=None)
        times.append(time.perf_counter() - start)
    return {"times": times}


# -- the driver --------------------------------------------------------------------------------


def spawn(model: str, size: int, args) -> subprocess.Popen:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", model, str(size),
               "--calls", str(args.calls), "--threads", str(args.threads), "--data", str(args.data)]  # fmt: skip
    # the environment the process starts with: OpenMP reads its wait policy when it loads
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[args.policy])
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def answer(process: subprocess.Popen) -> dict:
    out, err = process.communicate()
    if process.returncode != 0:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"a worker failed: {tail}")
    return json.loads(out.strip().splitlines()[-1])


def measure(case: str, model: str, size: int, args) -> list[list[float]]:
    """The call times of each process of one run of ``case``."""
    busy = None
    if case == "loaded":
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        count = 2 if case == "two processes" else 1
        processes = [spawn(model, size, args) for _ in range(count)]
        return [answer(p)["times"] for p in processes]
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def run(args) -> dict:
    rows = []
    for size in args.sizes:
        for case in CASES:
            runs = {name: [] for name in MODELS}
            for index in range(args.runs):
                for name, model in MODELS.items():  # interleaved, run by run
                    processes = measure(case, model, size, args)
                    runs[name].append(processes)
                    medians = [statistics.median(t) for t in processes]
                    print(f"shared_machine.py: {size} px, {case}, {name} run {index + 1}: "
                          f"{', '.join(f'{m:.3f}' for m in medians)} s", file=sys.stderr, flush=True)  # fmt: skip
            row = {"size": size, "case": case}
            for name in MODELS:
                medians = [statistics.median(t) for processes in runs[name] for t in processes]
                later = [t for processes in runs[name] for ts in processes for t in ts]
                row[name] = {
                    "s": statistics.median(medians),
                    "s_per_mp": statistics.median(medians) / (size * size / 1e6),
                    "min_s": min(medians), "max_s": max(medians),
                    "spread": max(later) / statistics.median(later),
                    "runs": runs[name],
                }  # fmt: skip
            row["ratio"] = row["SemanIR"]["s"] / row["DnCNN"]["s"]
            rows.append(row)
    return {"rows": rows}


def report(data: dict) -> str:
    """The Markdown table of a run (from its JSON)."""
    policy = (
        "OMP_WAIT_POLICY=PASSIVE, as the semanir command runs"
        if data["policy"] == "command"
        else "GNU OpenMP's default wait policy"
    )
    lines = [
        f"{data['cpu']}, {data['threads']} threads a process, torch {data['torch']}, {policy}; "
        f"{data['runs']} runs of {data['calls']} calls (median of medians).",
        "",
        "| size | case | SemanIR s/MP | DnCNN s/MP | SemanIR / DnCNN | target | SemanIR calls: slowest / median | DnCNN calls: slowest / median |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in data["rows"]:
        target = TARGETS[row["case"]]
        mark = (
            "-"
            if target is None
            else f"<= {target}" + (" ok" if row["ratio"] <= target else " MISSED")
        )
        lines.append(
            f"| {row['size']} | {row['case']} | {row['SemanIR']['s_per_mp']:.2f} | "
            f"{row['DnCNN']['s_per_mp']:.2f} | {row['ratio']:.2f} | {mark} | "
            f"{row['SemanIR']['spread']:.2f} | {row['DnCNN']['spread']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    """SemanIR / DnCNN per case and size (from the JSON), with the targets."""
    from common_kernels.runtime.bench import figure

    sizes = sorted({r["size"] for r in data["rows"]})
    with figure(path, figsize=(7, 3.4), savefig={"dpi": 100, "format": "png"}) as (_, ax):
        width = 0.8 / len(CASES)
        for k, case in enumerate(CASES):
            values = [
                next(r["ratio"] for r in data["rows"] if r["size"] == s and r["case"] == case)
                for s in sizes
            ]
            ax.bar([i + (k - 1) * width for i in range(len(sizes))], values, width, label=case)
        for case, target in TARGETS.items():
            if target is not None:
                ax.axhline(target, linestyle="--", linewidth=1, color="gray")
                ax.text(
                    len(sizes) - 0.5, target, f"target {case}", fontsize=7, va="bottom", ha="right"
                )
        ax.set_xticks(range(len(sizes)), [f"{s}x{s}" for s in sizes])
        ax.set_ylabel("SemanIR time / DnCNN time")
        ax.legend(fontsize=8)
        ax.set_title(
            f"semanir_tiny_denoise_gray vs DnCNN, shared 2-core CPU ({data['policy']} policy)"
        )


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="shared_machine.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[384, 1024],
        help="square sizes in px (default 384 1024)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads of each process (default 2)"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs of each case and model (default 3)"
    )
    parser.add_argument("--calls", type=int, default=4, help="timed calls of each run (default 4)")
    parser.add_argument(
        "--policy",
        choices=sorted(POLICIES),
        default="command",
        help="OpenMP's wait policy of the processes (default: command, as semanir runs)",
    )
    parser.add_argument("--quick", action="store_true", help="384 px only, 1 run of 3 calls")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SHARED_DATA", REPO_ROOT.parent / "shared" / "data")),
                        help="the shared data folder (default: $SHARED_DATA or ../shared/data)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(
            json.dumps(
                worker(args.worker[0], int(args.worker[1]), args.calls, args.threads, args.data)
            )
        )
        return 0
    from common_kernels.runtime.cli import check_benchmark_setup, cpu_model

    check_benchmark_setup(
        "shared_machine.py", "semanir", modules=("matplotlib",), folders={"--out": args.out}
    )
    if args.quick:
        args.sizes, args.runs, args.calls = [384], 1, 3
    for flag, value in (
        ("--threads", args.threads),
        ("--runs", args.runs),
        ("--calls", args.calls),
    ):
        if value < 1:
            print(f"shared_machine.py: error: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    if not (args.data / IMAGE).is_file():
        print(f"shared_machine.py: error: --data: no {IMAGE} under {args.data}", file=sys.stderr)
        return 2
    import torch

    from common_kernels.runtime.bench import write_drawn_report

    data = run(args)
    data.update(threads=args.threads, runs=args.runs, calls=args.calls, cpu=cpu_model(), policy=args.policy,
                torch=torch.__version__, python=platform.python_version(),
                command=" ".join(["python packages/semanir/benchmarks/shared_machine.py", *(argv if argv is not None else sys.argv[1:])]).strip())  # fmt: skip
    stem = args.out / f"shared_machine_{args.policy}"
    print(write_drawn_report(stem, data, report, plot, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
