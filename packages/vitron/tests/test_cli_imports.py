"""``vitron --help`` and every command's argument errors import nothing heavy (issue 49, item 4):
diffusers, open_clip, transformers, Lightning, peft and gradio load after the arguments are
checked, so the answer comes at once. Checked in a fresh interpreter (``sys.modules``), never
with a clock."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["diffusers", "open_clip", "transformers", "lightning", "peft", "gradio"]

# one bad flag per command, each refused by the API's first checks
BAD = [
    ["run", "x", "--model", "./nope/m", "-o", "{t}/out", "--top-p", "5"],
    ["chat", "--model", "./nope/m", "-o", "{t}/out", "--max-new-tokens", "0"],
    ["app", "--model", "./nope/m", "-o", "{t}/out", "--port", "0"],
    ["parse", "x", "--images", "-1"],
    ["specialists", "--set", "x"],
    ["train", "--model", "./nope/m", "--data", "{t}/d.jsonl", "--stage", "2", "-o", "{t}/out",
     "--precision", "x"],
    ["build-targets", "--data", "{t}/nope.jsonl", "--specialists", "{t}/s.json", "-o", "{t}/o"],
    ["tiny-model", "{t}/m", "--seed", "-1"],
    ["tiny-specialists", "{t}/s", "--seed", "-1"],
    ["eval", "qa", "--data", "{t}/d.jsonl", "--model", "./nope/m", "-o", "{t}/out", "--limit", "0"],
]  # fmt: skip

SCRIPT = """
import contextlib, io, json, sys
import vitron.cli
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
        vitron.cli.main(["--help"])
    except SystemExit as done:
        helped = done.code
    statuses = [vitron.cli.main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"help": helped, "statuses": statuses, "usage": out.getvalue().splitlines()[0],
                  "errors": [line for line in out.getvalue().splitlines() if ": error: " in line],
                  "loaded": [m for m in json.loads(sys.argv[2]) if m in sys.modules]}))
"""


def test_help_and_argument_errors_load_no_heavy_module(tmp_path):
    argvs = [[arg.replace("{t}", str(tmp_path)) for arg in argv] for argv in BAD]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(argvs), json.dumps(HEAVY)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = json.loads(done.stdout)
    assert found["help"] == 0 and found["usage"].startswith("usage: vitron ")
    assert found["statuses"] == [2] * len(BAD)
    assert [line.split(": error: ")[0] for line in found["errors"]] == [
        f"vitron {argv[0]}" for argv in BAD
    ]
    assert found["loaded"] == []
    assert list(tmp_path.iterdir()) == []
