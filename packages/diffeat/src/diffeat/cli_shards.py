"""The ``extract`` command's ``--check-shards`` and ``--ray`` (:mod:`diffeat.shards`), apart from
:mod:`diffeat.cli` to keep it small."""

from __future__ import annotations

from argparse import Namespace

from common_kernels.runtime.cli import check_file_writable, usage_errors
from diffeat.command_checks import check_plan
from diffeat.errors import check_int_range
from diffeat.shards import check_extract_shards


def check_shards_command(args: Namespace) -> int:
    """``extract --check-shards N``: every image in exactly one shard file (no model loads)."""
    with usage_errors():
        check = check_extract_shards(args.images, args.output, args.check_shards,
                                     recursive=args.recursive)  # fmt: skip
    print(check.summary())
    return 0 if check.ok else 1


def extract_with_ray(args: Namespace) -> int:
    """``extract --ray``: parts of --ray-batch images, each a shard file written by an actor;
    a summary per image, exit 1 when one was refused."""
    from common_kernels.runtime.ray_batch import RayOptions
    from diffeat.shards import ExtractSettings, extract_on_ray

    check_file_writable(args.output, "-o/--output", (".safetensors",))
    plan = check_plan(args)
    with usage_errors():
        check_int_range(args.batch_size, "batch_size", 1)
        options = RayOptions(address=args.ray or None, workers=args.ray_workers,
                             gpus_per_worker=args.ray_gpus, batch_size=args.ray_batch)  # fmt: skip
        settings = ExtractSettings(
            batch_size=args.batch_size, prompt=args.prompt, resize=args.resize,
            resize_mode=args.resize_mode, concat=args.concat, allow_large=args.allow_large,
            control_image=None if args.control_image is None else str(args.control_image),
            model=args.model,
        )  # fmt: skip
        summary, check, count = extract_on_ray(args.images, args.output, plan, settings,
                                               options, recursive=args.recursive)  # fmt: skip
    print(f"diffeat extract: {count} part file(s) ({summary.line()}); "
          f"{check.summary()}")  # fmt: skip
    return 0 if check.ok and not summary.refused else 1
