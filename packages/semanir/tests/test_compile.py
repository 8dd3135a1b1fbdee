"""``restore(..., compile=True)`` and ``semanir restore --compile``: torch.compile once per model
and tile size, the compile time said apart, outputs as eager ones.

The fast tests put a recorder in place of ``torch.compile`` (it returns the model: what is
checked is when and how often compilation is asked for); the slow one compiles for real.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from common_kernels import cpu_kernels_status, value_checks
from semanir import inference
from semanir.batch import COMPILE_TILE
from semanir.cli import main
from semanir.inference import compile_for_tiles, restore
from semanir.io import read_image, write_image
from semanir.models import build_model


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, dict]]:
    """Each torch.compile call: (id of the model, options); the model itself is returned."""
    calls: list[tuple[int, dict]] = []

    def recording(model, **options):
        calls.append((id(model), options))
        return model

    inference.compiled_model.cache_clear()
    monkeypatch.setattr(torch, "compile", recording)
    yield calls
    inference.compiled_model.cache_clear()


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("semanir_test_tiny_unet").eval()


def test_a_model_is_compiled_once_with_static_shapes(compiles) -> None:
    model, other = tiny(), tiny()
    x = torch.rand(1, 1, 20, 24, generator=torch.Generator().manual_seed(1))
    eager = restore(model, x, tile=None)
    for _ in range(3):
        assert torch.equal(restore(model, x, tile=None, compile=True), eager)
    restore(other, x, tile=12, tile_overlap=4, compile=True)
    assert compiles == [(id(model), {"dynamic": False}), (id(other), {"dynamic": False})]


def test_compile_for_tiles_runs_one_blank_tile(compiles, monkeypatch) -> None:
    model = tiny()
    shapes = []
    forward = model.forward

    def recording(x, **kwargs):
        shapes.append(x.shape)
        return forward(x, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    seconds = compile_for_tiles(model, 32)
    assert seconds > 0 and shapes == [(1, 1, 32, 32)] and len(compiles) == 1


def test_the_cli_compiles_each_model_once_for_its_tiles_and_says_so(
    tmp_path: Path, compiles, capsys
) -> None:
    torch.manual_seed(0)
    folder = tmp_path / "model"
    build_model("semanir_test_tiny_unet").save_pretrained(folder)
    photos = tmp_path / "in"
    photos.mkdir()
    for index, size in enumerate([(300, 280), (40, 56), (260, 300)]):
        write_image(photos / f"im{index}.png", torch.rand(1, *size))
    code = main(["restore", str(photos), "-o", str(tmp_path / "out"), "--model", str(folder),
                 "--compile"])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert err.count(f"compiled {folder} for {COMPILE_TILE} px tiles in ") == 1
    assert len(compiles) == 1
    eager = tmp_path / "eager"
    assert main(["restore", str(photos), "-o", str(eager), "--model", str(folder),
                 "--tile", str(COMPILE_TILE)]) == 0  # fmt: skip
    for name in ("im0.png", "im1.png", "im2.png"):
        assert torch.equal(read_image(tmp_path / "out" / name), read_image(eager / name))


@pytest.mark.parametrize("name", ["semanir_test_tiny_unet", "semanir_test_tiny_columnar"])
def test_a_model_traces_into_one_graph_that_calls_the_cpp_kernels(name: str) -> None:
    """What restore(compile=True) hands to torch.compile traces whole (fullgraph: a graph break
    would split every stage) and calls common-kernels' C++ top-k and attention where they
    run; the output is eager's within 1e-4 (a near-tie of a dictionary can flip). 32 px: the
    U-Net's deepest stage is one window across (its windows a view of its input)."""
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.rand(1, model.in_channels, 32, 32, generator=torch.Generator().manual_seed(3))
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=False)
    with torch.inference_mode(), value_checks(False):  # as restore() runs it, input checked
        eager, traced = model(x), compiled(x)
    assert (traced - eager).abs().max() < 1e-4
    assert counter.frame_count == 1
    called = {str(node.target) for node in counter.graphs[0].graph.nodes}
    if cpu_kernels_status()[0]:
        assert {"common_kernels_cpu.topk_membership",
                "common_kernels_cpu.masked_attention"} <= called  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RUN_SLOW"), reason="slow test: set RUN_SLOW=1 to run it")
def test_compiled_restore_matches_eager_with_real_torch_compile() -> None:
    """Inductor's kernels sum in other orders: within 1e-4 of eager (a near-tie of the
    dictionary can flip), and compiled once: a second call of the same size compiles nothing."""
    inference.compiled_model.cache_clear()
    model = tiny()
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    eager = restore(model, x, tile=None)
    compiled = restore(model, x, tile=None, compile=True)
    torch._dynamo.utils.counters.clear()
    again = restore(model, x, tile=None, compile=True)
    assert (compiled - eager).abs().max() < 1e-4
    assert torch.equal(again, compiled)
    assert not torch._dynamo.utils.counters["stats"]["unique_graphs"]
