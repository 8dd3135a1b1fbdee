"""``semanir --help`` and argument errors come before the heavy imports: the command's module
imports neither torch nor the libraries of other packages, and a subcommand's ``--help`` or
argument error loads no Lightning, Gradio or ONNX (asserted on ``sys.modules`` in a fresh
interpreter, never on seconds)."""

from __future__ import annotations

from common_kernels.runtime.imports import CommandRun, runs_in_fresh_interpreter

HEAVY = ["diffusers", "open_clip", "transformers", "lightning", "pytorch_lightning", "gradio",
         "onnx", "onnxscript", "onnxruntime", "jsonargparse", "torchmetrics"]  # fmt: skip

# a subcommand's --help or argument error -> its status and stderr
SUBCOMMANDS = {
    ("restore", "--help"): (0, ""),
    ("eval", "--help"): (0, ""),
    ("export", "--help"): (0, ""),
    ("restore", "x.png", "-o", "y.png", "--tile", "3"): (
        2,
        "semanir restore: error: IN: no such file or folder: x.png\n",
    ),
}


def test_help_and_argument_errors_load_no_heavy_library(tmp_path) -> None:
    steps = runs_in_fresh_interpreter(
        "semanir.cli", [["--help"], *SUBCOMMANDS], [*HEAVY, "torch"], cwd=tmp_path
    )
    # importing the command and its --help load neither torch nor another package's library:
    # the usage is printed before anything is imported
    assert steps["import"] == CommandRun(None, "", [])
    assert steps["--help"] == CommandRun(0, "", [])
    for argv, expected in SUBCOMMANDS.items():
        run = steps[" ".join(argv)]
        assert (run.status, run.stderr) == expected
        assert [name for name in run.loaded if name != "torch"] == []  # torch may load here
    assert list(tmp_path.iterdir()) == []
