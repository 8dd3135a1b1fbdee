"""``vitron eval refseg | vqa | qa``: the command-line side of the evaluation.

Every input (data files, split, image files, ground-truth masks, templates and the model
options) is checked before the model loads; a bad one is a ``UsageError`` naming its flag
(exit status 2, nothing written). The results go to ``OUT/results.json`` (atomic write).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common_kernels.cli import UsageError
from vitron.checks import check_at_least, check_input_file
from vitron.evaluation.datasets import (
    VQA_IMAGE_NAME,
    DatasetError,
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
from vitron.evaluation.runner import (
    QA_TEMPLATE,
    SEGMENT_TEMPLATE,
    SampleAsker,
    evaluate_qa,
    evaluate_referring,
)
from vitron.options import AssistantOptions, one_line, open_assistant, read_reply_file

RESULTS_NAME = "results.json"


def add_eval_parser(
    commands: Any,
    add_model_options: Callable[[argparse.ArgumentParser], None],
    number: Callable[..., None],
) -> None:
    """Register ``eval`` and its tasks on the ``vitron`` subcommands.

    Args:
        commands: the subparsers action of the ``vitron`` parser.
        add_model_options: adds ``--model``, ``-o/--output`` and the other Assistant options.
        number: adds a numeric flag whose help ends in its default.
    """
    evaluate = commands.add_parser(
        "eval", help="score the Assistant: refseg (cIoU, gIoU), vqa (VQA accuracy), qa (exact)"
    )
    tasks = evaluate.add_subparsers(dest="task", required=True, metavar="TASK")
    refseg = tasks.add_parser("refseg", help="referring segmentation on RefCOCO(+/g) files")
    refseg.add_argument(
        "--refs", type=Path, required=True,
        help="refer API refs(unc).p / refs(umd).p (read as plain data only), or a JSON list",
    )  # fmt: skip
    refseg.add_argument("--instances", type=Path, required=True, help="COCO instances.json")
    refseg.add_argument("--images", type=Path, required=True, help="folder of the COCO images")
    refseg.add_argument("--split", default="val", help="val, testA, testB (RefCOCO/+), test (g)")
    refseg.add_argument(
        "--template", default=SEGMENT_TEMPLATE, help="instruction; {text} = the expression"
    )
    refseg.add_argument(
        "--mask-backend", choices=MASK_BACKENDS, default="auto",
        help="ground-truth decoding (auto: pycocotools when installed, else numpy; same pixels)",
    )  # fmt: skip
    vqa = tasks.add_parser("vqa", help="VQA v2 accuracy on a questions + annotations pair")
    vqa.add_argument("--questions", type=Path, required=True, help="VQA questions JSON")
    vqa.add_argument("--annotations", type=Path, required=True, help="VQA annotations JSON")
    vqa.add_argument("--images", type=Path, required=True, help="folder of the images")
    vqa.add_argument("--image-name", default=VQA_IMAGE_NAME, help="image file name from {image_id}")
    vqa.add_argument("--template", default=QA_TEMPLATE, help="instruction; {question}")
    qa = tasks.add_parser("qa", help="exact match on a JSONL of {image, question, answer}")
    qa.add_argument("--data", type=Path, required=True, help="JSONL, one object per line")
    qa.add_argument(
        "--images", type=Path, default=None, help="folder of the images (default: the JSONL's)"
    )
    qa.add_argument("--template", default=QA_TEMPLATE, help="instruction; {question}")
    for task in (refseg, vqa, qa):
        add_model_options(task)
        number(task, "--limit", int, None, "only the first N samples, >= 1 (None: all)")
        task.add_argument(
            "--keep-files", action="store_true",
            help="keep the specialists' files (masks, overlays) in the output folder",
        )  # fmt: skip
        task.add_argument(
            "--reply-file", type=Path, default=None,
            help="testing aid: this file's text replaces the LLM's first reply of every sample",
        )  # fmt: skip


def _read(flag: str, path: Path, reader: Callable[..., Any], *extra: Any) -> Any:
    """``reader(path, *extra)`` with the file's problems as a ``UsageError`` naming ``flag``."""
    check_input_file(path, flag)
    try:
        return reader(path, *extra)
    except (DatasetError, OSError) as err:
        raise UsageError(f"{flag} {path}: {one_line(err)}") from None


def _check_template(template: str, field: str) -> None:
    """``--template`` must hold the ``{field}`` placeholder."""
    if "{" + field + "}" not in template:
        raise UsageError(f"--template must contain {{{field}}}, got {template!r}")


def _check_images_folder(folder: Path) -> None:
    """``--images`` must be a folder."""
    if not folder.is_dir():
        raise UsageError(f"--images {folder} is not a folder")


def _check_image_files(folder: Path, names: Sequence[str]) -> None:
    """Every sample's image exists (checked before the model loads)."""
    missing = sorted({name for name in names if not (folder / name).is_file()})
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UsageError(f"--images {folder} lacks {missing[0]}{more}")


def _selected(samples: list, limit: int | None, flag: str, path: Path) -> list:
    """The first ``limit`` samples; none at all is a bad input of ``flag``."""
    if not samples:
        raise UsageError(f"{flag} {path} holds no samples")
    return samples if limit is None else samples[:limit]


