"""``semanir fit`` and ``semanir validate``: LightningCLI over the restoration module and data.

A ``--config`` names a file or one of the configs shipped in the package (``semanir/configs``);
:func:`run_lightning` runs :class:`~semanir.lightning_module.RestorationCLI` and turns its
ordinary failures into one line and an exit status. Lightning is imported when a run starts:
``semanir restore``/``eval`` do not need it.
"""

from __future__ import annotations

import sys
import warnings
from importlib import resources
from pathlib import Path

from common_kernels.runtime.cli import UsageError
from common_kernels.runtime.quiet import quiet_libraries


def bundled_configs_dir() -> Path:
    """Folder of the training configs shipped in the package (``semanir/configs``)."""
    return Path(str(resources.files("semanir") / "configs"))


def with_bundled_configs(argv: list[str]) -> list[str]:
    """``argv`` with every ``--config NAME`` that is not a file but names a shipped config
    (``denoise_gray_tiny_bundled`` or ``denoise_gray_tiny_bundled.yaml``) replaced by its path."""
    resolved = list(argv)
    for i, arg in enumerate(resolved):
        if arg == "--config" and i + 1 < len(resolved):
            resolved[i + 1] = _config_path(resolved[i + 1])
        elif arg.startswith("--config="):
            resolved[i] = "--config=" + _config_path(arg.removeprefix("--config="))
    return resolved


def _config_path(value: str) -> str:
    """A config file as given, or the path of the shipped config of that name (also when a
    folder of that name is in the way, such as a run's output folder); else a ``UsageError``
    that lists the shipped configs."""
    if Path(value).is_file():
        return value
    for name in (value, f"{value}.yaml"):
        if (bundled_configs_dir() / name).is_file():
            return str(bundled_configs_dir() / name)
    shipped = ", ".join(sorted(p.stem for p in bundled_configs_dir().glob("*.yaml")))
    raise UsageError(f"--config {value}: no such file and no shipped config; shipped: {shipped}")


def run_lightning(argv: list[str]) -> int:
    """``semanir fit|validate ...``: LightningCLI over RestorationModule + RestorationDataModule.

    A bad option (a missing ``--ckpt_path`` or ``--model.init_weights``, a size, length or rate
    out of range, a missing data folder) is one line ``semanir fit: error: --FLAG: ...`` and
    status 2 before the trainer starts; a bad input found while starting (an image folder
    without images) is one line too (2; 1 for a failure while reading), with the traceback under
    ``--verbose``. The libraries' notices and tips are off unless ``--verbose``. Ctrl-C and
    SIGTERM stop training at the end of the current step with a resumable checkpoint and one
    line saying how to resume; the status is 130 (SIGINT) or 143 (SIGTERM).

    Args:
        argv: the arguments starting with the subcommand.
    """
    # Imported here: Lightning takes seconds to import and restore/eval do not need it.
    from common_kernels.runtime.cli import one_line
    from common_kernels.runtime.errors import InvalidArgument
    from common_kernels.runtime.lightning import TrainingInterrupted
    from semanir.data.datamodule import DataFolderError
    from semanir.lightning_module import TRAINING_FLAGS, RestorationCLI

    prog, verbose = f"semanir {argv[0]}", "--verbose" in argv
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # argv resolved
    try:
        with quiet_libraries(verbose=verbose):  # after Lightning's import, which sets its levels
            RestorationCLI(args=argv)
    except InvalidArgument as error:
        message = " ".join(error.for_flags(TRAINING_FLAGS).split())
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except (DataFolderError, UsageError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:  # e.g. a folder without images, a full disk
        if verbose:
            raise
        bad_input = isinstance(error, (ValueError, FileNotFoundError))
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return 2 if bad_input else 1
    except TrainingInterrupted as stop:
        print(stop.line(prog, "--ckpt_path"), file=sys.stderr)
        return stop.exit_status
    return 0
