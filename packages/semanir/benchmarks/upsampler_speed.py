"""The pixel-shuffle upsampler alone: this code's module beside a baseline revision's, both
timed in the same rounds of one process.

    python packages/semanir/benchmarks/upsampler_speed.py [--baseline REV] [--scale 4]
        [--width 48] [--batch 8] [--size 32] [--image 128] [--rounds 9] [--repeat 10]
        [--threads 2] [--out DIR]

Two cases on channels-last features (the model's body gives them so on the CPU), with the
same random weights in both modules:

- train: forward and backward of a (batch, width, size, size) batch, the weights' composition
  included (it is redone at every step, as the weights change); the defaults are x4 SR's
  training batch (8 x 32 px low-resolution patches, width 48).
- infer: the forward of one (1, width, image, image) feature map under ``no_grad``, the
  composition kept from a warm-up call (as ``restore`` runs it).

Each round times ``--repeat`` calls of each code and case in turn; the table gives the median
(min-max) of the rounds' mean times, the FLOPs of one call (``torch.utils.flop_counter``),
GFLOP/s, and the time over the baseline's. Whole-model runs (``cpu_speed.py``) spread by
10-20% between rounds on two shared cores; a module alone, both codes interleaved, resolves the
few percent that a change to it makes. The baseline's ``semanir/models/upsampler.py`` is read
with ``git show`` and loaded on its own (it imports torch only; 0.4.7 and later). Writes
``<out>/upsampler_speed.{json,md,png}`` atomically.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parents[2]
MODULE_PATH = "packages/semanir/src/semanir/models/upsampler.py"


def baseline_module(ref: str, folder: Path) -> tuple[str, ModuleType]:
    """The short commit of ``ref`` and its upsampler module, loaded from a copy in ``folder``.

    Raises:
        SystemExit: the revision is unknown or has no upsampler module.
    """
    found = subprocess.run(
        ["git", "-C", str(REPOSITORY), "rev-parse", "--short", f"{ref}^{{commit}}"],
        capture_output=True, text=True,
    )  # fmt: skip
    if found.returncode != 0:
        raise SystemExit(f"upsampler_speed.py: error: --baseline: unknown revision {ref!r}")
    commit = found.stdout.strip()
    source = subprocess.run(
        ["git", "-C", str(REPOSITORY), "show", f"{commit}:{MODULE_PATH}"],
        capture_output=True, text=True,
    )  # fmt: skip
    if source.returncode != 0:
        raise SystemExit(
            f"upsampler_speed.py: error: --baseline: {ref!r} has no {MODULE_PATH} "
            "(the module exists from semanir 0.4.7 on)"
        )
    from common_kernels.runtime.files import write_text

    path = write_text(folder / f"upsampler_{commit}.py", source.stdout, make_parents=True)
    spec = importlib.util.spec_from_file_location(f"upsampler_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return commit, module


def cases(module: nn.Module, args: argparse.Namespace) -> dict[str, Callable[[], None]]:
    """The call of each case for one upsampler."""
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(args.batch, args.width, args.size, args.size, generator=generator)
    batch = batch.contiguous(memory_format=torch.channels_last).requires_grad_()
    image = torch.randn(1, args.width, args.image, args.image, generator=generator)
    image = image.contiguous(memory_format=torch.channels_last)

    def train() -> None:
        module.zero_grad(set_to_none=True)
        batch.grad = None
        module(batch).sum().backward()

    def infer() -> None:
        with torch.no_grad():
            module(image)

    return {"train": train, "infer": infer}


def measure(modules: dict[str, nn.Module], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Interleaved rounds over every (case, code); one row per pair."""
    calls = {code: cases(module, args) for code, module in modules.items()}
    rows, times = [], {}
    for code, by_case in calls.items():
        for case, call in by_case.items():
            call()  # warm-up: allocator, oneDNN primitives, the kept composition
            with FlopCounterMode(display=False) as counter:
                call()
            rows.append({"case": case, "code": code, "gflop": counter.get_total_flops() / 1e9})
            times[(case, code)] = []
    for _ in range(args.rounds):
        for code, by_case in calls.items():
            for case, call in by_case.items():
                start = time.perf_counter()
                for _ in range(args.repeat):
                    call()
                times[(case, code)].append((time.perf_counter() - start) / args.repeat)
    for row in rows:
        seconds = times[(row["case"], row["code"])]
        row.update(
            ms=statistics.median(seconds) * 1e3,
            ms_min=min(seconds) * 1e3,
            ms_max=max(seconds) * 1e3,
        )
        row["gflop_per_s"] = row["gflop"] / (row["ms"] / 1e3)
    baseline = {r["case"]: r["ms"] for r in rows if r["code"] != "current"}
    for row in rows:
        if row["code"] == "current" and row["case"] in baseline:
            row["x_baseline"] = row["ms"] / baseline[row["case"]]
    return rows


