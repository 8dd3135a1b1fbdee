"""From query logits to a label map: segment max over queries, thresholds, optional closing."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_max(values: Tensor, segments: list[tuple[int, int]]) -> Tensor:
    """Max over consecutive query ranges.

    Args:
        values: (Q, ...) per-query values, each class's queries adjacent.
        segments: (start, end) query range of each class.

    Returns:
        (num_classes, ...) per-class maxima.
    """
    if all(end - start == 1 for start, end in segments):
        return values[[start for start, _ in segments]]
    return torch.stack([values[start:end].amax(0) for start, end in segments])


def area_threshold(probs: Tensor, area_thd: float, background: int) -> Tensor:
    """Zero the probabilities of non-background classes covering too little of the prediction.

    A non-background class is kept if its argmax area exceeds ``area_thd`` times the total
    non-background argmax area (not the image area).

    Args:
        probs: (C, H, W) class probabilities.
        area_thd: minimum share of the non-background area.
        background: index of the background class.

    Returns:
        (C, H, W) probabilities, failing classes zeroed.
    """
    labels = probs.argmax(0)
    areas = torch.bincount(labels.flatten(), minlength=probs.shape[0]).to(probs.dtype)  # (C,)
    areas[background] = 0
    keep = areas > area_thd * areas.sum()
    keep[background] = True
    return probs * keep.to(probs.dtype)[:, None, None]


def probability_labels(probs: Tensor, prob_thd: float, background: int | None) -> Tensor:
    """Argmax labels; pixels whose max probability is below ``prob_thd`` become background."""
    best, labels = probs.max(0)
    if background is not None and prob_thd > 0:
        labels = torch.where(best < prob_thd, torch.full_like(labels, background), labels)
    return labels


def morphological_closing(labels: Tensor, size: int = 3) -> Tensor:
    """Grey-level closing (max filter, then min filter) of an (H, W) integer label map.

    Outside the image, the max filter sees -inf and the min filter +inf (borders never win).
    """
    pad = size // 2
    x = labels.to(torch.float32)[None, None]  # (1, 1, H, W)
    x = F.max_pool2d(x, size, stride=1, padding=pad)
    x = -F.max_pool2d(-x, size, stride=1, padding=pad)
    return x[0, 0].to(labels.dtype)


class ClassOutputs(NamedTuple):
    """Labels and probabilities from query logits (``classify_query_logits``).

    Args:
        labels: (H, W) int64 final labels (after the closing, when it is on).
        probs: (C, H, W) fp32 class probabilities (after the area threshold).
        labels_before_closing: (H, W) int64 labels after the thresholds, before the closing
            (equal to ``labels`` when the closing is off).
    """

    labels: Tensor
    probs: Tensor
    labels_before_closing: Tensor


def classify_query_logits(
    logits: Tensor,
    segments: list[tuple[int, int]],
    logit_scale: float,
    prob_thd: float = 0.0,
    area_thd: float | None = None,
    background: int | None = None,
    closing: bool = False,
) -> ClassOutputs:
    """Label map (before and after the closing) and class probabilities from query logits.

    Args:
        logits: (Q, H, W) cosine logits.
        segments: (start, end) query range of each class.
        logit_scale: softmax temperature over the queries.
        prob_thd: pixels with max class probability below it become ``background``.
        area_thd: see ``area_threshold``; ``None`` = off.
        background: background class index; thresholds are skipped without one.
        closing: 3x3 morphological closing of the label map (official quirk).
    """
    probs = segment_max((logits.float() * logit_scale).softmax(0), segments)  # (C, H, W)
    if area_thd is not None and background is not None:
        probs = area_threshold(probs, area_thd, background)
    before = probability_labels(probs, prob_thd, background)
    labels = morphological_closing(before) if closing else before
    return ClassOutputs(labels, probs, before)


def query_logits_to_classes(
    logits: Tensor,
    segments: list[tuple[int, int]],
    logit_scale: float,
    prob_thd: float = 0.0,
    area_thd: float | None = None,
    background: int | None = None,
    closing: bool = False,
) -> tuple[Tensor, Tensor]:
    """Label map and class probabilities from (Q, H, W) query logits.

    Same arguments as ``classify_query_logits``.

    Returns:
        (H, W) int64 labels and (C, H, W) fp32 class probabilities.
    """
    labels, probs, _ = classify_query_logits(
        logits, segments, logit_scale, prob_thd, area_thd, background, closing
    )
    return labels, probs
