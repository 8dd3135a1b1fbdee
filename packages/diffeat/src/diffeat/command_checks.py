"""What every extraction command of ``diffeat`` checks, loads and says, apart from
:mod:`diffeat.cli` (which stays a thin skin): the options as ``from_pretrained`` takes them,
the plan and the images checked before any weights load, the extractor loaded, one line on
stderr, the exit status of skipped images."""

from __future__ import annotations

import argparse
import sys
from argparse import Namespace
from collections.abc import Sequence
from typing import Any

from common_kernels.runtime.batch import Skipped, skipped_summary
from common_kernels.runtime.cli import UsageError, WorkError, one_line, usage_errors
from diffeat.commands import CheckedInputs, Keep, check_inputs, left_out_line
from diffeat.extractor import FeatureExtractor
from diffeat.io import load_image
from diffeat.plan import LoadPlan, check_from_pretrained
from diffeat.presets import ALL, selection_names


def selected_layers(args: argparse.Namespace) -> list[str] | str | None:
    """``--layers``/``--all`` as ``from_pretrained`` takes them (None: not given)."""
    if args.all:
        return ALL
    if args.layers is None:
        return None
    names = [n.strip() for n in args.layers.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--layers {args.layers!r}: no names given")
    return names[0] if len(names) == 1 and names[0] in selection_names() else names


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``from_pretrained`` keywords of the options (the control image not yet read)."""
    keys = ("preset", "timestep", "dtype", "device", "latent", "faithful", "image_size", "seed",
            "lora_scale", "fuse_lora", "controlnet", "control_scale", "sigma", "guidance_scale",
            "noising", "inversion_steps", "offload")  # fmt: skip
    return {
        **{key: getattr(args, key) for key in keys}, "layers": selected_layers(args),
        "early_exit": not args.no_early_exit, "output_device": "cpu", "lora": args.lora or None,
        "control_image": args.control_image,
    }  # fmt: skip


def check_plan(args: Namespace) -> LoadPlan:
    """An extraction's model and options checked by the API (config files and the control image
    only), after the flags only this command pairs (``--fuse-lora`` needs ``--lora``, ...)."""
    for flag, given, other, what in (
        ("--fuse-lora", args.fuse_lora, args.lora, "--lora PATH"),
        ("--controlnet", args.controlnet, args.control_image, "--control-image PATH"),
    ):
        if given and not other:
            raise UsageError(f"{flag}: needs {what}")
    with usage_errors():  # --batch-size is checked with the images
        return check_from_pretrained(args.model, **load_options(args))


def check_images(args: Namespace, plan: LoadPlan, keep: Keep, images=None, **group):
    """An extraction's images checked by ``check_inputs``; says what was left out or skipped."""
    with usage_errors():
        checked = check_inputs(
            plan, args.images if images is None else images, args.batch_size,
            recursive=args.recursive, keep_going=args.keep_going,
            on_unreadable=lambda item: say(args, f"skipping {item.path}: {item.reason}"),
            keep=keep, allow_large=args.allow_large, **group,
        )  # fmt: skip
    left_out = left_out_line(checked.listing, "--recursive")
    if left_out:
        say(args, left_out)
    return checked


def say(args: Namespace, line: str) -> None:
    """One line on stderr, after the command's name."""
    print(f"diffeat {args.command}: {line}", file=sys.stderr)


def skipped_status(args: Namespace, skipped: Sequence[Skipped]) -> int:
    """Exit status 1 with the list of the images skipped (``--keep-going``), else 0."""
    if not skipped:
        return 0
    say(args, skipped_summary(skipped))
    return 1


def load_extractor(args: argparse.Namespace, checked: CheckedInputs) -> FeatureExtractor:
    """The extractor of the checked plan; a failure to load exits 1."""
    control = None if args.control_image is None else load_image(args.control_image)
    try:
        return FeatureExtractor.from_plan(checked.plan, control_image=control)
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise WorkError(f"cannot load --model {args.model}: {one_line(error)}") from error
