"""common_kernels.testing.signal_while_working: a real SIGTERM from outside once the command
works, and a clear failure when it never does."""

from __future__ import annotations

import signal

import pytest

from common_kernels.testing import signal_while_working

SCRIPT = """
import sys, time
from common_kernels.cli import run_main

def work():
    print("before", flush=True)
    print("working", flush=True)
    time.sleep(120)

sys.exit(run_main("demo " + sys.argv[1], work))
"""


def test_the_signal_comes_once_the_command_works() -> None:
    stopped = signal_while_working(SCRIPT, ["run"])
    assert stopped == (143, "", "demo run: terminated\n")


def test_sigint_is_sent_when_asked() -> None:
    stopped = signal_while_working(SCRIPT, ["run"], signal_number=signal.SIGINT)
    assert stopped.returncode == 130 and stopped.stderr == "demo run: interrupted\n"


def test_a_command_that_ends_before_working_fails_with_its_stderr() -> None:
    script = "import sys; print('bad input', file=sys.stderr); sys.exit(2)"
    with pytest.raises(AssertionError, match="the command ended before it worked: bad input"):
        signal_while_working(script, [])
