"""``vitron eval refseg | vqa | qa``: the command-line side of the evaluation.

Every input (data files, split, image files, ground-truth masks, templates and the model
options) is checked by the API (:mod:`vitron.evaluation.inputs`) before the model loads; a bad
one is an error naming its flag (exit status 2, nothing written). The results go to
``OUT/results.json`` (atomic write).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common_kernels.runtime.cli import UsageError
from vitron.evaluation.datasets import VQA_IMAGE_NAME, QASample, ReferringSample
from vitron.evaluation.inputs import qa_task, referring_task, vqa_task
from vitron.evaluation.masks import MASK_BACKENDS
from vitron.evaluation.runner import (
    QA_TEMPLATE,
    SEGMENT_TEMPLATE,
    SampleAsker,
    evaluate_qa,
    evaluate_referring,
)
from vitron.options import AssistantOptions, open_assistant, read_reply_file

RESULTS_NAME = "results.json"


def add_eval_parser(
    commands: Any,
    add_model_options: Callable[..., None],
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
        add_model_options(task, planner=False)
        number(task, "--limit", int, None, "only the first N samples, >= 1 (None: all)")
        task.add_argument(
            "--keep-files", action="store_true",
            help="keep the specialists' files (masks, overlays) in the output folder",
        )  # fmt: skip
        task.add_argument(
            "--reply-file", type=Path, default=None,
            help="testing aid: this file's text replaces the LLM's first reply of every sample",
        )  # fmt: skip


def task_samples(args: argparse.Namespace) -> tuple[list[ReferringSample] | list[QASample], Path]:
    """The checked samples of ``eval TASK`` and their image folder (the API's checks, with the
    command's flags in the messages)."""
    common = {"limit": args.limit, "template": args.template}
    if args.task == "refseg":
        samples = referring_task(
            args.refs, args.instances, args.images, args.split,
            mask_backend=args.mask_backend, **common,
        )  # fmt: skip
        return samples, args.images
    if args.task == "vqa":
        samples = vqa_task(
            args.questions, args.annotations, args.images, image_name=args.image_name, **common
        )
        return samples, args.images
    return qa_task(args.data, args.images, **common)


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

    samples, images = task_samples(args)
    if args.task == "refseg":
        check_segmenter_installed()
    reply = read_reply_file(args.reply_file)
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
