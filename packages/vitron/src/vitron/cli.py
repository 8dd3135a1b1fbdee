"""The ``vitron`` command.

vitron run "segment the dog and make it a cat" --image dog.png -o out/ --model DIR_OR_HUB_ID
          [--specialists specialists.json] [--set itaclip.signal_weight=0.5] [--box x1,y1,x2,y2]
          [--reply-file reply.txt]   (--planner ID instead of --model: any chat model)
vitron chat --model DIR_OR_HUB_ID --image dog.png -o out/
vitron app -o out/ [--planner ID | --model DIR] [--port 7860]   (a local Gradio page; vitron[app])
vitron parse 'reply text with <invoke>...</invoke> or <module>B</module>...' [--images N]
          [--videos N] [--region K ...]
vitron specialists [--specialists specialists.json]
vitron train --model DIR --data train.jsonl --stage 2 -o trained/ [--lora-rank 8]
          [--devices 2 --strategy ddp --precision bf16-mixed --accumulate-grad-batches 4
          --gradient-checkpointing] [--signal-targets targets/targets.json (stage 3)]
vitron build-targets --data stage3.jsonl --specialists S.json -o targets/   (stage-3 targets)
vitron convert-official BASE [--lora LORA] [--vision-tower TOWER] -o FOLDER   (the release)
vitron tiny-model DIR; vitron tiny-specialists DIR   (tiny random model, specialists: to try)
vitron eval refseg --refs 'refs(unc).p' --instances instances.json --images train2014/
          --split val --model DIR -o out/ [--limit N]        (cIoU, gIoU -> out/results.json)
vitron eval vqa --questions Q.json --annotations A.json --images val2014/ --model DIR -o out/
vitron eval qa --data qa.jsonl --model DIR -o out/   (exact match of image, question, answer)

Errors: a bad input is one line ``vitron COMMAND: error: ...`` naming the flag, exit status 2,
before any model loads and anything is written; a failure while working exits 1 (``run``: after
one line per specialist call that did not succeed); Ctrl-C exits 130. The checks are the API's
(:mod:`vitron.options`, :mod:`vitron.training.config`), printed with ``FLAGS``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from common_kernels.runtime.cli import (
    EXIT_WORK,
    Parser,
    UsageError,
    WorkError,
    add_verbose,
    check_device,
    command_prog,
    run_main,
    version_line,
)
from common_kernels.runtime.quiet import quiet_libraries
from vitron.checks import SEED_MAX, NamedFailure, check_output_folder, check_seed
from vitron.invocations import GRAMMAR_HELP, GRAMMARS, InvocationError, parse_reply
from vitron.options import (
    DTYPES,
    AssistantOptions,
    ModelLoadError,
    RegionTexts,
    build_registry,
    check_outputs,
    check_port,
    check_request,
    input_counts,
    one_line,
    read_reply_file,
)
from vitron.planner_cli import add_model_source_options, check_model_source

TURN_NAME = "turn.json"  # what ``run`` writes besides its calls' files
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # the 0.1 names
FLAGS = {
    "model": "--model", "output": "-o/--output", "dtype": "--dtype", "device": "--device",
    "specialists": "--specialists", "settings": "--set", "max_new_tokens": "--max-new-tokens",
    "temperature": "--temperature", "top_p": "--top-p", "seed": "--seed",
    "max_rounds": "--max-rounds", "grammar": "--grammar", "image": "--image", "video": "--video",
    "box": "--box", "stroke": "--stroke", "mask": "--mask", "stroke_width": "--stroke-width",
    "reply_file": "--reply-file", "port": "--port", "limit": "--limit", "data": "--data",
    "images": "--images", "videos": "--videos", "region": "--region", "in_place": "--in-place",
    "directory": "DIR",  # vitron train, then vitron eval and the rest:
    "val_data": "--val-data", "stage": "--stage", "max_steps": "--max-steps",
    "batch_size": "--batch-size", "lr": "--lr", "lora_rank": "--lora-rank",
    "align_weight": "--align-weight", "synergy_weight": "--synergy-weight",
    "accelerator": "--accelerator", "devices": "--devices", "strategy": "--strategy",
    "precision": "--precision", "accumulate_grad_batches": "--accumulate-grad-batches",
    "signal_targets": "--signal-targets", "resume": "--resume",
    "checkpoint_every_n_steps": "--checkpoint-every-steps",
    "checkpoint_every_minutes": "--checkpoint-every-minutes", "num_workers": "--num-workers",
    "refs": "--refs", "instances": "--instances", "split": "--split", "template": "--template",
    "mask_backend": "--mask-backend", "questions": "--questions", "annotations": "--annotations",
    "image_name": "--image-name", "base": "BASE", "lora": "--lora", "planner": "--planner",
    "engine": "--engine", "no_repeat": "--no-repeat", "vision_tower": "--vision-tower",
}  # fmt: skip


def dtype_option(text: str) -> str:
    """``--dtype`` value; the 0.1 names fp32, bf16 and fp16 still work."""
    return DTYPE_ALIASES.get(text, text)


def assistant_options(args: argparse.Namespace) -> AssistantOptions:
    """The checked :class:`~vitron.options.AssistantOptions` of ``run``, ``chat``, ``app``,
    ``eval`` (a bad value names its flag)."""
    check_model_source(args)
    return AssistantOptions(
        args.model, args.output, args.dtype, args.device, args.specialists, args.set or (),
        args.offload, args.max_new_tokens, args.sample, args.temperature, args.top_p, args.seed,
        args.max_rounds, args.grammar,
    )  # fmt: skip


def request(args: argparse.Namespace, written: tuple[str, ...] = ()) -> tuple[list, list, list]:
    """The checked ``--image``, ``--video`` and region flags of ``run`` and ``chat``, and an
    output that would change one of them (or ``--reply-file``, ``--specialists``) refused
    unless ``--in-place``."""
    regions = RegionTexts(args.box or (), args.stroke or (), args.mask or (), args.stroke_width)
    found = check_request(args.image or (), args.video or (), regions)
    check_outputs(
        args.output, images=args.image or (), videos=args.video or (), masks=args.mask or (),
        files=(getattr(args, "reply_file", None), args.specialists), written=written,
        in_place=args.in_place,
    )  # fmt: skip
    return found


def run_run(args: argparse.Namespace) -> int:
    """``vitron run``: every check, one turn, ``turn.json``; a call that did not succeed prints
    ``vitron run: error: call ID (TASK) failed: WHY`` (one line each) and exits 1."""
    from vitron.chat import print_turn
    from vitron.io import write_json
    from vitron.planner_cli import open_assistant

    options = assistant_options(args)
    reply = read_reply_file(args.reply_file)
    images, videos, regions = request(args, written=(TURN_NAME,))
    assistant = open_assistant(options, [] if reply is None else [reply], args)
    turn = assistant.chat(args.prompt, images, videos, regions, progress=True)
    write_json(Path(args.output) / TURN_NAME, turn.to_dict())
    print_turn(turn)
    for outcome in turn.failed:
        print(f"vitron run: error: {outcome.failure()}", file=sys.stderr)
    return EXIT_WORK if turn.failed else 0


def run_chat(args: argparse.Namespace, stdin=None) -> int:
    """``vitron chat``: every check, then the conversation on ``stdin`` (:mod:`vitron.chat`)."""
    from vitron.chat import chat_loop
    from vitron.planner_cli import open_assistant

    options = assistant_options(args)
    images, videos, regions = request(args)
    return chat_loop(open_assistant(options, (), args), args.output, images, videos, regions, stdin)


def run_app(args: argparse.Namespace) -> int:
    from vitron.app import ChatSession, serve
    from vitron.planner_cli import open_page_assistant

    check_port(args.port)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("needs gradio: pip install 'vitron[app]'") from None
    session = ChatSession(*open_page_assistant(assistant_options(args), args))
    # serve: as every package's page, it exits promptly on Ctrl-C and SIGTERM, a turn included
    serve(session, host=args.host, port=args.port, share=args.share)
    return 0


def run_parse(args: argparse.Namespace) -> int:
    counts = input_counts(args.images, args.videos, args.region or ())
    text = sys.stdin.read() if args.reply == "-" else args.reply
    try:
        parsed = parse_reply(text, grammar=args.grammar, counts=counts)
    except InvocationError as err:
        raise UsageError(f"REPLY does not parse: {one_line(err)}") from None
    data = {
        "text": parsed.text,
        "grammar": parsed.grammar,
        "signals": parsed.num_signals,
        "invocation": None if parsed.invocation is None else parsed.invocation.to_dict(),
        "order": [] if parsed.invocation is None else [c.id for c in parsed.invocation.order()],
    }
    print(json.dumps(data, indent=2, ensure_ascii=False))
    return 0


def run_specialists(args: argparse.Namespace) -> int:
    registry = build_registry(args.specialists, args.set or (), check_device(args.device))
    for row in registry.describe():
        status = (
            "ready"
            if not row["missing"]
            else f"missing {', '.join(row['missing'])} (vitron[{row['extra']}])"
        )
        print(
            f"{row['name']:<18} {', '.join(row['tasks']):<34} consumes {', '.join(row['consumes'])}"
        )
        print(f"{'':<18} {status}; weights: {row['hub_weights']}")
    return 0


def run_build_targets(args: argparse.Namespace) -> int:
    """Write the stage-3 signal targets of ``--data`` to ``-o`` (see vitron.training.targets)."""
    from vitron.training.data import TargetIndex
    from vitron.training.targets import build_signal_targets

    device = check_device(args.device)
    registry = build_registry(args.specialists, args.set or (), device, args.offload)
    try:
        path = build_signal_targets(args.data, registry, args.output)
    except RuntimeError as err:  # a specialist that cannot load or run (SpecialistError too)
        raise WorkError(f"cannot build the targets: {one_line(err)}") from err
    records = TargetIndex(path).records
    calls = sum(len(entries) for entries in records.values())
    print(f"signal targets of {calls} call(s) in {len(records)} record(s) written to {path}")
    return 0


def run_tiny_model(args: argparse.Namespace) -> int:
    from vitron.models.vitron import model_size
    from vitron.tiny import tiny_model

    check_seed(args.seed)
    check_output_folder(args.directory, "directory")
    model = tiny_model(args.seed, args.vision_backend)
    model.save_pretrained(args.directory)
    count = model_size(model)
    print(
        f"tiny random Vitron model ({count} parameters, seed {args.seed}) "
        f"written to {args.directory}"
    )
    return 0


def run_convert_official(args: argparse.Namespace) -> int:
    """``vitron convert-official``: every file checked, then the release -> a Vitron folder."""
    from vitron.models.vitron import VitronModel

    check_output_folder(args.output, "output")
    dtype = DTYPES.get(args.dtype)  # from_official checks every file before any weight
    model = VitronModel.from_official(args.base, args.lora, args.vision_tower, dtype=dtype)
    model.save_pretrained(args.output)
    print(f"official Vitron checkpoint converted to {args.output}; run it with --model")
    return 0


def run_tiny_specialists(args: argparse.Namespace) -> int:
    from vitron.tiny import write_tiny_specialists

    check_seed(args.seed)
    check_output_folder(args.directory, "directory")
    path = write_tiny_specialists(args.directory, args.seed, video=not args.no_video)
    print(f"tiny random specialists written to {args.directory}; use --specialists {path}")
    return 0


def number(parser: argparse.ArgumentParser, flag: str, kind: type, default, text: str, **more):
    """A numeric flag whose help gives its unit and range, then ``(default: DEFAULT)``."""
    parser.add_argument(flag, type=kind, default=default, help=f"{text} (default: %(default)s)",
                        **more)  # fmt: skip


def add_offload_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--offload", action=argparse.BooleanOptionalAction, default=True,
        help="keep each specialist on the CPU between its calls (default; --no-offload keeps "
        "all of them on --device: faster calls, more device memory)",
    )  # fmt: skip


def add_specialist_options(parser: argparse.ArgumentParser, device: str | None = None) -> None:
    where = "cpu" if device else "cuda when available"
    parser.add_argument(
        "--device", default=device, help=f"cpu, cuda, cuda:N or mps (default: {where})"
    )
    parser.add_argument("--specialists", default=None, help="JSON: adapter name -> options")
    parser.add_argument("--set", action="append", metavar="ADAPTER.OPTION=VALUE",
                        help="override one specialist option (repeatable)")  # fmt: skip


def add_model_options(parser: argparse.ArgumentParser, planner: bool = True) -> None:
    add_model_source_options(parser, planner)
    parser.add_argument(
        "--dtype", type=dtype_option, choices=("auto", *DTYPES), default="auto",
        help="weights dtype; auto: bfloat16 on CUDA (float16 on a GPU without bfloat16), "
        "float32 on the CPU",
    )  # fmt: skip
    add_specialist_options(parser)
    add_offload_option(parser)
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    number(parser, "--max-new-tokens", int, 256, "tokens per reply, >= 1")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    number(parser, "--temperature", float, 0.7, "sampling temperature, a finite number > 0")
    number(parser, "--top-p", float, 0.9, "nucleus sampling mass, in (0, 1]")
    number(parser, "--seed", int, 0, f"sampling and specialists' seed, in [0, {SEED_MAX}]")
    number(parser, "--max-rounds", int, 1, "rounds of calls per turn, >= 1")
    parser.add_argument("--grammar", choices=GRAMMARS, default="auto", help=GRAMMAR_HELP)


def add_media_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", action="append", type=Path, help="input image (repeatable)")
    parser.add_argument(
        "--video", action="append", type=Path, help="input video: GIF or frame folder"
    )
    parser.add_argument(
        "--box", action="append", help="region box x1,y1,x2,y2 (pixels or [0, 1])[@K]"
    )
    parser.add_argument("--stroke", action="append", help="region stroke 'x,y x,y ...'[@K]")
    number(parser, "--stroke-width", float, 8.0, "stroke brush width in pixels, > 0")
    parser.add_argument("--mask", action="append", help="region mask image PATH[@K]")
    parser.add_argument(
        "--in-place", action="store_true",
        help="allow -o to be a --video frame folder, and run's turn.json to replace an input "
        "file (atomically); otherwise refused before any work",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from vitron.evaluation.command import add_eval_parser
    from vitron.training.command import add_train_parser

    parser = Parser(prog="vitron", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="one request: reply, dispatch calls, answer")
    run.add_argument("prompt")
    add_model_options(run)
    add_media_options(run)
    run.add_argument(
        "--reply-file", type=Path, default=None,
        help="testing aid: use this file's text as the LLM's first reply instead of decoding",
    )  # fmt: skip
    chat = commands.add_parser("chat", help="interactive conversation in the terminal")
    add_model_options(chat)
    add_media_options(chat)
    app = commands.add_parser("app", help="a local Gradio page (pip install 'vitron[app]'); "
                              "no --model/--planner: the default planner")  # fmt: skip
    add_model_options(app)
    app.add_argument("--host", default="127.0.0.1", help="address to serve on")
    number(app, "--port", int, 7860, "TCP port, in [1, 65535]")
    app.add_argument("--share", action="store_true", help="also open a public Gradio link")
    parse = commands.add_parser("parse", help="parse a reply (or - for stdin) into calls")
    parse.add_argument("reply", metavar="REPLY", help="the reply text, or - to read stdin")
    parse.add_argument("--grammar", choices=GRAMMARS, default="auto", help=GRAMMAR_HELP)
    number(parse, "--images", int, None, "input images the reply sees, >= 0 (None: unchecked)")
    number(parse, "--videos", int, None, "input videos the reply sees, >= 0 (None: unchecked)")
    parse.add_argument(
        "--region", type=int, action="append", metavar="K",
        help="a user-drawn region on image K, in [0, --images - 1] (repeatable, in order: "
        "$region0, $region1, ...; default: none)",
    )  # fmt: skip
    specialists = commands.add_parser("specialists", help="list the adapters and what they need")
    add_specialist_options(specialists, device="cpu")
    add_train_parser(commands, number)
    targets = commands.add_parser(
        "build-targets", help="stage-3 signal targets of a JSONL from the specialists"
    )
    targets.add_argument("--data", type=Path, required=True, help="training JSONL (stage 3)")
    add_specialist_options(targets)
    add_offload_option(targets)
    targets.add_argument(
        "-o", "--output", type=Path, required=True,
        help="folder for targets.safetensors and targets.json",
    )  # fmt: skip
    convert = commands.add_parser("convert-official", help="convert the released checkpoint")
    convert.add_argument("base", metavar="BASE", help="vitron-base folder or hub id")
    convert.add_argument("--lora", help="vitron-lora folder or hub id (default: none)")
    convert.add_argument("--vision-tower", help="LanguageBind_Image folder or hub id")
    convert.add_argument("-o", "--output", type=Path, required=True, help="Vitron folder")
    convert.add_argument("--dtype", type=dtype_option, choices=("auto", *DTYPES), default="auto",
                         help="the written weights' dtype (default: auto: float32)")  # fmt: skip
    tiny = commands.add_parser("tiny-model", help="write a tiny random Vitron model folder")
    tiny.add_argument("directory", type=Path, metavar="DIR", help="folder to write")
    number(tiny, "--seed", int, 0, f"seed of the random weights, in [0, {SEED_MAX}]")
    tiny.add_argument(
        "--vision-backend",
        choices=("transformers", "open_clip"),
        default="transformers",
        help="the vision tower's library (default: transformers; open_clip: vitron[open-clip])",
    )
    tiny_spec = commands.add_parser("tiny-specialists", help="write tiny random specialists")
    tiny_spec.add_argument("directory", type=Path, metavar="DIR", help="folder to write")
    number(tiny_spec, "--seed", int, 0, f"seed of the random weights, in [0, {SEED_MAX}]")
    tiny_spec.add_argument(
        "--no-video", action="store_true", help="skip the video models (text- and image-to-video)"
    )
    add_eval_parser(commands, add_model_options, number)
    add_verbose(parser)
    parser.add_argument(
        "--version", action="store_true",
        help="print the versions of vitron, common-kernels, torch and Python, and exit",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vitron`` console script; returns the exit status.

    Bad inputs print ``vitron COMMAND: error: ...`` (one line) and return 2, failures while
    working return 1, Ctrl-C prints ``vitron COMMAND: interrupted`` and returns 130. Every
    subcommand in ``COMMANDS`` gets this contract by raising ``UsageError``, ``ValueError``
    (``InvalidArgument`` printed with the command's flags) or ``WorkError``. ``vitron
    --version`` prints the versions; third-party progress bars, deprecation notices and tips
    are off unless ``--verbose``.

    Args:
        argv: command-line arguments without the program name (None = ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        print(version_line("vitron", "vitron"))
        return 0
    prog = command_prog("vitron", argv, COMMANDS)

    def run() -> int:
        args = build_parser().parse_args(argv)
        with quiet_libraries(verbose=getattr(args, "verbose", False)):
            return COMMANDS[args.command](args)

    return run_main(
        prog, run, usage_errors=(FileNotFoundError,), work_errors=(ModelLoadError,),
        describe=describe, flags=FLAGS,
    )  # fmt: skip


def describe(error: BaseException) -> str:
    """An error's one line, an argument it names (``NamedFailure``) spelt by its flag."""
    return one_line(error.render(FLAGS)) if isinstance(error, NamedFailure) else one_line(error)


def run_train(args: argparse.Namespace) -> int:
    """``vitron train`` (see :mod:`vitron.training.command`)."""
    from vitron.training.command import run_train as train

    return train(args)


def run_eval(args: argparse.Namespace) -> int:
    """``vitron eval TASK`` (see :mod:`vitron.evaluation.command`)."""
    from vitron.evaluation.command import run_eval as evaluate

    return evaluate(args, assistant_options(args))


COMMANDS = {
    "run": run_run, "chat": run_chat, "app": run_app, "parse": run_parse,
    "specialists": run_specialists, "train": run_train, "build-targets": run_build_targets,
    "convert-official": run_convert_official,
    "tiny-model": run_tiny_model, "tiny-specialists": run_tiny_specialists, "eval": run_eval,
}  # fmt: skip

if __name__ == "__main__":
    sys.exit(main())
