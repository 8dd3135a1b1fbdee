"""Run the Assistant over evaluation samples and score its outputs.

Every sample is a fresh one-image conversation. Referring segmentation asks the instruction
template with the expression; the prediction is the mask of the turn's first successful
``segment_image`` call (none: an empty mask). Image QA asks the question; the prediction is
the turn's final answer. A sample whose turn fails (an unreadable image, a conversation over the
model's length) is scored as an empty prediction and counted in ``failed``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from common_kernels.runtime.errors import InvalidValue, literal
from common_kernels.runtime.progress import progress as show_progress
from vitron.evaluation.datasets import QASample, ReferringSample
from vitron.evaluation.masks import segmentation_to_mask
from vitron.evaluation.metrics import (
    cumulative_iou,
    exact_match,
    mask_counts,
    mean_iou,
    vqa_accuracy,
)
from vitron.io import load_image

if TYPE_CHECKING:
    from vitron.assistant import Assistant, Turn

SEGMENT_TEMPLATE = "Please segment {text} in this image."
# LLaVA's short-answer instruction for VQA v2
QA_TEMPLATE = "{question}\nAnswer the question using a single word or phrase."
QA_METRICS = ("vqa", "exact")


@dataclass
class SampleResult:
    """What one sample's conversation gave.

    Args:
        answer: the turn's final answer ("" when the turn failed).
        mask: the (H, W) bool mask of its first successful ``segment_image`` call, if any.
        mask_call: that call's id.
        error: why the turn failed, on one line (None when it did not).
        files: the specialists' files, when they are kept.
    """

    answer: str
    mask: np.ndarray | None = None
    mask_call: str | None = None
    error: str | None = None
    files: list[str] = field(default_factory=list)


def predicted_mask(turn: Turn) -> tuple[np.ndarray | None, str | None]:
    """The (H, W) bool mask of the turn's first successful ``segment_image`` call and its id."""
    for round_ in turn.outcomes:
        for outcome in round_:
            mask = outcome.outputs.get("mask")
            ok = outcome.status == "ok" and outcome.call.task == "segment_image"
            if ok and mask is not None:
                return np.asarray(mask.value.cpu().numpy(), dtype=bool), outcome.call.id
    return None, None


class SampleAsker:
    """Asks the Assistant one request about one image, in a fresh conversation.

    Args:
        assistant: the Assistant.
        scripted_reply: a testing aid: this text replaces the LLM's first reply of every sample.
        keep_files: keep the specialists' files (masks, overlays); else each sample's files are
            deleted once its prediction is read.
    """

    def __init__(
        self, assistant: Assistant, scripted_reply: str | None = None, keep_files: bool = False
    ) -> None:
        self.assistant = assistant
        self.scripted_reply = scripted_reply
        self.keep_files = keep_files

    def __call__(self, prompt: str, image_path: Path) -> SampleResult:
        """One turn: ``prompt`` about the image at ``image_path``."""
        self.assistant.reset()
        self.assistant.scripted = [] if self.scripted_reply is None else [self.scripted_reply]
        try:
            turn = self.assistant.chat(prompt, [load_image(image_path)])
        except (OSError, ValueError) as err:
            return SampleResult("", error=" ".join(str(err).split()) or type(err).__name__)
        mask, call_id = predicted_mask(turn)
        if self.keep_files:
            return SampleResult(turn.answer, mask, call_id, files=[str(p) for p in turn.files])
        for path in turn.files:
            path.unlink(missing_ok=True)
        return SampleResult(turn.answer, mask, call_id)


def fit_mask(mask: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """``mask`` at (height, width): nearest-neighbour resized when its size differs; empty when
    there is none.

    Args:
        mask: an (h, w) bool mask or None.
        height: the ground truth's height.
        width: the ground truth's width.
    """
    if mask is None:
        return np.zeros((height, width), dtype=bool)
    if mask.shape == (height, width):
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((width, height), Image.Resampling.NEAREST)) > 127


def check_template(template: str, field: str) -> None:
    """``template`` must hold the ``{field}`` placeholder.

    Args:
        template: the instruction template.
        field: the placeholder's name (``"text"``, ``"question"``).
    """
    if "{" + field + "}" not in template:
        placeholder = literal("{" + field + "}")
        message = f"{{template}} must contain {placeholder}, got {literal(repr(template))}"
        raise InvalidValue("template", message)


