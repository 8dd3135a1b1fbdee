"""The one exception type for a bad argument, in the API's own words. Standard library only.

An API names its own argument (``output``, ``inputs``); a command-line interface maps that name
to its flag when it prints the error (:func:`common_kernels.runtime.cli.run_main`'s ``flags``), so
that
Python users and command-line users read the same message, each in their own terms. A message
that points at another argument writes it as ``{name}`` and gives its Python spelling in
``mentions`` (``{"in_place": "in_place=True"}``); a CLI puts its flag there instead.
"""

from __future__ import annotations

from collections.abc import Mapping


class InvalidArgument(ValueError):
    """A bad value for one argument of an API call (a ``ValueError``).

    Args:
        argument: the argument's name in the API (``"output"``).
        message: what is wrong and what is accepted, without the argument's name; other
            arguments it points at are written ``{name}``.
        mentions: the Python spelling of each ``{name}`` in ``message`` (default: the name).
    """

    def __init__(
        self, argument: str, message: str, *, mentions: Mapping[str, str] | None = None
    ) -> None:
        self.argument = argument
        self.template = message
        self.mentions = dict(mentions or {})
        self.message = self.render()
        super().__init__(f"{argument}: {self.message}")

    def render(self, flags: Mapping[str, str] | None = None) -> str:
        """The message, with each other argument it points at spelt as ``flags`` says (a CLI's
        flags), else as Python users write it."""
        names = {**self.mentions, **(flags or {})}
        return self.template.format_map(_Spelling(names))

    def for_flags(self, flags: Mapping[str, str]) -> str:
        """``FLAG: message`` for a command line: the argument and the ones the message points
        at named by their flags (``flags``: argument name -> flag)."""
        return f"{flags.get(self.argument, self.argument)}: {self.render(flags)}"


class MissingPath(InvalidArgument, FileNotFoundError):
    """A path where nothing is, named by its argument: a ``FileNotFoundError`` that is an
    :class:`InvalidArgument` too (``vae: no VAE folder ./x (nothing at /abs/x)``)."""


def literal(text: object) -> str:
    """``text`` (a path, a library's message) shown as written inside an
    :class:`InvalidArgument` message: its braces doubled, so that they are not taken for the
    ``{name}`` of another argument."""
    return str(text).replace("{", "{{").replace("}", "}}")


class _Spelling(dict):
    def __missing__(self, key: str) -> str:
        return key
