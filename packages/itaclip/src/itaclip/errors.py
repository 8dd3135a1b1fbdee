"""itaclip's bad-argument errors: an ``InvalidArgument`` whose message names its argument in place.

``common_kernels.runtime.errors.InvalidArgument`` prints ``ARGUMENT: message``; most of
itaclip's messages name the argument where the sentence puts it (``{stride} must be in [1,
crop] ...``, ``{aux_file} PATH does not exist``), so that Python users read ``stride must be
...`` and ``itaclip``, given its ``FLAGS`` (``common_kernels.runtime.cli.run_main(...,
flags=FLAGS)``), ``--stride must be ...``: :class:`InvalidValue`. :class:`MissingPath` is a
path where nothing is (``model_name: no model folder ./x (nothing at /abs/x)``), also a
``FileNotFoundError``. :func:`argument_errors` words the path and device rules of
``common_kernels.runtime`` (which take the name to print) as an :class:`InvalidValue`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from common_kernels.runtime.errors import InvalidArgument, literal


class InvalidValue(InvalidArgument):
    """A bad value for ``argument``, the message naming it where it reads best.

    Args:
        argument: the argument's name in the API (``"stride"``).
        message: the whole message with every argument written ``{name}``, its own included
            (``"{stride} must be >= 1, got 0"``); paths and other text shown as written go
            through :func:`common_kernels.runtime.errors.literal`.
    """

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(argument, message)
        self.args = (self.message,)

    def __str__(self) -> str:
        return self.message

    def for_flags(self, flags: Mapping[str, str]) -> str:
        """The message with each argument named by its flag (``flags``: argument -> flag)."""
        return self.render(flags)


class MissingPath(InvalidArgument, FileNotFoundError):
    """A path where nothing is: a ``FileNotFoundError`` that names its argument
    (``model_name: no model folder ./x (nothing at /abs/x)``)."""


def shown(argument: str, value: object) -> str:
    """``{argument} VALUE``: an argument and its value at the head of a message (the value
    shown as written)."""
    return f"{{{argument}}} {literal(value)}"


@contextlib.contextmanager
def argument_errors(argument: str) -> Iterator[None]:
    """A ``ValueError`` (a ``UsageError``) of a ``common_kernels.runtime`` rule that was given
    ``argument`` as the name to print (``check_device``, ``check_folder_writable``,
    ``check_file_writable``, ``check_output_folder_name``), as an :class:`InvalidValue`.

    Args:
        argument: the API's argument the rule checks (``"cache_dir"``).
    """
    try:
        yield
    except InvalidArgument:
        raise
    except ValueError as error:
        text = str(error)
        if not text.startswith(argument):
            raise
        raise InvalidValue(argument, f"{{{argument}}}{literal(text[len(argument) :])}") from None
