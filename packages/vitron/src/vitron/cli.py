"""The ``vitron`` command.

vitron run "segment the dog and make it a cat" --image dog.png -o out/ --model DIR_OR_HUB_ID
          [--specialists specialists.json] [--set itaclip.signal_weight=0.5] [--box x1,y1,x2,y2]
          [--reply-file reply.txt]
vitron chat --model DIR_OR_HUB_ID --image dog.png -o out/
vitron app --model DIR_OR_HUB_ID -o out/ [--port 7860]   (a local Gradio page; vitron[app])
vitron parse 'reply text with <invoke>...</invoke> or <module>B</module>...' [--images N]
          [--videos N] [--region K ...]
vitron specialists [--specialists specialists.json]
vitron train --model DIR --data train.jsonl --stage 2 -o trained/ [--lora-rank 8]
          [--devices 2 --strategy ddp --precision bf16-mixed --accumulate-grad-batches 4
          --gradient-checkpointing] [--signal-targets targets/targets.json (stage 3)]
vitron build-targets --data stage3.jsonl --specialists S.json -o targets/   (stage-3 targets)
vitron tiny-model DIR            (a tiny random Vitron model folder, for trying things out)
vitron tiny-specialists DIR      (tiny random specialists + DIR/specialists.json)
vitron eval refseg --refs 'refs(unc).p' --instances instances.json --images train2014/
          --split val --model DIR -o out/ [--limit N]        (cIoU, gIoU -> out/results.json)
vitron eval vqa --questions Q.json --annotations A.json --images val2014/ --model DIR -o out/
vitron eval qa --data qa.jsonl --model DIR -o out/          (exact match of {image, question,
          answer} lines)

Errors: a bad input ends with one line ``vitron COMMAND: error: ...`` naming the flag and the
accepted range, exit status 2, found before any model is loaded and before anything is written;
a failure while working (a model that cannot be loaded, a full disk) exits 1 with one line;
Ctrl-C exits 130 with ``vitron COMMAND: interrupted``. A subcommand raises ``UsageError`` for
a bad input and ``WorkError`` for a failure; ``main`` prints them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from common_kernels.cli import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_WORK,
    Parser,
    UsageError,
    WorkError,
    check_device,
    check_folder_writable,
    command_prog,
    run_main,
)
from vitron.checks import SEED_MAX, check_at_least, check_input_file, check_seed
from vitron.invocations import GRAMMARS, InputCounts, InvocationError, parse_reply
from vitron.options import (
    DTYPES,
    AssistantOptions,
    ModelLoadError,
    RegionTexts,
    build_registry,
    check_port,
    check_request,
    one_line,
    parse_region,
    read_reply_file,
)

DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # the 0.1 names
FLAGS = {
    "model": "--model", "output": "-o/--output", "dtype": "--dtype", "device": "--device",
    "specialists": "--specialists", "settings": "--set", "max_new_tokens": "--max-new-tokens",
    "temperature": "--temperature", "top_p": "--top-p", "seed": "--seed",
    "max_rounds": "--max-rounds", "grammar": "--grammar", "image": "--image", "video": "--video",
    "box": "--box", "stroke": "--stroke", "mask": "--mask", "stroke_width": "--stroke-width",
    "reply_file": "--reply-file", "port": "--port", "limit": "--limit", "data": "--data",
}  # fmt: skip


def dtype_option(text: str) -> str:
    """``--dtype`` value; the 0.1 names fp32, bf16 and fp16 still work."""
    return DTYPE_ALIASES.get(text, text)


def assistant_options(args: argparse.Namespace) -> AssistantOptions:
    """The checked :class:`~vitron.options.AssistantOptions` of ``run``, ``chat``, ``app``,
    ``eval`` (a bad value names its flag)."""
    return AssistantOptions(
        args.model, args.output, args.dtype, args.device, args.specialists, args.set or (),
        args.offload, args.max_new_tokens, args.sample, args.temperature, args.top_p, args.seed,
        args.max_rounds, args.grammar, names=FLAGS,
    )  # fmt: skip


def request(args: argparse.Namespace) -> tuple[list, list, list]:
    """The checked ``--image``, ``--video`` and region flags of ``run`` and ``chat``."""
    regions = RegionTexts(args.box or (), args.stroke or (), args.mask or (), args.stroke_width)
    return check_request(args.image or (), args.video or (), regions, FLAGS)


def print_turn(turn) -> None:
    for round_ in turn.outcomes:
        for o in round_:
            print(f"  [{o.call.id}] {o.call.task}: {o.status} - {o.summary}")
            for path in o.files:
                print(f"      {path}")
    if turn.parse_error:
        print(
            f"warning: the reply's calls could not be parsed ({turn.parse_error})", file=sys.stderr
        )
    if turn.unexecuted is not None:
        print(
            "warning: the final answer wrote more calls than --max-rounds allows; not run",
            file=sys.stderr,
        )
    print(turn.answer)


def run_run(args: argparse.Namespace) -> int:
    """``vitron run``: every check, one turn, ``turn.json``; a call that did not succeed prints
    ``vitron run: error: call ID (TASK) failed: WHY`` (one line each) and exits 1."""
    from vitron.io import write_json
    from vitron.options import open_assistant

    options = assistant_options(args)
    reply = read_reply_file(args.reply_file, FLAGS)
    images, videos, regions = request(args)
    assistant = open_assistant(options, [] if reply is None else [reply])
    turn = assistant.chat(args.prompt, images, videos, regions, progress=True)
    write_json(Path(args.output) / "turn.json", turn.to_dict())
    print_turn(turn)
    for outcome in turn.failed:
        print(f"vitron run: error: {outcome.failure()}", file=sys.stderr)
    return EXIT_WORK if turn.failed else 0


CHAT_HELP = """commands: /image PATH, /video PATH, /box x1,y1,x2,y2[@K], /reset, /quit
(images, videos and boxes given this way join your next message)"""


def run_chat(args: argparse.Namespace, stdin=None) -> int:
    from vitron.io import load_image, load_video, write_json
    from vitron.options import open_assistant

    stdin = stdin or sys.stdin
    options = assistant_options(args)
    images, videos, regions = request(args)
    assistant = open_assistant(options)
    print(CHAT_HELP)
    turns = 0
    pending_images, pending_videos, pending_regions = list(images), list(videos), list(regions)
    for line in stdin:
        line = line.strip()
        if not line:
            continue
        command, _, rest = line.partition(" ")
        try:
            if command == "/quit":
                break
            if command == "/reset":
                assistant.reset()
                pending_images, pending_videos, pending_regions = [], [], []
                print("(conversation reset)")
            elif command == "/image":
                pending_images.append(load_image(rest.strip()))
                print(
                    f"(image $image{len(assistant.inputs.images) + len(pending_images) - 1} added)"
                )
            elif command == "/video":
                pending_videos.append(load_video(rest.strip()))
                print("(video added)")
            elif command == "/box":
                every = [*assistant.inputs.images, *pending_images]
                pending_regions.append(parse_region("box", rest.strip(), every, 8.0, "/box"))
                print("(region added)")
            elif command.startswith("/"):
                print(f"unknown command {command}; {CHAT_HELP}")
            else:
                pending = (pending_images, pending_videos, pending_regions)
                pending_images, pending_videos, pending_regions = [], [], []  # used or dropped
                turn = assistant.chat(line, *pending, progress=True)
                turns += 1
                write_json(Path(args.output) / f"turn_{turns:03d}.json", turn.to_dict())
                print_turn(turn)
                for outcome in turn.failed:
                    print(f"error: {outcome.failure()}")
        except (FileNotFoundError, IsADirectoryError, ValueError) as err:  # report, go on
            print(f"error: {one_line(err)}")
    return 0


def run_app(args: argparse.Namespace) -> int:
    from vitron.app import ChatSession, launch_app
    from vitron.options import open_assistant

    check_port(args.port, FLAGS)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("needs gradio: pip install 'vitron[app]'") from None
    session = ChatSession(open_assistant(assistant_options(args)), args.output)
    launch_app(session, server_name=args.host, server_port=args.port, share=args.share)
    return 0


def run_parse(args: argparse.Namespace) -> int:
    for flag, count in (("--images", args.images), ("--videos", args.videos)):
        if count is not None:
            check_at_least(count, 0, flag)
    for k in args.region or []:
        check_at_least(k, 0, "--region")
    counts = None
    if args.images is not None or args.videos is not None or args.region:
        images = args.images if args.images is not None else max(args.region or [-1]) + 1
        if any(k >= images for k in args.region or []):
            raise UsageError(f"--region needs an image index below --images {images}")
        counts = InputCounts(images, args.videos, region_images=tuple(args.region or ()))
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
    registry = build_registry(
        args.specialists, args.set or (), check_device(args.device), names=FLAGS
    )
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

    check_input_file(args.data, "--data")
    check_folder_writable(args.output, "-o/--output")
    device = check_device(args.device)
    registry = build_registry(args.specialists, args.set or (), device, args.offload, FLAGS)
    try:
        path = build_signal_targets(args.data, registry, args.output)
    except RuntimeError as err:  # a specialist that cannot load or run (SpecialistError too)
        raise WorkError(f"cannot build the targets: {one_line(err)}") from err
    records = TargetIndex(path).records
    calls = sum(len(entries) for entries in records.values())
    print(f"signal targets of {calls} call(s) in {len(records)} record(s) written to {path}")
    return 0


def run_tiny_model(args: argparse.Namespace) -> int:
    from vitron.tiny import tiny_model

    check_seed(args.seed, FLAGS)
    check_folder_writable(args.directory, "DIR")
    model = tiny_model(args.seed, args.vision_backend)
    model.save_pretrained(args.directory)
    count = sum(p.numel() for p in model.parameters())
    print(
        f"tiny random Vitron model ({count} parameters, seed {args.seed}) "
        f"written to {args.directory}"
    )
    return 0


def run_tiny_specialists(args: argparse.Namespace) -> int:
    from vitron.tiny import write_tiny_specialists

    check_seed(args.seed, FLAGS)
    check_folder_writable(args.directory, "DIR")
    path = write_tiny_specialists(args.directory, args.seed, video=not args.no_video)
    print(f"tiny random specialists written to {args.directory}; use --specialists {path}")
    return 0


TRAIN_FLAGS = {
    "model": "--model", "data": "--data", "val_data": "--val-data", "output": "-o/--output",
    "stage": "--stage", "max_steps": "--max-steps", "batch_size": "--batch-size", "lr": "--lr",
    "lora_rank": "--lora-rank", "align_weight": "--align-weight",
    "synergy_weight": "--synergy-weight", "seed": "--seed", "accelerator": "--accelerator",
    "devices": "--devices", "strategy": "--strategy", "precision": "--precision",
    "accumulate_grad_batches": "--accumulate-grad-batches",
    "signal_targets": "--signal-targets", "resume": "--resume",
    "checkpoint_every_n_steps": "--checkpoint-every-steps",
    "checkpoint_every_minutes": "--checkpoint-every-minutes",
}  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    """``vitron train``: every check of ``train`` (with the flags' names), then one stage;
    SIGINT / SIGTERM save ``interrupted.ckpt`` and exit 130 / 143 saying how to resume."""
    from vitron.training import TrainConfig, TrainingInterrupted, check_train, train
    from vitron.training.config import check_train_settings, parse_devices

    fields = TrainConfig.__dataclass_fields__
    settings = {name: getattr(args, name) for name in fields if name != "devices"}
    settings["devices"] = parse_devices(args.devices, TRAIN_FLAGS)
    check_train_settings(settings, TRAIN_FLAGS)
    config = TrainConfig(**settings)
    files = {"val_data": args.val_data, "signal_targets": args.signal_targets}
    check_train(args.model, args.data, args.output, config, **files, resume=args.resume,
                names=TRAIN_FLAGS)  # fmt: skip
    try:
        result = train(args.model, args.data, args.output, **settings, **files, resume=args.resume)
    except TrainingInterrupted as stop:
        print(
            f"vitron train: {stop.signal_name} at step {stop.step}, saved {stop.checkpoint}; "
            f"resume with the same command and --resume {stop.checkpoint}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED if stop.signal_name == "SIGINT" else EXIT_TERMINATED
    except (FileNotFoundError, ValueError) as err:  # the data, found bad while working
        raise UsageError(one_line(err)) from None
    print(
        f"stage {args.stage}: loss {result['first_loss']:.4f} -> {result['last_loss']:.4f}; "
        f"model saved to {args.output}"
    )
    return 0


def add_offload_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--offload", action=argparse.BooleanOptionalAction, default=True,
        help="keep each specialist on the CPU between its calls (default; --no-offload keeps "
        "all of them on --device: faster calls, more device memory)",
    )  # fmt: skip


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Vitron folder or hub id (save_pretrained)")
    parser.add_argument(
        "--dtype", type=dtype_option, choices=("auto", *DTYPES), default="auto",
        help="weights dtype; auto: bfloat16 on CUDA (float16 on a GPU without bfloat16), "
        "float32 on the CPU",
    )  # fmt: skip
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available)"
    )
    parser.add_argument("--specialists", default=None, help="JSON: adapter name -> options")
    parser.add_argument(
        "--set",
        action="append",
        metavar="ADAPTER.OPTION=VALUE",
        help="override one specialist option",
    )
    add_offload_option(parser)
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="per reply (>= 1)")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling (> 0)")
    parser.add_argument("--top-p", type=float, default=0.9, help="sampling, in (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help=f"in [0, {SEED_MAX}]")
    parser.add_argument("--max-rounds", type=int, default=1, help="rounds of calls per turn (>= 1)")
    parser.add_argument("--grammar", choices=GRAMMARS, default="auto")


def add_media_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", action="append", type=Path, help="input image (repeatable)")
    parser.add_argument(
        "--video", action="append", type=Path, help="input video: GIF or frame folder"
    )
    parser.add_argument(
        "--box", action="append", help="region box x1,y1,x2,y2 (pixels or [0, 1])[@K]"
    )
    parser.add_argument("--stroke", action="append", help="region stroke 'x,y x,y ...'[@K]")
    parser.add_argument(
        "--stroke-width", type=float, default=8.0, help="stroke brush width (px, > 0)"
    )
    parser.add_argument("--mask", action="append", help="region mask image PATH[@K]")


def build_parser() -> argparse.ArgumentParser:
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
    app = commands.add_parser("app", help="a local Gradio page (pip install 'vitron[app]')")
    add_model_options(app)
    app.add_argument("--host", default="127.0.0.1", help="address to serve on")
    app.add_argument("--port", type=int, default=7860, help="in [1, 65535]")
    app.add_argument("--share", action="store_true", help="also open a public Gradio link")
    parse = commands.add_parser("parse", help="parse a reply (or - for stdin) into calls")
    parse.add_argument("reply", metavar="REPLY", help="the reply text, or - to read stdin")
    parse.add_argument("--grammar", choices=GRAMMARS, default="auto")
    parse.add_argument("--images", type=int, default=None, help="input images the reply sees")
    parse.add_argument("--videos", type=int, default=None, help="input videos the reply sees")
    parse.add_argument(
        "--region", type=int, action="append", metavar="K",
        help="a user-drawn region on image K (repeatable, in order: $region0, $region1, ...)",
    )  # fmt: skip
    specialists = commands.add_parser("specialists", help="list the adapters and what they need")
    specialists.add_argument("--specialists", default=None)
    specialists.add_argument("--set", action="append")
    specialists.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    train = commands.add_parser("train", help="one training stage on a JSONL conversation file")
    train.add_argument("--model", required=True, help="Vitron folder or hub id to start from")
    train.add_argument("--data", type=Path, required=True, help="training JSONL")
    train.add_argument("--val-data", type=Path, default=None, help="validation JSONL")
    train.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    train.add_argument(
        "-o", "--output", type=Path, required=True, help="where the trained model goes"
    )
    train.add_argument(
        "--max-steps", type=int, default=1000, help="optimizer steps, >= 1 (default: 1000)"
    )
    train.add_argument(
        "--batch-size", type=int, default=4, help="samples per batch, >= 1 (default: 4)"
    )
    train.add_argument(
        "--lr", type=float, default=2e-5,
        help="peak learning rate (AdamW, cosine decay to 10%%), > 0 (default: 2e-5)",
    )  # fmt: skip
    train.add_argument(
        "--lora-rank", type=int, default=0, help="LoRA rank, >= 0 (default: 0 = no LoRA)"
    )
    train.add_argument(
        "--align-weight", type=float, default=1.0,
        help="stage-3 weight of 1 - cos(signal, target), >= 0 (default: 1.0)",
    )  # fmt: skip
    train.add_argument(
        "--synergy-weight", type=float, default=0.1,
        help="stage-3 weight of the task discriminator's loss, >= 0 (default: 0.1)",
    )  # fmt: skip
    train.add_argument(
        "--seed",
        type=int,
        default=0,
        help=f"weights and shuffling, in [0, {SEED_MAX}] (default: 0)",
    )
    train.add_argument(
        "--accelerator", default="auto", help="auto, cpu, cuda, gpu or mps (default: auto)"
    )
    train.add_argument(
        "--resume", type=Path, default=None, metavar="CKPT",
        help="continue from a checkpoint of this run (interrupted.ckpt or a periodic one in "
        "OUTPUT/lightning/checkpoints/); give the other options as before",
    )  # fmt: skip
    train.add_argument(
        "--checkpoint-every-steps", dest="checkpoint_every_n_steps", type=int, default=None,
        metavar="N", help="also write a resumable checkpoint every N optimizer steps, >= 1 "
        "(default: none)",
    )  # fmt: skip
    train.add_argument(
        "--checkpoint-every-minutes", dest="checkpoint_every_minutes", type=float, default=None,
        metavar="M", help="also write a resumable checkpoint every M minutes, > 0 (default: none)",
    )  # fmt: skip

    train.add_argument(
        "--devices", default="1", help="auto, a count (-1: all) or indices 0,1 (default 1)"
    )
    train.add_argument(
        "--strategy", default="auto",
        help="auto, ddp, fsdp, deepspeed_stage_2 / _3 (need deepspeed), ... (Lightning's names)",
    )  # fmt: skip
    train.add_argument(
        "--precision", default="32-true", help="32-true, bf16-mixed, 16-mixed or bf16-true"
    )
    train.add_argument(
        "--accumulate-grad-batches", type=int, default=1,
        help="batches averaged into one optimizer step (>= 1)",
    )  # fmt: skip
    train.add_argument(
        "--gradient-checkpointing", action="store_true",
        help="recompute the LLM's block activations in backward (less memory, more compute)",
    )  # fmt: skip
    train.add_argument(
        "--signal-targets", type=Path, default=None,
        help="stage 3: targets.json written by vitron build-targets for --data",
    )  # fmt: skip
    targets = commands.add_parser(
        "build-targets", help="stage-3 signal targets of a JSONL from the specialists"
    )
    targets.add_argument("--data", type=Path, required=True, help="training JSONL (stage 3)")
    targets.add_argument("--specialists", default=None, help="JSON: adapter name -> options")
    targets.add_argument("--set", action="append", metavar="ADAPTER.OPTION=VALUE")
    targets.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available)"
    )
    add_offload_option(targets)
    targets.add_argument(
        "-o", "--output", type=Path, required=True,
        help="folder for targets.safetensors and targets.json",
    )  # fmt: skip
    tiny = commands.add_parser("tiny-model", help="write a tiny random Vitron model folder")
    tiny.add_argument("directory", type=Path, metavar="DIR", help="folder to write")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--vision-backend", choices=("transformers", "open_clip"), default="transformers"
    )
    tiny_spec = commands.add_parser("tiny-specialists", help="write tiny random specialists")
    tiny_spec.add_argument("directory", type=Path, metavar="DIR", help="folder to write")
    tiny_spec.add_argument("--seed", type=int, default=0)
    tiny_spec.add_argument(
        "--no-video", action="store_true", help="skip the video models (text- and image-to-video)"
    )
    from vitron.evaluation.command import add_eval_parser

    add_eval_parser(commands, add_model_options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vitron`` console script; returns the exit status.

    Bad inputs print ``vitron COMMAND: error: ...`` (one line) and return 2, failures while
    working return 1, Ctrl-C prints ``vitron COMMAND: interrupted`` and returns 130. Every
    subcommand in ``COMMANDS`` gets this contract by raising ``UsageError`` or ``WorkError``.

    Args:
        argv: command-line arguments without the program name (None = ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = command_prog("vitron", argv, COMMANDS)
    run = lambda: dispatch(build_parser().parse_args(argv))  # noqa: E731
    return run_main(
        prog, run, usage_errors=(FileNotFoundError,), work_errors=(ModelLoadError,),
        describe=one_line,
    )  # fmt: skip


def dispatch(args: argparse.Namespace) -> int:
    """Run the handler of ``args.command``."""
    return COMMANDS[args.command](args)


def run_eval(args: argparse.Namespace) -> int:
    """``vitron eval TASK`` (see :mod:`vitron.evaluation.command`)."""
    from vitron.evaluation.command import run_eval as evaluate

    return evaluate(args, assistant_options(args))


COMMANDS = {
    "run": run_run,
    "chat": run_chat,
    "app": run_app,
    "parse": run_parse,
    "specialists": run_specialists,
    "train": run_train,
    "build-targets": run_build_targets,
    "tiny-model": run_tiny_model,
    "tiny-specialists": run_tiny_specialists,
    "eval": run_eval,
}

if __name__ == "__main__":
    sys.exit(main())
