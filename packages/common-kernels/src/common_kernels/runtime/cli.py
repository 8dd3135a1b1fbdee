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
:func:`check_folder_writable` / :func:`check_file_writable` check output paths;
:func:`check_benchmark_setup` checks a benchmark script's optional modules and output paths
before it measures anything; :func:`leave_signals_to_the_main_process` keeps a training's
data-loading workers alive through the signals that the main process turns into a checkpoint.
Only the standard library and torch are imported here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import torch

from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.files import parse_size

EXIT_WORK = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
DEVICE_FORMAT = "cpu, cuda, cuda:N or mps"
# What an API check raises about an input (a value, a type, a missing file or module, a file
# where a folder belongs or the reverse): a bad input inside :func:`usage_errors`.
BAD_INPUT = (
    ValueError, TypeError, ImportError, FileNotFoundError, IsADirectoryError, NotADirectoryError
)  # fmt: skip
VERBOSE_HELP = "keep third-party progress bars, deprecation notices and tips (default: off)"

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


@contextlib.contextmanager
def usage_errors(bad_input: tuple[type[BaseException], ...] = BAD_INPUT) -> Iterator[None]:
    """An API check's error about an input as a :class:`UsageError` (one line, exit status 2).

    An :class:`~common_kernels.runtime.errors.InvalidArgument` passes on to :func:`run_main`, which
    names
    its argument by the command's flags.

    Args:
        bad_input: the exception classes that are bad inputs.
    """
    try:
        yield
    except InvalidArgument:
        raise
    except bad_input as error:
        raise UsageError(one_line(error)) from None


