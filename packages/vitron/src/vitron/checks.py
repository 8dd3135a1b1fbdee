"""Checks of the API's arguments, shared by the Python API and the ``vitron`` command.

Every check raises ``ValueError`` naming the argument and the accepted range. ``names`` maps an
argument to the way the caller spells it (the command passes its flags: ``{"max_steps":
"--max-steps"}``), so the API and the command give the same message, each in its own words for
the argument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common_kernels.runtime.cli import check_folder_writable

Names = Mapping[str, str]
SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed range


def named(argument: str, names: Names | None) -> str:
    """How the caller spells ``argument`` in messages (the command: its flag).

    Args:
        argument: the API's name (``"max_steps"``).
        names: argument -> caller's name; ``None`` or a missing key keeps ``argument``.
    """
    return argument if names is None else names.get(argument, argument)


def check_at_least(value: int, low: int, argument: str, names: Names | None = None) -> None:
    """Fail unless the integer ``value`` is >= ``low``.

    Args:
        value: the value given.
        low: the smallest accepted value.
        argument: the API's name of the argument.
        names: see :func:`named`.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{named(argument, names)} must be >= {low}, got {value}")


def check_positive(value: float, argument: str, names: Names | None = None) -> None:
    """Fail unless ``value`` is a finite number > 0."""
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{named(argument, names)} must be a finite number > 0, got {value}")


def check_nonnegative(value: float, argument: str, names: Names | None = None) -> None:
    """Fail unless ``value`` is a finite number >= 0."""
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{named(argument, names)} must be a finite number >= 0, got {value}")


def check_seed(seed: int, names: Names | None = None) -> None:
    """``seed`` must be in [0, 2^32 - 1] (numpy's and Lightning's range)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{named('seed', names)} must be in [0, {SEED_MAX}], got {seed}")


def check_not_empty(tensor: Any, argument: str, expected: str) -> None:
    """Fail when ``tensor`` holds no element: ``ARGUMENT is empty: shape (...); EXPECTED``.

    Args:
        tensor: a ``torch.Tensor`` (anything with ``numel`` and ``shape``).
        argument: the API's name of the argument.
        expected: what the argument takes (``"give (N, 3, S, S) with N >= 1"``).
    """
    if tensor.numel() == 0:
        raise ValueError(f"{argument} is empty: shape {tuple(tensor.shape)}; {expected}")


def check_input_file(path: str | Path, argument: str, names: Names | None = None) -> Path:
    """The existing file ``path`` (not a folder); returns it as a ``Path``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{named(argument, names)} {path} is a folder, not a file")
    if not path.is_file():
        raise ValueError(f"{named(argument, names)} {path} does not exist")
    return path


def check_output_folder(path: str | Path, argument: str, names: Names | None = None) -> Path:
    """A folder that exists or can be created, and can be written to; returns it."""
    path = Path(path)
    check_folder_writable(path, named(argument, names))
    return path


def check_generation(
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    max_rounds: int,
    names: Names | None = None,
) -> None:
    """The decoding options of :class:`~vitron.assistant.Assistant`: ``max_new_tokens`` and
    ``max_rounds`` >= 1, ``temperature`` a finite number > 0, ``top_p`` in (0, 1], ``seed`` in
    [0, 2**32 - 1]."""
    check_at_least(max_rounds, 1, "max_rounds", names)
    check_at_least(max_new_tokens, 1, "max_new_tokens", names)
    if not 0.0 < top_p <= 1.0:  # also rejects NaN
        raise ValueError(f"{named('top_p', names)} must be in (0, 1], got {top_p}")
    check_positive(temperature, "temperature", names)
    check_seed(seed, names)
