"""One error contract for every command: exit statuses, one-line messages and ``--device``.

Every method package's command (``semanir``, ``itaclip``, ``pixelsmith``, ``diffeat``,
``vitron``) reports its errors through this module, so that they behave the same everywhere:

- A bad input prints one line ``PROG: error: MESSAGE`` naming the flag and the accepted range
  and exits 2: a :class:`UsageError` (raised by a command, or by argparse through
  :class:`Parser`), or any other ``ValueError`` found while working.
- A failure while working (a model that cannot be loaded, a full disk, GPU memory running out)
  prints one line and exits 1: a :class:`WorkError`, an ``OSError`` or
  ``torch.cuda.OutOfMemoryError``.
- Ctrl-C prints ``PROG: interrupted`` and exits 130.

:func:`run_main` applies these rules around a command; :func:`check_device` checks a
``--device`` value against the devices of the machine before any model is loaded;
:func:`check_folder_writable` / :func:`check_file_writable` check output paths. Only the
standard library and torch are imported here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import NoReturn

import torch

EXIT_WORK = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
DEVICE_FORMAT = "cpu, cuda, cuda:N or mps"

Describe = Callable[[BaseException], str]


class UsageError(ValueError):
    """A bad command-line input (exit status 2).

    Args:
        message: what is wrong, naming the flag and the accepted range.
        prog: the command it belongs to (``"vitron eval refseg"``); None: the one
            :func:`run_main` was given.
    """

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


class WorkError(Exception):
    """A failure while working, after the inputs were checked (exit status 1)."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors raised as :class:`UsageError` (printed as one line by
    :func:`run_main`) instead of a usage text and ``SystemExit(2)``."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)


def one_line(error: BaseException) -> str:
    """An exception's message on one line (newlines and runs of spaces collapsed); the class name
    when the message is empty.

    Args:
        error: the exception.
    """
    return " ".join(str(error).split()) or type(error).__name__


def command_prog(program: str, argv: Sequence[str], commands: Collection[str]) -> str:
    """``"PROGRAM COMMAND"`` when ``argv`` starts with one of ``commands``, else ``program``:
    the name the messages of a run start with.

    Args:
        program: the console script (``"itaclip"``).
        argv: the arguments without the program name.
        commands: the subcommands.
    """
    return f"{program} {argv[0]}" if argv and argv[0] in commands else program


def run_main(
    prog: str,
    run: Callable[[], int | None],
    *,
    usage_errors: tuple[type[BaseException], ...] = (),
    work_errors: tuple[type[BaseException], ...] = (),
    describe: Describe = one_line,
    interrupt_hint: str = "",
) -> int:
    """Run a command and turn its errors into one line on stderr and an exit status.

    ``UsageError`` and ``ValueError`` (and ``usage_errors``) return 2, ``WorkError``, ``OSError``
    and ``torch.cuda.OutOfMemoryError`` (and ``work_errors``) return 1, Ctrl-C returns 130; other
    exceptions propagate.

    Args:
        prog: the command named in the messages; a ``UsageError``'s own ``prog`` is named instead
            when it is a subcommand of ``prog`` (a nested subparser's errors).
        run: parses the arguments and runs the command; returns the exit status (None: 0).
        usage_errors: more exception classes that are bad inputs (checked before ``OSError``).
        work_errors: more exception classes that are failures while working.
        describe: the one-line text of an exception.
        interrupt_hint: appended to the ``PROG: interrupted`` line.
    """
    try:
        status = run()
    except UsageError as error:
        print(f"{_narrower(prog, error.prog)}: error: {describe(error)}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, *usage_errors) as error:  # a bad input found while working
        print(f"{prog}: error: {describe(error)}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, WorkError, torch.cuda.OutOfMemoryError, *work_errors) as error:
        print(f"{prog}: error: {describe(error)}", file=sys.stderr)
        return EXIT_WORK
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{interrupt_hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status is None else status


def _narrower(prog: str, own: str | None) -> str:
    """``own`` when it names ``prog`` or one of its subcommands, else ``prog``: argparse raises
    "unrecognized arguments" from the top parser (``diffeat``), yet the command ran was
    ``diffeat extract``."""
    return own if own is not None and (own == prog or own.startswith(f"{prog} ")) else prog


def available_devices() -> list[str]:
    """The torch devices of this machine as ``--device`` values: ``cpu``, then ``cuda:N`` and
    ``mps`` when present."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_device(value: str | None, flag: str = "--device") -> torch.device:
    """A ``--device`` value checked against this machine, before any model is loaded.

    Args:
        value: the flag's value; None (left out) gives cuda when available, else cpu.
        flag: the flag named in the messages.

    Raises:
        UsageError: not a device name, or a device this machine does not have; the message
            lists the devices that are (``(available: cpu, cuda:0)``).
    """
    if value is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        device = None
    problem = _device_problem(device)
    if problem:
        available = ", ".join(available_devices())
        raise UsageError(f"{flag} {value}: {problem} (available: {available})")
    return device


def _device_problem(device: torch.device | None) -> str:
    """Why ``device`` cannot be used here ("" when it can)."""
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        return f"expected {DEVICE_FORMAT}"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return "no CUDA device is available"
        if (device.index or 0) >= count:
            return f"only {count} CUDA device(s) present"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "no MPS device is available"
    return ""


def check_writable(folder: Path, flag: str, target: Path, what: str) -> None:
    """Fail (UsageError) unless ``folder`` exists or can be created, and can be written to.

    Args:
        folder: the folder that must be writable.
        flag: the option named in the message.
        target: the path the option gave.
        what: ``"it"`` (``target`` is the folder) or ``"its folder"``.
    """
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise UsageError(f"{flag} {target}: cannot create {what}, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {target}: cannot write to {existing} (permission denied)")


def check_folder_writable(folder: Path, flag: str) -> None:
    """Fail unless ``folder`` is a folder or can be created, and is writable.

    Args:
        folder: the output folder.
        flag: the option named in the messages.
    """
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder} is a file, not a folder")
    check_writable(folder, flag, folder, "it")


def check_file_writable(path: Path, flag: str) -> None:
    """Fail unless ``path`` is not a folder and its folder is writable or can be created.

    Args:
        path: the output file.
        flag: the option named in the messages.
    """
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder, not a file")
    check_writable(path.parent, flag, path, "its folder")
