"""Plot a `semanir fit` run from its CSVLogger files: training loss and validation PSNR vs step.

A resumed run writes one ``lightning_logs/version_N/metrics.csv`` per session; pass all of them
(or the run folder) and they are joined by step, later sessions winning where steps overlap.

    python packages/semanir/benchmarks/plot_training.py \
        outputs/denoise_gray_tiny_bundled/lightning_logs --out training.png --json training.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from common_kernels.runtime.cli import check_benchmark_setup
from common_kernels.runtime.files import atomic_write

SMOOTHING = 20  # logged points in the running mean of the loss


def metrics_files(paths: list[Path]) -> list[Path]:
    """The metrics.csv files under ``paths`` (files as given, folders searched), oldest first."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(path.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path} is neither a metrics.csv file nor a folder")
    if not found:
        raise FileNotFoundError(f"no metrics.csv under {', '.join(map(str, paths))}")
    return found


def read_curves(files: list[Path]) -> dict[str, dict[int, float]]:
    """{"train/loss": {step: value}, "val/psnr": {step: value}} joined over ``files``."""
    curves: dict[str, dict[int, float]] = {"train/loss": {}, "val/psnr": {}}
    for path in files:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                for name, curve in curves.items():
                    if row.get(name):
                        curve[int(row["step"])] = float(row[name])
    return {name: dict(sorted(curve.items())) for name, curve in curves.items()}


def plot(curves: dict[str, dict[int, float]], path: Path, title: str, validation: str) -> None:
    from common_kernels.runtime.bench import figure

    with figure(path, 1, 2, figsize=(12, 4.5), savefig={"format": "png", "dpi": 110}) as (
        fig,
        axes,
    ):
        loss_ax, val_ax = axes
        loss = curves["train/loss"]
        steps, values = list(loss), list(loss.values())
        loss_ax.plot(steps, values, ".", markersize=2, alpha=0.4, label="logged steps")
        if len(values) >= SMOOTHING:
            mean = [
                sum(values[i - SMOOTHING : i]) / SMOOTHING
                for i in range(SMOOTHING, len(values) + 1)
            ]
            loss_ax.plot(steps[SMOOTHING - 1 :], mean, "-", label=f"mean of {SMOOTHING}")
            loss_ax.legend(fontsize=8)
        loss_ax.set(
            title="training L1 loss (blind: degradation drawn per patch)",
            xlabel="step",
            ylabel="L1",
        )
        val = curves["val/psnr"]
        val_ax.plot(list(val), list(val.values()), "o-")
        val_ax.set(title=f"validation PSNR ({validation})", xlabel="step", ylabel="dB")
        for ax in (loss_ax, val_ax):
            ax.grid(True, alpha=0.3)
        fig.suptitle(title)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", type=Path, nargs="+", help="metrics.csv files or run folders")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--json", type=Path, default=None, help="also write the curves as JSON")
    parser.add_argument("--title", default="semanir fit", help="figure title")
    parser.add_argument(
        "--validation", default="Set12 128 px crops, sigma 25", help="what val/psnr measures"
    )
    args = parser.parse_args(argv)
    files = {"--out": args.out, "--json": args.json}
    check_benchmark_setup("plot_training", "semanir", modules=("matplotlib",), files=files)
    try:
        curves = read_curves(metrics_files(args.logs))
    except FileNotFoundError as error:
        print(f"plot_training: error: {error}", file=sys.stderr)
        return 1
    plot(curves, args.out, args.title, args.validation)
    if args.json is not None:
        with atomic_write(args.json, make_parents=True) as temp_path:
            Path(temp_path).write_text(json.dumps(curves, indent=1) + "\n", encoding="utf-8")
    val = curves["val/psnr"]
    if val:
        last = max(val)
        print(f"{len(val)} validations; last at step {last}: {val[last]:.3f} dB")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
