# ruff: noqa: E501
"""The routing benchmark's request set and scoring (issue 51, items 3 and 5), on hand-made
replies with exact values; no model is run and nothing is timed here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common_kernels.runtime.testing import assert_setup_checked_first, load_script, no_work

ROUTING = Path(__file__).resolve().parents[1] / "benchmarks" / "routing.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(ROUTING, "vitron_bench_routing")


@pytest.fixture(scope="module")
def requests(bench):
    return {r.id: r for r in bench.load_requests()}


def test_the_request_set_is_valid_and_covers_every_kind(bench, requests):
    """load_requests validates every plan with parse_invocation (ids c0, c1, ...); the set has
    at least 60 requests of every kind, a two-step plan references its first call's output."""
    assert len(requests) == 67
    kinds = [r.kind for r in requests.values()]
    assert {k: kinds.count(k) for k in bench.KINDS} == {
        "one call": 30, "region": 8, "two steps": 10, "no image": 9, "no call": 10,
    }  # fmt: skip
    zebra = requests["two-step-zebra-horse"]
    assert zebra.expected[1]["args"]["mask"] == "$c0.mask" and len(zebra.plans) == 2
    assert requests["region-seg-bird"].counts().regions == 1
    assert all(r.expected for r in requests.values() if r.kind != "no call")


