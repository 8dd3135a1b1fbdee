"""The ``semanir`` command: ``fit``/``validate`` (LightningCLI), ``restore`` and ``eval``.

semanir fit --config denoise_gray_tiny [--trainer.max_time 00:01:00:00]   # a shipped config
semanir restore IN... -o OUT [--task denoise|jpeg|sr] [--model NAME|PATH|HUB_ID] [--tile 512]
                [--k K] [--add-noise [SIGMA] --seed S] [--per-channel]
semanir eval --task denoise --sigma 25 --data DIR [--model NAME|PATH|HUB_ID] [--csv out.csv]
semanir models                                 # the bundled models: task, size, data, PSNR
semanir app [-o OUT] [--model DIR|HUB_ID] [--port 7860]   # a local web page (semanir[app])
semanir export MODEL OUT.onnx [--opset 18] [--k K]   # ONNX, dynamic sizes (semanir[onnx])
semanir upscale-models DIR [--model NAME ...]   # spandrel files for ComfyUI (semanir[spandrel])
"""

from __future__ import annotations

import sys
from argparse import Namespace
from collections.abc import Sequence

USAGE = """usage: semanir {fit,validate,restore,eval,models,app,export,upscale-models} ...

commands:
  fit       train with Lightning:  semanir fit --config denoise_gray_tiny (shipped) or FILE.yaml
  validate  validate a checkpoint: semanir validate --config CONFIG --ckpt_path CKPT
  restore   restore image files or folders:  semanir restore IN... -o OUT
  eval      PSNR/SSIM on a folder of clean images with synthetic degradations:
            semanir eval --task denoise --sigma 25 --data DIR
  models    list the bundled models (task, channels, size, training data, measured PSNR)
  app       a local web page: restore an image, before and after (pip install 'semanir[app]')
  export    an ONNX file, any batch and size: semanir export MODEL OUT.onnx ('semanir[onnx]')
  upscale-models  the bundled models as spandrel files, for ComfyUI's models/upscale_models:
            semanir upscale-models DIR ('semanir[spandrel]')

run `semanir COMMAND --help` for the options of a command; `semanir --version` for versions
"""
# The flag of each API argument, for the API's errors
# (common_kernels.runtime.errors.InvalidArgument).
FLAGS = {
    "inputs": "IN", "output": "-o/--output", "in_place": "--in-place",
    "recursive": "--recursive", "skip_existing": "--skip-existing", "colour": "--gray-output",
    "model": "--model", "names": "--model", "task": "--task", "data": "--data", "csv": "--csv",
    "path": "OUT.onnx", "opset": "--opset", "port": "--port", "per_channel": "--per-channel",
    "sigma": "--sigma", "quality": "--quality", "scale": "--scale", "add_noise": "--add-noise",
    "tile": "--tile", "tile_overlap": "--tile-overlap", "k": "--k", "folder": "DIR",
    "shard": "--shard", "ray_workers": "--ray-workers", "ray_batch_size": "--ray-batch",
    "ray_gpus_per_worker": "--ray-gpus",
}  # fmt: skip
LIGHTNING_COMMANDS = ("fit", "validate")


# the keys of semanir.commands.SUBCOMMANDS
COMMANDS = ("restore", "eval", "models", "app", "export", "upscale-models")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``semanir`` console script; returns the exit status.

    ``--help`` and an unknown command are answered before torch and the models are imported
    (:mod:`semanir.commands`, seconds); a subcommand imports what it needs.

    Args:
        argv: command-line arguments without the program name (None = ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, options = argv[0], argv[1:]
    if command not in (*COMMANDS, *LIGHTNING_COMMANDS, "--version"):
        print(f"semanir: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    from semanir.openmp import sleep_when_idle

    sleep_when_idle()  # before torch loads OpenMP: idle threads sleep on a shared machine
    from common_kernels.runtime.cli import UsageError, run_main, version_line
    from common_kernels.runtime.quiet import quiet_libraries
    from semanir.allocator import keep_freed_memory

    if command == "--version":
        print(version_line("semanir", "semanir"))
        return 0
    keep_freed_memory()  # long CPU jobs: no page faults for the blocks each step frees
    if command in LIGHTNING_COMMANDS:
        from semanir.lightning_cli import run_lightning, with_bundled_configs

        try:
            resolved = with_bundled_configs(argv)
        except UsageError as error:
            print(f"semanir {command}: error: {error}", file=sys.stderr)
            return 2
        return run_lightning(resolved)
    from semanir.commands import SUBCOMMANDS

    make_parser, run = SUBCOMMANDS[command]
    parsed: list[Namespace] = []

    def parse_and_run() -> int | None:
        args = make_parser().parse_args(options)
        args.argv, args.batch = options, None
        parsed.append(args)
        with quiet_libraries(verbose=getattr(args, "verbose", False)):
            return run(args)

    def interrupt_hint() -> str:
        batch = parsed[0].batch if parsed else None
        return batch.interrupt_hint() if batch is not None else ""

    # a missing input file is a bad input (exit 2), not a failure while working
    return run_main(
        f"semanir {command}", parse_and_run, usage_errors=(FileNotFoundError,),
        interrupt_hint=interrupt_hint, flags=FLAGS,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
