"""SIGTERM (what a batch scheduler sends) ends ``diffeat extract`` with one line and exit 143,
nothing written (issue 25, item 4)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from common_kernels.runtime.testing import signal_while_working

WORKING_SCRIPT = """
import sys, time
import diffeat.cli, diffeat.commands
from diffeat.cli import main

def working(*args, **kwargs):  # the model is loaded, the first batch in progress
    print("working", flush=True)
    time.sleep(120)

diffeat.cli.extract_batches = diffeat.commands.extract_batches = working
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_extract_exits_143_with_one_line(tmp_path, model_dirs) -> None:
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "img.png")
    out = tmp_path / "feats.safetensors"
    argv = ["extract", str(tmp_path / "img.png"), "--model", str(model_dirs["sd15"]),
            "--layers", "unet-out", "--image-size", "64", "-o", str(out)]  # fmt: skip
    stopped = signal_while_working(WORKING_SCRIPT, argv)
    assert stopped.returncode == 143, stopped.stderr
    assert stopped.stderr.splitlines()[-1] == "diffeat extract: terminated"
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
