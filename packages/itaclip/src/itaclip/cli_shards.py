"""``itaclip segment --check-shards`` and ``--ray`` (:mod:`itaclip.folders`,
:mod:`itaclip.ray_jobs`), apart from :mod:`itaclip.cli`, which stays a thin skin."""

from __future__ import annotations

import argparse
import sys

from common_kernels.runtime.cli import UsageError, usage_errors
from itaclip.inputs import parse_class_option
from itaclip.segmenter import LoadPlan


def check_segment_run(args: argparse.Namespace) -> int:
    """``segment --check-shards N``: every image's outputs written exactly once (no model)."""
    from itaclip.folders import check_segment_shards

    with usage_errors():
        check = check_segment_shards(args.images, args.output, args.check_shards,
                                     recursive=args.recursive)  # fmt: skip
    print(check.summary())
    return 0 if check.ok else 1


def segment_with_ray(args: argparse.Namespace, plan: LoadPlan) -> int:
    """``segment --ray``: the batch on a Ray cluster, with the checked model ``plan``; a
    summary that accounts for every image, exit 1 when one was refused."""
    from common_kernels.runtime.ray_batch import RayOptions
    from itaclip.inputs import check_classes
    from itaclip.ray_jobs import segment_on_ray

    prog = "itaclip segment"
    if args.in_place:
        raise UsageError("--ray runs a batch; --in-place is for the plain command")
    with usage_errors():
        inputs = check_classes(parse_class_option(args.classes), background=args.background,
                               aux_file=args.aux_file,
                               check_aux_names=not args.aux_ignore_names)  # fmt: skip
        options = RayOptions(address=args.ray or None, workers=args.ray_workers,
                             gpus_per_worker=args.ray_gpus, batch_size=args.ray_batch)  # fmt: skip
        protect = [] if args.aux_file is None else [(args.aux_file, "the --aux-file")]
        summary, ledger = segment_on_ray(
            args.images, args.output, plan, inputs, options, recursive=args.recursive,
            output_size=args.output_size, protect=protect, progress=not args.quiet,
        )  # fmt: skip
    print(f"{prog}: {summary.line()}; ledger: {ledger}")
    for item in summary.refused:
        print(f"{prog}: refused {item.path}: {item.reason}", file=sys.stderr)
    return 1 if summary.refused else 0
