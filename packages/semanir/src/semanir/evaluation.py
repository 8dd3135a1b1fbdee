"""Score a model on clean images degraded on the fly: PSNR/SSIM per image, input and output.

``semanir eval`` is this module plus printing. Conventions as in restoration papers
(``semanir.metrics``): 8-bit rounding, the BT.601 Y channel for colour JPEG and SR, a border of
``scale`` pixels cropped for SR; the SR input row is the bicubic upscaling of the
low-resolution image.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common_kernels.runtime.files import atomic_write
from common_kernels.runtime.progress import progress as progress_of
from semanir.data.datasets import SyntheticDegradationDataset
from semanir.data.degradations import bicubic_resize, check_quality, check_scale, check_sigma
from semanir.metrics import psnr, ssim

TASKS = ("denoise", "jpeg", "sr")
Restorer = Callable[[torch.Tensor], torch.Tensor]


def degradation_options(
    task: str, *, sigma: float | None = None, quality: int | None = None, scale: int | None = None
) -> dict[str, float | int]:
    """The degradation of ``task``, checked (before any model is loaded).

    Args:
        task: "denoise" (needs ``sigma``, 0-255), "jpeg" (needs ``quality``, 1-95) or "sr"
            (``scale`` 2, 3 or 4; None: the model's).

    Returns:
        The keyword arguments of :class:`SyntheticDegradationDataset` for the task (SR's
        ``scale`` only when given).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "denoise":
        if sigma is None:
            raise ValueError("--task denoise needs --sigma, the noise level (0-255)")
        return {"sigma": check_sigma(sigma)}
    if task == "jpeg":
        if quality is None:
            raise ValueError("--task jpeg needs --quality, the JPEG quality (1-95)")
        return {"quality": check_quality(quality)}
    return {} if scale is None else {"scale": check_scale(scale)}


def evaluate_images(
    model: nn.Module,
    data: Sequence[str | Path],
    task: str,
    *,
    restorer: Restorer,
    seed: int = 0,
    progress: bool = False,
    **degradation: float | int,
) -> list[dict[str, Any]]:
    """Degrade every clean image, restore it and score input and output.

    Args:
        model: the model (its channels and scale set the conventions).
        data: clean image files or folders.
        task: "denoise", "jpeg" or "sr".
        restorer: restores one (C, H, W) degraded image to a (C, H * s, W * s) one.
        seed: seed of the degradations (image i uses the generator of (seed, i)).
        progress: show a bar on a terminal, plain lines every 10 s in a log.
        **degradation: :func:`degradation_options` of the task.

    Returns:
        One row per image (``image``, ``psnr_in``, ``ssim_in``, ``psnr_out``, ``ssim_out``)
        and a last row ``mean``.
    """
    options = dict(degradation)
    if task == "sr":
        scale = int(model.upscale)
        if options.get("scale", scale) != scale:
            raise ValueError(f"--scale {options['scale']} does not match the model's x{scale}")
        options["scale"] = check_scale(scale)
    channels = "gray" if model.in_channels == 1 else "rgb"
    dataset = SyntheticDegradationDataset(
        data, task, channels=channels, train=False, seed=seed, **options
    )
    metric_options = {
        "y_channel": task in ("sr", "jpeg") and model.in_channels == 3,
        "crop_border": options.get("scale", 0),
    }
    rows = []
    images = progress_of(
        range(len(dataset)), desc="semanir eval", unit="images", disable=not progress
    )
    for index in images:
        sample = dataset[index]
        degraded, clean = sample["lq"], sample["gt"]
        baseline = bicubic_resize(degraded, dataset.scale) if task == "sr" else degraded
        output = restorer(degraded)
        rows.append(
            {
                "image": dataset.paths[index].name,
                "psnr_in": float(psnr(baseline, clean, **metric_options)),
                "ssim_in": float(ssim(baseline, clean, **metric_options)),
                "psnr_out": float(psnr(output, clean, **metric_options)),
                "ssim_out": float(ssim(output, clean, **metric_options)),
            }
        )
    return [*rows, mean_row(rows)]


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A row named 'mean' holding the column means of ``rows``."""
    columns = [key for key in rows[0] if key != "image"]
    return {"image": "mean", **{key: sum(r[key] for r in rows) / len(rows) for key in columns}}


def format_table(rows: list[dict[str, Any]], title: str) -> str:
    """Plain-text table: PSNR (dB, 2 decimals) and SSIM (4 decimals), input and restored."""
    header = f"{'image':<24} {'PSNR in':>8} {'SSIM in':>8} {'PSNR out':>9} {'SSIM out':>9}"
    lines = [title, header, "-" * len(header)]
    for row in rows:
        if row["image"] == "mean":
            lines.append("-" * len(header))
        lines.append(
            f"{row['image']:<24} {row['psnr_in']:>8.2f} {row['ssim_in']:>8.4f} "
            f"{row['psnr_out']:>9.2f} {row['ssim_out']:>9.4f}"
        )
    return "\n".join(lines)


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as CSV atomically (a temporary file renamed onto ``path``)."""
    with (
        atomic_write(path, make_parents=True) as temp_path,
        temp_path.open("w", newline="") as handle,
    ):
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
