"""What a call of the Triton backends does on the host: kernel launches and allocations only.

With a prepared dictionary, everything derived from the neighbour lists (transposed list, tile
map, bitmask) already exists, so a forward or backward launches its kernels and allocates its
outputs, and computes nothing else with torch (each torch op is a kernel launch on CUDA, and
at small sizes those launches, not the kernels, set the time). The kernels are replaced by
recorders here, so the count is of the host work alone, whatever the interpreter does.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")

from common_kernels import KNNDictionary, knn_attention, value_checks
from common_kernels import _triton_knn_attention as gather_kernels
from common_kernels import _triton_tiles as tile_kernels

BACKEND = "triton"
pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("backend_runs")]

ALLOCATIONS_AND_VIEWS = {
    "aten.empty_like.default",
    "aten.empty.memory_format",
    "aten.expand.default",
    "aten.unsqueeze.default",
    "aten.detach.default",
}


class OpLog(TorchDispatchMode):
    """Records the name of every aten op dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class LaunchRecorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](...)`` records the launch."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append(self.name)


def record_launches(monkeypatch, module) -> list[str]:
    launches: list[str] = []
    for name in [n for n in vars(module) if n.endswith("_kernel")]:
        monkeypatch.setattr(module, name, LaunchRecorder(name, launches))
    return launches


def problem(bias: bool):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 64, 16, generator=g, requires_grad=True) for _ in range(3))
    table = torch.randn(2, 64, 64, generator=g, requires_grad=True) if bias else None
    idx = torch.rand(2, 64, 64, generator=g).argsort(dim=-1)[..., :16]
    return q, k, v, KNNDictionary.from_unique(idx), table


@pytest.mark.parametrize(
    ("backend", "module", "bias", "expected"),
    [
        ("triton", gather_kernels, False, ["_knn_bwd_query_kernel", "_knn_bwd_key_kernel"]),
        ("tiles", tile_kernels, False, ["_tiles_bwd_dq_kernel", "_tiles_bwd_dkdv_kernel"]),
    ],
    ids=["triton", "tiles"],
)
def test_backward_launches_its_kernels_and_computes_nothing_else(
    backend, module, bias, expected, monkeypatch
) -> None:
    q, k, v, dictionary, table = problem(bias)
    dictionary.prepare(backend)
    with value_checks(False):  # as on CUDA, where values are not checked per call
        out = knn_attention(q, k, v, dictionary, bias=table, backend=backend)
    grad = torch.ones_like(out)
    launches = record_launches(monkeypatch, module)
    with OpLog() as log:
        out.backward(grad)
    assert launches == expected
    assert set(log.ops) <= ALLOCATIONS_AND_VIEWS, sorted(set(log.ops) - ALLOCATIONS_AND_VIEWS)
    assert len(log.ops) <= 12, log.ops


@pytest.mark.parametrize(
    ("backend", "module", "kernel"),
    [("triton", gather_kernels, "_knn_fwd_kernel"), ("tiles", tile_kernels, "_tiles_fwd_kernel")],
    ids=["triton", "tiles"],
)
def test_forward_with_a_prepared_dictionary_launches_one_kernel(
    backend, module, kernel, monkeypatch
) -> None:
    q, k, v, dictionary, table = problem(bias=True)
    dictionary.prepare(backend)
    launches = record_launches(monkeypatch, module)
    with value_checks(False), OpLog() as log:
        knn_attention(q, k, v, dictionary, bias=table, backend=backend)
    assert launches == [kernel]
    assert set(log.ops) <= ALLOCATIONS_AND_VIEWS, sorted(set(log.ops) - ALLOCATIONS_AND_VIEWS)
