"""SIGTERM (what a batch scheduler sends) ends ``vitron run`` with one line and exit 143,
nothing written (issue 25, item 4)."""

from __future__ import annotations

from common_kernels.runtime.testing import signal_while_working
from vitron.cli import main

WORKING_SCRIPT = """
import sys, time
from vitron.assistant import Assistant
from vitron.cli import main

def working(self, *args, **kwargs):  # the model is loaded, the turn in progress
    print("working", flush=True)
    time.sleep(120)

Assistant.chat = working
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_run_exits_143_with_one_line(tmp_path) -> None:
    assert main(["tiny-model", str(tmp_path / "model"), "--seed", "0"]) == 0
    out = tmp_path / "out"
    argv = ["run", "describe nothing", "--model", str(tmp_path / "model"), "-o", str(out),
            "--max-new-tokens", "2"]  # fmt: skip
    stopped = signal_while_working(WORKING_SCRIPT, argv)
    assert stopped.returncode == 143, stopped.stderr
    assert stopped.stderr.splitlines()[-1] == "vitron run: terminated"
    assert not (out / "turn.json").exists()