def table(report: dict[str, Any]) -> str:
    """The markdown report: the setup, then one row per (case, code)."""
    setup = report["setup"]
    lines = [
        "### The pixel-shuffle upsampler alone (benchmarks/upsampler_speed.py)",
        "",
        f"torch {setup['torch']}, {setup['machine']}, {setup['threads']} threads; "
        f"x{setup['scale']}, width {setup['width']}; train: {setup['batch']} x "
        f"{setup['size']}x{setup['size']} (forward + backward, composition included); "
        f"infer: 1 x {setup['image']}x{setup['image']} (no_grad, composition kept); "
        f"{setup['rounds']} interleaved rounds of {setup['repeat']} calls, median (min-max).",
        "",
        "| case | code | ms median (min-max) | GFLOP | GFLOP/s | x baseline |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in report["rows"]:
        ratio = f"{row['x_baseline']:.3f}" if "x_baseline" in row else ""
        lines.append(
            f"| {row['case']} | {row['code']} | {row['ms']:.2f} ({row['ms_min']:.2f}-"
            f"{row['ms_max']:.2f}) | {row['gflop']:.3f} | {row['gflop_per_s']:.1f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Each case's median time per code with its min-max, saved atomically."""
    from common_kernels.runtime.bench import figure

    rows = report["rows"]
    with figure(path, figsize=(6, 3.5), savefig={"format": "png", "dpi": 100}) as (_, ax):
        labels = [f"{r['case']}\n{r['code']}" for r in rows]
        medians = [r["ms"] for r in rows]
        spread = [[r["ms"] - r["ms_min"] for r in rows], [r["ms_max"] - r["ms"] for r in rows]]
        ax.bar(labels, medians, yerr=spread, capsize=4, color="tab:blue")
        ax.set_ylabel("ms per call (median, min-max)")
        ax.set_title("pixel-shuffle upsampler alone")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="upsampler_speed.py", description=__doc__.split("\n")[0])

    def at_least(low: int) -> Callable[[str], int]:
        def parse(text: str) -> int:
            if not text.isdigit() or int(text) < low:
                raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
            return int(text)

        return parse

    parser.add_argument("--baseline", metavar="GIT_REF", help="also time this revision's module")
    parser.add_argument("--scale", type=int, choices=(2, 3, 4), default=4)
    parser.add_argument("--width", type=at_least(1), default=48, help="channels (default 48)")
    parser.add_argument("--batch", type=at_least(1), default=8, help="train batch (default 8)")
    parser.add_argument(
        "--size", type=at_least(6), default=32, help="train patch side, >= 6 (default 32)"
    )
    parser.add_argument(
        "--image", type=at_least(6), default=128, help="infer side, >= 6 (default 128)"
    )
    parser.add_argument("--rounds", type=at_least(1), default=9)
    parser.add_argument("--repeat", type=at_least(1), default=10, help="calls per timing")
    parser.add_argument("--threads", type=at_least(1), default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from common_kernels.runtime.cli import check_benchmark_setup, cpu_model

    check_benchmark_setup(
        "upsampler_speed.py", "semanir", modules=("matplotlib",), folders={"--out": args.out}
    )
    from semanir.models.upsampler import PixelShuffleUpsampler

    torch.set_num_threads(args.threads)
    classes = {"current": PixelShuffleUpsampler}
    if args.baseline:
        commit, module = baseline_module(args.baseline, args.out / "baseline-modules")
        classes[f"baseline {commit}"] = module.PixelShuffleUpsampler
    torch.manual_seed(0)
    modules = {code: cls(args.width, 3, args.scale, args.width) for code, cls in classes.items()}
    weights = modules["current"].state_dict()
    for module in modules.values():
        module.load_state_dict(weights)
    rows = measure(modules, args)
    report = {
        "setup": {
            "torch": torch.__version__,
            "machine": f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()})",
            **{k: getattr(args, k) for k in ("threads", "scale", "width", "batch", "size")},
            **{k: getattr(args, k) for k in ("image", "rounds", "repeat", "baseline")},
        },
        "rows": rows,
    }
    from common_kernels.runtime.files import write_text

    stem = args.out / "upsampler_speed"
    write_text(stem.with_suffix(".json"), json.dumps(report, indent=1) + "\n", make_parents=True)
    text = table(report)
    write_text(stem.with_suffix(".md"), text, make_parents=True)
    plot(report, stem.with_suffix(".png"))
    print(text)
    print(f"wrote {stem}.json, .md, .png")
    return report


if __name__ == "__main__":
    main()
