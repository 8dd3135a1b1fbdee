"""Checks of the API's arguments, shared by the Python API and the ``vitron`` command.

Every check raises :class:`InvalidValue`, a ``common_kernels.runtime.errors.InvalidArgument``
(a ``ValueError``) whose message names the API's argument where the sentence puts it
(``{max_steps} must be >= 1, got 0``): Python users read ``max_steps must be ...`` and the
command, given its flags (``common_kernels.runtime.cli.run_main(..., flags=FLAGS)``), ``--max-steps
must be ...``, the same message, each in its own words for the argument.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from common_kernels.runtime.cli import check_folder_writable
from common_kernels.runtime.errors import (
    InvalidArgument,
    InvalidValue,
    argument_errors,
    literal,
)

SEED_MAX = 2**32 - 1  # numpy's and Lightning's seed range
ARGUMENT_MARK = "\x00"  # a parser's label for its argument, replaced by ``{argument}``


class NamedFailure:
    """A failure while working (mixed into an exception class) whose message names an API
    argument as ``{argument}``: ``str()`` spells it as Python users do, :meth:`render` as a
    command's flags say (``vitron.cli`` prints it so).

    Args:
        argument: the API's argument (``"model"``).
        message: the message, each argument written ``{name}``.
    """

    def __init__(self, argument: str, message: str) -> None:
        self.argument, self.template, self.mentions = argument, message, {}
        super().__init__(self.render())

    render = InvalidArgument.render


def named_in_place(argument: str, error: BaseException) -> InvalidValue:
    """``error``, from a parser given :data:`ARGUMENT_MARK` as its label for ``argument``, as an
    :class:`InvalidValue` naming ``argument`` where the mark stood."""
    text = literal(" ".join(str(error).split()))
    return InvalidValue(argument, text.replace(ARGUMENT_MARK, f"{{{argument}}}"))


def check_at_least(value: int, low: int, argument: str) -> None:
    """Fail unless the integer ``value`` is >= ``low``.

    Args:
        value: the value given.
        low: the smallest accepted value.
        argument: the API's name of the argument.

    Raises:
        InvalidValue: (``argument``) another value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidValue(argument, f"{{{argument}}} must be >= {low}, got {literal(value)}")


def check_positive(value: float, argument: str) -> None:
    """Fail (``InvalidArgument`` naming ``argument``) unless ``value`` is a finite number > 0."""
    if not (math.isfinite(value) and value > 0.0):
        raise InvalidValue(argument, f"{{{argument}}} must be a finite number > 0, got {value}")


def check_nonnegative(value: float, argument: str) -> None:
    """Fail (``InvalidArgument`` naming ``argument``) unless ``value`` is a finite number >= 0."""
    if not (math.isfinite(value) and value >= 0.0):
        raise InvalidValue(argument, f"{{{argument}}} must be a finite number >= 0, got {value}")


def check_seed(seed: int) -> None:
    """``seed`` must be in [0, 2^32 - 1] (numpy's and Lightning's range); else
    ``InvalidArgument`` naming ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise InvalidValue("seed", f"{{seed}} must be in [0, {SEED_MAX}], got {literal(seed)}")


def check_not_empty(tensor: Any, argument: str, expected: str) -> None:
    """Fail when ``tensor`` holds no element: ``ARGUMENT is empty: shape (...); EXPECTED``.

    Args:
        tensor: a ``torch.Tensor`` (anything with ``numel`` and ``shape``).
        argument: the API's name of the argument.
        expected: what the argument takes (``"give (N, 3, S, S) with N >= 1"``).
    """
    if tensor.numel() == 0:
        raise ValueError(f"{argument} is empty: shape {tuple(tensor.shape)}; {expected}")


def check_input_file(path: str | Path, argument: str) -> Path:
    """The existing file ``path`` (not a folder); returns it as a ``Path``; else
    ``InvalidArgument`` naming ``argument``."""
    path = Path(path)
    if path.is_dir():
        raise InvalidValue(argument, f"{{{argument}}} {literal(path)} is a folder, not a file")
    if not path.is_file():
        raise InvalidValue(argument, f"{{{argument}}} {literal(path)} does not exist")
    return path


def check_output_folder(path: str | Path, argument: str) -> Path:
    """A folder that exists or can be created, and can be written to; returns it; else
    ``InvalidArgument`` naming ``argument``."""
    path = Path(path)
    with argument_errors(argument):
        check_folder_writable(path, argument)
    return path


def check_generation(
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    max_rounds: int,
) -> None:
    """The decoding options of :class:`~vitron.assistant.Assistant`: ``max_new_tokens`` and
    ``max_rounds`` >= 1, ``temperature`` a finite number > 0, ``top_p`` in (0, 1], ``seed`` in
    [0, 2**32 - 1]."""
    check_at_least(max_rounds, 1, "max_rounds")
    check_at_least(max_new_tokens, 1, "max_new_tokens")
    if not 0.0 < top_p <= 1.0:  # also rejects NaN
        raise InvalidValue("top_p", f"{{top_p}} must be in (0, 1], got {top_p}")
    check_positive(temperature, "temperature")
    check_seed(seed)
