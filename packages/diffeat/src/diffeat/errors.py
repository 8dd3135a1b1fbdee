"""diffeat's errors beside ``common_kernels.runtime.errors`` (``InvalidArgument``,
``InvalidValue``, ``MissingPath``: every bad argument): :class:`SourceError`, a failure to read
what an argument names, and the integer range check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common_kernels.runtime.errors import InvalidArgument, InvalidValue, literal


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


__all__ = ["SourceError", "check_int_range"]