def test_a_bad_request_is_named_with_its_line(bench, tmp_path):
    good = {"id": "a", "kind": "one call", "text": "x", "images": ["set5/bird_GT.bmp"],
            "expected": [{"task": "restore_image", "args": {"image": "$image0"}}]}  # fmt: skip
    bad = dict(good, id="b", expected=[{"task": "restore_image", "args": {"image": "$image1"}}])
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"^r\.jsonl:2 \(b\): calls\[0\]\.args\.image: "):
        bench.load_requests(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(ValueError, match=r"r\.jsonl: duplicate ids \['a'\]"):
        bench.load_requests(path)
    path.write_text(json.dumps(dict(good, kind="no call")) + "\n")
    with pytest.raises(ValueError, match="a 'no call' request and only it expects no call"):
        bench.load_requests(path)


def test_the_images_exist_and_regions_lie_inside(bench, requests, tmp_path):
    data = bench.default_data_root()
    if not (data / "set14").is_dir():
        pytest.skip(f"the shared images are not at {data}")
    bench.check_images(list(requests.values()), data)  # no error
    with pytest.raises(ValueError, match=r"^--data: no set14/zebra\.bmp under "):
        bench.check_images([requests["seg-zebra"]], tmp_path)


def reply(calls) -> str:
    return json.dumps({"version": 1, "calls": calls})


def call(i, task, **args) -> dict:
    return {"id": f"c{i}", "task": task, "args": args}


def test_scores_of_hand_made_replies(bench, requests):
    zebra = requests["two-step-zebra-horse"]
    exact = reply([call(0, "segment_image", image="$image0", text="the zebra"),
                   call(1, "edit_image", image="$image0", mask="$c0.mask", text="a brown horse")])  # fmt: skip
    assert bench.score_reply(zebra, exact) == {
        "valid": True, "task_ok": True, "args_ok": 5, "args_total": 5, "reply_kind": "calls",
        "error": None,
    }  # fmt: skip
    # the alternative plan: one edit_image with target; its 3 arguments are the denominator
    alt = reply([call(0, "edit_image", image="$image0", target="zebra", text="horse")])
    assert bench.score_reply(zebra, alt)["task_ok"] is True
    assert (
        bench.score_reply(zebra, alt)["args_ok"] == bench.score_reply(zebra, alt)["args_total"] == 3
    )
    # a wrong second task: the segment call's 2 arguments right of the expected plan's 5
    wrong = reply([call(0, "segment_image", image="$image0", text="zebra"),
                   call(1, "restore_image", image="$c0.overlay")])  # fmt: skip
    assert [bench.score_reply(zebra, wrong)[k] for k in ("task_ok", "args_ok", "args_total")] == [
        False, 2, 5,
    ]  # fmt: skip
    # a wrong text ("dog" lacks "zebra") and a wrong image reference
    off = reply([call(0, "segment_image", image="$image0", text="dog"),
                 call(1, "edit_image", image="$image0", mask="$c0.mask", text="horse")])  # fmt: skip
    assert bench.score_reply(zebra, off)["args_ok"] == 4
    # free decoding: a fenced reply with its own call ids; the reference follows the renumbering
    fenced = "```json\n" + json.dumps({"version": 1, "calls": [
        {"id": "seg", "task": "segment_image", "args": {"image": "$image0", "text": "Zebra!"}},
        {"id": "paint", "task": "edit_image",
         "args": {"image": "$image0", "mask": "$seg.mask", "text": "horse"}}]}) + "\n```"  # fmt: skip
    assert bench.score_reply(zebra, fenced)["args_ok"] == 5
    answer = json.dumps({"answer": "Sure."})
    assert bench.score_reply(zebra, answer)["task_ok"] is False
    invalid = bench.score_reply(zebra, '{"version": 1, "calls": [')
    assert invalid["valid"] is False and invalid["error"].startswith("not JSON: ")
    dangling = bench.score_reply(zebra, reply([call(0, "restore_image", image="$image3")]))
    assert dangling["valid"] is False and dangling["error"].startswith("calls[0].args.image: ")
    question = requests["chat-capital"]
    assert bench.score_reply(question, answer)["task_ok"] is True
    assert bench.score_reply(question, exact)["task_ok"] is False


def test_summary_of_scores(bench, requests):
    chosen = [requests["seg-zebra"], requests["chat-legs"], requests["region-seg-bird"]]
    replies = [
        reply([call(0, "segment_image", image="$image0", text="zebra")]),  # 2 of 2
        reply([call(0, "restore_image", image="$image0")]),  # a call for a question
        reply([call(0, "segment_image", image="$image0", text="bird")]),  # 2 of 3, no region
    ]
    scores = [bench.score_reply(r, t) for r, t in zip(chosen, replies, strict=True)]
    summary = bench.summarize(chosen, scores)
    assert summary == {
        "requests": 3, "valid_rate": 1.0, "task_accuracy": 2 / 3, "arg_accuracy": 4 / 5,
        "task_accuracy_by_kind": {"one call": 1.0, "region": 1.0, "no call": 0.0},
    }  # fmt: skip


def test_selection_of_requests(bench, requests):
    every = list(requests.values())
    assert [r.id for r in bench.select(every, None, 2)] == [
        "seg-zebra", "seg-bird", "gen-fox", "gen-castle", "region-seg-zebra", "region-seg-bird",
        "two-step-zebra-horse", "two-step-bird-parrot", "chat-capital", "chat-hello",
    ]  # fmt: skip
    assert [r.id for r in bench.select(every, 3, None)] == [
        "seg-zebra",
        "seg-bird",
        "seg-butterfly",
    ]


def test_timing_of_one_reply(bench):
    from vitron.planners.chat import ReplyStats

    text = reply([call(0, "restore_image", image="$image0")])
    end = bench.first_call_end(text)
    assert text[:end].endswith('"$image0"}}') and end == text.index("]")
    # the pieces as on_text told them: the one that completes the call comes at 2.0 s
    pieces = [(1.0, text[:10]), (1.5, text[10 : end - 1]), (2.0, text[end - 1 : end + 2]),
              (2.5, text[end + 2 :])]  # fmt: skip
    stats = ReplyStats(tokens=5, first_token_s=0.5, seconds=2.5, grammar_s=0.01)
    cost = bench.timing(pieces, 0.5, stats, text)
    assert cost == {"first_token_s": 0.5, "first_call_s": 1.5, "tokens": 5, "tokens_per_s": 2.0}
    assert bench.timing(pieces, 0.5, stats, json.dumps({"answer": "calls"}))["first_call_s"] is None


def test_a_looping_answer_is_found():
    assert bench_loops('{"answer": "The bird was red. The bird was red."}')
    assert not bench_loops('{"answer": "The bird is red, the sky is blue."}')
    assert not bench_loops('{"version": 1, "calls": []}') and not bench_loops("{")


def bench_loops(text: str) -> bool:
    return load_script(ROUTING, "vitron_bench_routing").loops(text)


def row(name: str, decoding: str = "any") -> dict:
    return {
        "planner": name, "engine": "transformers", "decoding": decoding, "requests": 67,
        "valid_rate": 1.0, "looping_answers": 0.5,
        "task_accuracy": 0.25, "arg_accuracy": None, "task_accuracy_by_kind": {"one call": 0.5},
        "load_s": 3.0, "first_token_s": 0.2, "first_call_s": None, "tokens_per_s": 12.34,
        "peak_rss_mib": 900.4,
    }  # fmt: skip


def test_table(bench):
    text = bench.table([row("tiny-llama"), row("smollm2-free", "free")])
    lines = text.splitlines()
    assert lines[2] == (
        "| tiny-llama | transformers | yes | 67 | 100.0% | 25.0% | - | 50.0% | - | - | - | - | 50.0% | 3.0 | 0.20 | - | 12.3 | 900 |"
    )
    assert lines[3].startswith("| smollm2-free | transformers | no |")


def test_plot(bench, tmp_path):
    bench.plot({"rows": [row("a"), row("b")]}, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_setup_is_checked_before_any_work(bench, tmp_path, monkeypatch, capsys):
    """--out a file, matplotlib missing, a bad --limit or --per-kind, a missing image: one line,
    exit 2, before any planner's process starts."""
    monkeypatch.setattr(bench, "run_in_subprocess", no_work)
    assert_setup_checked_first(
        bench.main, ["--planner", "tiny-llama"], tmp_path, "vitron", flag="--out",
        modules=("matplotlib",), prog="routing.py", sys_argv=False,
    )  # fmt: skip
    out = ["--out", str(tmp_path / "o"), "--planner", "tiny-llama"]
    assert bench.main([*out, "--per-kind", "0"]) == 2
    assert capsys.readouterr().err == "routing.py: error: --per-kind must be >= 1, got 0\n"
    assert bench.main([*out, "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("routing.py: error: --data: no set14/zebra.bmp under ")
        and err.count("\n") == 1
    )


def test_the_readme_table_is_the_saved_run(bench):
    """The README's planner rows are the saved run's (benchmarks/results/routing.json): a
    figure there changes only with a new run."""
    import re

    saved = {
        r["planner"]: r
        for r in json.loads((ROUTING.parent / "results" / "routing.json").read_text())["rows"]
    }
    readme = (ROUTING.parents[1] / "README.md").read_text()
    rows = re.findall(
        r"^\| ([\w.-]+)(?: \([^)]*\))? \| (llama\.cpp|transformers) \| .*$", readme, re.M
    )
    assert len(rows) == 6
    for line in (m for m in readme.splitlines() if re.match(r"^\| (smollm2|tiny-)", m)):
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = saved[cells[0].split(" ")[0]]
        first_call = "-" if row["first_call_s"] is None else f"{row['first_call_s']:.2f}"
        assert cells[1:] == [
            row["engine"], bench.DECODING[row["decoding"]], bench.percent(row["valid_rate"]),
            bench.percent(row["task_accuracy"]), bench.percent(row["looping_answers"]),
            f"{row['load_s']:.1f}", first_call, f"{row['tokens_per_s']:.1f}",
        ], cells[0]  # fmt: skip