def size_type(text: str) -> tuple[int, int]:
    """``S`` or ``HxW`` (height x width) in pixels -> ``(H, W)``: an argparse type with the rule
    of :func:`common_kernels.runtime.files.parse_size`, the same in every package."""
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_verbose(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` (:data:`VERBOSE_HELP`) on ``parser``'s every subcommand, or on ``parser``
    itself when it has none."""
    subcommands = [
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ]
    if not subcommands:
        parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    for action in subcommands:
        for sub in dict.fromkeys(action.choices.values()):
            add_verbose(sub)


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
    interrupt_hint: str | Callable[[], str] = "",
    flags: Mapping[str, str] | None = None,
) -> int:
    """Run a command and turn its errors into one line on stderr and an exit status.

    ``UsageError`` and ``ValueError`` (and ``usage_errors``) return 2, ``WorkError``, ``OSError``
    and ``torch.cuda.OutOfMemoryError`` (and ``work_errors``) return 1, Ctrl-C returns 130 and
    SIGTERM (what a batch scheduler sends) 143, each with one line; other exceptions propagate.
    SIGTERM is raised in the main thread as :class:`Terminated` while ``run`` works, so that
    ``finally`` blocks and atomic writers clean up as they do for Ctrl-C.

    Args:
        prog: the command named in the messages; a ``UsageError``'s own ``prog`` is named instead
            when it is a subcommand of ``prog`` (a nested subparser's errors).
        run: parses the arguments and runs the command; returns the exit status (None: 0).
        usage_errors: more exception classes that are bad inputs (checked before ``OSError``).
        work_errors: more exception classes that are failures while working.
        describe: the one-line text of an exception.
        interrupt_hint: appended to the ``PROG: interrupted`` and ``PROG: terminated`` lines (a
            callable is asked when the signal comes: how far the work got).
        flags: the command's flag for each API argument name: an
            :class:`~common_kernels.runtime.errors.InvalidArgument` is printed with the flags.
    """
    previous = _raise_on_sigterm()
    try:
        status = run()
    except UsageError as error:
        print(f"{_narrower(prog, error.prog)}: error: {describe(error)}", file=sys.stderr)
        return EXIT_USAGE
    except InvalidArgument as error:
        print(f"{prog}: error: {' '.join(error.for_flags(flags or {}).split())}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, *usage_errors) as error:  # a bad input found while working
        print(f"{prog}: error: {describe(error)}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, WorkError, torch.cuda.OutOfMemoryError, *work_errors) as error:
        print(f"{prog}: error: {describe(error)}", file=sys.stderr)
        return EXIT_WORK
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{_hint(interrupt_hint)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print(f"{prog}: terminated{_hint(interrupt_hint)}", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0 if status is None else status


def _hint(hint: str | Callable[[], str]) -> str:
    return hint() if callable(hint) else hint


def version_line(program: str, distribution: str) -> str:
    """What ``PROGRAM --version`` prints: the package's version, common-kernels', torch's and
    Python's (one line).

    Args:
        program: the console script (``"semanir"``).
        distribution: its distribution's name (``"semanir"``).
    """

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    python = ".".join(map(str, sys.version_info[:3]))
    parts = [f"torch {torch.__version__}", f"Python {python}"]
    if distribution != "common-kernels":
        parts.insert(0, f"common-kernels {installed('common-kernels')}")
    return f"{program} {installed(distribution)} ({', '.join(parts)})"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (a ``BaseException``, like ``KeyboardInterrupt``)."""


def leave_signals_to_the_main_process(worker_id: int) -> None:
    """``worker_init_fn`` of a training ``DataLoader``: the worker ignores SIGINT and SIGTERM.

    A terminal's Ctrl-C and a batch scheduler's SIGTERM reach every process of the job, the
    loader workers too; a worker killed by one ends the run ("DataLoader worker ... is killed
    by signal: Terminated") before the main process can save its resumable checkpoint. The
    main process stops its workers when it is done, and a worker exits when the main process
    dies.

    Args:
        worker_id: the worker's index (``DataLoader`` passes it).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _raise_terminated(signum: int, frame: object) -> NoReturn:
    raise Terminated


def _raise_on_sigterm() -> Any:
    """Make SIGTERM raise :class:`Terminated`; returns the previous handler (None when signals
    cannot be set here: not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


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
    # the permission bits do not tell everything (root on /proc, a read-only mount): a file
    # made and removed there does, before any work; the folder's times are put back
    times = existing.stat()
    try:
        descriptor, probe = tempfile.mkstemp(dir=existing, prefix=".write-check-")
    except OSError as error:
        reason = (error.strerror or type(error).__name__).lower()
        raise UsageError(f"{flag} {target}: cannot write to {existing} ({reason})") from None
    os.close(descriptor)
    os.unlink(probe)
    os.utime(existing, ns=(times.st_atime_ns, times.st_mtime_ns))


def check_folder_writable(folder: Path, flag: str) -> None:
    """Fail unless ``folder`` is a folder or can be created, and is writable.

    Args:
        folder: the output folder.
        flag: the option named in the messages.
    """
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder} is a file, not a folder")
    check_writable(folder, flag, folder, "it")


def check_file_writable(path: Path, flag: str, suffixes: Sequence[str] = ()) -> None:
    """Fail unless ``path`` is not a folder and its folder is writable or can be created (and,
    given ``suffixes``, ends with one of them, in any case).

    Args:
        path: the output file.
        flag: the option named in the messages.
        suffixes: the accepted suffixes (``(".json",)``); empty: any.
    """
    if suffixes and path.suffix.lower() not in suffixes:
        found = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
        raise UsageError(f"{flag} {path}: {found}; accepted: {', '.join(suffixes)}")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder, not a file")
    check_writable(path.parent, flag, path, "its folder")


def install_command(package: str, extra: str) -> str:
    """How to install ``package`` with its ``extra``: by name, and from a clone of the repository
    (the packages are not on PyPI yet), as the package README writes it.

    Args:
        package: the distribution, also its folder under ``packages/`` (``"semanir"``).
        extra: the optional-dependency group (``"bench"``).
    """
    clone = f'"./packages/{package}[{extra}]"'
    if package != "common-kernels":  # a method package names its in-tree dependency too
        clone = f"./packages/common-kernels {clone}"
    return f'pip install "{package}[{extra}]" (from a clone: pip install {clone})'


def require_modules(modules: Sequence[str], package: str, extra: str = "bench") -> None:
    """Fail (UsageError) unless every module of ``modules`` is installed; the message names the
    missing ones and the command that installs them.

    Modules are looked up with :func:`importlib.util.find_spec`: nothing is imported.

    Args:
        modules: top-level import names (``"matplotlib"``, ``"skimage"``).
        package: the distribution whose ``extra`` lists them.
        extra: the optional-dependency group of ``package``.
    """
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        names = ", ".join(missing)
        what = f"module {names} is" if len(missing) == 1 else f"modules {names} are"
        hint = install_command(package, extra)
        raise UsageError(f"{what} not installed; install the [{extra}] extra: {hint}")


def cpu_model() -> str:
    """The CPU's model name, for a benchmark's report: /proc/cpuinfo's (Linux), else
    platform's guess."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def check_benchmark_setup(
    prog: str,
    package: str,
    *,
    modules: Sequence[str] = (),
    folders: Mapping[str, Path | None] | None = None,
    files: Mapping[str, Path | None] | None = None,
    extra: str = "bench",
) -> None:
    """Check, before a benchmark script measures anything, that it can finish: its optional
    modules are installed (:func:`require_modules`) and its output folders and files can be
    written (:func:`check_folder_writable`, :func:`check_file_writable`). A problem prints one
    line ``PROG: error: MESSAGE`` on stderr and exits 2, as argparse does for a bad option
    (without the usage text).

    Args:
        prog: the script named in the message (``"run.py"``).
        package: the distribution whose ``extra`` lists ``modules``.
        modules: top-level import names the script needs beyond ``package``'s dependencies.
        folders: output folders by flag (``{"--out": path}``); a None path (the flag left out)
            is skipped.
        files: output files by flag, likewise.
        extra: the optional-dependency group of ``package`` that lists ``modules``.

    Raises:
        SystemExit: status 2, after the message.
    """
    try:
        require_modules(modules, package, extra)
        for flag, folder in (folders or {}).items():
            if folder is not None:
                check_folder_writable(folder, flag)
        for flag, path in (files or {}).items():
            if path is not None:
                check_file_writable(path, flag)
    except UsageError as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
