"""The command answers --help and a bad input without the model libraries: importing the CLI,
``--help`` and bad flags (each refused by the API's checks) leave diffusers, open_clip and
transformers unimported, in a fresh interpreter (they take seconds to import)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("diffusers", "open_clip", "transformers")
# runs in a fresh interpreter: each step's (exit status, stderr, heavy modules loaded so far)
SCRIPT = """
import contextlib, io, json, sys
HEAVY = {heavy!r}
steps = {{"import": [None, "", None]}}
import pixelsmith.cli as cli
steps["import"][2] = [name for name in HEAVY if name in sys.modules]
for argv in {argvs!r}:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except SystemExit as exit:
            status = exit.code
    steps[" ".join(argv)] = [status, err.getvalue(), [n for n in HEAVY if n in sys.modules]]
print(json.dumps(steps))
"""


def test_help_and_bad_flags_load_no_model_library(tiny_dir, tmp_path):
    generate = ["generate", "a cat", "--model", str(tiny_dir), "--sizes", "64", "-o",
                str(tmp_path / "out.png"), "--device", "cpu"]  # fmt: skip
    argvs = [
        ["--help"],
        ["generate", "--help"],
        ["app", "--port", "-1"],
        [*generate, "--steps", "0"],
        ["tiny-model", str(tmp_path / "tiny"), "--seed", "-1"],
    ]
    script = SCRIPT.format(heavy=HEAVY, argvs=argvs)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    steps = json.loads(done.stdout)
    prefix = "pixelsmith {}: error: "
    assert steps == {
        "import": [None, "", []],
        "--help": [0, "", []],
        "generate --help": [0, "", []],
        "app --port -1": [2, prefix.format("app") + "--port: must be in [1, 65535], got -1\n", []],
        " ".join(argvs[3]): [
            2,
            prefix.format("generate")
            + "--steps must be an int in [1, 1000] (the scheduler's training timesteps), got 0\n",
            [],
        ],
        " ".join(argvs[4]): [
            2,
            prefix.format("tiny-model")
            + "--seed must be an int in [0, 18446744073709551615], got -1\n",
            [],
        ],
    }
    assert not (tmp_path / "tiny").exists()
