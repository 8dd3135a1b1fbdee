"""mIoU evaluation: confusion matrices (torchmetrics), optionally summed over processes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from itaclip.datasets import IGNORE_INDEX, SegmentationDataset
from itaclip.segmenter import Segmenter, progress_disabled


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
        progress: tqdm bars on rank 0, over the images and over each image's sliding windows
            (``None``: only when stderr is a terminal, tqdm's ``disable=None``).

    Raises:
        ValueError: ``limit`` < 1, or no samples to evaluate (the mIoU would be NaN).
    """
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise ValueError(f"limit must be an integer >= 1 or None, got {limit!r}")
    if len(dataset) == 0:
        raise ValueError(f"{dataset.name}: the dataset has no samples")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    conf = torch.zeros(dataset.num_classes, dataset.num_classes, dtype=torch.int64)
    indices = range(rank, total, world)
    if rank != 0:
        progress = False
    for index in tqdm(
        indices, desc=dataset.name, unit="image", disable=progress_disabled(progress)
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
