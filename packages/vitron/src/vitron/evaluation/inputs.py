"""The checked inputs of an evaluation: samples whose files, split, images and ground truth
have all been read and validated before a model is loaded.

Every problem is a ``ValueError`` that names the argument it comes from; ``names`` maps the
arguments to the caller's spelling (``vitron eval`` passes its flags: ``{"refs": "--refs"}``),
so that the API and the command line say the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from common_kernels.runtime.errors import InvalidValue, literal
from vitron.checks import ARGUMENT_MARK, check_at_least, check_input_file, named_in_place
from vitron.evaluation.datasets import (
    VQA_IMAGE_NAME,
    QASample,
    ReferringSample,
    image_file_name,
    load_instances,
    load_qa_jsonl,
    load_refs,
    load_vqa_answers,
    load_vqa_questions,
    ref_splits,
    referring_samples,
    vqa_samples,
)
from vitron.evaluation.masks import MASK_BACKENDS, can_use_pycocotools, segmentation_to_mask
from vitron.evaluation.runner import QA_TEMPLATE, SEGMENT_TEMPLATE, check_template
from vitron.options import one_line

S = TypeVar("S")


def check_task_options(template: str, field: str, limit: int | None = None) -> None:
    """The options every task has: ``template`` holds the ``{field}`` placeholder, ``limit`` is
    None or >= 1.

    Args:
        template: the instruction template.
        field: the placeholder's name (``"text"``, ``"question"``).
        limit: the number of samples to keep.
    """
    if limit is not None:
        check_at_least(limit, 1, "limit")
    check_template(template, field)


def read_checked(path: str | Path, argument: str, reader: Callable[..., Any], *extra: Any) -> Any:
    """``reader(path, *extra)``; a missing, unreadable or malformed file names ``argument``."""
    check_input_file(path, argument)
    try:
        return reader(path, *extra)
    except (ValueError, OSError) as err:
        raise InvalidValue(
            argument, f"{{{argument}}} {literal(path)}: {literal(one_line(err))}"
        ) from None


def check_image_files(folder: str | Path, files: Sequence[str]) -> Path:
    """``folder`` is a folder holding every sample's image; returns it as a ``Path``.

    Args:
        folder: the images' folder (argument ``images``).
        files: the samples' image files, relative to ``folder``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidValue("images", f"{{images}} {literal(folder)} is not a folder")
    missing = sorted({name for name in files if not (folder / name).is_file()})
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise InvalidValue(
            "images", f"{{images}} {literal(folder)} lacks {literal(missing[0])}{more}"
        )
    return folder


def first_samples(
    samples: list[S], limit: int | None, argument: str, path: str | Path, images: str | Path
) -> list[S]:
    """The first ``limit`` samples, each one's image checked in the folder ``images``
    (:func:`check_image_files`); none at all is a bad input of ``argument`` (read from ``path``).
    """
    if not samples:
        raise InvalidValue(argument, f"{{{argument}}} {literal(path)} holds no samples")
    kept = samples if limit is None else samples[:limit]
    check_image_files(images, [sample.image_file for sample in kept])
    return kept


