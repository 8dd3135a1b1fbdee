"""``vitron --help`` and every command's argument errors import nothing heavy (issue 49, item 4):
diffusers, open_clip, transformers, Lightning, peft and gradio load after the arguments are
checked, so the answer comes at once. Checked in a fresh interpreter (``sys.modules``), never
with a clock."""

from __future__ import annotations

import pytest

from common_kernels.runtime.imports import CommandRun, runs_in_fresh_interpreter
from vitron.cli import main

HEAVY = ["diffusers", "open_clip", "transformers", "lightning", "peft", "gradio"]

# one bad flag per command, each refused by the API's first checks
BAD = [
    ["run", "x", "--model", "./nope/m", "-o", "{t}/out", "--top-p", "5"],
    ["chat", "--model", "./nope/m", "-o", "{t}/out", "--max-new-tokens", "0"],
    ["app", "--model", "./nope/m", "-o", "{t}/out", "--port", "0"],
    ["run", "x", "--planner", "./nope/p", "-o", "{t}/out", "--top-p", "5"],
    ["run", "x", "--planner", "no_such_model", "-o", "{t}/out"],
    ["parse", "x", "--images", "-1"],
    ["specialists", "--set", "x"],
    ["train", "--model", "./nope/m", "--data", "{t}/d.jsonl", "--stage", "2", "-o", "{t}/out",
     "--precision", "x"],
    ["build-targets", "--data", "{t}/nope.jsonl", "--specialists", "{t}/s.json", "-o", "{t}/o"],
    ["tiny-model", "{t}/m", "--seed", "-1"],
    ["tiny-specialists", "{t}/s", "--seed", "-1"],
    ["eval", "qa", "--data", "{t}/d.jsonl", "--model", "./nope/m", "-o", "{t}/out", "--limit", "0"],
]  # fmt: skip


def test_help_and_argument_errors_load_no_heavy_module(tmp_path, capsys):
    argvs = [[arg.replace("{t}", str(tmp_path)) for arg in argv] for argv in BAD]
    steps = runs_in_fresh_interpreter("vitron.cli", [["--help"], *argvs], HEAVY)
    assert steps["import"] == CommandRun(None, "", [])
    assert steps["--help"] == CommandRun(0, "", [])
    for argv in argvs:
        run = steps[" ".join(argv)]
        assert run.status == 2
        # one line, naming the command
        assert [line.split(": error: ")[0] for line in run.stderr.splitlines()] == [
            f"vitron {argv[0]}"
        ]
        assert run.loaded == []
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as helped:
        main(["--help"])
    assert helped.value.code == 0
    assert capsys.readouterr().out.startswith("usage: vitron ")
