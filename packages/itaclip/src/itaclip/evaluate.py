"""mIoU evaluation: confusion matrices (torchmetrics), optionally summed over processes.

``check_evaluation`` checks a benchmark run before any model work (the processes, the limit, the
dataset folder); ``run_evaluation`` loads the segmenter of a checked ``LoadPlan`` in one or
several processes (torch.distributed, gloo on the CPU) and returns an ``EvalReport``.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from common_kernels.runtime.cli import WorkError, check_file_writable
from common_kernels.runtime.errors import InvalidValue, argument_errors, literal
from common_kernels.runtime.files import write_json
from common_kernels.runtime.progress import progress as show_progress
from itaclip.datasets import IGNORE_INDEX, SegmentationDataset, check_dataset
from itaclip.memory import check_parts, check_windows, image_parts
from itaclip.presets import dataset_classes
from itaclip.protect import check_not_replacing, model_files
from itaclip.segmenter import (
    CPU_BATCH,
    GPU_BATCH,
    LoadPlan,
    Segmenter,
    plan_vision,
    progress_hidden,
)
from itaclip.sources import ModelSource


class EvaluationError(WorkError, RuntimeError):
    """An evaluation process failed (its message is the process's last line); a ``WorkError``:
    the command line prints it and exits 1."""


def confusion_matrix(
    pred: Tensor, label: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """(num_classes, num_classes) int64 counts by torchmetrics, rows = ground truth, cols = pred.

    Pixels labelled ``ignore_index`` or with a label outside [0, num_classes) are left out.

    Args:
        pred: predicted class indices, any shape.
        label: ground-truth labels of the same shape.
        num_classes: classes of the benchmark.
        ignore_index: the label of unlabelled pixels.

    Raises:
        ValueError: a prediction outside [0, num_classes).
    """
    # imported here: torchmetrics loads all its metrics (~1 s), too slow for every CLI command
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(
            f"pred: class indices must lie in [0, {num_classes - 1}], got values in "
            f"[{int(pred.min())}, {int(pred.max())}]"
        )
    keep = (label != ignore_index) & (label >= 0) & (label < num_classes)
    return multiclass_confusion_matrix(pred[keep], label[keep], num_classes, validate_args=False)


@dataclass
class IoUResult:
    """Per-class IoU (NaN for classes absent from both prediction and ground truth) and mIoU."""

    iou: list[float]
    miou: float
    accuracy: float


def iou_from_confusion(conf: Tensor) -> IoUResult:
    """Per-class IoU, mIoU over the classes with a non-empty union (mmseg), pixel accuracy.

    The mIoU equals torchmetrics' ``MulticlassJaccardIndex(average="macro")`` on the same
    pixels. It is reduced here from the summed int64 matrix in float64 because the report needs
    NaN for absent classes (torchmetrics' per-class values give 0) and torchmetrics reduces
    float32 counts, exact only up to 2**24 pixels per cell (a benchmark has ~1e9 pixels).

    Args:
        conf: (K, K) counts, rows = ground truth, columns = prediction.
    """
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = tp / union  # NaN where union == 0
    accuracy = float(tp.sum() / conf.sum().clamp_min(1))
    return IoUResult(iou.tolist(), float(iou.nanmean()), accuracy)


def check_limit(limit: int | None) -> None:
    """``limit`` is ``None`` or an integer >= 1.

    Args:
        limit: samples to evaluate.

    Raises:
        InvalidArgument: (``limit``) another value.
    """
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        message = f"must be >= 1 (or left out for all images), got {limit!r}"
        raise InvalidValue("limit", "{limit} " + literal(message))


def check_processes(processes: int) -> None:
    """``processes`` is an integer >= 1.

    Args:
        processes: evaluation processes.

    Raises:
        InvalidArgument: (``processes``) another value.
    """
    if isinstance(processes, bool) or int(processes) != processes or processes < 1:
        raise InvalidValue(
            "processes", "{processes} " + literal(f"must be >= 1, got {processes!r}")
        )


def check_evaluation(
    dataset: str,
    root: str | os.PathLike,
    split: str | None = None,
    limit: int | None = None,
    processes: int = 1,
) -> SegmentationDataset:
    """Every argument of a benchmark run checked before any model work; returns the dataset.

    Args:
        dataset: one of ``itaclip.datasets.DATASETS``.
        root: its folder (``itaclip.datasets.check_dataset``).
        split: split name (default the validation split).
        limit: evaluate the first ``limit`` samples only (``None``: all).
        processes: evaluation processes.

    Raises:
        InvalidArgument: the first bad argument, named.
    """
    check_processes(processes)
    check_limit(limit)
    return check_dataset(dataset, root, split, limit)


def check_eval_memory(plan: LoadPlan, dataset: SegmentationDataset) -> None:
    """The windows (``check_windows``), the ViT pass and the window grid of the largest image
    that the resize makes (short side ``short_side``, long side ``max_long_side``) against the
    time bound and the memory available, before the model loads (``itaclip.memory``; a
    dataset's own images are checked as they come, by ``Segmenter.check_inputs``). Nothing is
    checked without a resize or with ``allow_large``; the memory not for a hub repository (its
    tower's shape comes with its weights).

    Args:
        plan: a checked ``check_from_pretrained``.
        dataset: from ``check_evaluation``.

    Raises:
        InvalidValue: naming ``short_side`` and ``stride`` or ``batch_size``, the estimate and
            the limit.
    """
    config = plan.config
    if config.allow_large or config.short_side is None:
        return
    resized = (config.short_side, config.max_long_side)
    image = f"an image resized to {resized[0]}x{resized[1]} px"
    check_windows(resized, config, image)
    vision = plan_vision(plan)
    if vision is None:
        return
    batch = config.batch_size or (GPU_BATCH if plan.device.type == "cuda" else CPU_BATCH)
    queries = sum(len(names) for names in dataset_classes(dataset.name).queries)
    parts = image_parts(resized, None, config, batch, vision, queries, dataset.num_classes, "")
    check_parts(parts, plan.device, image)


def check_report_file(
    report: str | os.PathLike,
    dataset: SegmentationDataset,
    source: ModelSource | None = None,
) -> Path:
    """Where the report goes (``itaclip eval --json``), checked before any model work: a file
    whose folder exists or can be created, and none of the files the evaluation reads (the
    dataset's split list, images and label maps; the model's files).

    Args:
        report: the JSON file.
        dataset: from ``check_evaluation``.
        source: the model (``LoadPlan.source``), whose local files are inputs too.

    Raises:
        InvalidArgument: (``report``) a folder, a folder that cannot be created or written,
            or ``PATH would replace the input PATH (an image of voc21); ...``.
    """
    report = Path(report)
    with argument_errors("report"):
        check_file_writable(report, "report")
    inputs = itertools.chain(dataset.input_files(), () if source is None else model_files(source))
    check_not_replacing([report], inputs, argument="report")
    return report


@dataclass(frozen=True)
class EvalReport:
    """The result of ``run_evaluation`` (``asdict`` is the JSON ``itaclip eval`` writes).

    Args:
        dataset: the benchmark.
        samples: images evaluated.
        processes: evaluation processes.
        miou: mean IoU over the classes with a non-empty union.
        accuracy: pixel accuracy.
        iou: per-class IoU (NaN for classes absent from labels and predictions).
        confusion: (K, K) counts, rows = ground truth, columns = prediction.
    """

    dataset: str
    samples: int
    processes: int
    miou: float
    accuracy: float
    iou: list[float]
    confusion: list[list[int]]


def run_evaluation(
    plan: LoadPlan,
    dataset: SegmentationDataset,
    limit: int | None = None,
    processes: int = 1,
    progress: bool | None = None,
) -> EvalReport:
    """Evaluate the segmenter of ``plan`` on ``dataset`` in ``processes`` processes.

    Each process loads the model (``Segmenter.load``), takes every ``processes``-th image and
    the confusion matrices are all-reduced (gloo), so the report equals a one-process run.

    Args:
        plan: a checked ``check_from_pretrained`` (its preset should be the dataset's).
        dataset: from ``check_evaluation``.
        limit: evaluate the first ``limit`` samples only (``None``: all).
        processes: evaluation processes (each gets cpu_count / processes threads).
        progress: progress on rank 0 (``False`` hides it; see ``evaluate``).

    Raises:
        InvalidValue: a bad ``processes`` or ``limit``, or settings whose memory estimate does
            not fit (``check_eval_memory``).
        EvaluationError: a spawned process failed.
        KeyboardInterrupt: a spawned process was interrupted.
    """
    check_processes(processes)
    check_limit(limit)
    check_eval_memory(plan, dataset)
    if processes == 1:
        return eval_worker(0, 1, plan, dataset, limit, progress)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        job = (processes, plan, dataset, limit, progress, str(Path(tmp) / "rendezvous"), report)
        try:
            torch.multiprocessing.spawn(eval_worker, job, processes)
        except torch.multiprocessing.ProcessExitedException as error:
            if error.exit_code == 130:
                raise KeyboardInterrupt from None
            raise EvaluationError(
                f"evaluation process {error.error_index} failed: {error}"
            ) from None
        except torch.multiprocessing.ProcessRaisedException as error:
            last = str(error).strip().splitlines()[-1]
            raise EvaluationError(f"an evaluation process failed: {last}") from None
        return EvalReport(**json.loads(report.read_text()))


def eval_worker(
    rank: int,
    world: int,
    plan: LoadPlan,
    dataset: SegmentationDataset,
    limit: int | None,
    progress: bool | None,
    rendezvous: str | None = None,
    report_file: Path | None = None,
) -> EvalReport:
    """One evaluation process; with several, rank 0 writes the report to ``report_file``."""
    if world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        dist.init_process_group(
            "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world
        )
    try:
        conf = evaluate(Segmenter.load(plan), dataset, limit, progress=progress)
        result = iou_from_confusion(conf)
        samples = len(dataset) if limit is None else min(limit, len(dataset))
        report = EvalReport(
            dataset.name, samples, world, result.miou, result.accuracy, result.iou, conf.tolist()
        )
        if rank == 0 and report_file is not None:
            write_json(report_file, asdict(report), indent=1)
        return report
    except KeyboardInterrupt:
        if world == 1:
            raise
        raise SystemExit(130) from None  # spawned: the parent reports the interruption
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def evaluate(
    segmenter: Segmenter,
    dataset: SegmentationDataset,
    limit: int | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Confusion matrix of ``segmenter`` (preset classes) over ``dataset``.

    With an initialised process group, rank r handles samples r, r + world, ... and the matrix
    is all-reduced, so every rank returns the total.

    Args:
        segmenter: a segmenter with a dataset preset matching ``dataset``.
        dataset: the benchmark.
        limit: evaluate only the first ``limit`` samples (>= 1; ``None`` = all).
        progress: progress on rank 0 over the images and each image's sliding windows
            (``common_kernels.runtime.progress``): ``True`` or ``None`` show a bar on a terminal
            and a
            plain line every 10 s in a log file; ``False`` shows nothing.

    Raises:
        ValueError: ``limit`` < 1, or no samples to evaluate (the mIoU would be NaN).
    """
    check_limit(limit)
    if len(dataset) == 0:
        raise ValueError(f"{dataset.name}: the dataset has no samples")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    conf = torch.zeros(dataset.num_classes, dataset.num_classes, dtype=torch.int64)
    indices = range(rank, total, world)
    if rank != 0:
        progress = False
    for index in show_progress(
        indices, desc=dataset.name, unit="images", disable=progress_hidden(progress)
    ):
        image, label, _ = dataset[index]
        result = segmenter(image, progress=progress)
        if result.probs.shape[0] != dataset.num_classes:
            raise ValueError(
                f"the segmenter predicts {result.probs.shape[0]} classes but {dataset.name} "
                f"has {dataset.num_classes}; use the matching preset"
            )
        conf += confusion_matrix(result.labels, label, dataset.num_classes)
    if world > 1:
        dist.all_reduce(conf, op=dist.ReduceOp.SUM)
    return conf
