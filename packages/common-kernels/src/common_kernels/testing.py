"""Helpers for the packages' tests of their commands. Standard library only.

Every command must end on SIGTERM (what a batch scheduler sends) with one line and exit 143,
having written nothing half-way; :func:`signal_while_working` drives such a test: it runs a
script that patches the command's work to announce itself and wait, and sends the signal from
outside once the work has begun.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from typing import NamedTuple

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
