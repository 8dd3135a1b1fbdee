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
vitron tiny-model DIR            (a tiny random Vitron model folder, for trying things out)
vitron tiny-specialists DIR      (tiny random specialists + DIR/specialists.json)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vitron.invocations import GRAMMARS, InputCounts, InvocationError, parse_reply

REGION_HELP = "index of the image a region is drawn on: append @K (default @0)"


def _split_image_index(text: str) -> tuple[str, int]:
    body, sep, index = text.rpartition("@")
    if not sep:
        return text, 0
    if not index.isdigit():
        raise SystemExit(f"error: bad image index in {text!r} ({REGION_HELP})")
    return body, int(index)


def parse_region_flags(args: argparse.Namespace, images) -> list:
    """``--box``, ``--stroke`` and ``--mask`` flags -> regions on the given images."""
    from vitron.regions import Mask, Region, RegionError, Stroke, parse_box

    regions = []
    try:
        for text in args.box or []:
            body, k = _split_image_index(text)
            image = _region_image(images, k, "--box")
            regions.append(Region(parse_box(body, image.width, image.height), k))
        for text in args.stroke or []:
            body, k = _split_image_index(text)
            _region_image(images, k, "--stroke")
            points = tuple(
                tuple(float(v) for v in p.split(",")) for p in body.replace(";", " ").split()
            )
            if any(len(p) != 2 for p in points):
                raise RegionError(f"--stroke takes 'x,y x,y ...', got {body!r}")
            regions.append(Region(Stroke(points, args.stroke_width), k))
        for text in args.mask or []:
            body, k = _split_image_index(text)
            from vitron.io import load_image, to_tensor

            image = _region_image(images, k, "--mask")
            values = to_tensor(load_image(body)).mean(0)  # (H, W) in [0, 1]
            if tuple(values.shape) != (image.height, image.width):
                raise RegionError(
                    f"--mask {body} is {values.shape[1]}x{values.shape[0]} but image {k} is "
                    f"{image.width}x{image.height}"
                )
            regions.append(Region(Mask((values >= 0.5).double()), k))
    except (RegionError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    return regions


def _region_image(images, k: int, flag: str):
    if not 0 <= k < len(images):
        raise SystemExit(
            f"error: {flag} refers to image {k}, but {len(images)} image(s) were given"
        )
    return images[k]


def parse_settings(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["itaclip.signal_weight=0.5", ...]`` -> ``{"itaclip": {"signal_weight": 0.5}}``."""
    found: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        adapter, dot, option = key.partition(".")
        if not sep or not dot or not adapter or not option:
            raise SystemExit(f"error: --set takes ADAPTER.OPTION=VALUE, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # plain strings need no quotes
        found.setdefault(adapter, {})[option] = value
    return found


def build_registry(args: argparse.Namespace):
    from vitron.specialists import SpecialistRegistry

    options: dict[str, dict[str, Any]] = {}
    if args.specialists is not None:
        path = Path(args.specialists)
        if not path.is_file():
            raise SystemExit(f"error: --specialists {path} does not exist")
        options = json.loads(path.read_text(encoding="utf-8"))
    for adapter, values in parse_settings(args.set or []).items():
        options.setdefault(adapter, {}).update(values)
    try:
        return SpecialistRegistry(options, device=args.device)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def load_model(args: argparse.Namespace):
    from vitron.models import VitronModel

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    return VitronModel.from_pretrained(args.model, dtype=dtypes[args.dtype], device=args.device)


def build_assistant(args: argparse.Namespace, scripted: list[str]):
    from vitron.assistant import Assistant

    if args.max_rounds < 1:
        raise SystemExit(f"error: --max-rounds must be >= 1, got {args.max_rounds}")
    if args.max_new_tokens < 1:
        raise SystemExit(f"error: --max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not 0.0 < args.top_p <= 1.0:
        raise SystemExit(f"error: --top-p must be in (0, 1], got {args.top_p}")
    if not args.temperature > 0.0:
        raise SystemExit(f"error: --temperature must be > 0, got {args.temperature}")
    return Assistant(
        load_model(args),
        build_registry(args),
        args.output,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        max_rounds=args.max_rounds,
        grammar=args.grammar,
        scripted_replies=scripted,
    )


def load_media(args: argparse.Namespace):
    from vitron.io import load_image, load_video

    try:
        images = [load_image(p) for p in args.image or []]
        videos = [load_video(p) for p in args.video or []]
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    return images, videos


class CallProgress:
    """A tqdm bar over a turn's calls."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, call, index: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None or index == 0:
            self.close()
            self.bar = tqdm(total=total, desc="calls", file=sys.stderr, leave=False)
        if index > 0:
            self.bar.update(1)
        self.bar.set_postfix_str(f"{call.id}: {call.task}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
    from vitron.io import write_json

    scripted = []
    if args.reply_file is not None:
        if not args.reply_file.is_file():
            raise SystemExit(f"error: --reply-file {args.reply_file} does not exist")
        scripted = [args.reply_file.read_text(encoding="utf-8")]
    images, videos = load_media(args)
    regions = parse_region_flags(args, images)
    assistant = build_assistant(args, scripted)
    progress = CallProgress()
    try:
        turn = assistant.chat(args.prompt, images, videos, regions, progress=progress)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    finally:
        progress.close()
    write_json(Path(args.output) / "turn.json", turn.to_dict())
    print_turn(turn)
    return 0


CHAT_HELP = """commands: /image PATH, /video PATH, /box x1,y1,x2,y2[@K], /reset, /quit
(images, videos and boxes given this way join your next message)"""


def run_chat(args: argparse.Namespace, stdin=None) -> int:
    from vitron.io import load_image, load_video, write_json
    from vitron.regions import Region, RegionError, parse_box

    stdin = stdin or sys.stdin
    images, videos = load_media(args)
    regions = parse_region_flags(args, images)
    assistant = build_assistant(args, [])
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
                body, k = _split_image_index(rest.strip())
                every = [*assistant.inputs.images, *pending_images]
                image = _region_image(every, k, "/box")
                pending_regions.append(Region(parse_box(body, image.width, image.height), k))
                print("(region added)")
            elif command.startswith("/"):
                print(f"unknown command {command}; {CHAT_HELP}")
            else:
                pending = (pending_images, pending_videos, pending_regions)
                pending_images, pending_videos, pending_regions = [], [], []  # used or dropped
                turn = assistant.chat(line, *pending)
                turns += 1
                write_json(Path(args.output) / f"turn_{turns:03d}.json", turn.to_dict())
                print_turn(turn)
        except (FileNotFoundError, RegionError, ValueError) as err:
            print(f"error: {err}")
        except SystemExit as err:  # a bad command argument: report it and go on
            print(err)
    return 0


def run_app(args: argparse.Namespace) -> int:
    from vitron.app import ChatSession, launch_app

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit("error: vitron app needs gradio: pip install 'vitron[app]'") from None
    session = ChatSession(build_assistant(args, []), args.output)
    launch_app(session, server_name=args.host, server_port=args.port, share=args.share)
    return 0


def run_parse(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.reply == "-" else args.reply
    counts = None
    if args.images is not None or args.videos is not None or args.region:
        images = args.images if args.images is not None else max(args.region or [-1]) + 1
        if any(not 0 <= k < images for k in args.region or []):
            raise SystemExit(f"error: --region needs an image index below --images {images}")
        counts = InputCounts(images, args.videos, region_images=tuple(args.region or ()))
    try:
        parsed = parse_reply(text, grammar=args.grammar, counts=counts)
    except InvocationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
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
    registry = build_registry(args)
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


def run_tiny_model(args: argparse.Namespace) -> int:
    from vitron.tiny import tiny_model

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

    path = write_tiny_specialists(args.directory, args.seed, video=not args.no_video)
    print(f"tiny random specialists written to {args.directory}; use --specialists {path}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from vitron.training import train

    try:
        result = train(
            args.model, args.data, args.output, stage=args.stage, max_steps=args.max_steps,
            batch_size=args.batch_size, lr=args.lr, lora_rank=args.lora_rank,
            align_weight=args.align_weight, synergy_weight=args.synergy_weight,
            val_data=args.val_data, seed=args.seed, accelerator=args.accelerator,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(
        f"stage {args.stage}: loss {result['first_loss']:.4f} -> {result['last_loss']:.4f}; "
        f"model saved to {args.output}"
    )
    return 0


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Vitron folder or hub id (save_pretrained)")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--specialists", default=None, help="JSON: adapter name -> options")
    parser.add_argument(
        "--set",
        action="append",
        metavar="ADAPTER.OPTION=VALUE",
        help="override one specialist option",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rounds", type=int, default=1, help="rounds of calls per turn")
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
    parser.add_argument("--stroke-width", type=float, default=8.0, help="stroke brush width (px)")
    parser.add_argument("--mask", action="append", help="region mask image PATH[@K]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitron", description=__doc__.split("\n\n")[0])
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
    app.add_argument("--port", type=int, default=7860)
    app.add_argument("--share", action="store_true", help="also open a public Gradio link")
    parse = commands.add_parser("parse", help="parse a reply (or - for stdin) into calls")
    parse.add_argument("reply")
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
    specialists.add_argument("--device", default="cpu")
    train = commands.add_parser("train", help="one training stage on a JSONL conversation file")
    train.add_argument("--model", required=True, help="Vitron folder or hub id to start from")
    train.add_argument("--data", type=Path, required=True, help="training JSONL")
    train.add_argument("--val-data", type=Path, default=None, help="validation JSONL")
    train.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    train.add_argument(
        "-o", "--output", type=Path, required=True, help="where the trained model goes"
    )
    train.add_argument("--max-steps", type=int, default=1000)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--lr", type=float, default=2e-5)
    train.add_argument("--lora-rank", type=int, default=0, help="LoRA rank (0 = no LoRA)")
    train.add_argument("--align-weight", type=float, default=1.0)
    train.add_argument("--synergy-weight", type=float, default=0.1)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--accelerator", default="auto")
    tiny = commands.add_parser("tiny-model", help="write a tiny random Vitron model folder")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--vision-backend", choices=("transformers", "open_clip"), default="transformers"
    )
    tiny_spec = commands.add_parser("tiny-specialists", help="write tiny random specialists")
    tiny_spec.add_argument("directory", type=Path)
    tiny_spec.add_argument("--seed", type=int, default=0)
    tiny_spec.add_argument(
        "--no-video", action="store_true", help="skip the video models (text- and image-to-video)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "run": run_run,
        "chat": run_chat,
        "app": run_app,
        "parse": run_parse,
        "specialists": run_specialists,
        "train": run_train,
        "tiny-model": run_tiny_model,
        "tiny-specialists": run_tiny_specialists,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
