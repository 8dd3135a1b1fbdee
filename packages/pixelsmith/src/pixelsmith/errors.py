"""pixelsmith's bad-argument error: :class:`InvalidValue`, an ``InvalidArgument`` whose message
names its arguments in place (as itaclip's and diffeat's ``errors.InvalidValue``).

``common_kernels.runtime.errors.InvalidArgument`` prints ``ARGUMENT: message``; pixelsmith's
messages name their argument where the sentence puts it (``{num_inference_steps} must be an int
in [1, 1000] ...``, ``the checkpoint folder ... (set with {checkpoint_dir}) is a file``), so
that Python users read ``num_inference_steps must be ...`` and the command line, given its
``FLAGS`` (``common_kernels.runtime.cli.run_main(..., flags=FLAGS)``), ``--steps must be ...``.
A setting is written ``{argument=value}`` with the value as Python writes it:
``patch_scheduler='grid'`` in Python, ``--scheduler grid`` on the command line (``True`` shows
the flag alone: ``{allow_large=True}`` is ``--allow-large``).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping

from common_kernels.runtime.errors import InvalidArgument


class InvalidValue(InvalidArgument):
    """A bad value for ``argument``, its message a template naming arguments in place.

    Args:
        argument: the API argument that is wrong (``"num_inference_steps"``).
        message: what is wrong, each argument written ``{name}`` and each setting
            ``{name=value}`` (paths and library text inside go through
            :func:`common_kernels.runtime.errors.literal`).
    """

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(argument, message)
        self.args = (self.message,)

    def __reduce__(self) -> tuple:
        return type(self), (self.argument, self.template)

    def render(self, flags: Mapping[str, str] | None = None) -> str:
        """The message with each argument and setting spelt by ``flags`` (a command line's), or
        as Python writes it."""
        return self.template.format_map(_Spelling(flags or {}))

    def for_flags(self, flags: Mapping[str, str]) -> str:
        """The message as a command line prints it: arguments named by their ``flags``."""
        return self.render(flags)

    def __str__(self) -> str:
        return self.message


class _Spelling(dict):
    def __missing__(self, key: str) -> str:
        argument, _, value = key.partition("=")
        flag = self.get(argument)
        if not value:
            return argument if flag is None else flag
        if flag is None:
            return key
        shown = ast.literal_eval(value)
        return flag if shown is True else f"{flag} {shown}"