def fill_template(template: str, name: str, value: str) -> str:
    """``template`` with ``{name}`` replaced by ``value`` (other braces are kept as written).

    Args:
        template: the instruction template.
        name: the placeholder's name.
        value: its text.
    """
    return template.replace("{" + name + "}", value)


def _bar(samples: Sequence[Any], task: str, progress: bool) -> Iterator[Any]:
    return show_progress(samples, desc=f"eval {task}", unit="samples", disable=not progress)


def evaluate_referring(
    samples: Sequence[ReferringSample],
    ask: Callable[[str, Path], SampleResult],
    image_root: str | Path,
    template: str = SEGMENT_TEMPLATE,
    mask_backend: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """cIoU and gIoU of the predicted masks over the samples, with one record per sample.

    Args:
        samples: from :func:`~vitron.evaluation.datasets.referring_samples`.
        ask: ``ask(prompt, image_path)`` -> :class:`SampleResult` (e.g. a :class:`SampleAsker`).
        image_root: the folder of the images' ``file_name``.
        template: the instruction, with ``{text}`` for the referring expression.
        mask_backend: ground-truth decoding: ``"auto"``, ``"pycocotools"`` or ``"numpy"``.
        progress: show a progress bar on stderr.
    """
    check_template(template, "text")
    counts, records = [], []
    intersection = union = 0
    bar = _bar(samples, "refseg", progress)
    for sample in bar:
        target = segmentation_to_mask(
            sample.segmentation, sample.height, sample.width, mask_backend
        )
        result = ask(
            fill_template(template, "text", sample.text), Path(image_root) / sample.image_file
        )
        scored = mask_counts(fit_mask(result.mask, sample.height, sample.width), target)
        counts.append(scored)
        intersection, union = intersection + scored.intersection, union + scored.union
        records.append({
            "ref_id": sample.ref_id, "sent_id": sample.sent_id, "image_id": sample.image_id,
            "ann_id": sample.ann_id, "text": sample.text, "intersection": scored.intersection,
            "union": scored.union, "predicted": scored.predicted, "target": scored.target,
            "iou": scored.iou, "mask_call": result.mask_call, "answer": result.answer,
            "error": result.error, "files": result.files,
        })  # fmt: skip
    metrics = {
        "ciou": cumulative_iou(counts),
        "giou": mean_iou(counts),
        "samples": len(records),
        "without_mask": sum(r["mask_call"] is None for r in records),
        "failed": sum(r["error"] is not None for r in records),
    }
    return {"task": "refseg", "metrics": metrics, "samples": records}


def evaluate_qa(
    samples: Sequence[QASample],
    ask: Callable[[str, Path], SampleResult],
    image_root: str | Path,
    template: str = QA_TEMPLATE,
    metric: str = "vqa",
    progress: bool = True,
) -> dict[str, Any]:
    """Mean answer accuracy over the samples, with one record per sample.

    Args:
        samples: from the VQA or JSONL readers.
        ask: ``ask(prompt, image_path)`` -> :class:`SampleResult`.
        image_root: the folder the samples' image files are relative to.
        template: the instruction, with ``{question}`` for the question.
        metric: ``"vqa"`` (VQA accuracy over the human answers) or ``"exact"`` (normalised
            exact match with the first answer).
        progress: show a progress bar on stderr.
    """
    if metric not in QA_METRICS:
        raise ValueError(f"metric must be one of {', '.join(QA_METRICS)}, got {metric!r}")
    check_template(template, "question")
    records = []
    total = 0.0
    bar = _bar(samples, "vqa" if metric == "vqa" else "qa", progress)
    for sample in bar:
        result = ask(
            fill_template(template, "question", sample.question),
            Path(image_root) / sample.image_file,
        )
        score = (
            vqa_accuracy(result.answer, sample.answers)
            if metric == "vqa"
            else exact_match(result.answer, sample.answers[0])
        )
        total += score
        records.append({
            "question_id": sample.question_id, "image": sample.image_file,
            "question": sample.question, "answer": result.answer, "accuracy": score,
            "error": result.error, "files": result.files,
        })  # fmt: skip
    if not records:
        raise ValueError("accuracy needs at least one sample")
    metrics = {
        "accuracy": total / len(records),
        "metric": metric,
        "samples": len(records),
        "failed": sum(r["error"] is not None for r in records),
    }
    return {"task": "vqa" if metric == "vqa" else "qa", "metrics": metrics, "samples": records}