def referring_task(
    refs: str | Path,
    instances: str | Path,
    images: str | Path,
    split: str = "val",
    *,
    limit: int | None = None,
    template: str = SEGMENT_TEMPLATE,
    mask_backend: str = "auto",
) -> list[ReferringSample]:
    """The checked samples of a referring-segmentation evaluation (RefCOCO, RefCOCO+, RefCOCOg).

    Args:
        refs: the refer API's ``refs(unc).p`` / ``refs(umd).p`` (plain data only) or a JSON list.
        instances: COCO ``instances.json``.
        images: the folder of the COCO images.
        split: ``val``, ``testA``, ``testB`` (RefCOCO, RefCOCO+) or ``test`` (RefCOCOg).
        limit: keep the first ``limit`` samples (>= 1; None: all).
        template: the instruction, with ``{text}`` for the expression.
        mask_backend: one of :data:`~vitron.evaluation.masks.MASK_BACKENDS`.

    Raises:
        ValueError: the first bad input, named; every ground-truth mask is decoded once here.
    """
    check_task_options(template, "text", limit)
    if mask_backend not in MASK_BACKENDS:
        raise InvalidValue(
            "mask_backend",
            f"{{mask_backend}} {literal(repr(mask_backend))}: expected one of "
            f"{literal(', '.join(MASK_BACKENDS))}",
        )
    usable, why = can_use_pycocotools()
    if mask_backend == "pycocotools" and not usable:
        raise InvalidValue("mask_backend", f"{{mask_backend}} pycocotools: {literal(why)}")
    ref_list = read_checked(refs, "refs", load_refs)
    image_table, annotations = read_checked(instances, "instances", load_instances)
    splits = ref_splits(ref_list)
    if split not in splits:
        raise InvalidValue(
            "split",
            f"{{split}} {literal(repr(split))} is not in {{refs}} {literal(refs)} "
            f"(its splits: {literal(', '.join(splits) or 'none')})",
        )
    try:
        samples = referring_samples(ref_list, image_table, annotations, split)
    except ValueError as err:
        raise InvalidValue(
            "refs", f"{{refs}} {literal(refs)} / {{instances}} {literal(instances)}: {literal(err)}"
        ) from None
    samples = first_samples(samples, limit, "refs", refs, images)
    for ann_id, sample in {s.ann_id: s for s in samples}.items():
        try:
            segmentation_to_mask(sample.segmentation, sample.height, sample.width, mask_backend)
        except ValueError as err:
            raise InvalidValue(
                "instances",
                f"{{instances}} {literal(instances)}: annotation {literal(ann_id)}: "
                f"{literal(one_line(err))}",
            ) from None
    return samples


def vqa_task(
    questions: str | Path,
    annotations: str | Path,
    images: str | Path,
    *,
    image_name: str = VQA_IMAGE_NAME,
    limit: int | None = None,
    template: str = QA_TEMPLATE,
) -> list[QASample]:
    """The checked samples of a VQA v2 evaluation.

    Args:
        questions: VQA v2 questions JSON.
        annotations: VQA v2 annotations JSON (the ten human answers).
        images: the folder of the COCO images.
        image_name: the image file name pattern, formatted with ``image_id``.
        limit: keep the first ``limit`` samples (>= 1; None: all).
        template: the instruction, with ``{question}`` for the question.
    """
    check_task_options(template, "question", limit)
    try:
        image_file_name(image_name, 0, ARGUMENT_MARK)
    except ValueError as err:
        raise named_in_place("image_name", err) from None
    question_list = read_checked(questions, "questions", load_vqa_questions, image_name)
    answers = read_checked(annotations, "annotations", load_vqa_answers)
    try:
        samples = vqa_samples(question_list, answers)
    except ValueError as err:
        raise InvalidValue(
            "annotations", f"{{annotations}} {literal(annotations)}: {literal(err)}"
        ) from None
    return first_samples(samples, limit, "questions", questions, images)


def qa_task(
    data: str | Path,
    images: str | Path | None = None,
    *,
    limit: int | None = None,
    template: str = QA_TEMPLATE,
) -> tuple[list[QASample], Path]:
    """The checked samples of a JSONL QA evaluation and their image folder.

    Args:
        data: JSONL lines ``{"image", "question", "answer"}``.
        images: the folder the images are relative to (default: the JSONL's folder).
        limit: keep the first ``limit`` samples (>= 1; None: all).
        template: the instruction, with ``{question}`` for the question.
    """
    check_task_options(template, "question", limit)
    samples = read_checked(data, "data", load_qa_jsonl)
    folder = Path(data).parent if images is None else Path(images)
    return first_samples(samples, limit, "data", data, folder), folder
