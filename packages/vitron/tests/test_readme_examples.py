"""Every example of the README and of its docs pages (issue 52) runs as written (issue 33),
with the tiny models it names, from a folder outside the clone that holds the files the examples
name (synthesised here).

A shell block runs in ``bash -e`` (every command must exit 0) and what it wrote is checked; a
block marked ``<!-- example: check (why) -->`` (hub weights, datasets, GPUs, hours, pip) is
verified without running: each ``vitron`` command goes through ``vitron``'s argument parser
(a synopsis: each of its flags is an option of its command), pip lines are resolved by the
repository's ``tests/test_install.py``, and a script exists and takes ``--help``. The Python
quickstart runs too, saving included; the Python block that builds a model from hub parts is
compiled and its keywords checked against the signature it calls.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common_kernels.runtime.testing import example_params, program_words, shell_examples
from vitron.cli import build_parser
from vitron.models import VitronModel

PACKAGE = Path(__file__).resolve().parents[1]
README = PACKAGE / "README.md"
REPO = PACKAGE.parents[1]
# The README's long sections moved to docs pages (issue 52); their examples follow its rules.
DOC_NAMES = ("guide", "training", "cli", "evaluation", "benchmarks", "development",
             "official-checkpoint", "planner")  # fmt: skip
PAGES = [README, *(PACKAGE / "docs" / f"{name}.md" for name in DOC_NAMES)]
EXAMPLES = [block for page in PAGES for block in shell_examples(page)]
PYTHON_FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
CAPTIONS = ("a noisy square", "red dots on grey", "three green lines", "a blue sky")
# Python blocks that cannot run here: a phrase of the block -> why
PYTHON_CHECKED = {"VitronModel.from_components(": "hub weights (Vicuna-7B, CLIP ViT-L/14), a GPU"}


def example(marker: str):
    """The shell example run as written whose code holds ``marker``."""
    (found,) = [block for block in EXAMPLES if marker in block.code and block.mode == "run"]
    return found


def write_inputs(folder: Path) -> Path:
    """The files the examples name: ``dog.png`` (noise whose tiny-itaclip "dog" mask is not
    empty), ``captions.jsonl`` with its ``img.png``."""
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / "dog.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / "img.png")
    lines = [
        {"images": ["img.png"], "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": caption}]}
        for caption in CAPTIONS
    ]  # fmt: skip
    (folder / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def environment() -> dict[str, str]:
    """The venv's commands first on PATH; no hub, one thread."""
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run_shell(code: str, cwd: Path) -> subprocess.CompletedProcess:
    assert not cwd.resolve().is_relative_to(REPO)  # outside the clone
    return subprocess.run(
        ["bash", "-e", "-x", "-c", code], cwd=cwd, env=environment(), capture_output=True,
        text=True, timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Path:
    """The folder where the quickstart's shell block ran (the Python quickstart continues it)."""
    folder = write_inputs(tmp_path_factory.mktemp("quickstart"))
    result = run_shell(example(QUICKSTART).code, folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def image_size(path: Path) -> tuple[tuple[int, int], str]:
    with Image.open(path) as image:
        return image.size, image.mode


def check_turn(folder: Path) -> None:
    """A quickstart turn: segment, edit, restore, each ok, each file a 64x48 image."""
    for name, mode in [("seg_mask", "L"), ("seg_overlay", "RGB"), ("edit_image", "RGB"),
                       ("fix_image", "RGB")]:  # fmt: skip
        assert image_size(folder / f"{name}.png") == ((64, 48), mode), name
    turn = json.loads((folder / "turn.json").read_text())
    outcomes = [(o["id"], o["status"]) for o in turn["outcomes"][0]]
    assert outcomes == [("seg", "ok"), ("edit", "ok"), ("fix", "ok")]


def check_quickstart(folder: Path) -> None:
    for part in ("tiny/model/config.json", "tiny/model/model.safetensors", "reply.txt"):
        assert (folder / part).is_file(), part
    options = json.loads((folder / "tiny" / "spec" / "specialists.json").read_text())
    assert {"itaclip", "diffusers-inpaint", "semanir"} <= set(options)
    check_turn(folder / "out")


def check_training(folder: Path) -> None:
    for stage in ("stage1", "stage2"):
        model = folder / "tiny" / stage
        assert all((model / name).exists() for name in ("config.json", "model.safetensors",
                                                         "tokenizer"))  # fmt: skip
        logs = model / "lightning" / "lightning_logs"
        assert sorted(p.name for p in logs.iterdir()) == ["version_0"]
        rows = (logs / "version_0" / "metrics.csv").read_text().splitlines()
        assert [row.split(",")[1] for row in rows] == ["step", "0", "1", "2", "3"]


QUICKSTART = 'vitron run "segment the dog'
RUN_CHECKS = {QUICKSTART: check_quickstart, "captions.jsonl": check_training}


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


def synopsis_commands(code: str) -> list[list[str]]:
    """A synopsis's commands: a line starting with ``vitron`` begins one, indented lines go on."""
    commands: list[list[str]] = []
    for line in code.splitlines():
        words = shlex.split(line, comments=True)
        if line.startswith("vitron "):
            commands.append(words)
        elif words:
            commands[-1] += words
    return commands


def check_synopsis(code: str) -> None:
    """Each flag a synopsis line names is an option of that line's command (``COMMAND``: of
    every command)."""
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for words in synopsis_commands(code):
        flags = [w.strip("[]") for w in words if re.fullmatch(r"\[?(--[a-z][a-z0-9-]*|-o)\]?", w)]
        if words[1] == "--version":
            assert "--version" in parser._option_string_actions
            continue
        names = list(commands.choices) if words[1] == "COMMAND" else [words[1]]
        for name in names:
            sub = commands.choices[name]
            if name == "eval":  # eval refseg|vqa|qa: the flags of refseg
                sub = subparser(sub, "refseg" if words[1] == "COMMAND" else words[2].split("|")[0])
            for flag in flags:
                assert flag in sub._option_string_actions, (name, flag)


def check_without_running(block) -> None:
    if re.search(r"^\s+\[--", block.code, re.MULTILINE):  # a synopsis
        check_synopsis(block.code)
        return
    parser = build_parser()
    for command in block.commands():
        words = program_words(command)
        if words[:2] == ["pip", "install"]:
            continue  # resolved by the repository's tests/test_install.py
        if words[0] == "python":
            script = REPO / words[1]
            assert script.is_file(), script
            done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                                  text=True, env=environment(), timeout=300)  # fmt: skip
            assert done.returncode == 0, done.stderr[-2000:]
            continue
        assert words[0] == "vitron", command
        parser.parse_args(words[1:])  # a bad flag or value raises UsageError


@pytest.mark.parametrize(
    "block", example_params(EXAMPLES, "run") + example_params(EXAMPLES, "check")
)
def test_shell_example(block, tmp_path, request):
    if block.mode == "check":
        assert block.reason
        check_without_running(block)
        return
    checks = [check for marker, check in RUN_CHECKS.items() if marker in block.code]
    assert len(checks) == 1, f"{block.id}: say what this example writes in RUN_CHECKS"
    if QUICKSTART in block.code:
        folder = request.getfixturevalue("quickstart")
    else:
        folder = write_inputs(tmp_path)
        result = run_shell(block.code, folder)
        assert result.returncode == 0, result.stderr[-3000:]
    checks[0](folder)


def python_blocks() -> list:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in PYTHON_FENCE.finditer(text):
            line = text[: match.start()].count(chr(10)) + 1
            found.append(pytest.param(match.group(1), id=f"{page.name}:{line}"))
    return found


def test_every_docs_page_is_read_and_every_page_has_examples() -> None:
    """A new docs page is added to DOC_NAMES; the README keeps a run example, and both Python
    blocks (the quickstart, building from hub parts) are found."""
    on_disk = {path.stem for path in (PACKAGE / "docs").glob("*.md")} - {"index"}
    assert on_disk == set(DOC_NAMES)
    assert [block.mode for block in shell_examples(README)].count("run") == 1
    assert len(python_blocks()) == 2


@pytest.mark.parametrize("code", python_blocks())
def test_python_example(code, quickstart):
    reasons = [why for phrase, why in PYTHON_CHECKED.items() if phrase in code]
    if reasons:  # compiled, and its keywords are those of what it calls
        tree = ast.parse(code)
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            if isinstance(call.func, ast.Attribute) and call.func.attr == "from_components":
                accepted = inspect.signature(VitronModel.from_components).parameters
                assert {k.arg for k in call.keywords} <= set(accepted)
        return
    assert 'from_pretrained("tiny/model")' in code, (
        "a Python block that neither runs nor is checked"
    )
    out = quickstart / "out-py"
    done = subprocess.run([sys.executable, "-c", code], cwd=quickstart, env=environment(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "out-py/seg_mask.png" in done.stdout
    check_turn(out)
