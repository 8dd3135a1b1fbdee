"""Readers of evaluation data: RefCOCO-format referring segmentation and image QA files.

Referring segmentation uses the official refer API files: ``refs(unc).p`` (or ``refs(umd).p``
for RefCOCOg), a list of refs ``{ref_id, image_id, ann_id, split, sentences: [{sent}, ...]}``,
and ``instances.json``, COCO ``images`` (``id``, ``file_name``, ``height``, ``width``) and
``annotations`` (``id``, ``segmentation``). One sample is one sentence of a ref (as LISA
evaluates), its ground truth the mask of the ref's annotation.

About ``.p`` files: unpickling an untrusted pickle can run arbitrary code, because a pickle may
name any importable function and call it. :func:`load_refs` therefore reads pickles with an
unpickler that refuses every class and function (every global lookup), so only plain data (dicts,
lists, strings, numbers) can come out and no code can run. A JSON list with the same fields is
accepted too and is the safer form for files from elsewhere.

Image QA reads the VQA v2 pair (``{"questions": [{question_id, image_id, question}]}`` and
``{"annotations": [{question_id, answers: [{answer}, ...], multiple_choice_answer}]}``) or a
JSONL file with one ``{"image", "question", "answer"}`` object per line.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitron.io import json_lines

PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")
VQA_IMAGE_NAME = "COCO_val2014_{image_id:012d}.jpg"


class DatasetError(ValueError):
    """An evaluation file that cannot be used (unreadable, malformed, inconsistent)."""


@dataclass(frozen=True)
class ReferringSample:
    """One referring expression and the annotation it refers to.

    Args:
        ref_id: the ref's id.
        sent_id: the sentence's id (its index in the ref when the file has none).
        text: the referring expression.
        image_id: the COCO image id.
        image_file: the image's ``file_name``.
        height: the image height (the ground-truth mask's).
        width: the image width.
        ann_id: the COCO annotation id.
        segmentation: the annotation's ``segmentation`` (polygons or RLE).
    """

    ref_id: int
    sent_id: int
    text: str
    image_id: int
    image_file: str
    height: int
    width: int
    ann_id: int
    segmentation: Any


@dataclass(frozen=True)
class QASample:
    """One question about an image and its reference answers.

    Args:
        question_id: the question's id (the line number for JSONL files).
        image_file: the image path, relative to the image folder (or absolute).
        question: the question.
        answers: the human answers (10 in VQA v2; one in an exact-match file).
    """

    question_id: int
    image_file: str
    question: str
    answers: tuple[str, ...]


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global, so no class or function can be loaded."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"it names {module}.{name}; only plain data (dicts, lists, strings, numbers) is "
            "read from pickles, never classes or functions"
        )


def read_json(path: str | Path) -> Any:
    """A JSON file's value, with parse errors as :class:`DatasetError` (line and column).

    Args:
        path: the file.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_plain_pickle(path: str | Path) -> Any:
    """A pickle file's value, read without loading any class or function (see module doc).

    Python 2 strings (the refer API's files) are decoded as UTF-8.

    Args:
        path: the file.
    """
    data = Path(path).read_bytes()
    try:
        return _DataOnlyUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except pickle.UnpicklingError as err:
        raise DatasetError(f"refused pickle: {err}") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as err:
        raise DatasetError(f"not a readable pickle ({type(err).__name__}: {err})") from None


def _list_of(data: dict[str, Any], key: str) -> list:
    if not isinstance(data[key], list):
        raise DatasetError(f"{key!r} is a {type(data[key]).__name__}, expected a list")
    return data[key]


def _require(item: Any, keys: Sequence[str], what: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise DatasetError(f"{what} is a {type(item).__name__}, expected an object")
    missing = [k for k in keys if k not in item]
    if missing:
        raise DatasetError(f"{what} lacks {', '.join(missing)}")
    return item


def load_refs(path: str | Path) -> list[dict[str, Any]]:
    """The refs of a refer API ``refs(...).p`` pickle or of a JSON list with the same fields.

    Args:
        path: ``.p`` / ``.pkl`` / ``.pickle`` (read as plain data only) or ``.json``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        refs = read_json(path)
    elif suffix in PICKLE_SUFFIXES:
        refs = read_plain_pickle(path)
    else:
        raise DatasetError(
            f"unknown file type {suffix or '(none)'}: expected .json or "
            f"{', '.join(PICKLE_SUFFIXES)}"
        )
    if not isinstance(refs, list):
        raise DatasetError(f"holds a {type(refs).__name__}, expected a list of refs")
    for index, ref in enumerate(refs):
        _require(ref, ("ref_id", "image_id", "ann_id", "split", "sentences"), f"ref {index}")
    return refs


def ref_splits(refs: Sequence[dict[str, Any]]) -> list[str]:
    """The split names the refs use, sorted."""
    return sorted({str(ref["split"]) for ref in refs})


def load_instances(path: str | Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """COCO ``instances.json`` -> (image id -> image, annotation id -> annotation).

    Args:
        path: the file.
    """
    data = read_json(path)
    _require(data, ("images", "annotations"), "the file")
    images, annotations = {}, {}
    for index, image in enumerate(_list_of(data, "images")):
        _require(image, ("id", "file_name", "height", "width"), f"images[{index}]")
        images[image["id"]] = image
    for index, ann in enumerate(_list_of(data, "annotations")):
        _require(ann, ("id", "segmentation"), f"annotations[{index}]")
        annotations[ann["id"]] = ann
    return images, annotations


def referring_samples(
    refs: Sequence[dict[str, Any]],
    images: dict[int, dict],
    annotations: dict[int, dict],
    split: str,
) -> list[ReferringSample]:
    """One sample per sentence of every ref of ``split``, in file order.

    Args:
        refs: from :func:`load_refs`.
        images: image id -> COCO image (from :func:`load_instances`).
        annotations: annotation id -> COCO annotation.
        split: e.g. ``val``, ``testA``, ``testB`` (RefCOCO, RefCOCO+), ``test`` (RefCOCOg).
    """
    samples = []
    for ref in refs:
        if str(ref["split"]) != split:
            continue
        what = f"ref {ref['ref_id']}"
        if ref["image_id"] not in images:
            raise DatasetError(f"{what} is on image {ref['image_id']}, which has no entry")
        if ref["ann_id"] not in annotations:
            raise DatasetError(f"{what} refers to annotation {ref['ann_id']}, which has no entry")
        image = images[ref["image_id"]]
        sentences = ref["sentences"]
        if not isinstance(sentences, list) or not sentences:
            raise DatasetError(f"{what} has no sentences")
        for k, sentence in enumerate(sentences):
            _require(sentence, ("sent",), f"{what} sentence {k}")
            samples.append(
                ReferringSample(
                    ref_id=ref["ref_id"], sent_id=sentence.get("sent_id", k),
                    text=str(sentence["sent"]).strip(), image_id=ref["image_id"],
                    image_file=str(image["file_name"]), height=int(image["height"]),
                    width=int(image["width"]), ann_id=ref["ann_id"],
                    segmentation=annotations[ref["ann_id"]]["segmentation"],
                )
            )  # fmt: skip
    return samples


def load_vqa_questions(path: str | Path, image_name: str) -> list[tuple[int, str, str]]:
    """VQA v2 questions -> (question_id, image file, question), in file order.

    Args:
        path: ``{"questions": [{question_id, image_id, question}, ...]}``.
        image_name: image file name pattern with ``{image_id}`` (e.g. ``{image_id:012d}``).
    """
    data = _require(read_json(path), ("questions",), "the file")
    found = []
    for index, item in enumerate(_list_of(data, "questions")):
        what = f"questions[{index}]"
        _require(item, ("question_id", "image_id", "question"), what)
        found.append(
            (
                item["question_id"],
                image_file_name(image_name, item["image_id"], what),
                item["question"],
            )
        )
    return found


def image_file_name(pattern: str, image_id: Any, what: str = "image id") -> str:
    """``pattern.format(image_id=image_id)``, its failures as :class:`DatasetError`.

    Args:
        pattern: e.g. ``COCO_val2014_{image_id:012d}.jpg``.
        image_id: the image id.
        what: the item it belongs to, for the message.
    """
    try:
        return pattern.format(image_id=image_id)
    except (KeyError, IndexError, ValueError) as err:
        raise DatasetError(
            f"{what}: the image name pattern {pattern!r} does not format image_id "
            f"{image_id!r} ({type(err).__name__}: {err})"
        ) from None


def load_vqa_answers(path: str | Path) -> dict[int, tuple[str, ...]]:
    """VQA v2 annotations -> question_id -> the human answers.

    Args:
        path: ``{"annotations": [{question_id, answers: [{answer}, ...]}, ...]}``.
    """
    data = _require(read_json(path), ("annotations",), "the file")
    answers = {}
    for index, item in enumerate(_list_of(data, "annotations")):
        what = f"annotations[{index}]"
        _require(item, ("question_id", "answers"), what)
        if not isinstance(item["answers"], list) or not item["answers"]:
            raise DatasetError(f"{what} has no answers")
        answers[item["question_id"]] = tuple(
            str(_require(a, ("answer",), f"{what} answer {k}")["answer"])
            for k, a in enumerate(item["answers"])
        )
    return answers


def vqa_samples(
    questions: Sequence[tuple[int, str, str]], answers: dict[int, tuple[str, ...]]
) -> list[QASample]:
    """Questions joined to their human answers.

    Args:
        questions: from :func:`load_vqa_questions`.
        answers: from :func:`load_vqa_answers`.
    """
    samples = []
    for question_id, image_file, question in questions:
        if question_id not in answers:
            raise DatasetError(f"question {question_id} has no annotation")
        samples.append(QASample(question_id, image_file, str(question), answers[question_id]))
    return samples


def load_qa_jsonl(path: str | Path) -> list[QASample]:
    """A JSONL file of ``{"image", "question", "answer"}`` objects (one answer each).

    Args:
        path: the file; blank lines are skipped; ``question_id`` is the line number.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DatasetError(f"not UTF-8 text ({err.reason} at byte {err.start})") from None

    def bad_line(number: int, err: json.JSONDecodeError) -> DatasetError:
        return DatasetError(f"line {number} is not valid JSON ({err.msg})")

    samples = []
    for number, item in json_lines(lines, bad_line):
        _require(item, ("image", "question", "answer"), f"line {number}")
        if not all(isinstance(item[k], str) for k in ("image", "question", "answer")):
            raise DatasetError(f"line {number}: image, question and answer must be strings")
        samples.append(QASample(number, item["image"], item["question"], (item["answer"],)))
    return samples
