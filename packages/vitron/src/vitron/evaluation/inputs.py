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

from vitron.checks import Names, check_at_least, check_input_file, named
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


def check_task_options(
    template: str, field: str, limit: int | None = None, names: Names | None = None
) -> None:
    """The options every task has: ``template`` holds the ``{field}`` placeholder, ``limit`` is
    None or >= 1.

    Args:
        template: the instruction template.
        field: the placeholder's name (``"text"``, ``"question"``).
        limit: the number of samples to keep.
        names: see :func:`vitron.checks.named`.
    """
    if limit is not None:
        check_at_least(limit, 1, "limit", names)
    check_template(template, field, names)


def read_checked(path: str | Path, argument: str, reader: Callable[..., Any], *extra: Any,
                 names: Names | None = None) -> Any:  # fmt: skip
    """``reader(path, *extra)``; a missing, unreadable or malformed file names ``argument``."""
    check_input_file(path, argument, names)
    try:
        return reader(path, *extra)
    except (ValueError, OSError) as err:
        raise ValueError(f"{named(argument, names)} {path}: {one_line(err)}") from None


def check_image_files(folder: str | Path, files: Sequence[str], names: Names | None = None) -> Path:
    """``folder`` is a folder holding every sample's image; returns it as a ``Path``.

    Args:
        folder: the images' folder (argument ``images``).
        files: the samples' image files, relative to ``folder``.
        names: see :func:`vitron.checks.named`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{named('images', names)} {folder} is not a folder")
    missing = sorted({name for name in files if not (folder / name).is_file()})
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ValueError(f"{named('images', names)} {folder} lacks {missing[0]}{more}")
    return folder


def first_samples(
    samples: list[S], limit: int | None, argument: str, path: str | Path, names: Names | None
) -> list[S]:
    """The first ``limit`` samples; none at all is a bad input of ``argument``."""
    if not samples:
        raise ValueError(f"{named(argument, names)} {path} holds no samples")
    return samples if limit is None else samples[:limit]


def referring_task(
    refs: str | Path,
    instances: str | Path,
    images: str | Path,
    split: str = "val",
    *,
    limit: int | None = None,
    template: str = SEGMENT_TEMPLATE,
    mask_backend: str = "auto",
    names: Names | None = None,
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
        names: see :func:`vitron.checks.named`.

    Raises:
        ValueError: the first bad input, named; every ground-truth mask is decoded once here.
    """
    check_task_options(template, "text", limit, names)
    if mask_backend not in MASK_BACKENDS:
        raise ValueError(
            f"{named('mask_backend', names)} {mask_backend!r}: expected one of "
            f"{', '.join(MASK_BACKENDS)}"
        )
    usable, why = can_use_pycocotools()
    if mask_backend == "pycocotools" and not usable:
        raise ValueError(f"{named('mask_backend', names)} pycocotools: {why}")
    ref_list = read_checked(refs, "refs", load_refs, names=names)
    image_table, annotations = read_checked(instances, "instances", load_instances, names=names)
    splits = ref_splits(ref_list)
    if split not in splits:
        raise ValueError(
            f"{named('split', names)} {split!r} is not in {named('refs', names)} {refs} "
            f"(its splits: {', '.join(splits) or 'none'})"
        )
    try:
        samples = referring_samples(ref_list, image_table, annotations, split)
    except ValueError as err:
        raise ValueError(
            f"{named('refs', names)} {refs} / {named('instances', names)} {instances}: {err}"
        ) from None
    samples = first_samples(samples, limit, "refs", refs, names)
    check_image_files(images, [s.image_file for s in samples], names)
    for ann_id, sample in {s.ann_id: s for s in samples}.items():
        try:
            segmentation_to_mask(sample.segmentation, sample.height, sample.width, mask_backend)
        except ValueError as err:
            raise ValueError(
                f"{named('instances', names)} {instances}: annotation {ann_id}: {one_line(err)}"
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
    names: Names | None = None,
) -> list[QASample]:
    """The checked samples of a VQA v2 evaluation.

    Args:
        questions: VQA v2 questions JSON.
        annotations: VQA v2 annotations JSON (the ten human answers).
        images: the folder of the COCO images.
        image_name: the image file name pattern, formatted with ``image_id``.
        limit: keep the first ``limit`` samples (>= 1; None: all).
        template: the instruction, with ``{question}`` for the question.
        names: see :func:`vitron.checks.named`.
    """
    check_task_options(template, "question", limit, names)
    try:
        image_file_name(image_name, 0, named("image_name", names))
    except ValueError as err:
        raise ValueError(one_line(err)) from None
    question_list = read_checked(
        questions, "questions", load_vqa_questions, image_name, names=names
    )
    answers = read_checked(annotations, "annotations", load_vqa_answers, names=names)
    try:
        samples = vqa_samples(question_list, answers)
    except ValueError as err:
        raise ValueError(f"{named('annotations', names)} {annotations}: {err}") from None
    samples = first_samples(samples, limit, "questions", questions, names)
    check_image_files(images, [s.image_file for s in samples], names)
    return samples


def qa_task(
    data: str | Path,
    images: str | Path | None = None,
    *,
    limit: int | None = None,
    template: str = QA_TEMPLATE,
    names: Names | None = None,
) -> tuple[list[QASample], Path]:
    """The checked samples of a JSONL QA evaluation and their image folder.

    Args:
        data: JSONL lines ``{"image", "question", "answer"}``.
        images: the folder the images are relative to (default: the JSONL's folder).
        limit: keep the first ``limit`` samples (>= 1; None: all).
        template: the instruction, with ``{question}`` for the question.
        names: see :func:`vitron.checks.named`.
    """
    check_task_options(template, "question", limit, names)
    samples = read_checked(data, "data", load_qa_jsonl, names=names)
    samples = first_samples(samples, limit, "data", data, names)
    folder = Path(data).parent if images is None else images
    return samples, check_image_files(folder, [s.image_file for s in samples], names)
