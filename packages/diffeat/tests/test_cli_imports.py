"""The command answers --help and a bad input without the model libraries: importing the CLI,
``--help`` and bad flags (each refused by the API's checks) leave diffusers, open_clip and
transformers unimported, in a fresh interpreter (they take seconds to import)."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image

HEAVY = ("diffusers", "open_clip", "transformers")
# runs in a fresh interpreter: each step's (exit status, stderr, heavy modules loaded so far)
SCRIPT = """
import contextlib, io, json, sys
HEAVY = {heavy!r}
steps = {{"import": [None, "", None]}}
import diffeat.cli as cli
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


def test_help_and_bad_flags_load_no_model_library(model_dirs, tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    extract = ["extract", str(tmp_path / "a.png"), "--model", str(model_dirs["sd15"]), "-o",
               str(tmp_path / "f.safetensors"), "--controlnet", str(model_dirs["sd15"] / "unet"),
               "--control-image", str(tmp_path / "notes.txt")]  # fmt: skip
    argvs = [
        ["--help"],
        ["extract", "--help"],
        ["app", "--port", "0"],
        ["layers", "--config", "sd15", "--text-tokens", "0"],
        extract,
        ["tiny-model", str(tmp_path / "tiny"), "--kind", "sd15", "--seed", "-1"],
    ]
    script = SCRIPT.format(heavy=HEAVY, argvs=argvs)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    steps = json.loads(done.stdout)
    prefix = "diffeat {}: error: "
    unreadable = f"cannot identify image file '{tmp_path / 'notes.txt'}'"
    assert steps == {
        "import": [None, "", []],
        "--help": [0, "", []],
        "extract --help": [0, "", []],
        "app --port 0": [2, prefix.format("app") + "--port: must be in [1, 65535], got 0\n", []],
        "layers --config sd15 --text-tokens 0": [
            2, prefix.format("layers") + "--text-tokens must be >= 1, got 0\n", [],
        ],
        " ".join(extract): [
            2,
            prefix.format("extract")
            + f"--control-image {tmp_path / 'notes.txt'} is not a readable image ({unreadable})\n",
            [],
        ],
        " ".join(argvs[-1]): [
            2, prefix.format("tiny-model") + f"--seed must be in [0, {2**64 - 1}], got -1\n", [],
        ],
    }  # fmt: skip
    assert not (tmp_path / "tiny").exists()
