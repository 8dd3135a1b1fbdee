"""OpenMP's idle threads told to sleep instead of spin, for a machine other jobs share
(``semanir`` commands).

torch runs its CPU ops (and common-kernels' C++ kernels, through ``at::parallel_for``) on one
OpenMP pool. Between two parallel regions GNU OpenMP's idle threads spin, by default for about
300,000 iterations, before they sleep. On an idle machine that saves a wake-up per region; on a
shared one it is what took SemanIR's lead: with one busy single-threaded process beside a 2-core
restore, the spinning thread keeps its core looking busy, so the scheduler leaves the other
thread on the core it shares with the busy process, and every one of the model's many small
regions (about ten a layer) waits for it. ``benchmarks/shared_machine.py`` measured, on 384x384:
the tiny gray denoiser 3.2x slower beside a busy process with spinning threads (DnCNN, whose
few large convolutions hide the waits, 1.8x), 1.7x with sleeping ones; two restores at once 6.2x
against 1.9x. Sleeping costs an idle machine a wake-up per region: a few percent.

``OMP_WAIT_POLICY=PASSIVE`` is that setting. GNU OpenMP reads it once, when it loads, so it must
be in the environment before torch is imported: the ``semanir`` console script calls
:func:`sleep_when_idle` first; the library's functions (``restore``, the models) never change
process-wide settings, and a Python program sets the variable itself (``OMP_WAIT_POLICY=PASSIVE
python app.py``). A policy the user chose (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) is kept.
"""

from __future__ import annotations

import os
import sys

# the user's own choice wins: with either set, nothing is changed
ENVIRONMENT = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def sleep_when_idle() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` for this process and its children, unless the user chose
    a wait policy or torch (and with it the OpenMP runtime) is already imported, when it would
    have no effect. Returns whether it was set."""
    if "torch" in sys.modules or any(name in os.environ for name in ENVIRONMENT):
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
