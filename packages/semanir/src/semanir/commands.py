"""The ``semanir`` subcommands behind :func:`semanir.cli.main`: their parsers and what each runs
(``restore``, ``eval``, ``models``, ``app``, ``export``; ``fit`` and ``validate`` are
:mod:`semanir.lightning_cli`).

Imported once a subcommand is named: it brings in torch and the models (seconds), which
``semanir --help`` does without.
"""

from __future__ import annotations

import sys
from argparse import ArgumentTypeError, Namespace
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from common_kernels.runtime.batch import (
    BatchRun,
    Skipped,
    add_batch_options,
    add_distributed_options,
    distributed_mode,
    resume_command,
)
from common_kernels.runtime.cli import Parser, UsageError, add_verbose, check_device
from common_kernels.runtime.photos import Photo
from common_kernels.runtime.progress import progress
from common_kernels.runtime.ray_batch import RayOptions
from common_kernels.runtime.shards import Ledger, ledger_path
from semanir.batch import RestoreJob, check_restore_shards, plan_restore, run_restore
from semanir.bundled import describe_installed
from semanir.evaluation import evaluate_images, format_table, plan_evaluation, write_csv
from semanir.export import DEFAULT_OPSET, export_onnx
from semanir.tasks import COMMAND_LINE_TASKS


def _add_task_option(parser: Parser) -> None:
    parser.add_argument(
        "--task", choices=COMMAND_LINE_TASKS, default="denoise", help="(default: denoise)"
    )


def _add_model_options(parser: Parser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="a bundled model's name (semanir models), a save_pretrained folder (./DIR) or a "
        "hub id (owner/name); default: the bundled model of --task for each image (denoise: "
        "the colour model for colour images, the gray one for gray images)",
    )
    parser.add_argument(
        "--tile",
        type=tile_option,
        default="auto",
        metavar="PX|auto|none",
        help="restore in square tiles of PX input pixels (>= the model's window, 8 for the "
        "bundled models), blended where they overlap; auto (default): the whole image when its "
        "estimated memory fits the machine, else the largest tiles that do; none: whole image",
    )
    parser.add_argument(
        "--tile-overlap",
        type=int,
        default=32,
        metavar="PX",
        help="overlap of neighbouring tiles in input pixels, in [0, --tile - 1] (default: 32)",
    )
    parser.add_argument(
        "--k", type=int, default=None,
        help="dictionary entries per token, in [1, window^2] (64 for the bundled models) "
        "(default: the model's inference k)",
    )  # fmt: skip
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="average over the 8 flips/rotations of the input (x8 self-ensemble, 8x slower)",
    )
    parser.add_argument(
        "--compile", action="store_true",
        help="torch.compile the model, once per model and tile size (a minute or more, said "
        "apart); photos go in tiles of --tile px (auto/none: 256), smaller ones whole",
    )  # fmt: skip
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda if present)"
    )


def tile_option(value: str) -> int | str | None:
    """``--tile``: a size in pixels, ``auto`` or ``none``."""
    if value in ("auto", "none"):
        return None if value == "none" else value
    try:
        return int(value)
    except ValueError:
        raise ArgumentTypeError(f"expected a size in pixels, auto or none, got {value!r}") from None


def restore_parser() -> Parser:
    parser = Parser(
        prog="semanir restore",
        description="Restore images and write the results (atomically) to OUT.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="output folder; or an image file name when restoring a single image",
    )
    _add_task_option(parser)
    parser.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="noise standard deviation on the 0-255 scale, in [0, 255]: the level --add-noise "
        "uses when given no value (default: none)",
    )
    _add_model_options(parser)
    parser.add_argument(
        "--add-noise",
        type=float,
        nargs="?",
        const=True,  # no value: the level of --sigma
        default=None,
        metavar="SIGMA",
        help="treat inputs as clean: add Gaussian noise of SIGMA (0-255 scale, in [0, 255]; "
        "no value: --sigma) first (a demo) and print PSNR in dB before/after (default: off)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of --add-noise, any int (default: 0)"
    )
    parser.add_argument(
        "--per-channel",
        action="store_true",
        help="with a gray model, restore a colour image's R, G and B channels one by one "
        "(default: restore its BT.601 luma and keep its chroma: colour in, colour out)",
    )
    parser.add_argument(
        "--gray-output",
        action="store_true",
        help="write colour photos as gray: the restored luma (default: colour in, colour out)",
    )
    parser.add_argument(
        "--save-noisy",
        action="store_true",
        help="with --add-noise, also write each noisy input as NAME_noisy.EXT next to its output",
    )
    add_batch_options(parser, results="restored images")
    add_distributed_options(parser, results="restored images")
    add_verbose(parser)
    parser.set_defaults(prog="semanir restore")
    return parser


