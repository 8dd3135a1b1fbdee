"""The benchmark's official-procedure baseline agrees with the package; --quick end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from itaclip.pamr import pamr
from itaclip.postprocess import segment_max

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("itaclip_bench_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.mark.slow
def test_quick_benchmark_writes_results(tmp_path):
    subprocess.run(
        [sys.executable, str(RUN), "--quick", "--threads", "1", "--results", str(tmp_path)],
        check=True,
    )
    report = json.loads((tmp_path / "itaclip_bench_quick.json").read_text())
    ours = [row for row in report["rows"] if row["method"] == "itaclip"]
    assert len(ours) == 2 and all(row["max_abs_logit_diff"] < 1e-4 for row in ours)
    assert (tmp_path / "itaclip_bench_quick.png").stat().st_size > 0
    assert "| stride |" in (tmp_path / "itaclip_bench_quick.md").read_text()
