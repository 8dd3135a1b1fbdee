"""The ``itaclip`` command.

itaclip segment IMG|DIR... --classes "cat,dog,sky" -o OUT [--model NAME --pretrained TAG]
                [--aux-file AUX.json|AUX.txt --alpha A] [--background NAME] [--output-size HxW]
                [--recursive] [--keep-going] [--skip-existing] [--in-place]
itaclip eval --dataset voc21 --root DIR [--nproc N] [--limit N] [--json FILE]
itaclip aux --lm HF_ID_OR_DIR --classes "cat,dog" --kind definition -o AUX.json|AUX.txt
itaclip tiny-model DIR [--seed 0]     # a tiny random open_clip model folder (offline runs)
itaclip app [--port 7860]             # a local web page (itaclip[app]; offline: the tiny model)

Classes are comma-separated; ``|`` separates the synonyms of one class (``"person|man,dog"``).

The checks are the API's, with the flags' names: a bad input is one line ``itaclip COMMAND:
error: ...`` and exit status 2 before any model loads; a failure while working exits 1; Ctrl-C
and SIGTERM exit 130 and 143 (``segment`` says how many images were written and the command
that resumes). Inputs are never overwritten unless ``--in-place`` says so; ``--version``;
third-party chatter is off unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from common_kernels.runtime.batch import (
    CommandSession,
    add_batch_options,
    add_distributed_options,
    distributed_mode,
    resume_command,
)
from common_kernels.runtime.cli import (
    Parser,
    add_verbose,
    command_prog,
    run_main,
    size_type,
    usage_errors,
    version_line,
)
from itaclip.app import add_app_command, run_app
from itaclip.datasets import DATASETS
from itaclip.inputs import parse_class_option
from itaclip.model_options import add_model_options
from itaclip.presets import PRESETS

# open_clip (and through it torchvision and transformers) takes seconds to import: the modules
# that need it are imported by each command after parsing, so that --help and a bad flag answer
# at once (tests/test_cli_signals_help.py checks that parsing leaves them out)
if TYPE_CHECKING:
    from itaclip.datasets import SegmentationDataset
    from itaclip.folders import SegmentBatch, SegmentJob
    from itaclip.generate import SamplingConfig
    from itaclip.inputs import ClassInputs
    from itaclip.segmenter import LoadPlan

# the API's argument -> this command's flag, so that the API's messages name the flags
FLAGS = {
    "shard": "--shard",
    "ray_workers": "--ray-workers",
    "ray_batch_size": "--ray-batch",
    "ray_gpus_per_worker": "--ray-gpus",
    "model_name": "--model",
    "pretrained": "--pretrained",
    "stride": "--stride",
    "short_side": "--short-side",
    "batch_size": "--batch-size",
    "alpha": "--alpha",
    "device": "--device",
    "cache_dir": "--cache-dir",
    "classes": "--classes",
    "background": "--background",
    "aux_file": "--aux-file",
    "root": "--root",
    "limit": "--limit",
    "processes": "--nproc",
    "max_new_tokens": "--max-new-tokens",
    "name": "--lm",
    "seed": "--seed",
    "directory": "DIR",
    "images": "IMG",
    "output": "-o/--output",
    "report": "--json",
    "recursive": "--recursive",
    "in_place": "--in-place",
    "port": "--port",
    "output_size": "--output-size",
    "allow_large": "--allow-large",
}
PROGRAM = "itaclip"


def say(prog: str, text: str) -> None:
    """One line ``PROG: text`` on stderr, between progress bars."""
    tqdm.write(f"{prog}: {text}", file=sys.stderr)


def add_segment(commands: argparse._SubParsersAction) -> None:
    segment = commands.add_parser("segment", help="segment images, write overlays")
    segment.add_argument(
        "images",
        nargs="+",
        type=Path,
        metavar="IMG",
        help="image files and folders (a folder's images in name order; its subfolders with "
        "--recursive)",
    )
    segment.add_argument("--classes", required=True, help='e.g. "cat,dog,person|man"')
    segment.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output folder: NAME_overlay.png and NAME_labels.png per image, in the image's "
        "subfolder with --recursive",
    )
    add_batch_options(segment, results="two outputs")
    add_distributed_options(segment, results="two outputs")
    segment.add_argument("--preset", choices=sorted(PRESETS), default=None)
    segment.add_argument(
        "--aux-file",
        type=Path,
        default=None,
        help="auxiliary texts: a .json from `itaclip aux`, or any other file in the official "
        "format ('name >=text' lines, one per non-background class, in class order)",
    )
    segment.add_argument(
        "--aux-ignore-names",
        action="store_true",
        help="do not check the names of an official-format --aux-file against --classes",
    )
    segment.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="auxiliary-text weight in [0, 1] (default: the preset's; 0.15 without one)",
    )
    segment.add_argument(
        "--background",
        default=None,
        help="background class (name or 0-based index): enables the thresholds, keeps its "
        "features unmixed and needs no line in an official-format --aux-file",
    )
    segment.add_argument(
        "--output-size",
        type=size_type,
        default=None,
        metavar="HxW",
        help="size of the label maps in px, height x width, each >= 1 (480x640 is 640 px wide; "
        "one number is a square) (mmseg ori_shape: slide on the resized image, then resize the "
        "logits and run PAMR at this size) (default: the image's)",
    )
    add_model_options(segment)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--version",
        action="store_true",
        help="print the versions of itaclip, common-kernels, torch and Python, and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_segment(commands)
    run_eval = commands.add_parser("eval", help="mIoU on a benchmark")
    run_eval.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    run_eval.add_argument("--root", type=Path, required=True)
    run_eval.add_argument("--split", default=None, help="(default: the validation split)")
    run_eval.add_argument(
        "--limit", type=int, default=None, help="first N images only, >= 1 (default: all)"
    )
    run_eval.add_argument(
        "--nproc", type=int, default=1, help="processes (gloo on the CPU), >= 1 (default: 1)"
    )
    run_eval.add_argument("--json", type=Path, default=None, help="write results here")
    add_model_options(run_eval)
    aux = commands.add_parser("aux", help="auxiliary texts (definitions/synonyms) from an LLM")
    aux.add_argument("--lm", required=True, help="transformers causal LM (hub id or folder)")
    aux.add_argument("--classes", required=True, help='e.g. "cat,dog,person|man"')
    aux.add_argument("--kind", choices=("definition", "synonym"), default="definition")
    aux.add_argument(
        "--max-new-tokens",
        type=int,
        default=256,
        help="tokens generated per answer, >= 1 (default: %(default)s)",
    )
    aux.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="file to write: .json, or any other suffix for the official 'name >= text' lines",
    )
    tiny = commands.add_parser(
        "tiny-model", help="write a tiny random open_clip model folder (offline smoke runs)"
    )
    tiny.add_argument("directory", type=Path, help="folder to write (use as segment --model DIR)")
    tiny.add_argument(
        "--seed",
        type=int,
        default=0,
        help="torch seed of the random weights, in [0, 2**64 - 1] (default: %(default)s)",
    )
    add_app_command(commands)
    add_verbose(parser)
    return parser


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``SegmenterConfig`` fields set by the command-line options."""
    options = {
        "stride": args.stride,
        "short_side": args.short_side,
        "alpha": getattr(args, "alpha", None),
        "batch_size": args.batch_size,
        "pamr": False if args.no_pamr else None,
        "faithful": True if args.faithful else None,
        "img_engineering": False if args.no_img_engineering else None,
        "allow_large": True if args.allow_large else None,
    }
    return {name: value for name, value in options.items() if value is not None}


