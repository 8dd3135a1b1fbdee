# ruff: noqa: E501
"""The parser benchmark's pieces at toy size (nothing is timed here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common_kernels.runtime.testing import assert_setup_checked_first, load_script, no_work

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(RUN, "vitron_bench_run")


def test_corpus_and_parsers(bench):
    corpus = bench.make_corpus(40, seed=1)
    assert corpus == bench.make_corpus(40, seed=1)
    assert all(
        bench.vitron_parser(item["reply"]) == (item["calls"], item["text"]) for item in corpus
    )
    calls, text = bench.official_like(
        "OK<module>C</module><instruction>image editing: a board saying Menu: soup</instruction></s>"
    )
    assert calls == [("edit_image", "soup")] and text == "OK"  # the last-colon split
    assert bench.official_like("Hi<module> B </module><instruction>x</instruction>") == ([], "Hi")


def test_measure_table_and_plot(bench, tmp_path):
    rows = [bench.measure(name, bench.make_corpus(10), repeats=1) for name in bench.PARSERS]
    assert rows[1]["calls_exact"] == 1.0 and rows[0]["calls_exact"] < 1.0
    text = bench.table(rows)
    assert text.splitlines()[2].startswith("| official-like | 10 |") and "1.00x" in text
    bench.plot({"rows": rows}, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_setup_is_checked_before_any_work(bench, tmp_path, monkeypatch):
    """--out a file, matplotlib missing: one line, exit 2, before any parser process starts."""
    monkeypatch.setattr(bench, "run_in_subprocess", no_work)
    assert_setup_checked_first(
        bench.main, ["--quick"], tmp_path, "vitron", flag="--out", modules=("matplotlib",),
        sys_argv=False,
    )  # fmt: skip
