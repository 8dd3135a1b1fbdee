"""``vitron train``: the command-line side of :func:`vitron.training.train`.

Every check is the API's: :func:`vitron.training.train` checks its settings
(:class:`~vitron.training.TrainConfig`) and files (:func:`check_train`) before any model loads,
and ``vitron train`` prints a bad one with its flag (``vitron.cli.FLAGS``), the same message.
SIGINT / SIGTERM save ``interrupted.ckpt`` and exit 130 / 143 saying how to resume.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common_kernels.runtime.cli import UsageError
from common_kernels.runtime.errors import InvalidArgument
from vitron.checks import SEED_MAX
from vitron.options import one_line


def run_train(args: argparse.Namespace) -> int:
    """``vitron train``: ``train`` (its checks first, then one stage);
    SIGINT / SIGTERM save ``interrupted.ckpt`` and exit 130 / 143 saying how to resume.

    Args:
        args: the parsed command line.
    """
    from vitron.training.config import TrainConfig, parse_devices
    from vitron.training.stage import train

    fields = TrainConfig.__dataclass_fields__
    settings = {name: getattr(args, name) for name in fields if name != "devices"}
    settings["devices"] = parse_devices(args.devices)
    files = {"val_data": args.val_data, "signal_targets": args.signal_targets}
    try:
        result = train(args.model, args.data, args.output, **settings, **files, resume=args.resume)
    except InvalidArgument:  # train's own checks, before the model loads: named by run_main
        raise
    except (FileNotFoundError, ValueError) as err:  # the data, found bad while working
        raise UsageError(one_line(err)) from None
    except BaseException as stop:
        # Lightning is imported by now (train imports it after its checks), and with it this
        from common_kernels.runtime.lightning import TrainingInterrupted

        if not isinstance(stop, TrainingInterrupted):
            raise
        print(stop.line("vitron train", "--resume"), file=sys.stderr)
        return stop.exit_status
    print(
        f"stage {args.stage}: loss {result['first_loss']:.4f} -> {result['last_loss']:.4f}; "
        f"model saved to {args.output}"
    )
    return 0


def add_train_parser(commands: Any, number: Callable[..., None]) -> None:
    """Register ``train`` on the ``vitron`` subcommands.

    Args:
        commands: the subparsers action of the ``vitron`` parser.
        number: adds a numeric flag whose help ends in its default.
    """
    train = commands.add_parser("train", help="one training stage on a JSONL conversation file")
    train.add_argument("--model", required=True, help="Vitron folder or hub id to start from")
    train.add_argument("--data", type=Path, required=True, help="training JSONL")
    train.add_argument("--val-data", type=Path, default=None, help="validation JSONL")
    train.add_argument("--stage", type=int, choices=(1, 2, 3), required=True,
                       help="training stage, 1, 2 or 3 (required, no default)")  # fmt: skip
    train.add_argument("-o", "--output", type=Path, required=True, help="where the model goes")
    number(train, "--max-steps", int, 1000,
           "optimizer steps, >= 1, at most 1000 passes over --data")  # fmt: skip
    number(train, "--batch-size", int, 4,
           "samples per batch, >= 1, at most --data's records and what memory holds")  # fmt: skip
    number(train, "--lr", float, 2e-5, "peak learning rate (AdamW, cosine decay to 10%%), > 0")
    number(train, "--lora-rank", int, 0,
           "LoRA rank, in [0, the LLM's hidden size] (0 = no LoRA; stages 2 and 3)")  # fmt: skip
    number(train, "--align-weight", float, 1.0, "stage-3 weight of 1 - cos(signal, target), >= 0")
    number(train, "--synergy-weight", float, 0.1,
           "stage-3 weight of the task discriminator's loss, >= 0")  # fmt: skip
    number(train, "--seed", int, 0, f"weights and shuffling, in [0, {SEED_MAX}]")
    train.add_argument(
        "--accelerator", default="auto", help="auto, cpu, cuda, gpu or mps (default: auto)"
    )
    train.add_argument(
        "--resume", type=Path, default=None, metavar="CKPT",
        help="continue from a checkpoint of this run (interrupted.ckpt or a periodic one in "
        "OUTPUT/lightning/checkpoints/); give the other options as before",
    )  # fmt: skip
    number(train, "--checkpoint-every-steps", int, None,
           "also write a resumable checkpoint every N optimizer steps, >= 1 (None: never)",
           dest="checkpoint_every_n_steps", metavar="N")  # fmt: skip
    number(train, "--checkpoint-every-minutes", float, None,
           "also write a resumable checkpoint every M minutes, > 0 (None: never)",
           dest="checkpoint_every_minutes", metavar="M")  # fmt: skip
    train.add_argument(
        "--devices", default="1", help="auto, a count (-1: all) or indices 0,1 (default: 1)"
    )
    train.add_argument(
        "--strategy", default="auto",
        help="auto, ddp, fsdp, deepspeed_stage_2 / _3 (need deepspeed), ... (Lightning's names)",
    )  # fmt: skip
    train.add_argument(
        "--precision", default="32-true", help="32-true, bf16-mixed, 16-mixed or bf16-true"
    )
    number(train, "--num-workers", int, 0,
           "data-loading worker processes, in [0, CPU cores] (0: in the main process)")  # fmt: skip
    number(train, "--accumulate-grad-batches", int, 1,
           "batches averaged into one optimizer step, >= 1, at most one epoch's")  # fmt: skip
    train.add_argument(
        "--gradient-checkpointing", action="store_true",
        help="recompute the LLM's block activations in backward (less memory, more compute)",
    )  # fmt: skip
    train.add_argument(
        "--signal-targets", type=Path, default=None,
        help="stage 3: targets.json written by vitron build-targets for --data",
    )  # fmt: skip
