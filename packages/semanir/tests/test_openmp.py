"""OpenMP's idle threads sleep when the ``semanir`` command runs (issue 59, item 1): the
console script sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads OpenMP, unless the user chose
a wait policy; the library never changes it. The speed it buys on a shared machine is
``benchmarks/shared_machine.py``'s (quiet, beside a busy process, two restores at once)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from semanir import openmp

# prints what sleep_when_idle did, the policy, and whether torch was imported before it
PROBE = """
import os, sys
{before}
from semanir.openmp import sleep_when_idle
print(sleep_when_idle(), os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules)
"""


def probe(before: str = "", **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in openmp.ENVIRONMENT}
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)], capture_output=True, text=True,
        env={**clean, **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_idle_threads_are_told_to_sleep_before_torch_loads() -> None:
    assert probe() == ["True", "PASSIVE", "False"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"), ({"GOMP_SPINCOUNT": "100000"}, "None")],
)
def test_a_users_wait_policy_is_left_alone(env, expected) -> None:
    assert probe(**env) == ["False", expected, "False"]


def test_after_torch_it_changes_nothing() -> None:
    """OpenMP read its environment when torch loaded it: setting the variable then would only
    mislead the process's children into a policy the parent does not run."""
    assert probe(before="import torch") == ["False", "None", "True"]


def test_the_console_script_sets_it_and_the_library_never() -> None:
    code = (
        "import os\nfrom semanir.cli import main\nstatus = main(['models'])\n"
        "print('POLICY', os.environ.get('OMP_WAIT_POLICY'), status)"
    )
    clean = {k: v for k, v in os.environ.items() if k not in openmp.ENVIRONMENT}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean)
    assert done.stdout.splitlines()[-1] == "POLICY PASSIVE 0", done.stderr
    package = Path(openmp.__file__).parent
    callers = [p.name for p in package.rglob("*.py") if "sleep_when_idle" in p.read_text()]
    assert sorted(callers) == ["cli.py", "openmp.py"]
