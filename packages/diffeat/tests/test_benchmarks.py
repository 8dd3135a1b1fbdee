"""The benchmark's pieces at toy size (no timing assertions), its CUDA pieces on the CPU (bf16,
the GPU report, SD-sized U-Nets on the meta device); --quick end to end when slow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common_kernels.runtime import testing
from common_kernels.runtime.testing import assert_setup_checked_first, load_script, no_work

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(RUN, "diffeat_bench_run")


def test_random_unet_and_inputs(bench):
    unet = bench.random_unet("tiny-sdxl", seed=0)
    weight = unet.conv_in.weight
    assert weight.device.type == "cpu" and torch.isfinite(weight).all()
    assert abs(float(weight.detach().std()) - (4 * 9) ** -0.5) < 0.05  # N(0, 1 / fan_in)
    assert torch.all(unet.conv_in.bias == 0)
    assert torch.equal(bench.random_unet("tiny-sdxl", seed=0).conv_in.weight, weight)
    latent, timestep, context, kwargs = bench.unet_inputs(unet, 64)
    assert latent.shape == (1, 4, 8, 8) and int(timestep) == 50 and context.shape == (1, 77, 32)
    assert kwargs["added_cond_kwargs"]["text_embeds"].shape == (1, 16)


def test_timed_selections_memory_and_report(bench, tmp_path):
    timed = bench.time_selections("tiny-sdxl", 64, ["full", "ours-xl", "catalogue"], 0, 2, True)
    full, ours, catalogue = (timed[s] for s in ("full", "ours-xl", "catalogue"))
    assert full["activations"] == 0 and full["max_abs_diff_vs_full_pass"] is None
    assert ours["activations"] == 4 and ours["channels"] == 16 + 16 + 16 + 16
    assert ours["last_activation"] == "up-level1-repeat0-vit-block0-out"
    assert ours["max_abs_diff_vs_full_pass"] == 0.0  # early exit: identical features
    assert catalogue["activations"] == 612 and catalogue["feature_mib"] > ours["feature_mib"]
    assert all(
        row["repeats"] == 2 and row["seconds_min"] <= row["seconds_median"]
        for row in timed.values()
    )
    memory = bench.peak_memory("tiny-sdxl", 64, "ours-xl")
    assert memory["peak_rss_mib"] >= memory["model_rss_mib"] > 0
    flops = bench.flop_counts("tiny-sdxl", 64, ["full", "ours-xl", "legacy-xl", "catalogue"])
    assert flops["full"] > flops["ours-xl"] > 0  # early exit skips work
    assert flops["catalogue"] > flops["full"]  # recorded maps cost an extra QK^T
    assert flops["legacy-xl"] == pytest.approx(flops["full"], rel=0.01)  # only conv_out skipped
    rows = [
        {"model": "tiny-sdxl@64", "speedup": 1.0, "tflops": flops[s] / 1e12,
         "flop_speedup": flops["full"] / flops[s], **timed[s], **memory}
        for s in ("full", "ours-xl", "catalogue")
    ]  # fmt: skip
    report = {
        "device": "cpu", "device_name": "test", "dtype": "fp32", "cuda": None,
        "threads": 1, "cpu": "test", "physical_cores": 1, "load_average": (0.0, 0.0, 0.0),
        "torch": torch.__version__, "diffusers": "x", "rows": rows,
    }  # fmt: skip
    table = bench.markdown(report)
    assert table.count("\n| tiny-sdxl@64 |") == 3 and "| 1 (baseline) |" in table
    assert "random weights, fp32, CPU," in table and "| peak RSS MiB |" in table
    bench.plot(report, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_sd_sized_unets_on_the_meta_device(bench):
    for name, count in (("sd15", 859_520_964), ("sdxl", 2_567_463_684)):  # 859.5 M, 2.567 B
        unet = bench.random_unet(name, device="meta", dtype="fp16")
        params = list(unet.parameters())
        assert all(p.is_meta and p.dtype == torch.float16 for p in params)
        assert sum(p.numel() for p in params) == count


def test_selections_in_bf16(bench):
    unet = bench.random_unet("tiny-sdxl", dtype="bf16")
    latent, timestep, context, kwargs = bench.unet_inputs(unet, 64)
    assert latent.dtype == context.dtype == torch.bfloat16 and int(timestep) == 50
    assert kwargs["added_cond_kwargs"]["time_ids"].dtype == torch.bfloat16
    timed = {
        dtype: bench.time_selections("tiny-sdxl", 64, ["full", "ours-xl"], 0, 1, True, "cpu", dtype)
        for dtype in ("fp32", "bf16")
    }
    assert timed["bf16"]["ours-xl"]["max_abs_diff_vs_full_pass"] == 0.0
    bf16, fp32 = (timed[d]["ours-xl"]["feature_mib"] for d in ("bf16", "fp32"))
    assert bf16 == pytest.approx(fp32 / 2)  # 2 bytes per value instead of 4
    memory = bench.peak_memory("tiny-sdxl", 64, "ours-xl", "cpu", "bf16")
    assert set(memory) == {"model_rss_mib", "peak_rss_mib"}  # no GPU entries on the CPU


def test_cuda_report_shows_gpu_memory(bench, tmp_path):
    row = {
        "model": "sdxl@1024", "config": "sdxl", "image": 1024, "selection": "full",
        "activations": 0, "last_activation": None, "channels": 0, "feature_mib": 0.0,
        "seconds_median": 0.07, "seconds_min": 0.06, "seconds_max": 0.08, "repeats": 10,
        "max_abs_diff_vs_full_pass": None, "speedup": 1.0, "tflops": 6.76, "flop_speedup": 1.0,
        "model_rss_mib": 900.0, "peak_rss_mib": 1000.0, "model_gpu_mib": 4900.0,
        "peak_gpu_mib": 5400.0,
    }  # fmt: skip
    report = {
        "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "dtype": "fp16",
        "cuda": "13.0", "threads": 1, "cpu": "x", "physical_cores": 16,
        "load_average": (0.1, 0.1, 0.1), "torch": torch.__version__, "diffusers": "x",
        "rows": [row],
    }  # fmt: skip
    table = bench.markdown(report)
    assert "random weights, fp16, NVIDIA H100 80GB HBM3 (CUDA 13.0)," in table
    assert "| peak GPU MiB | above model MiB |" in table
    assert "| 1 (baseline) | 5400 | 500 | 0.0 | - |" in table
    bench.plot(report, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_setup_is_checked_before_any_work(bench, tmp_path, monkeypatch):
    """--results a file, matplotlib or psutil missing, --device cuda without CUDA: one line,
    exit 2, before any work."""
    monkeypatch.setattr(bench, "run_model", no_work)
    assert_setup_checked_first(bench.main, ["--quick"], tmp_path, "diffeat", cuda=True)


@pytest.mark.slow
def test_quick_benchmark_writes_results(tmp_path):
    argv = ["--quick", "--only", "tiny-sdxl@256"]
    report, table = testing.run_benchmark(RUN, argv, tmp_path, "diffeat_bench_quick")
    assert [r["selection"] for r in report["rows"]] == ["full", "ours-xl", "legacy-xl", "catalogue"]
    assert all(r["max_abs_diff_vs_full_pass"] in (None, 0.0) for r in report["rows"])
    assert (tmp_path / "diffeat_bench_quick.png").stat().st_size > 0
    assert "| tiny-sdxl@256 | ours-xl |" in table