def refseg_samples(args: argparse.Namespace) -> tuple[list[ReferringSample], Path]:
    """The checked samples of ``eval refseg`` (split, images and ground-truth masks) and the
    image folder."""
    _check_template(args.template, "text")
    usable, why = can_use_pycocotools()
    if args.mask_backend == "pycocotools" and not usable:
        raise UsageError(f"--mask-backend pycocotools: {why}")
    refs = _read("--refs", args.refs, load_refs)
    images, annotations = _read("--instances", args.instances, load_instances)
    splits = ref_splits(refs)
    if args.split not in splits:
        raise UsageError(
            f"--split {args.split!r} is not in --refs {args.refs} "
            f"(its splits: {', '.join(splits) or 'none'})"
        )
    try:
        samples = referring_samples(refs, images, annotations, args.split)
    except DatasetError as err:
        raise UsageError(f"--refs {args.refs} / --instances {args.instances}: {err}") from None
    samples = _selected(samples, args.limit, "--refs", args.refs)
    _check_images_folder(args.images)
    _check_image_files(args.images, [s.image_file for s in samples])
    for ann_id, sample in {s.ann_id: s for s in samples}.items():
        try:
            segmentation_to_mask(
                sample.segmentation, sample.height, sample.width, args.mask_backend
            )
        except ValueError as err:
            raise UsageError(
                f"--instances {args.instances}: annotation {ann_id}: {one_line(err)}"
            ) from None
    return samples, args.images


def vqa_task_samples(args: argparse.Namespace) -> tuple[list[QASample], Path]:
    """The checked samples of ``eval vqa`` and the image folder."""
    _check_template(args.template, "question")
    try:
        image_file_name(args.image_name, 0, "--image-name")
    except DatasetError as err:
        raise UsageError(one_line(err)) from None
    questions = _read("--questions", args.questions, load_vqa_questions, args.image_name)
    answers = _read("--annotations", args.annotations, load_vqa_answers)
    try:
        samples = vqa_samples(questions, answers)
    except DatasetError as err:
        raise UsageError(f"--annotations {args.annotations}: {err}") from None
    samples = _selected(samples, args.limit, "--questions", args.questions)
    _check_images_folder(args.images)
    _check_image_files(args.images, [s.image_file for s in samples])
    return samples, args.images


def qa_task_samples(args: argparse.Namespace) -> tuple[list[QASample], Path]:
    """The checked samples of ``eval qa`` and the image folder (default: the JSONL's)."""
    _check_template(args.template, "question")
    samples = _read("--data", args.data, load_qa_jsonl)
    samples = _selected(samples, args.limit, "--data", args.data)
    images = args.data.parent if args.images is None else args.images
    _check_images_folder(images)
    _check_image_files(images, [s.image_file for s in samples])
    return samples, images


def check_segmenter_installed() -> None:
    """``refseg`` needs the adapter serving ``segment_image`` to have its packages."""
    from vitron.specialists import SpecialistRegistry

    registry = SpecialistRegistry()
    cls = registry.classes[registry.by_task["segment_image"]]
    missing = cls.missing_packages()
    if missing:
        raise UsageError(
            f"refseg needs the {cls.name} specialist, which lacks {', '.join(missing)}: "
            f"pip install 'vitron[{cls.extra}]'"
        )


def summary_line(result: dict[str, Any], path: Path) -> str:
    """One line with the metrics and where the results went."""
    m = result["metrics"]
    if result["task"] == "refseg":
        scores = f"cIoU {m['ciou']:.4f}, gIoU {m['giou']:.4f}"
        extra = f"{m['without_mask']} without a mask, {m['failed']} failed"
    else:
        scores = f"accuracy {m['accuracy']:.4f} ({m['metric']})"
        extra = f"{m['failed']} failed"
    return f"{result['task']}: {scores} over {m['samples']} samples ({extra}); results in {path}"


def run_eval(args: argparse.Namespace, options: AssistantOptions) -> int:
    """``vitron eval TASK``: check everything, load the model, run the samples, write JSON.

    Args:
        args: the parsed command line.
        options: the checked Assistant options of the command line (``--model`` etc.).
    """
    from vitron.io import write_json

    if args.limit is not None:
        check_at_least(args.limit, 1, "--limit")
    if args.task == "refseg":
        samples, images = refseg_samples(args)
        check_segmenter_installed()
    elif args.task == "vqa":
        samples, images = vqa_task_samples(args)
    else:
        samples, images = qa_task_samples(args)
    reply = read_reply_file(args.reply_file, {"reply_file": "--reply-file"})
    ask = SampleAsker(open_assistant(options), reply, keep_files=args.keep_files)
    if args.task == "refseg":
        result = evaluate_referring(samples, ask, images, args.template, args.mask_backend)
        data = {"refs": str(args.refs), "instances": str(args.instances), "split": args.split}
    else:
        metric = "vqa" if args.task == "vqa" else "exact"
        result = evaluate_qa(samples, ask, images, args.template, metric)
        files = ("questions", "annotations") if args.task == "vqa" else ("data",)
        data = {name: str(getattr(args, name)) for name in files}
    result = {
        "task": result["task"],
        "metrics": result["metrics"],
        "model": args.model,
        "data": {**data, "images": str(images), "limit": args.limit},
        "template": args.template,
        "samples": result["samples"],
    }
    path = write_json(Path(args.output) / RESULTS_NAME, result)
    if result["metrics"]["failed"]:
        print(
            f"warning: {result['metrics']['failed']} sample(s) failed; their errors are in {path}",
            file=sys.stderr,
        )
    print(summary_line(result, path))
    return 0
