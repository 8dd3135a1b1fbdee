"""``vitron eval``: referring segmentation (cIoU, gIoU) and image QA (VQA accuracy, exact match).

Readers (:mod:`~vitron.evaluation.datasets`), the checked inputs of each task
(:mod:`~vitron.evaluation.inputs`: ``referring_task``, ``vqa_task``, ``qa_task``), COCO mask
decoding (:mod:`~vitron.evaluation.masks`), metrics as pure functions
(:mod:`~vitron.evaluation.metrics`) and the loop that runs the Assistant over the samples
(:mod:`~vitron.evaluation.runner`).
"""

from vitron.evaluation.datasets import (
    DatasetError,
    QASample,
    ReferringSample,
    load_instances,
    load_qa_jsonl,
    load_refs,
    load_vqa_answers,
    load_vqa_questions,
    referring_samples,
    vqa_samples,
)
from vitron.evaluation.inputs import qa_task, referring_task, vqa_task
from vitron.evaluation.masks import (
    MASK_BACKENDS,
    SegmentationError,
    polygon_to_mask,
    rle_counts_from_string,
    rle_to_mask,
    segmentation_to_mask,
)
from vitron.evaluation.metrics import (
    MaskCounts,
    cumulative_iou,
    exact_match,
    mask_counts,
    mean_iou,
    normalize_answer,
    vqa_accuracy,
)
from vitron.evaluation.runner import SampleAsker, SampleResult, evaluate_qa, evaluate_referring

__all__ = [
    "MASK_BACKENDS",
    "DatasetError",
    "MaskCounts",
    "QASample",
    "ReferringSample",
    "SampleAsker",
    "SampleResult",
    "SegmentationError",
    "cumulative_iou",
    "evaluate_qa",
    "evaluate_referring",
    "exact_match",
    "load_instances",
    "load_qa_jsonl",
    "load_refs",
    "load_vqa_answers",
    "load_vqa_questions",
    "mask_counts",
    "mean_iou",
    "normalize_answer",
    "polygon_to_mask",
    "qa_task",
    "referring_samples",
    "referring_task",
    "rle_counts_from_string",
    "rle_to_mask",
    "segmentation_to_mask",
    "vqa_accuracy",
    "vqa_samples",
    "vqa_task",
]