def check_model_options(args: argparse.Namespace, preset: str | None) -> LoadPlan:
    """Settings, model, device and cache folder of ``segment`` and ``eval``, checked offline."""
    from itaclip.segmenter import check_from_pretrained

    with usage_errors():
        return check_from_pretrained(
            args.model,
            args.pretrained,
            preset,
            args.device,
            args.cache_dir,
            **config_overrides(args),
        )


def check_segment(args: argparse.Namespace) -> tuple[LoadPlan, ClassInputs, SegmentBatch]:
    """Every ``segment`` input checked, and every image decoded, before the model is loaded;
    each image's memory estimate too."""
    from itaclip.folders import plan_segment_batch
    from itaclip.inputs import check_classes
    from itaclip.segmenter import check_plan_memory

    plan = check_model_options(args, args.preset)
    with usage_errors():
        classes = parse_class_option(args.classes)
        inputs = check_classes(
            classes,
            background=args.background,
            aux_file=args.aux_file,
            check_aux_names=not args.aux_ignore_names,
        )
        protect = [] if args.aux_file is None else [(args.aux_file, "the --aux-file")]
        batch = plan_segment_batch(
            args.images,
            args.output,
            recursive=args.recursive,
            in_place=args.in_place,
            skip_existing=args.skip_existing,
            keep_going=args.keep_going,
            protect=protect,
            shard=args.shard,
            on_unreadable=lambda skipped: say(
                "itaclip segment", f"skipped {skipped.path}: {skipped.reason}"
            ),
        )
        sizes = {str(job.image.path): job.size for job in batch.jobs}
        check_plan_memory(plan, sizes, inputs, args.output_size)
    return plan, inputs, batch


