"""The benchmark's pieces at toy size (not timed), the cascade comparison of --device cuda on
the CPU with the tiny model, SDXL's sizes on the meta device, and --quick end to end (slow)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import tifffile
import torch

from common_kernels.runtime import testing
from common_kernels.runtime.testing import (
    assert_setup_checked_first,
    hidden_modules,
    load_script,
    no_work,
    refusal,
)

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(RUN, "pixelsmith_bench_run")


def test_sample_run_counts_calls(bench):
    pipe = bench.MODELS.tiny_pipeline()
    with torch.no_grad():
        grid = bench.MEASURES.sample_run(
            pipe, (24, 16), faithful=False, steps=2, slider=2, patch_size=8
        )
        official = bench.MEASURES.sample_run(
            pipe, (24, 16), faithful=True, steps=2, slider=2, patch_size=8
        )
    # ceil(24/8) * ceil(16/8) = 6, then the staggered grid: both axes are exact multiples of
    # the patch (no overlap), so odd steps shift by half a patch with one more per axis: 4 x 3
    assert grid["patches_per_step"] == [6, 12]
    assert grid["unet_calls_per_step"] == [2, 4]  # at most 4 disjoint patches per call
    assert official["unet_calls_per_step"] == official["patches_per_step"]
    assert min(official["patches_per_step"]) >= 6
    assert len(official["step_seconds"]) == 2 and official["unet_seconds"] > 0
    totals = bench.MEASURES.official_totals((24, 16), 2, 8, range(3))
    assert len(totals) == 3 and min(totals) >= 12


def test_stage_run_writes_bigtiff(bench, tmp_path):
    pipe = bench.MODELS.tiny_pipeline()
    with torch.no_grad():
        result = bench.MEASURES.stage_run(pipe, 128, patch_size=8, vae_tile=8, workdir=tmp_path)
    assert tifffile.imread(tmp_path / "stage.tif").shape == (128, 128, 3)
    assert result["latent_maps_mib"] == pytest.approx(16 * 16 * bench.MEASURES.LATENT_MAPS / 2**20)


def test_sdxl_sized_components_on_the_meta_device(bench):
    components = bench.MODELS.sdxl_components("meta", "fp16")
    counts = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        params = list(components[name].parameters())
        assert all(p.is_meta and p.dtype == torch.float16 for p in params), name
        counts[name] = sum(p.numel() for p in params)
    assert counts["unet"] == 2_567_463_684  # SDXL base UNet: 2.567 B
    assert counts["vae"] == 83_653_863  # SDXL VAE: 83.65 M
    widths = [components[n].config.hidden_size for n in ("text_encoder", "text_encoder_2")]
    assert widths == [768, 1280] and components["text_encoder_2"].config.projection_dim == 1280
    unet = components["unet"].config
    assert unet.cross_attention_dim == 768 + 1280  # the two encoders' hidden states, concatenated
    assert unet.projection_class_embeddings_input_dim == 1280 + 6 * 256  # pooled + 6 time ids


def cascade_result(bench, faithful: bool) -> dict:
    """The cascade comparison's measurement at toy size: 64 -> 128 px, patch 8, 3 steps."""
    config = bench.MEASURES.cascade_config(argparse.Namespace(patch_size=8, vae_tile=8), faithful)
    pipe = bench.MODELS.cascade_pipeline("tiny", "cpu", "fp32")
    with torch.no_grad():
        return bench.MEASURES.cascade_run(
            pipe, [64, 128], config, steps=3, slider=2, repeats=2, warmup=1, device="cpu"
        )


def test_cascade_run_measures_both_placements(bench):
    official, grid = cascade_result(bench, True), cascade_result(bench, False)
    assert (official["method"], grid["method"]) == ("official", "grid")
    for result in (official, grid):
        assert (result["repeats"], result["warmup"], result["slider"]) == (2, 1, 2)
        assert result["image_size"] == [128, 128] and "peak_gpu_mib" not in result
        assert result["seconds_min"] <= result["seconds_median"] <= result["seconds_max"]
        phases = result["phase_seconds_median"]
        assert set(phases) == {"text", "base", "decode previous", "lanczos+encode", "sample",
                               "decode+write"}  # fmt: skip
        assert all(seconds > 0 for seconds in phases.values())
        base, stage = result["stages"]
        assert (base["size"], stage["size"]) == (64, 128)
        assert base["unet_calls"] == 3  # plain SDXL: one CFG batch per step
        assert "seconds_per_step_median" not in base and stage["seconds_per_step_median"] > 0
        assert base["seconds_median"] + stage["seconds_median"] < result["seconds_median"]
    # 16x16 latent, patch 8: the 2x2 grid in one call, then the staggered 3x3 grid in 4 calls
    assert grid["stages"][1]["unet_calls"] == 1 + 4 + 1
    assert official["stages"][1]["unet_calls"] >= 3 * 4  # one patch per call, >= 4 per step


def test_timed_cascade_writes_a_bigtiff(bench, tmp_path):
    pipe = bench.MODELS.cascade_pipeline("tiny", "cpu", "fp32")
    timer = bench.MEASURES.PhaseTimer(pipe, "cpu", bench.MEASURES.count_unet(pipe))
    config = bench.MEASURES.cascade_config(argparse.Namespace(patch_size=8, vae_tile=8), False)
    with torch.no_grad():
        run = bench.MEASURES.timed_cascade(
            pipe, timer, [64, 128], [2], 2, config, output=tmp_path / "cascade.tif"
        )
    assert run["output"] == tmp_path / "cascade.tif"
    assert tifffile.imread(run["output"]).shape == (128, 128, 3)
    assert run["phases"]["decode+write"] > 0 and set(run["stages"]) == {0, 1}
    assert sum(run["phases"].values()) == pytest.approx(run["seconds"])
    assert timer.step_seconds.keys() == {1} and len(timer.step_seconds[1]) == 2


