"""Helpers for the packages' tests of their commands. Standard library only.

Every command must end on SIGTERM (what a batch scheduler sends) with one line and exit 143,
having written nothing half-way; :func:`signal_while_working` drives such a test: it runs a
script that patches the command's work to announce itself and wait, and sends the signal from
outside once the work has begun.

Every shell example of a README runs in its package's tests as written:
:func:`shell_examples` gives each fenced ``bash``/``sh``/``shell``/``console`` block with how
it is tested. A block runs unless the line before it says otherwise, in an HTML comment that
readers of the rendered page do not see and that gives the reason::

    <!-- example: check (trains for an hour on a GPU) -->

``check`` blocks are verified without being run to the end (each package's tests say how:
the command's parser, Lightning's ``--print_config``, pip's ``--dry-run``).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
_MARKER = re.compile(r"<!--\s*example:\s*(run|check)\s*(?:\((.*)\))?\s*-->")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")

WORKING = "working"


class Stopped(NamedTuple):
    """What a command stopped by a signal left: its exit status and its output after the
    ``working`` line (stdout) and in all (stderr)."""

    returncode: int
    stdout: str
    stderr: str


def signal_while_working(
    script: str,
    argv: Sequence[str],
    *,
    signal_number: int = signal.SIGTERM,
    timeout: float = 120.0,
) -> Stopped:
    """Run ``python -c script ARGV...``, wait until it prints a line ``working`` on stdout,
    send it ``signal_number`` and wait for it to end.

    Args:
        script: Python source that patches the command's work to ``print("working",
            flush=True)`` and sleep, then runs the command's ``main(sys.argv[1:])``.
        argv: the command's arguments.
        signal_number: the signal (default SIGTERM).
        timeout: seconds the command may take to end after the signal.

    Raises:
        AssertionError: the command ended before printing ``working`` (its stderr is shown).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        for line in iter(process.stdout.readline, ""):  # blocks until the command works
            if line.rstrip("\n") == WORKING:
                break
        else:
            _, err = process.communicate(timeout=timeout)
            raise AssertionError(f"the command ended before it worked: {err[-2000:]}")
        process.send_signal(signal_number)  # from outside, as a scheduler sends it
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return Stopped(process.returncode, out, err)


@dataclass(frozen=True)
class ShellExample:
    """One fenced shell block of a README.

    Args:
        readme: the file.
        line: the line number of its opening fence (1-based).
        code: the block's text.
        mode: ``"run"`` (run as written) or ``"check"`` (verified without running it through).
        reason: why a ``check`` block is not run ("" for ``run``).
    """

    readme: Path
    line: int
    code: str
    mode: str
    reason: str

    @property
    def id(self) -> str:
        """``README.md:42``, a test id."""
        return f"{self.readme.name}:{self.line}"

    def commands(self) -> list[list[str]]:
        """The block's commands as argument lists: continuation lines joined, comments and
        blank lines left out, ``VAR=value`` prefixes kept as leading words."""
        return shell_commands(self.code)


def shell_examples(readme: str | os.PathLike) -> list[ShellExample]:
    """Every fenced shell block of ``readme``, with the mode its marker line gives (``run``
    when there is none).

    Args:
        readme: a Markdown file.

    Raises:
        ValueError: a marker line that is not followed by a shell block, or a ``check`` without
            its reason.
    """
    readme = Path(readme)
    lines = readme.read_text(encoding="utf-8").splitlines()
    found: list[ShellExample] = []
    marker: tuple[int, str, str] | None = None
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        match = _MARKER.fullmatch(line)
        if match:
            if match[1] == "check" and not (match[2] or "").strip():
                raise ValueError(f"{readme}:{index + 1}: 'example: check' needs (a reason)")
            marker = (index, match[1], (match[2] or "").strip())
        elif line.startswith("```"):
            language = line[3:].strip().split(" ")[0]
            end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
            if language in SHELL_LANGUAGES:
                mode, reason = ("run", "") if marker is None else marker[1:]
                found.append(ShellExample(readme, index + 1, "\n".join(lines[index + 1 : end]),
                                          mode, reason))  # fmt: skip
            elif marker is not None:
                raise ValueError(f"{readme}:{marker[0] + 1}: a marker before a {language} block")
            marker = None
            index = end
        elif line and marker is not None:
            raise ValueError(f"{readme}:{marker[0] + 1}: the marker is not followed by a block")
        index += 1
    return found


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a shell snippet as argument lists (see :meth:`ShellExample.commands`).

    Args:
        code: shell text; ``&&`` and ``;`` separate commands too.
    """
    joined = re.sub(r"\\\n", " ", code)
    commands: list[list[str]] = []
    for line in _logical_lines(joined):
        words = _shell_words(line)
        current: list[str] = []
        for word in words:
            if word in ("&&", ";"):
                commands.append(current) if current else None
                current = []
            else:
                current.append(word)
        if current:
            commands.append(current)
    return commands


def _shell_words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    return list(lexer)


def _logical_lines(text: str) -> list[str]:
    """``text``'s lines, a line whose quote is still open joined with the next ones (a quoted
    argument may span lines, as in ``printf '...multi-line...' > file``)."""
    lines: list[str] = []
    pending = ""
    for line in text.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            _shell_words(pending)
        except ValueError:  # "No closing quotation": the quote goes on
            continue
        lines.append(pending)
        pending = ""
    if pending:
        raise ValueError(f"a quote is never closed in: {pending!r}")
    return lines


def program_words(command: Sequence[str]) -> list[str]:
    """``command`` without its leading ``VAR=value`` assignments."""
    words = list(command)
    while words and _ASSIGNMENT.match(words[0]):
        words.pop(0)
    return words
