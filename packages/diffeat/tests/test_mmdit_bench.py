"""benchmarks/mmdit.py's pieces: the tiny pass of each selection (early exit equal to the full
pass), the parameter counts it estimates from (the published sizes of the text encoders and
transformers) and the table written from the saved JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mmdit.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("diffeat_mmdit_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 31 s alone on this machine (diffusers' first imports, 223 names recorded)
def test_tiny_selections_and_early_exit(bench):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        backbone, config, model = bench.build("tiny-sd3")
        kwargs = bench.inputs("sd3", config, 64, 20)
        assert bench.forward(backbone, model, "sd3", kwargs, "full", (4, 4)) == {}
        early = bench.forward(backbone, model, "sd3", kwargs, "preset", (4, 4))
        assert list(early) == ["sd3-block12-out", "sd3-block16-q", "sd3-block16-out",
                               "sd3-block18-out"]  # fmt: skip
        everything = bench.forward(backbone, model, "sd3", kwargs, "catalogue", (4, 4))
        assert len(everything) == 223
        for name, value in early.items():
            assert torch.equal(value, everything[name])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # 7.5 s: T5-XXL, CLIP-G and FLUX.1-dev built on the meta device
def test_parameter_counts_are_the_published_sizes(bench):
    est = bench.estimate("sd3")["parameters"]
    assert est["t5-xxl"] == pytest.approx(4.76e9, rel=0.01)  # T5-XXL's encoder
    assert est["clip-l"] == pytest.approx(0.124e9, rel=0.02)
    assert est["clip-g"] == pytest.approx(0.695e9, rel=0.01)
    assert est["transformer"] == pytest.approx(2.24e9, rel=0.01)  # SD3.5-Medium's MMDiT-X
    _, _, flux = bench.build("flux-dev", "meta")
    assert sum(p.numel() for p in flux.parameters()) == pytest.approx(11.9e9, rel=0.01)


def test_the_table_is_written_from_the_saved_results(bench):
    results = SCRIPT.parent / "results"
    report = json.loads((results / "diffeat_mmdit.json").read_text())
    assert bench.markdown(report) == (results / "diffeat_mmdit.md").read_text()
