"""``semanir.allocator``: glibc keeps freed large blocks for the ``semanir`` commands."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from semanir import allocator, cli

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# What a training step does to the allocator: blocks of a few to tens of MB, a few alive at a
# time, freed in another order than taken.
FAULTS = """
import resource, sys
import torch
import common_kernels  # the heap's history of an import of the packages
from semanir.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None

def step():
    alive = []
    for mb in (9, 28, 5, 19, 12, 28, 3, 25, 30, 17):
        alive.append(torch.ones(mb * 2**18))  # mb MB, touched
        if len(alive) > 6:
            alive.pop(0)

for _ in range(3):
    step()  # warm
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def minor_faults(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    """(keep_freed_memory's answer, minor page faults of 10 steps) in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", FAULTS, mode],
        capture_output=True, text=True, check=True, env=env, timeout=120,
    )  # fmt: skip
    kept, faults = result.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_freed_blocks_are_reused_without_page_faults() -> None:
    """By default freed blocks go back to the kernel and come back as fresh pages (here about
    37,000 faults a step, 150 MB); kept, almost none. The default run holds glibc's initial
    mmap threshold (128 KiB) fixed: its dynamic rise after a large free otherwise keeps the
    blocks in about one run in six on these machines, and the comparison means nothing then."""
    fixed_default = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 2**10)}
    _, default = minor_faults("default", fixed_default)
    kept, faults = minor_faults("keep")
    assert kept == "True"
    assert default > 10 * 10_000
    assert faults < default / 20


def test_a_users_malloc_settings_are_left_alone(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: calls.append(name))
    for name in ("MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD"):
        with monkeypatch.context() as env:
            env.setenv(name, "1")
            assert allocator.keep_freed_memory() is False
    assert calls == []


def test_the_console_script_sets_it_once_and_the_library_never(monkeypatch) -> None:
    calls = []
    # the console script imports it when it starts (semanir.cli itself imports nothing heavy)
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["models"]) == 0
    assert calls == [1]
    package = Path(allocator.__file__).parent
    callers = [
        path.name
        for path in package.rglob("*.py")
        if "keep_freed_memory" in path.read_text(encoding="utf-8")
    ]
    assert sorted(callers) == ["allocator.py", "cli.py"]