def eval_parser() -> Parser:
    parser = Parser(
        prog="semanir eval",
        description="Degrade clean images, restore them and print a PSNR/SSIM table.",
    )
    _add_task_option(parser)
    parser.add_argument("--data", nargs="+", required=True, help="clean image files/folders")
    parser.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="denoise: noise standard deviation on the 0-255 scale, in [0, 255] (required "
        "with --task denoise)",
    )
    parser.add_argument(
        "--quality", type=int, default=None,
        help="jpeg: JPEG quality in [1, 95] (required with --task jpeg)",
    )  # fmt: skip
    parser.add_argument(
        "--scale", type=int, default=None, help="sr: 2, 3 or 4 (default: the model's)"
    )  # fmt: skip
    _add_model_options(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the synthetic degradations, any int (default: 0)",
    )
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    parser.set_defaults(prog="semanir eval")
    return parser


def models_parser() -> Parser:
    return Parser(
        prog="semanir models", description="List the bundled models: task, size, data, PSNR."
    )


def app_parser() -> Parser:
    parser = Parser(prog="semanir app", description="A local web page that restores images.")
    parser.add_argument("-o", "--output", default="semanir-app", help="folder of the results "
                        "(default: semanir-app)")  # fmt: skip
    parser.add_argument("--model", action="append", default=[], help="also offer this model "
                        "folder or hub id (repeatable; the bundled models always are)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="TCP port, in [1, 65535] "
                        "(default: 7860)")  # fmt: skip
    parser.add_argument("--share", action="store_true", help="also open a public Gradio link")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps")
    return parser


def run_app(args: Namespace) -> None:
    """``semanir app``: the page, served until interrupted."""
    from semanir.app import serve

    try:
        serve(args.output, models=args.model, device=check_device(args.device),
              host=args.host, port=args.port, share=args.share)  # fmt: skip
    except ImportError as error:  # no gradio: the app extra is missing
        raise UsageError(str(error)) from None


def export_parser() -> Parser:
    parser = Parser(prog="semanir export", description="Write a model as one ONNX file, any "
                    "batch and size (atomically; an existing file is replaced).")  # fmt: skip
    parser.add_argument("model", metavar="MODEL", help="a bundled model's name, a "
                        "save_pretrained folder (./DIR) or a hub id (owner/name)")  # fmt: skip
    parser.add_argument("path", metavar="OUT.onnx", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="(default: 18)")
    parser.add_argument("--k", type=int, default=None, help="dictionary entries per token in "
                        "the graph (default: the model's inference k)")  # fmt: skip
    return parser


def export(args: Namespace) -> None:
    """``semanir export``: the checked ONNX file (needs the onnx extra)."""
    try:
        print(f"wrote {export_onnx(args.model, args.path, opset=args.opset, k=args.k)}")
    except ImportError as error:  # onnx, onnxscript or onnxruntime missing
        raise UsageError(str(error)) from None


def upscale_models_parser() -> Parser:
    parser = Parser(prog="semanir upscale-models", description="Write the bundled models as "
                    "spandrel files (NAME.safetensors, atomically) for ComfyUI's models/"
                    "upscale_models or chaiNNer; gray models take RGB images there (their luma "
                    "restored, their chroma kept).")  # fmt: skip
    parser.add_argument("folder", metavar="DIR", help="an existing folder, e.g. "
                        "ComfyUI/models/upscale_models")  # fmt: skip
    parser.add_argument(
        "--model", dest="names", action="append", default=None, metavar="NAME",
        help="a bundled model (semanir models); repeat for more (default: all)",
    )  # fmt: skip
    return parser


