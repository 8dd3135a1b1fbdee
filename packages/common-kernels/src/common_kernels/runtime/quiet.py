"""Third-party chatter off in a command's output: progress bars, deprecation notices and tips.

Loading a diffusers pipeline or starting a Lightning run writes the libraries' own progress
bars ("Loading pipeline components"), deprecation notices and advertising tips into a user's
terminal and logs, between the command's own lines. :func:`quiet_libraries` turns them off for
the duration of a command (``--verbose`` keeps them) and restores every setting afterwards;
:func:`quiet_loading` turns off the libraries' loading bars alone while an API loads a model.
Standard library only; the libraries are touched only when they are installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Iterator

# Loggers whose INFO/WARNING lines are the libraries' notices and tips (Lightning's "GPU
# available", "💡 Tip: ...", transformers' and diffusers' deprecation notes).
LOGGERS = (
    "transformers",
    "diffusers",
    "huggingface_hub",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "lightning_fabric",
    "torch.distributed",
)
# Read by the libraries when they are imported or create a bar.
ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False) -> Iterator[None]:
    """Inside, third-party progress bars, deprecation notices and tips are off (unless
    ``verbose``); every setting is restored after.

    Args:
        verbose: leave everything on (a command's ``--verbose``).
    """
    if verbose:
        yield
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        stack.callback(_restore_environment, {key: os.environ.get(key) for key in ENVIRONMENT})
        os.environ.update(ENVIRONMENT)
        for name in LOGGERS:
            logger = logging.getLogger(name)
            stack.callback(logger.setLevel, logger.level)
            logger.setLevel(logging.ERROR)
        for restore in _bars_off():
            stack.callback(restore)
        yield


def _restore_environment(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Inside, the loading bars of transformers and diffusers ("Loading weights", "Loading
    pipeline components") are off, where they are installed (transformers' switch is
    huggingface_hub's too); their previous state is restored after."""
    with contextlib.ExitStack() as stack:
        for restore in _loading_bars_off(imported_only=False):
            stack.callback(restore)
        yield


def _loading_bars_off(imported_only: bool) -> list:
    """Turn off the loading bars of transformers and diffusers (installed; with
    ``imported_only``, already imported); returns the functions that turn them back on."""
    restores = []
    for module_name in ("transformers.utils.logging", "diffusers.utils.logging"):
        if importlib.util.find_spec(module_name.split(".")[0]) is None:
            continue
        if imported_only and module_name.split(".")[0] not in sys.modules:
            continue  # imported later, inside: the environment above reaches it
        module = importlib.import_module(module_name)
        if module.is_progress_bar_enabled():
            module.disable_progress_bar()
            restores.append(module.enable_progress_bar)
    return restores


def _bars_off() -> list:
    """Turn off the progress bars of the installed libraries that have a switch; returns the
    functions that turn them back on."""
    restores = _loading_bars_off(imported_only=True)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        if not are_progress_bars_disabled():
            disable_progress_bars()
            restores.append(enable_progress_bars)
    return restores
