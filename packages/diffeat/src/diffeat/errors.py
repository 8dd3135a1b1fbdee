"""A bad argument whose message names it inside the sentence, in the caller's words; the
integer range check that raises one.

:class:`InvalidValue` is the :class:`common_kernels.runtime.errors.InvalidArgument` of messages
that read ``ARGUMENT VALUE: ...`` or ``ARGUMENT must be ...`` rather than ``ARGUMENT: ...``:
its message names every argument as ``{name}``, its own included, and is printed as written,
each ``{name}`` spelt as the caller spells it (Python: the argument's name; the ``diffeat``
command: its flag, from ``diffeat.cli.FLAGS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common_kernels.runtime.errors import InvalidArgument, literal


class InvalidValue(InvalidArgument):
    """A bad value for ``argument``, the message naming it where it reads best.

    Args:
        argument: the argument's name in the API (``"seed"``).
        message: the whole message with every argument written ``{name}``
            (``"{seed} must be >= 0, got -1"``); paths and other text shown as written go
            through :func:`common_kernels.runtime.errors.literal`.
        mentions: the Python spelling of each ``{name}`` (default: the name).
    """

    def __init__(
        self, argument: str, message: str, *, mentions: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(argument, message, mentions=mentions)
        self.args = (self.message,)

    def __str__(self) -> str:
        return self.message

    def for_flags(self, flags: Mapping[str, str]) -> str:
        """The message with each argument named by its flag (``flags``: argument -> flag)."""
        return self.render(flags)


class SourceError(OSError):
    """A failure to read what an argument names (a hub id's config files, a tokenizer): a
    failure while working (an ``OSError``), its message worded as :class:`InvalidValue`'s.

    Args:
        argument: the argument's name in the API.
        message: the whole message with every argument written ``{name}``.
    """

    def __init__(self, argument: str, message: str) -> None:
        self.argument, self.template, self.mentions = argument, message, {}
        super().__init__(self.render())

    render = InvalidArgument.render

    def for_flags(self, flags: Mapping[str, str]) -> str:
        """The message with each argument named by its flag (``flags``: argument -> flag)."""
        return self.render(flags)


def shown(argument: str, value: object) -> str:
    """``{argument} VALUE``: an argument and its value at the head of a message (the value
    shown as written)."""
    return f"{{{argument}}} {literal(value)}"


class MissingPath(InvalidArgument, FileNotFoundError):
    """A path where nothing is: a ``FileNotFoundError`` that names its argument
    (``model_id_or_dir: no model folder ./x (nothing at /abs/x)``)."""


def check_int_range(value: Any, argument: str, low: int, high: int | None = None) -> int:
    """``value`` as an integer in ``[low, high]`` (``high`` None: no bound).

    Args:
        value: the value.
        argument: the API's argument (named in the message).
        low: the smallest accepted value.
        high: the largest accepted value.

    Raises:
        InvalidValue: not an integer, or out of range; the message names the range.
    """
    accepted = f">= {low}" if high is None else f"in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(
            argument, f"{{{argument}}} must be an integer {accepted}, got {literal(repr(value))}"
        )
    if value < low or (high is not None and value > high):
        raise InvalidValue(argument, f"{{{argument}}} must be {accepted}, got {value}")
    return value


__all__ = [
    "InvalidArgument",
    "InvalidValue",
    "MissingPath",
    "SourceError",
    "check_int_range",
    "literal",
    "shown",
]