def upscale_models(args: Namespace) -> None:
    """``semanir upscale-models``: the files written, one line each."""
    try:
        from semanir.spandrel_arch import write_bundled
    except ImportError as error:  # spandrel missing
        raise UsageError(f"{error.name} is missing: pip install 'semanir[spandrel]'") from None
    for path in write_bundled(args.folder, args.names):
        print(f"wrote {path}")


def list_models(args: Namespace) -> None:
    """``semanir models``: the bundled models of this installation, one block each."""
    print(describe_installed())


def _model_announcer(args: Namespace) -> Callable[[str, str], None]:
    """Says on stderr which bundled model --task picked for which images."""

    def announce(name: str, channels: str) -> None:
        _say(args.prog, f"--task {args.task}: the bundled {name} ({channels} images)")

    return announce


def restore(args: Namespace) -> int:
    """``semanir restore``: check the whole batch, then restore every photo and write it
    (or one shard of it, or on Ray; or check the shards' results)."""
    colour = "per-channel" if args.per_channel else "gray" if args.gray_output else "luma"
    if args.per_channel and args.gray_output:
        raise UsageError("--per-channel and --gray-output exclude each other")
    try:
        mode = distributed_mode(args)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if mode == "check-shards":
        check = check_restore_shards(args.inputs, args.output, args.check_shards,
                                     recursive=args.recursive)  # fmt: skip
        print(check.summary())
        return 0 if check.ok else 1
    if mode == "ray":
        return restore_with_ray(args, colour)
    plan = plan_restore(
        args.inputs, args.output, task=args.task, model=args.model,
        device=check_device(args.device), colour=colour, recursive=args.recursive,
        in_place=args.in_place, skip_existing=args.skip_existing, keep_going=args.keep_going,
        add_noise=args.add_noise, sigma=args.sigma, save_noisy=args.save_noisy, tile=args.tile,
        tile_overlap=args.tile_overlap, k=args.k, ensemble=args.ensemble, compile=args.compile,
        shard=args.shard, on_unreadable=lambda item: _say_skipped(args.prog, item),
        on_model=_model_announcer(args),
    )  # fmt: skip
    left_out = plan.listing.left_out_note("--recursive", verb="restores")
    if left_out:
        _say(args.prog, left_out)
    if plan.existing:
        _say(args.prog, f"{len(plan.existing)} image(s) already restored, left out "
                        "(--skip-existing)")  # fmt: skip
    args.batch = batch = BatchRun(len(plan.jobs), resume_command(args.prog, args.argv))
    before, after = [], []

    def announce_tiles(job: RestoreJob, photo: Photo, tile: int | None) -> None:
        if tile is not None and args.tile == "auto":
            height, width = photo.size
            _say(args.prog, f"{job.source.name} ({width}x{height} px) would not fit in memory "
                            f"whole: restoring it in {tile} px tiles (--tile {tile})")  # fmt: skip

    def compiled(name: str, tile: int, seconds: float) -> None:
        _say(args.prog, f"compiled {name} for {tile} px tiles in {seconds:.1f} s")

    ledger = None
    if plan.shard is not None:
        ledger = Ledger(ledger_path(Path(args.output), plan.shard.name))
        _say(args.prog, f"shard {plan.shard}: {len(plan.jobs)} image(s) to restore; its ledger: "
                        f"{ledger.path}")  # fmt: skip
    bar = progress(run_restore(plan, colour=colour, seed=args.seed,
                               save_noisy=args.save_noisy, progress=True,
                               on_start=announce_tiles, on_compiled=compiled, ledger=ledger),
                   total=len(plan.jobs), desc=args.prog, unit="images")  # fmt: skip
    for result in bar:
        batch.done()
        name = result.job.source.name
        for note in result.notes:
            _say(args.prog, f"warning: {result.job.target.name}: {note}")
        if result.psnr_noisy is not None:
            before.append(result.psnr_noisy)
            after.append(result.psnr_restored)
            tqdm.write(f"{name}: PSNR {before[-1]:.2f} dB (noisy) -> {after[-1]:.2f} dB (restored)")
    if before:
        mean_before, mean_after = sum(before) / len(before), sum(after) / len(after)
        print(f"mean PSNR over {len(before)} image(s): {mean_before:.2f} dB -> {mean_after:.2f} dB")
    print(f"wrote {batch.finished} image(s) to {args.output}")
    if ledger is not None:
        ledger.close()
    for item in plan.unreadable:
        batch.skip(item.path, item.reason)
    if batch.skipped:
        print(f"{args.prog}: {batch.skipped_summary()}", file=sys.stderr)
        return 1
    return 0


