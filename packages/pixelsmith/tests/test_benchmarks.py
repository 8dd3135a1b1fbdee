"""The benchmark's pieces at toy size (not timed), and --quick end to end (slow)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile
import torch

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("pixelsmith_bench_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_run_counts_calls(bench):
    pipe = bench.tiny_pipeline()
    with torch.no_grad():
        grid = bench.sample_run(pipe, (24, 16), faithful=False, steps=2, slider=2, patch_size=8)
        official = bench.sample_run(pipe, (24, 16), faithful=True, steps=2, slider=2, patch_size=8)
    # ceil(24/8) * ceil(16/8) = 6, then the staggered grid: both axes are exact multiples of
    # the patch (no overlap), so odd steps shift by half a patch with one more per axis: 4 x 3
    assert grid["patches_per_step"] == [6, 12]
    assert grid["unet_calls_per_step"] == [2, 4]  # at most 4 disjoint patches per call
    assert official["unet_calls_per_step"] == official["patches_per_step"]
    assert min(official["patches_per_step"]) >= 6
    assert len(official["step_seconds"]) == 2 and official["unet_seconds"] > 0
    totals = bench.official_totals((24, 16), 2, 8, range(3))
    assert len(totals) == 3 and min(totals) >= 12


def test_stage_run_writes_bigtiff(bench, tmp_path):
    pipe = bench.tiny_pipeline()
    with torch.no_grad():
        result = bench.stage_run(pipe, 128, patch_size=8, vae_tile=8, workdir=tmp_path)
    assert tifffile.imread(tmp_path / "stage.tif").shape == (128, 128, 3)
    assert result["latent_maps_mib"] == pytest.approx(16 * 16 * bench.LATENT_MAPS / 2**20)


@pytest.mark.slow
def test_toy_benchmark_writes_results(tmp_path):
    subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--patch-size",
            "8",
            "--vae-tile",
            "8",
            "--sizes",
            "128",
            "--stage-sizes",
            "128",
            "--spec-size",
            "128",
            "--steps",
            "2",
            "--results",
            str(tmp_path),
        ],
        check=True,
    )
    report = json.loads((tmp_path / "pixelsmith_bench.json").read_text())
    assert [r["method"] for r in report["sampler"]] == ["official", "grid"]
    # 16x12 latent: 4 patches in 2 calls, odd steps 6 staggered patches in 4 calls
    assert report["spec"]["rows"][1]["unet_calls_per_step"] == [2, 4] * 3
    assert (tmp_path / "pixelsmith_bench.png").stat().st_size > 0
    assert "| size (px) |" in (tmp_path / "pixelsmith_bench.md").read_text()
