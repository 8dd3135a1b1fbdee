"""x4 (or x2/x3) super-resolution against bicubic upscaling on Set5 and Set14, per image.

    python packages/semanir/benchmarks/eval_sr.py [--model semanir_tiny_sr_x4] \
        [--sets set5 set14] [--data-root DIR] [--out DIR] [--name sr_x4]

The usual SR protocol: the HR image is cropped to a multiple of the scale and downscaled by
MATLAB-style antialiased bicubic; the baseline is bicubic upscaling of the same LR image;
PSNR/SSIM on the BT.601 Y channel (MATLAB ``rgb2ycbcr``) with a border of ``scale`` pixels
cropped, on 8-bit outputs (``semanir.evaluation.evaluate_images``, what ``semanir eval --task
sr`` prints). Writes ``<out>/<name>.json`` (per-image rows and means per set) and
``<name>.md`` (the summary table and the per-image table).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from common_kernels.runtime.cli import check_benchmark_setup
from common_kernels.runtime.files import write_text
from semanir.evaluation import evaluate_images
from semanir.inference import load_for_task, restore_image
from semanir.io import list_images

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from eval_set12 import default_data_root  # noqa: E402  ($SEMANIR_DATA or ../shared/data)

DEGRADATION = (
    "x{scale} bicubic downscaling (MATLAB-style, antialiased) of the HR image cropped to a "
    "multiple of {scale}; baseline: bicubic upscaling of the same LR image"
)
METRICS = "PSNR/SSIM on the BT.601 Y channel, {scale}-pixel border cropped, 8-bit outputs"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="semanir_tiny_sr_x4",
        help="a bundled SR model's name, a save_pretrained folder or a hub id "
        "(default: semanir_tiny_sr_x4)",
    )  # fmt: skip
    parser.add_argument(
        "--sets", nargs="+", default=["set5", "set14"],
        help="image folders under --data-root (default: set5 set14)",
    )  # fmt: skip
    parser.add_argument(
        "--data-root", type=Path, default=default_data_root(),
        help="holds the sets (default: $SEMANIR_DATA or ../shared/data)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--name", default=None, help="file stem (default: sr_x<scale>)")
    return parser.parse_args(argv)


def evaluate_sets(model: torch.nn.Module, folders: dict[str, Path]) -> dict[str, list[dict]]:
    """Per set: one row per image and a last ``mean`` row (see ``evaluate_images``)."""
    return {
        name: evaluate_images(
            model, [folder], "sr", restorer=lambda image: restore_image(model, image),
            progress=True,
        )
        for name, folder in folders.items()
    }  # fmt: skip


def report(result: dict[str, Any]) -> str:
    """The summary table (mean PSNR / SSIM and gain per set) and the per-image PSNR table."""
    model, sets = result["model"], result["sets"]
    lines = [
        f"### {model} vs bicubic, x{result['scale']}, Y channel (PSNR dB / SSIM), one run per set",
        "",
        f"Command: `{result['command']}`. {result['degradation']}; {result['metrics']}.",
        "",
        f"| set | bicubic | {model} | gain (dB) |",
        "|---|---:|---:|---:|",
    ]
    for name, rows in sets.items():
        mean = rows[-1]
        gain = mean["psnr_out"] - mean["psnr_in"]
        lines.append(
            f"| {name} ({len(rows) - 1} images) | {mean['psnr_in']:.2f} / {mean['ssim_in']:.4f} "
            f"| {mean['psnr_out']:.2f} / {mean['ssim_out']:.4f} | {gain:+.2f} |"
        )
    lines += ["", f"### per image (PSNR dB: bicubic -> {model})", "",
              "| set | image | bicubic | restored |", "|---|---|---:|---:|"]  # fmt: skip
    for name, rows in sets.items():
        lines += [
            f"| {name} | {r['image']} | {r['psnr_in']:.2f} | {r['psnr_out']:.2f} |" for r in rows
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_benchmark_setup("eval_sr", "semanir", folders={"--out": args.out})
    folders = {name: args.data_root / name for name in args.sets}
    for folder in folders.values():
        list_images([folder])  # a missing or empty folder fails before the model loads
    model = load_for_task(args.model, "sr", torch.device("cpu"))
    scale = int(model.upscale)
    result = {
        "model": Path(args.model).name if Path(args.model).is_dir() else args.model,
        "scale": scale,
        "degradation": DEGRADATION.format(scale=scale),
        "metrics": METRICS.format(scale=scale),
        "command": "python packages/semanir/benchmarks/eval_sr.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch_threads": torch.get_num_threads(),
        "sets": evaluate_sets(model, folders),
    }
    stem = args.name or f"sr_x{scale}"
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / f"{stem}.json", json.dumps(result, indent=1) + "\n")
    text = report(result)
    write_text(args.out / f"{stem}.md", text)
    print(text)
    print(f"results: {args.out / stem}.json, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
