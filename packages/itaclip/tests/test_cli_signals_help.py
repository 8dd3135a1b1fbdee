"""SIGTERM (what a batch scheduler sends) and Ctrl-C (SIGINT) end a command with one line and
exit 143 and 130; ``--help`` gives units, ranges and defaults for every numeric flag (issue 25,
items 4 and 8)."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
from PIL import Image

from common_kernels.runtime.cli import size_type
from common_kernels.runtime.imports import CommandRun, runs_in_fresh_interpreter
from common_kernels.runtime.testing import (
    interrupted_run,
    numeric_flag_help,
    signal_while_working,
)
from itaclip.cli import build_parser

WORKING_SCRIPT = """
import sys, time
from itaclip.cli import main
from itaclip.segmenter import Segmenter

def working(self, *args, **kwargs):  # the model is loaded, the first image in progress
    print("working", flush=True)
    time.sleep(120)

Segmenter.query_logits = working
sys.exit(main(sys.argv[1:]))
"""


STOPS = {  # how the first image's work is stopped, the exit status, the verb of the line
    "sigterm": (lambda argv: signal_while_working(WORKING_SCRIPT, argv), 143, "terminated"),
    "ctrl_c": (
        lambda argv: interrupted_run(
            "itaclip.cli", "itaclip.segmenter:Segmenter.query_logits", argv
        ),
        130,
        "interrupted",
    ),
}


@pytest.mark.parametrize(("stop", "status", "verb"), STOPS.values(), ids=STOPS.keys())
def test_a_stopped_segment_exits_with_one_line(tmp_path, tiny_dir, stop, status, verb):
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(tmp_path / "img.png")
    argv = ["segment", str(tmp_path / "img.png"), "--classes", "cat,dog", "-o",
            str(tmp_path / "out"), "--model", str(tiny_dir),
            "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    stopped = stop(argv)
    assert stopped.returncode == status, stopped.stderr
    resume = shlex.join(["itaclip", "segment", *argv[1:], "--skip-existing"])
    assert stopped.stderr == (
        f"itaclip segment: {verb} after 0 of 1 image(s); resume with: {resume}\n"
    )
    assert stopped.stdout == ""
    assert not (tmp_path / "out").exists()  # stopped before anything was written


NUMERIC_HELP = {
    ("segment", "--stride"): "sliding-window step in px, in [1, 224] (the crop) (default: the "
    "preset's, 28)",
    ("segment", "--short-side"): "resize the image's short side to this many px, in [1, 2048], "
    "the long side kept <= 2048 (default: the preset's, 336; coco_stuff 448, cityscapes 560)",
    ("segment", "--batch-size"): "images per ViT pass (crops x 5 variants), >= 1 (default: 20 on "
    "a GPU, 5 on the CPU)",
    ("segment", "--alpha"): "auxiliary-text weight in [0, 1] (default: the preset's; 0.15 "
    "without one)",
    ("segment", "--output-size"): "size of the label maps in px, height x width, each >= 1 "
    "(480x640 is 640 px wide; one number is a square) (mmseg ori_shape: slide on the resized "
    "image, then resize the logits and run PAMR at this size) (default: the image's)",
    ("segment", "--check-shards"): "load no model: check that the N shards (N in [1, 99999]; 1 "
    "for a --ray run) wrote every input's two outputs exactly once (their ledgers in "
    "OUT/.shards/), and list what is missing (default: off)",
    ("segment", "--ray-workers"): "--ray: actors, each loading the model once, in [1, the "
    "cluster's CPUs or GPUs] (default: 1)",
    ("segment", "--ray-gpus"): "--ray: GPUs each actor reserves, in [0, a node's GPUs] "
    "(default: 0)",
    ("segment", "--ray-batch"): "--ray: inputs per actor call, in [1, the inputs] (default: 8)",
    ("eval", "--limit"): "first N images only, >= 1 (default: all)",
    ("eval", "--nproc"): "processes (gloo on the CPU), >= 1 (default: 1)",
    ("aux", "--max-new-tokens"): "tokens generated per answer, >= 1 (default: 256)",
    ("tiny-model", "--seed"): "torch seed of the random weights, in [0, 2**64 - 1] (default: 0)",
    ("app", "--port"): "TCP port, in [1, 65535] (default: 7860)",
}  # fmt: skip


def test_help_gives_units_ranges_and_defaults_for_every_numeric_flag(capsys):
    found = numeric_flag_help(build_parser(), (int, float, size_type))
    shared = {flag for command, flag in NUMERIC_HELP if command == "segment"} - {
        "--alpha",
        "--output-size",
        "--check-shards",
        "--ray-workers",
        "--ray-gpus",
        "--ray-batch",
    }  # the model options of segment and eval
    expected = {
        **NUMERIC_HELP,
        **{("eval", flag): NUMERIC_HELP["segment", flag] for flag in shared},
    }
    assert found == expected
    for text in found.values():
        assert "default: " in text and ("[" in text or ">=" in text)
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(["aux", "--help"])
    assert exit.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert NUMERIC_HELP["aux", "--max-new-tokens"] in printed  # %(default)s filled in


HELPS = [["--help"], ["segment", "--help"], ["eval", "--help"], ["aux", "--help"],
         ["tiny-model", "--help"], ["app", "--help"]]  # fmt: skip
BAD_STRIDE = ["segment", "img.png", "--classes", "cat", "-o", "out", "--stride", "x"]


def test_help_and_a_bad_flag_leave_the_heavy_libraries_unloaded(tmp_path):
    """Issue 49, item 4: open_clip (with torchvision and transformers) took seconds to import
    before ``--help`` answered; parsing imports none of them (the commands import them)."""
    steps = runs_in_fresh_interpreter(
        "itaclip.cli", [*HELPS, BAD_STRIDE], ["diffusers", "open_clip", "transformers"],
        cwd=tmp_path,
    )  # fmt: skip
    assert {" ".join(argv): steps[" ".join(argv)] for argv in HELPS} == {
        " ".join(argv): CommandRun(0, "", []) for argv in HELPS
    }
    assert steps[" ".join(BAD_STRIDE)] == CommandRun(
        2, "itaclip segment: error: argument --stride: invalid int value: 'x'\n", []
    )
