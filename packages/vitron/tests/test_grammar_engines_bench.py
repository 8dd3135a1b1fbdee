"""The grammar-engine benchmark's pure parts: the invocation JSON schema, judging hand-made
replies with vitron's parser and the reference rule, bitmask unpacking, its refusals (no engine
runs and nothing is timed here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common_kernels.runtime.testing import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "grammar_engines.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT, "vitron_bench_grammar_engines")


def call(i: int, task: str, **args) -> dict:
    return {"id": f"c{i}", "task": task, "args": args}


def reply(*calls) -> str:
    return json.dumps({"version": 1, "calls": list(calls)})


def test_judge_counts_valid_replies_and_reference_violations(bench):
    counts = bench.counts()  # one image, one region
    good = reply(
        call(0, "segment_image", image="$image0", text="dog"),
        call(1, "image_to_video", image="$c0.overlay"),
    )
    # a later call's output: the parser orders calls by their references (the grammar does not
    # offer it, the rule only asks that the call exist with that output)
    forward = reply(
        call(0, "image_to_video", image="$c1.image"), call(1, "restore_image", image="$image0")
    )
    itself = reply(call(0, "restore_image", image="$c0.image"))
    wrong_kind = reply(
        call(0, "restore_image", image="$image0"), call(1, "restore_image", image="$c0.mask")
    )
    wrong_task = reply(
        call(0, "restore_image", image="$image0"), call(1, "restore_image", image="$c0.overlay")
    )
    duplicate = reply(
        call(0, "restore_image", image="$image0"), call(0, "restore_image", image="$image0")
    )
    judged = [
        bench.judge(t, counts) for t in (good, forward, itself, wrong_kind, wrong_task, duplicate)
    ]
    assert [j["valid"] for j in judged] == [True, True, False, False, False, False]
    assert [j["reference_violations"] for j in judged] == [0, 0, 1, 1, 1, 0]
    assert judged[5]["error"] == "calls[1].id: duplicate id 'c0' (also calls[0])"
    assert judged[2]["error"] == "calls[0].args.image: $c0.image refers to the call itself"
    unfinished, broken = bench.judge(None, counts), bench.judge('{"version": 1, "ca', counts)
    assert not unfinished["finished"] and broken["finished"] and not broken["valid"]
    assert broken["error"].startswith("not JSON: ")
    tally = bench.tally([*judged, unfinished, broken])
    assert (tally["replies"], tally["valid"], tally["unfinished"]) == (8, 2, 1)
    assert tally["with_reference_violation"] == 3
    assert bench.reference_violations({"answer": "hi"}) == 0


def test_schema_lists_every_reference_of_a_kind_whatever_the_task(bench):
    schema = bench.invocation_schema(bench.counts(), bench.limits())
    assert schema["properties"]["version"] == {"enum": [1]}
    items = schema["properties"]["calls"]
    assert (items["minItems"], items["maxItems"]) == (1, 2)
    tasks = {c["properties"]["task"]["const"]: c for c in items["items"]["anyOf"]}
    # generate_video has no required reference; segment_video takes videos that calls may make
    assert "restore_image" in tasks and "segment_video" in tasks
    image = tasks["restore_image"]["properties"]["args"]["properties"]["image"]["enum"]
    assert image == ["$image0", "$c0.image", "$c0.overlay", "$c1.image", "$c1.overlay"]
    args = tasks["segment_image"]["properties"]["args"]
    assert args["required"] == ["image", "text"] and set(args["properties"]) == {"image", "text"}
    assert args["properties"]["text"] == {
        "type": "string",
        "pattern": "^[A-Za-z0-9][A-Za-z0-9 ]{0,9}$",
    }


def test_allowed_of_unpacks_bitmasks_and_lists(bench):
    mask = torch.zeros(2, dtype=torch.int32)  # 40 tokens: bits 0..31, then 32..39
    mask[0] = (1 << 0) | (1 << 5) | -(1 << 31)  # bit 31 set: the sign bit of an int32
    mask[1] = 1 << 7
    expected = torch.zeros(40, dtype=torch.bool)
    expected[[0, 5, 31, 39]] = True
    assert torch.equal(bench.allowed_of(mask, 40), expected)
    assert torch.equal(bench.allowed_of([0, 5, 31, 39, 45], 40), expected)


def test_refusals_name_the_flag_and_the_install_line(bench, monkeypatch, capsys, tmp_path):
    assert bench.main(["--replies", "0", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "grammar_engines.py: error: --replies must be >= 1, got 0\n"
    # the benchmark-only engines look uninstalled, whether or not this environment has them
    real = bench.importlib.util.find_spec
    absent = {"outlines_core", "lmformatenforcer"}
    monkeypatch.setattr(
        bench.importlib.util, "find_spec", lambda n: None if n in absent else real(n)
    )
    assert bench.main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "grammar_engines.py: error: outlines-core, lm-format-enforcer not installed: "
        f"{bench.INSTALL}\n"
    )
    assert list(tmp_path.iterdir()) == []