def run_segment(args: argparse.Namespace, session: CommandSession) -> int:
    from common_kernels.runtime.batch import BatchRun
    from common_kernels.runtime.shards import Ledger, ledger_path
    from itaclip.cli_shards import check_segment_run, segment_with_ray
    from itaclip.folders import record_left_out, segment_batch
    from itaclip.segmenter import Segmenter

    prog = f"{PROGRAM} segment"
    with usage_errors():
        mode = distributed_mode(args)
    if mode == "check-shards":
        return check_segment_run(args)
    if mode == "ray":
        return segment_with_ray(args, check_model_options(args, args.preset))
    plan, inputs, batch = check_segment(args)
    for note in batch.notes(FLAGS["recursive"]):
        say(prog, note)
    run = BatchRun(len(batch.jobs), resume_command(prog, session.argv[1:]))
    run.skipped.extend(batch.unreadable)
    session.run = run
    ledger = None
    if batch.shard is not None:
        ledger = Ledger(ledger_path(args.output, batch.shard.name))
        say(prog, f"shard {batch.shard}: {len(batch.jobs)} image(s) to segment; its ledger: "
                  f"{ledger.path}")  # fmt: skip

    def written(job: SegmentJob, notes: list[str]) -> None:
        tqdm.write(f"{job.image.path} -> {job.overlay}", file=sys.stdout)
        for note in notes:
            say(prog, f"{job.overlay}: {note}")

    if batch.jobs:
        segment_batch(
            Segmenter.load(plan),
            batch,
            inputs,
            output_size=args.output_size,
            keep_going=args.keep_going,
            progress=not args.quiet,
            desc=prog,
            run=run,
            on_written=written,
            on_skipped=lambda skipped: say(prog, f"skipped {skipped.path}: {skipped.reason}"),
            ledger=ledger,
        )
    elif ledger is not None:
        record_left_out(batch, ledger)
    if ledger is not None:
        ledger.close()
    if run.skipped:
        say(prog, run.skipped_summary())
        return 1
    return 0


def check_eval(args: argparse.Namespace) -> tuple[LoadPlan, SegmentationDataset]:
    """Every ``eval`` input checked before the model is loaded."""
    from itaclip.evaluate import check_eval_memory, check_evaluation, check_report_file

    with usage_errors():
        dataset = check_evaluation(args.dataset, args.root, args.split, args.limit, args.nproc)
    plan = check_model_options(args, args.dataset)
    with usage_errors():
        check_eval_memory(plan, dataset)
    if args.json is not None:
        with usage_errors():
            check_report_file(args.json, dataset, plan.source)
    return plan, dataset


def run_eval(args: argparse.Namespace, session: CommandSession) -> int:
    from common_kernels.runtime.files import write_json
    from itaclip.evaluate import run_evaluation

    plan, dataset = check_eval(args)
    report = run_evaluation(plan, dataset, args.limit, args.nproc, progress=not args.quiet)
    if args.json is not None:
        write_json(args.json, asdict(report), indent=1, make_parents=True)
    print(f"{report.dataset}: mIoU {100 * report.miou:.2f} over {report.samples} images")
    return 0


def check_aux(args: argparse.Namespace) -> tuple[list[str], SamplingConfig, Path | str]:
    """Every ``aux`` input checked before the language model is loaded."""
    from itaclip.generate import check_aux_output, check_lm, make_sampling, require_transformers

    with usage_errors():
        require_transformers()
        names = [names[0] for names in parse_class_option(args.classes)]
        sampling = make_sampling(max_new_tokens=args.max_new_tokens)
        lm = check_lm(args.lm)
        check_aux_output(args.output, lm)
    return names, sampling, lm


def run_aux(args: argparse.Namespace, session: CommandSession) -> int:
    from common_kernels.runtime.files import write_json
    from itaclip.auxfile import write_aux_file
    from itaclip.generate import AuxTextGenerator

    names, sampling, lm = check_aux(args)
    texts = AuxTextGenerator.load(lm, sampling).generate(args.kind, names)
    if args.output.suffix.lower() == ".json":
        report = {"lm": args.lm, "kind": args.kind, "classes": names, "texts": texts}
        write_json(args.output, report, indent=1, make_parents=True)
    else:  # the official format: one line per class, whitespace runs collapsed
        write_aux_file(args.output, names, [" ".join(text.split()) for text in texts])
    for name, text in zip(names, texts, strict=True):
        print(f"{name} >= {text}")
    return 0


def run_tiny_model(args: argparse.Namespace, session: CommandSession) -> int:
    from itaclip.tiny import save_tiny_model

    print(f"wrote {save_tiny_model(args.directory, seed=args.seed)}")
    return 0


COMMANDS = {"segment": run_segment, "eval": run_eval, "aux": run_aux, "tiny-model": run_tiny_model}
COMMANDS["app"] = run_app


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``itaclip`` console script; returns the exit status.

    Bad inputs print ``itaclip COMMAND: error: ...`` (one line) and return 2, failures while
    working return 1, Ctrl-C prints ``itaclip COMMAND: interrupted`` and returns 130, SIGTERM
    ``itaclip COMMAND: terminated`` and 143 (``common_kernels.runtime.cli.run_main``); ``segment``'s
    lines add how many images were written and the command that resumes the run.
    ``--version`` (first) prints the versions and returns 0.

    Args:
        argv: command-line arguments without the program name (None = ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        print(version_line(PROGRAM, "itaclip"))
        return 0
    session = CommandSession(argv)

    def run() -> int:
        args = build_parser().parse_args(argv)
        from itaclip.quiet import quiet

        with quiet(args.verbose):
            return COMMANDS[args.command](args, session)

    prog = command_prog(PROGRAM, argv, COMMANDS)
    return run_main(
        prog,
        run,
        interrupt_hint=session.interrupt_hint,
        flags=FLAGS,
    )


if __name__ == "__main__":
    sys.exit(main())
