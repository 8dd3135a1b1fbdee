"""The one exception type for a bad argument, in the API's own words. Standard library only.

An API names its own argument (``output``, ``inputs``); a command-line interface maps that name
to its flag when it prints the error (:func:`common_kernels.runtime.cli.run_main`'s
``flags``), so that Python users and command-line users read the same message, each in their
own terms. A message names arguments as ``{name}``: Python users read the name (or its
spelling in ``mentions``, ``{"in_place": "in_place=True"}``), a command line its flag. A
setting is written ``{name=value}`` with the value as Python writes it: ``patch_scheduler=
'grid'`` in Python, ``--scheduler grid`` on a command line (``True`` shows the flag alone).

An :class:`InvalidArgument`'s message is shown after its argument (``output: is a file``); an
:class:`InvalidValue`'s is whole, naming its argument where the sentence puts it (``{stride}
must be >= 1, got 0``), and is shown as written.
"""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Iterator, Mapping


class InvalidArgument(ValueError):
    """A bad value for one argument of an API call (a ``ValueError``).

    Args:
        argument: the argument's name in the API (``"output"``).
        message: what is wrong and what is accepted, without the argument's name; other
            arguments it names are written ``{name}``, text shown as written goes through
            :func:`literal`.
        mentions: the Python spelling of each ``{name}`` in ``message`` (default: the name).
    """

    def __init__(
        self, argument: str, message: str, *, mentions: Mapping[str, str] | None = None
    ) -> None:
        self.argument = argument
        self.template = message
        self.mentions = dict(mentions or {})
        self.message = self.render()
        super().__init__(self.for_flags({}))

    def __reduce__(self) -> tuple:
        return _rebuild, (type(self), self.argument, self.template, self.mentions)

    def render(self, flags: Mapping[str, str] | None = None) -> str:
        """The message, each argument it names spelt as ``flags`` says (a CLI's flags), else as
        Python users write it."""
        return self.template.format_map(_Spelling({**self.mentions, **(flags or {})}))

    def for_flags(self, flags: Mapping[str, str]) -> str:
        """``FLAG: message`` for a command line (``flags``: argument name -> flag)."""
        text = self.render(flags)
        flag = flags.get(self.argument, self.mentions.get(self.argument, self.argument))
        return f"{flag}: {text}"


class InvalidValue(InvalidArgument):
    """An :class:`InvalidArgument` whose message is whole: it names its argument where the
    sentence puts it (``{seed} must be >= 0, got -1``, ``{device} tpu: ...``), or needs no
    name, and is shown as written (no ``ARGUMENT:`` prefix)."""

    def for_flags(self, flags: Mapping[str, str]) -> str:
        """The message, each argument named by its flag (``flags``: argument -> flag)."""
        return self.render(flags)


class MissingPath(InvalidArgument, FileNotFoundError):
    """A path where nothing is, named by its argument: a ``FileNotFoundError`` that is an
    :class:`InvalidArgument` too (``vae: no VAE folder ./x (nothing at /abs/x)``)."""


def literal(text: object) -> str:
    """``text`` (a path, a library's message) shown as written inside an
    :class:`InvalidArgument` message: its braces doubled, so that they are not taken for the
    ``{name}`` of another argument."""
    return str(text).replace("{", "{{").replace("}", "}}")


def shown(argument: str, value: object) -> str:
    """``{argument} VALUE``: an argument and its value at the head of a message (the value
    shown as written)."""
    return f"{{{argument}}} {literal(value)}"


@contextlib.contextmanager
def argument_errors(argument: str) -> Iterator[None]:
    """A ``ValueError`` of a ``common_kernels.runtime`` rule given ``argument`` as the name to
    print (``cli.check_device``, ``cli.check_folder_writable``, ``cli.check_file_writable``,
    ``files.check_output_folder_name``: their messages start with it), raised again as an
    :class:`InvalidValue` naming ``argument``; other errors pass unchanged.

    Args:
        argument: the API's argument the rule checks (``"output"``).
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


def _rebuild(
    kind: type[InvalidArgument], argument: str, template: str, mentions: Mapping[str, str]
) -> InvalidArgument:
    """An :class:`InvalidArgument` again from what pickling kept (multiprocessing workers)."""
    return kind(argument, template, mentions=mentions)


class _Spelling(dict):
    """``{name}`` -> its spelling (the name itself when none is given); ``{name=value}`` -> the
    flag and the value where a flag is given, else as written."""

    def __missing__(self, key: str) -> str:
        argument, equals, value = key.partition("=")
        spelling = self.get(argument)
        if not equals:
            return argument if spelling is None else spelling
        if spelling is None or not spelling.startswith("-"):
            return key
        shown_value = ast.literal_eval(value)
        return spelling if shown_value is True else f"{spelling} {shown_value}"
