"""What several common-kernels test modules share: the skip of a module whose kernel backend
cannot run on this machine."""

from __future__ import annotations

import pytest
import torch

from common_kernels import can_run


@pytest.fixture(scope="module")
def backend_runs(request: pytest.FixtureRequest) -> str:
    """The module's ``BACKEND``; its tests skip, with the backend's reason, where that backend
    cannot run a small problem here (``common_kernels.can_run``: Triton missing, no GPU and no
    interpreter). Use it as ``pytestmark = pytest.mark.usefixtures("backend_runs")``."""
    backend = request.module.BACKEND
    q = torch.zeros(1, 1, 4, 16)
    runnable, reason = can_run(backend, q, q, q, torch.zeros(1, 4, 1, dtype=torch.long))
    if not runnable:
        pytest.skip(reason)
    return backend
