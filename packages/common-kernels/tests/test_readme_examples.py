"""The README's examples (issue 33, item 4): the Python quickstart runs as written; the shell
blocks of the README and its docs pages (installs and benchmarks of minutes to hours) are
checked: each script exists and takes the flags given, each nox session exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common_kernels.runtime import testing
from common_kernels.runtime.testing import ShellExample, shell_examples

PACKAGE = Path(__file__).resolve().parents[1]
REPOSITORY = PACKAGE.parents[1]
README = PACKAGE / "README.md"
# The README's API reference, guides and benchmarks moved to docs pages (issue 52).
DOC_NAMES = ("api", "guide", "backends", "benchmarks", "development")
DOCS = [PACKAGE / "docs" / f"{name}.md" for name in DOC_NAMES]
EXAMPLES = [example for page in (README, *DOCS) for example in shell_examples(page)]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_shell_example_names_what_exists(example: ShellExample) -> None:
    assert all(page.is_file() for page in DOCS), DOCS
    assert example.mode == "check" and example.reason  # installs and long benchmarks only
    testing.check_example_commands(example, REPOSITORY, {})


def test_python_quickstart_runs_as_written() -> None:
    code = testing.python_blocks(README)[0]
    namespace: dict = {}
    exec(compile(code, "README.md quickstart", "exec"), namespace)
    out, q = namespace["out"], namespace["q"]
    assert out.shape == q.shape == (2, 4, 1024, 16) and torch.isfinite(out).all()