def test_cascade_report_on_cuda_shows_gpu_memory(bench):
    official, grid = cascade_result(bench, True), cascade_result(bench, False)
    grid["speedup"] = 2.0
    for stage, speedup in zip(grid["stages"], (1.0, 3.0), strict=True):
        stage["speedup"] = speedup
    for row, peak in ((official, 20000.0), (grid, 15000.0)):
        row["peak_gpu_mib"] = peak
    env = {
        "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "dtype": "fp16",
        "cuda": "13.0", "torch": torch.__version__, "diffusers": "x",
    }  # fmt: skip
    report = {"environment": env, "model": "sdxl", "patch_size": 128, "rows": [official, grid]}
    table = bench.REPORT.cascade_markdown(report)
    assert "Cascade 64 -> 128 px, 3 steps per stage, slider 2, patch 128 latent px" in table
    assert "SDXL-sized random weights" in table and "in fp16, NVIDIA H100 80GB HBM3" in table
    assert "| method | total s | speedup | peak GPU MiB |" in table
    assert "| 1 (baseline) | 20000 |" in table and "| 2.00x | 15000 |" in table
    assert "| 128 | grid | 6 |" in table and "| 3.00x |" in table


REFUSALS = [
    pytest.param(["--dtype", "bf16"], "--dtype applies to the cascade comparison only", id="dtype"),
    pytest.param(
        ["--cascade", "--sizes", "1024"], "--sizes: the cascade needs at least two sizes (px), "
        "got [1024]", id="one-size",
    ),
    pytest.param(
        ["--cascade", "--steps", "4", "--slider", "5"],
        "--slider must be in [1, --steps] = [1, 4], got 5", id="slider",
    ),
    pytest.param(["--cascade", "--repeats", "0"], "--repeats must be >= 1, got 0", id="repeats"),
    pytest.param(
        ["--cascade", "--sizes", "1024", "2044"], "--sizes/--patch-size: sizes[1] must be "
        "multiples of the VAE scale factor 8", id="size-multiple",
    ),
    pytest.param(["--cascade", "--gigapixel"], "--gigapixel runs the tiny model on the CPU",
                 id="gigapixel"),
    pytest.param(
        ["--device", "cuda"], "--device cuda: no CUDA device is available", id="no-cuda",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA"),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("arguments", "message"), REFUSALS)
def test_bad_cascade_options_are_refused(bench, tmp_path, arguments, message):
    results = tmp_path / "results"
    assert message in refusal(bench.main, [*arguments, "--results", str(results)], prog="run.py")
    assert not results.exists()


def test_setup_is_checked_before_any_work(bench, tmp_path, monkeypatch):
    """Output folders that cannot be written, a missing [bench] module: one line, exit 2,
    before any worker starts."""
    monkeypatch.setattr(bench, "run_worker", no_work)
    monkeypatch.setattr(bench, "cascade_comparison", no_work)
    assert_setup_checked_first(bench.main, ["--quick"], tmp_path, "pixelsmith")
    blocker, out = tmp_path / "results", str(tmp_path / "out")
    arguments = ["--quick", "--results", out, "--workdir", str(blocker / "tiffs")]
    err = refusal(bench.main, arguments, prog="run.py")
    message = f"--workdir {blocker}/tiffs: cannot create it, {blocker} is a file"
    assert err == f"run.py: error: {message}\n"
    with hidden_modules("matplotlib"):  # the gigapixel and cascade runs draw no plot
        for arguments in (["--gigapixel"], ["--cascade"]):
            with pytest.raises(AssertionError, match="before checking"):
                bench.main([*arguments, "--results", out])
    assert list(tmp_path.iterdir()) == [blocker] and blocker.read_text() == "x"


@pytest.mark.slow
def test_cascade_comparison_writes_results(tmp_path):
    argv = ["--cascade", "--sizes", "64", "128", "--patch-size", "8", "--vae-tile", "8",
            "--steps", "2", "--repeats", "1", "--warmup", "0"]  # fmt: skip
    report, table = testing.run_benchmark(RUN, argv, tmp_path, "pixelsmith_cascade")
    official, grid = report["rows"]
    assert (official["method"], grid["method"], report["model"]) == ("official", "grid", "tiny")
    assert report["environment"]["dtype"] == "fp32" and grid["speedup"] > 0
    assert "| stage (px) | method | UNet calls |" in table


@pytest.mark.slow
def test_toy_benchmark_writes_results(tmp_path):
    argv = ["--patch-size", "8", "--vae-tile", "8", "--sizes", "128", "--stage-sizes", "128",
            "--spec-size", "128", "--steps", "2"]  # fmt: skip
    report, table = testing.run_benchmark(RUN, argv, tmp_path, "pixelsmith_bench")
    assert [r["method"] for r in report["sampler"]] == ["official", "grid"]
    # 16x12 latent: 4 patches in 2 calls, odd steps 6 staggered patches in 4 calls
    assert report["spec"]["rows"][1]["unet_calls_per_step"] == [2, 4] * 3
    assert (tmp_path / "pixelsmith_bench.png").stat().st_size > 0
    assert "| size (px) |" in table
