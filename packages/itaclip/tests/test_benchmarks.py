"""The benchmark's official-procedure baseline agrees with the package; its CUDA pieces on the
CPU (autocast baseline, worker, report, ViT-B/16 on the meta device); --quick end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common_kernels.runtime import testing
from common_kernels.runtime.testing import assert_setup_checked_first, load_script, no_work
from itaclip.postprocess import segment_max
from itaclip.refinement import pamr

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(RUN, "itaclip_bench_run")


def test_setup_is_checked_before_any_work(bench, tmp_path, monkeypatch):
    """--results a file, matplotlib or psutil missing, --device cuda without CUDA: one line,
    exit 2, before any work."""
    monkeypatch.setattr(bench, "run_config", no_work)
    assert_setup_checked_first(bench.main, ["--quick"], tmp_path, "itaclip", cuda=True)


def test_official_pamr_and_class_max_match_package(bench):
    torch.manual_seed(0)
    image, mask = torch.rand(1, 3, 20, 22), torch.randn(1, 7, 20, 22)
    torch.testing.assert_close(
        bench.official_pamr(image, mask, 3, (1, 2)), pamr(image, mask, 3, (1, 2), 2)
    )
    logits = torch.randn(7, 5, 6)
    query_class = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    probs = bench.official_class_probs(logits, query_class, 4, 50.0, budget=2 * 7 * 30 * 4)
    expected = segment_max((logits * 50.0).softmax(0), [(0, 2), (2, 3), (3, 6), (6, 7)])
    torch.testing.assert_close(probs, expected)


def test_official_logits_match_segmenter(bench, make_segmenter):
    seg = make_segmenter(pamr=False, stride=16, batch_size=10)
    image = torch.rand(3, 80, 96)
    _, text = seg.text_features(["cat", "dog,puppy", "sky"])
    counter = bench.count_vit(seg.encoder)
    with torch.no_grad():
        official = bench.official_query_logits(seg, image, text)[0]
    assert (counter["calls"], counter["images"]) == (30, 30)  # 2 x 3 windows x 5 variants, batch 1
    counter.update(calls=0, images=0)
    ours = seg.query_logits(image, text)
    assert (counter["calls"], counter["images"]) == (3, 30)  # 2 crops x 5 variants per pass
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=1e-5)
    assert bench.vit_seconds(counter) == counter["seconds"] > 0  # CPU: wall time, no events
    bench.reset_counter(counter)
    assert counter == {"calls": 0, "images": 0, "seconds": 0.0, "events": []}


def test_official_baseline_runs_the_vit_under_the_segmenters_autocast(bench, make_segmenter):
    image = torch.rand(3, 80, 96, generator=torch.Generator().manual_seed(0))
    official, ours = {}, {}
    for precision in ("fp32", "bf16"):
        seg = make_segmenter(pamr=False, stride=16, batch_size=10, precision=precision)
        _, text = seg.text_features(["cat", "dog,puppy", "sky"])
        with torch.no_grad():
            official[precision] = bench.official_query_logits(seg, image, text)[0]
        ours[precision] = seg.query_logits(image, text)
    assert official["bf16"].dtype == torch.float32
    # batch-1 and batched bf16 passes round differently: bf16's tolerance (logits in [-1, 1])
    torch.testing.assert_close(official["bf16"], ours["bf16"], atol=1e-2, rtol=0)
    assert (official["bf16"] - official["fp32"]).abs().max() > 1e-4  # bf16 did run


def test_vit_b16_visual_on_the_meta_device(bench):
    model = bench.build_model("ViT-B-16-quickgelu", "meta")
    params = list(model.visual.parameters())
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in params) == 86_192_640  # ViT-B/16 image tower: 86.2 M


def test_worker_in_bf16_writes_its_result(bench, tmp_path):
    out = tmp_path / "itaclip_96_32.json"
    args = argparse.Namespace(
        method="itaclip", model=bench.QUICK["model"], image=96, crop=64, stride=32, threads=1,
        repeats=1, warmup=0, batch_size=None, device="cpu", dtype="bf16", out=out,
    )  # fmt: skip
    bench.worker(args)
    result = json.loads(out.read_text())
    assert (result["image"], result["stride"], result["batch_size"]) == (96, 32, 5)
    assert (result["vit_calls"], result["vit_images"]) == (4, 20)  # 2 x 2 windows x 5 variants
    assert result["vit_seconds"] > 0 and "peak_gpu_mib" not in result
    assert np.load(out.with_suffix(".logits.npy")).shape == (bench.NUM_QUERIES, 96, 96)
    assert np.load(out.with_suffix(".probs.npy")).shape == (bench.NUM_CLASSES, 96, 96)


def cuda_report(bench) -> dict:
    row = {
        "image": 896, "stride": 28, "vit_calls": 3125, "vit_images": 3125,
        "seconds_median": 2.0, "seconds_min": 1.9, "seconds_max": 2.1, "vit_seconds": 1.5,
        "peak_rss_mib": 3000.0, "peak_gpu_mib": 12345.0, "model_gpu_mib": 300.0,
    }  # fmt: skip
    ours = {**row, "method": "itaclip", "vit_calls": 157, "seconds_median": 0.5, "speedup": 4.0,
            "max_abs_logit_diff": 1e-3, "max_abs_prob_diff": 2e-3}  # fmt: skip
    return {
        "setup": bench.CUDA, "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3",
        "dtype": "fp16", "cuda": "13.0", "threads": 2, "cpu": "x", "physical_cores": 16,
        "load_average": (0.5, 0.5, 0.5), "torch": torch.__version__,
        "rows": [{**row, "method": "official"}, ours],
    }  # fmt: skip


def test_cuda_report_shows_gpu_memory(bench, tmp_path):
    report = cuda_report(bench)
    table = bench.markdown(report)
    assert "NVIDIA H100 80GB HBM3 (CUDA 13.0)" in table and "ViT in fp16" in table
    assert "| peak GPU MiB |" in table
    assert "| 896 | 28 | official | 3125 | 3125 | 2.00 | 1.90 | 2.10 | 1.50 | 12345 |" in table
    assert "| 896 | 28 | itaclip | 157 |" in table and "| 4.00x |" in table
    bench.plot(report, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


@pytest.mark.slow
def test_quick_benchmark_writes_results(tmp_path):
    report, table = testing.run_benchmark(
        RUN, ["--quick", "--threads", "1"], tmp_path, "itaclip_bench_quick"
    )
    ours = [row for row in report["rows"] if row["method"] == "itaclip"]
    assert len(ours) == 2 and all(row["max_abs_logit_diff"] < 1e-4 for row in ours)
    assert (tmp_path / "itaclip_bench_quick.png").stat().st_size > 0
    assert "| stride |" in table