def restore_with_ray(args: Namespace, colour: str) -> int:
    """``semanir restore --ray``: the batch on a Ray cluster; a summary that accounts for every
    input, exit 1 when one was refused."""
    from semanir.ray_jobs import restore_on_ray

    for flag, value in (("--add-noise", args.add_noise), ("--save-noisy", args.save_noisy or None),
                        ("--in-place", args.in_place or None),
                        ("--compile", args.compile or None)):  # fmt: skip
        if value is not None:
            raise UsageError(f"--ray runs a batch; {flag} is for the plain command")
    options = RayOptions(address=args.ray or None, workers=args.ray_workers,
                         gpus_per_worker=args.ray_gpus, batch_size=args.ray_batch)  # fmt: skip
    summary, ledger = restore_on_ray(
        args.inputs, args.output, options, task=args.task, model=args.model,
        device=str(check_device(args.device)), colour=colour, recursive=args.recursive,
        tile=args.tile, tile_overlap=args.tile_overlap, k=args.k, ensemble=args.ensemble,
    )  # fmt: skip
    print(f"{args.prog}: {summary.line()}; ledger: {ledger}")
    for item in summary.refused:
        _say(args.prog, f"refused {item.path}: {item.reason}")
    return 1 if summary.refused else 0


def _say(prog: str, line: str) -> None:
    tqdm.write(f"{prog}: {line}", file=sys.stderr)


def _say_skipped(prog: str, item: Skipped) -> None:
    _say(prog, f"skipping {item.path}: {item.reason}")


def evaluate(args: Namespace) -> None:
    """``semanir eval``: degrade, restore and score every image; print and optionally save CSV."""
    plan = plan_evaluation(
        args.data, args.task, sigma=args.sigma, quality=args.quality, scale=args.scale,
        model=args.model, device=check_device(args.device), tile=args.tile,
        tile_overlap=args.tile_overlap, k=args.k, ensemble=args.ensemble, compile=args.compile,
        csv=args.csv, on_model=_model_announcer(args),
    )  # fmt: skip
    model = plan.models.model(plan.model)
    if plan.colour and model.in_channels == 1:
        print(
            f"semanir eval: warning: {plan.colour} of the {len(plan.paths)} --data image(s) are "
            "colour and the model is a gray model: scoring their BT.601 luma",
            file=sys.stderr,
        )
    rows = evaluate_images(
        model, args.data, args.task, seed=args.seed, progress=True,
        restorer=plan.restorer(model), **plan.degradation,
    )  # fmt: skip
    settings = ", ".join(f"{key}={value:g}" for key, value in plan.degradation.items())
    print(format_table(rows, title=f"{args.task} ({settings}), model: {plan.models.describe()}"))
    if args.csv:
        write_csv(args.csv, rows)
        print(f"wrote {args.csv}")


# each subcommand's parser and what it runs (semanir.cli.COMMANDS names them)
SUBCOMMANDS: dict[str, tuple[Callable[[], Parser], Callable[[Namespace], int | None]]] = {
    "restore": (restore_parser, restore),
    "eval": (eval_parser, evaluate),
    "models": (models_parser, list_models),
    "app": (app_parser, run_app),
    "export": (export_parser, export),
    "upscale-models": (upscale_models_parser, upscale_models),
}
