"""Every README's shell examples are run or checked by a test (issue 33, item 4): each block is a
``run`` block or a ``check`` block with its reason, every package has the test that runs its
README's blocks, and the root README's blocks name nox sessions that exist."""

from __future__ import annotations

import importlib.util
import re
import sys
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", *sorted(ROOT.glob("packages/*/README.md"))]


def _testing_module():
    """common_kernels.runtime.testing, loaded from its file (standard library only: this session has
    no torch, which the package's ``__init__`` imports)."""
    path = (
        ROOT / "packages" / "common-kernels" / "src" / "common_kernels" / "runtime" / "testing.py"
    )
    spec = importlib.util.spec_from_file_location("common_kernels_testing", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


TESTING = _testing_module()


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shell_block_is_run_or_checked_with_a_reason(readme: Path) -> None:
    examples = TESTING.shell_examples(readme)
    assert examples, f"{readme} has no shell example"
    for example in examples:
        assert example.mode in ("run", "slow", "check")  # slow: run in the nightly lane
        assert example.mode == "run" or example.reason, example.id
        assert example.commands(), f"{example.id}: an empty block"


@pytest.mark.parametrize("package", sorted(p.parent for p in ROOT.glob("packages/*/README.md")),
                         ids=lambda p: p.name)  # fmt: skip
def test_every_package_runs_its_readme_examples(package: Path) -> None:
    test = package / "tests" / "test_readme_examples.py"
    assert test.is_file(), f"{package.name} has no tests/test_readme_examples.py"
    text = test.read_text(encoding="utf-8")  # the examples of its pages, one way or the other
    assert "shell_examples(" in text or "package_pages(" in text


def test_the_root_readme_names_sessions_that_exist() -> None:
    noxfile = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    sessions = set(re.findall(r"^def (\w+)\(session", noxfile, re.M))
    tags = set(re.findall(r"tags=\[\"(\w+)\"\]", noxfile))
    packages = {p.parent.name for p in ROOT.glob("packages/*/pyproject.toml")}
    checked = 0
    for example in TESTING.shell_examples(ROOT / "README.md"):
        for command in example.commands():
            words = TESTING.program_words(command)
            if words[:3] == ["python3", "-m", "nox"] or words[:1] == ["nox"]:
                args = words[3:] if words[0] == "python3" else words[1:]
                for flag, value in pairwise(args):
                    if flag == "-s":
                        assert value in sessions | packages, f"no nox session {value}"
                    if flag == "-t":
                        assert value in tags, f"no nox tag {value}"
                checked += 1
    assert checked >= 3
