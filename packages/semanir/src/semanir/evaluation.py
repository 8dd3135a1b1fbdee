"""Score a model on clean images degraded on the fly: PSNR/SSIM per image, input and output.

``semanir eval`` is :func:`plan_evaluation` (every check, before a model loads),
:func:`evaluate_images` and printing. Conventions as in restoration papers
(``semanir.metrics``), as each task's record says (:mod:`semanir.tasks`): 8-bit rounding, the
BT.601 Y channel for colour JPEG and SR, a border of ``scale`` pixels cropped for SR; the SR
input row is the bicubic upscaling of the low-resolution image.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from common_kernels.runtime.batch import check_not_inputs, find_images
from common_kernels.runtime.errors import InvalidArgument, InvalidValue, literal
from common_kernels.runtime.files import atomic_write
from common_kernels.runtime.progress import progress as progress_of
from semanir.batch import tile_for_compile
from semanir.data.datasets import SyntheticDegradationDataset
from semanir.data.degradations import bicubic_resize, check_scale
from semanir.inference import (
    ModelChoice,
    check_inference_options,
    check_model_for_task,
    read_model_config,
    restore_image,
)
from semanir.io import check_writable, image_size, is_gray_file
from semanir.memory import available_bytes, check_restore_memory
from semanir.metrics import psnr, ssim
from semanir.tasks import COMMAND_LINE_TASKS, Task, get_task

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
    record = get_task(task, among=COMMAND_LINE_TASKS)
    for name, given in (("sigma", sigma), ("quality", quality), ("scale", scale)):
        user = next(other for other in COMMAND_LINE_TASKS if _takes(get_task(other), name))
        if given is not None and user != task:
            raise InvalidArgument(name, f"applies to {{task={user!r}}} only, not {task!r}")
    if record.level is not None:
        value = {"sigma": sigma, "quality": quality}[record.level.name]
        if value is None:
            level = record.level.name
            message = f"{{task={task!r}}} needs {{{level}}}, {literal(record.level.meaning)}"
            raise InvalidValue(level, message)
        return {record.level.name: record.level.check(value)}
    return {"scale": check_scale(scale)} if record.upscales and scale is not None else {}


def _takes(task: Task, option: str) -> bool:
    """Whether ``task`` takes the degradation option ``option`` (sigma, quality or scale)."""
    if option == "scale":
        return task.upscales
    return task.level is not None and task.level.name == option


@dataclass
class EvaluationPlan:
    """A checked evaluation (:func:`plan_evaluation`).

    Args:
        paths: the clean images.
        colour: how many of them are colour images.
        degradation: :func:`degradation_options` of the task.
        models: loads the model once, on first use.
        model: the model's name, folder or hub id (the bundled one of the task when none was
            given: the colour model when any image is colour).
        options: the :func:`~semanir.inference.restore_image` options every image gets.
    """

    paths: list[Path]
    colour: int
    degradation: dict[str, float | int]
    models: ModelChoice
    model: str | Path
    options: dict[str, Any] = field(default_factory=dict)

    def restorer(self, model: nn.Module) -> Restorer:
        """Restores one degraded image with ``model`` and the plan's options."""
        return lambda image: restore_image(model, image, **self.options)


def plan_evaluation(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    task: str,
    *,
    sigma: float | None = None,
    quality: int | None = None,
    scale: int | None = None,
    model: str | Path | None = None,
    device: torch.device | str = "cpu",
    tile: int | Literal["auto"] | None = "auto",
    tile_overlap: int = 32,
    k: int | None = None,
    ensemble: bool = False,
    compile: bool = False,
    csv: str | os.PathLike | None = None,
    memory_budget: int | None = None,
    on_model: Callable[[str, str], None] | None = None,
) -> EvaluationPlan:
    """Check an evaluation completely, before any model loads.

    Args:
        data: clean image files and folders.
        task, sigma, quality, scale: the degradation (:func:`degradation_options`).
        model: a bundled name, a folder or a hub id; None: the bundled model of ``task`` (the
            colour one when any image is colour).
        device: where the model will run.
        tile, tile_overlap, k, ensemble: as in :func:`semanir.restore`.
        compile: run the model through ``torch.compile``, in tiles of one size (``tile``, or
            :data:`~semanir.batch.COMPILE_TILE` for ``"auto"``/None).
        csv: a CSV file the rows will be written to (not one of the images, writable).
        memory_budget: bytes restoring an image may take (None: what ``device`` has
            available); each image's estimate (:func:`~semanir.memory.check_restore_memory`)
            must fit, before the model loads.
        on_model: told ``(name, "gray" | "rgb")`` when a bundled model is first loaded.

    Raises:
        InvalidArgument: a bad argument, named; ``ValueError`` for options a model refuses.
    """
    degradation = degradation_options(task, sigma=sigma, quality=quality, scale=scale)
    listing = find_images(data, argument="data")
    if csv:
        check_not_inputs([Path(csv)], listing, argument="csv", in_place_allowed=False)
        check_writable([Path(csv)])
    colour = sum(not is_gray_file(path) for path in listing.paths)
    models = ModelChoice(model, task, torch.device(device), announce=on_model)
    name = models.name_for(gray=not colour)
    config = read_model_config(name)
    check_model_for_task(config, task)
    check_inference_options(config, tile=tile, tile_overlap=tile_overlap, k=k)
    options = dict(tile=tile_for_compile(tile, compile), tile_overlap=tile_overlap, k=k,
                   ensemble=ensemble, compile=compile)  # fmt: skip
    device = torch.device(device)
    budget = available_bytes(device) if memory_budget is None else memory_budget
    scale = config.get("upscale", 1)
    for path in listing.paths:
        size = image_size(path)
        if size is not None:  # the model's input: the clean image downscaled for SR
            check_restore_memory(
                config, path.name, size[0] // scale, size[1] // scale, tile=options["tile"],
                tile_overlap=tile_overlap, budget=budget,
                dtype_bytes=2 if device.type == "cuda" else 4, images_argument="data",
            )  # fmt: skip
    return EvaluationPlan(listing.paths, colour, degradation, models, name, options)


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
    record = get_task(task, among=COMMAND_LINE_TASKS)
    options = dict(degradation)
    scale = int(getattr(model, "upscale", 1))
    if record.upscales:
        if options.get("scale", scale) != scale:
            given = options["scale"]
            message = f"{{scale={given!r}}} does not match the model's x{scale}"
            raise InvalidValue("scale", message)
        options["scale"] = check_scale(scale)
    channels = "gray" if model.in_channels == 1 else "rgb"
    dataset = SyntheticDegradationDataset(
        data, task, channels=channels, train=False, seed=seed, **options
    )
    metric_options = record.metric_options(model.in_channels, scale)
    rows = []
    images = progress_of(
        range(len(dataset)), desc="semanir eval", unit="images", disable=not progress
    )
    for index in images:
        sample = dataset[index]
        degraded, clean = sample["lq"], sample["gt"]
        baseline = bicubic_resize(degraded, dataset.scale) if record.upscales else degraded
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
