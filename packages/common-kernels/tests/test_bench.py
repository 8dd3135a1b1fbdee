"""common_kernels.runtime.bench: what the packages' benchmark scripts share."""

from __future__ import annotations

import argparse
import platform
import sys

import pytest
import torch
from torch import nn

from common_kernels.runtime import bench
from common_kernels.runtime.cli import cpu_model
from common_kernels.runtime.testing import refusal


def test_dtypes_by_name() -> None:
    assert bench.DTYPES == ("fp32", "fp16", "bf16")
    assert [bench.torch_dtype(name) for name in bench.DTYPES] == [
        torch.float32, torch.float16, torch.bfloat16
    ]  # fmt: skip
    with pytest.raises(KeyError):
        bench.torch_dtype("fp64")


def test_require_cuda_refuses_a_machine_without_one(monkeypatch) -> None:
    parser = argparse.ArgumentParser(prog="run.py")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bench.require_cuda(parser, "cpu")  # the CPU is always there
    err = refusal(lambda argv: bench.require_cuda(parser, "cuda"), [])
    assert err.endswith(
        "run.py: error: --device cuda: no CUDA device is available (torch.cuda.is_available() "
        "is False); use --device cpu\n"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    bench.require_cuda(parser, "cuda")


def test_the_machine_a_report_names(monkeypatch) -> None:
    pytest.importorskip("psutil")
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (0.5, 0.25, 0.125))
    found = bench.machine("cpu", "bf16", 3)
    assert list(found) == [
        "device", "device_name", "dtype", "cuda", "threads", "cpu", "physical_cores",
        "memory_gib", "load_average", "torch", "python",
    ]  # fmt: skip
    assert found["device_name"] == found["cpu"] == cpu_model() == bench.device_name("cpu")
    assert (found["device"], found["dtype"], found["threads"]) == ("cpu", "bf16", 3)
    assert found["load_average"] == (0.5, 0.25, 0.125) and found["memory_gib"] > 0
    assert (found["torch"], found["python"]) == (torch.__version__, platform.python_version())
    with_library = bench.machine("cpu", "fp32", 1, ("pytest",))
    assert with_library["pytest"] == pytest.__version__ and list(with_library)[-1] == "python"


def test_memory_in_mib() -> None:
    pytest.importorskip("psutil")
    bench.synchronize("cpu")  # nothing to wait for
    peak, now = bench.peak_rss_mib(), bench.current_rss_mib()
    assert 10 < now <= peak + 1  # MiB, not KiB or bytes


def test_random_weights_are_scaled_by_fan_in() -> None:
    with torch.device("meta"):
        module = nn.Sequential(nn.Linear(400, 300), nn.LayerNorm(300), nn.Linear(300, 2))
    module = bench.random_weights(module.to(torch.float16), "cpu", seed=0)
    first, norm, last = module
    assert first.weight.device.type == "cpu" and first.weight.dtype == torch.float16
    assert float(first.weight.detach().float().std()) == pytest.approx(400**-0.5, rel=0.02)
    assert torch.all(first.bias == 0) and torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    with torch.device("meta"):
        again = nn.Sequential(nn.Linear(400, 300), nn.LayerNorm(300), nn.Linear(300, 2))
    again = bench.random_weights(again.to(torch.float16), "cpu", seed=0)
    assert torch.equal(again[2].weight, last.weight)  # the seed fixes the weights


def test_save_figure_writes_the_format_of_its_suffix(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    plt = bench.pyplot()
    assert plt.get_backend().lower() == "agg"
    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    path = bench.save_figure(figure, tmp_path / "new" / "plot.png", dpi=50)
    plt.close(figure)
    assert path == tmp_path / "new" / "plot.png"
    assert path.read_bytes().startswith(b"\x89PNG") and sorted(path.parent.iterdir()) == [path]


def test_default_dtype_and_the_checks_of_a_run(tmp_path, monkeypatch) -> None:
    assert (bench.default_dtype("cuda"), bench.default_dtype("cpu")) == ("fp16", "fp32")
    parser = argparse.ArgumentParser(prog="run.py")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bench.check_run(parser, "diffeat", "cpu", {"--results": tmp_path / "out"}, modules=("json",))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    folders = {"--results": blocker}
    err = refusal(lambda argv: bench.check_run(parser, "diffeat", "cpu", folders), [])
    assert err == f"run.py: error: --results {blocker} is a file, not a folder\n"
    folders = {"--results": tmp_path / "out"}
    err = refusal(lambda argv: bench.check_run(parser, "diffeat", "cuda", folders, ()), [])
    assert err.endswith("run.py: error: " + bench.NO_CUDA + "\n")
    assert sorted(tmp_path.iterdir()) == [blocker]  # checks only: nothing made


def test_write_report_writes_json_and_markdown(tmp_path, capsys) -> None:
    bench.write_report(tmp_path / "new" / "x_bench", {"rows": [1.5, "a"]}, "| a |\n")
    assert (tmp_path / "new" / "x_bench.json").read_text() == '{\n "rows": [\n  1.5,\n  "a"\n ]\n}'
    assert (tmp_path / "new" / "x_bench.md").read_text() == "| a |\n"
    assert capsys.readouterr().out == "| a |\n\n"


def test_figure_saves_and_closes_what_the_block_drew(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    plt = bench.pyplot()
    path = tmp_path / "new" / "plot.png"
    with bench.figure(path, 1, 2, figsize=(4, 2), savefig={"dpi": 50}) as (fig, axes):
        assert len(axes) == 2 and not path.exists()  # written when the block ends
        axes[0].plot([0, 1], [1, 0])
    assert path.read_bytes().startswith(b"\x89PNG") and sorted(path.parent.iterdir()) == [path]
    assert not plt.fignum_exists(fig.number)
    with pytest.raises(RuntimeError), bench.figure(tmp_path / "failed.png") as (fig, _):
        raise RuntimeError("drawing failed")
    assert not plt.fignum_exists(fig.number) and not (tmp_path / "failed.png").exists()


def test_write_drawn_report_draws_from_the_saved_json(tmp_path) -> None:
    seen = []

    def markdown(report: dict) -> str:
        seen.append(report)
        return f"| {report['size']} |\n"

    def plot(report: dict, path) -> None:
        seen.append(report)
        path.write_text("png")

    report = {"size": (3, 4)}  # a tuple: the JSON gives it back as a list
    text = bench.write_drawn_report(tmp_path / "new" / "quick", report, markdown, plot, indent=2)
    assert text == "| [3, 4] |\n" and seen == [{"size": [3, 4]}] * 2
    assert (tmp_path / "new" / "quick.json").read_text() == (
        '{\n  "size": [\n    3,\n    4\n  ]\n}\n'
    )
    assert (tmp_path / "new" / "quick.md").read_text() == text
    assert (tmp_path / "new" / "quick.png").read_text() == "png"


def test_load_sibling_imports_a_script_beside_the_benchmark(tmp_path) -> None:
    (tmp_path / "models.py").write_text("SIZE = 3\n")
    module = bench.load_sibling(tmp_path, "models", "x_bench")
    assert module.SIZE == 3 and module.__name__ == "x_bench_models"
    assert sys.modules["x_bench_models"] is module  # dataclasses and pickling look it up there
    del sys.modules["x_bench_models"]
