"""The node-time benchmark's pieces, without a server: each run's graph differs from the last in
its image (or seed) only, so ComfyUI runs the nodes again but the loaders; the table holds a row
per node."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "node_times.py"
WORKFLOWS = BENCHMARK.parents[1] / "workflows"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("node_times", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_run_changes_the_image_or_the_seed_only() -> None:
    bench = load()
    with_image = json.loads((WORKFLOWS / "semanir_restore.json").read_text())
    runs = [bench.varied(with_image, ["a.png", "b.png"], run) for run in (0, 1)]
    assert [r["1"]["inputs"]["image"] for r in runs] == ["a.png", "b.png"]
    assert runs[0]["2"]["inputs"]["seed"] == runs[1]["2"]["inputs"]["seed"] == 0  # kept
    for run in runs:  # nothing else changes
        run["1"]["inputs"]["image"] = with_image["1"]["inputs"]["image"]
        assert run == with_image
    prompt_only = json.loads((WORKFLOWS / "pixelsmith_cascade.json").read_text())
    seeds = [bench.varied(prompt_only, ["a.png", "b.png"], run)["2"]["inputs"]["seed"]
             for run in (0, 1)]  # fmt: skip
    assert seeds == [0, 1]
    assert prompt_only["2"]["inputs"]["seed"] == 0  # the workflow itself is left alone


def test_the_table_has_a_row_per_node_and_a_dash_for_loaders_when_warm() -> None:
    bench = load()
    report = {
        "image": "40x56 px",
        "machine": {"cpu": "CPU", "threads": 2},
        "rows": [
            {"workflow": "w", "node": "Loader", "first_s": 1.234, "warm_median_s": None},
            {"workflow": "w", "node": "Work", "first_s": 2.0, "warm_median_s": 0.5},
        ],
    }
    lines = bench.markdown(report).splitlines()
    assert lines[-2:] == ["| w | Loader | 1.23 | - |", "| w | Work | 2.00 | 0.50 |"]
