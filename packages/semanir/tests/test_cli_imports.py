"""``semanir --help`` and argument errors come before the heavy imports: the command's module
imports neither torch nor the libraries of other packages, and a subcommand's ``--help`` or
argument error loads no Lightning, Gradio or ONNX (asserted on ``sys.modules`` in a fresh
interpreter, never on seconds)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("diffusers", "open_clip", "transformers", "lightning", "pytorch_lightning", "gradio",
         "onnx", "onnxscript", "onnxruntime", "jsonargparse", "torchmetrics")  # fmt: skip

SCRIPT = """
import contextlib, io, json, sys
import semanir.cli
loaded = {{"import": sorted(m for m in sys.modules if m.split(".")[0] in {names})}}
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        status = semanir.cli.main({argv})
    except SystemExit as stop:  # argparse's --help
        status = stop.code
loaded["status"] = status
loaded["after"] = sorted(m for m in sys.modules if m.split(".")[0] in {names})
print(json.dumps(loaded))
"""


def modules_loaded(argv: list[str]) -> dict:
    """What a fresh interpreter has imported after ``import semanir.cli`` and after
    ``main(argv)``."""
    names = {name.split(".")[0] for name in (*HEAVY, "torch")}
    code = SCRIPT.format(names=sorted(names), argv=argv)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_the_command_imports_no_torch_and_no_other_package_libraries() -> None:
    loaded = modules_loaded(["--help"])
    assert loaded["import"] == []
    assert loaded["status"] == 0
    assert loaded["after"] == []  # the usage is printed before anything is imported


@pytest.mark.parametrize(
    "argv",
    [
        ["restore", "--help"],
        ["eval", "--help"],
        ["export", "--help"],
        ["restore", "x.png", "-o", "y.png", "--tile", "3"],
    ],
)
def test_a_subcommand_help_or_argument_error_loads_no_heavy_library(argv) -> None:
    loaded = modules_loaded(argv)
    assert loaded["status"] in (0, 2)
    heavy = [m for m in loaded["after"] if m.split(".")[0] != "torch"]
    assert heavy == []
