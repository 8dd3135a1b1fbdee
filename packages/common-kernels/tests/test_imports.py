"""common_kernels.runtime.imports: a package's import graph and its cycles, and what a command
loads in a fresh interpreter."""

from __future__ import annotations

import pytest

from common_kernels.runtime.imports import (
    CommandRun,
    find_cycle,
    import_graph,
    runs_in_fresh_interpreter,
)


def test_import_graph_and_find_cycle(tmp_path) -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert find_cycle({"p": {"p.x"}, "p.x": {"p"}}) is None  # a package's re-export
    source = tmp_path / "pkg"
    source.mkdir()
    (source / "__init__.py").write_text("from .first import f\n")
    (source / "first.py").write_text("def f():\n    from . import second\n")
    (source / "second.py").write_text(
        "from typing import TYPE_CHECKING\nfrom pkg.first import f\n"
        "if TYPE_CHECKING:\n    from pkg import third\n"
    )
    (source / "third.py").write_text("import pkg.second\nimport os\n")
    graph = import_graph(source)
    assert graph == {
        "pkg": {"pkg.first"}, "pkg.first": {"pkg.second"}, "pkg.second": {"pkg.first"},
        "pkg.third": {"pkg.second"},
    }  # fmt: skip
    assert find_cycle(graph) == ["pkg.first", "pkg.second", "pkg.first"]


def test_runs_in_fresh_interpreter_reports_each_steps_status_stderr_and_imports(tmp_path):
    """A command module that parses with argparse and imports ``wave`` only when it works:
    the import loads neither, ``--help`` and a refusal (its line and status) argparse alone,
    the work both."""
    (tmp_path / "democli.py").write_text(
        "import sys\n"
        "def main(argv):\n"
        "    import argparse\n"
        "    parser = argparse.ArgumentParser(prog='demo')\n"
        "    parser.add_argument('--n', type=int, default=1)\n"
        "    args = parser.parse_args(argv)\n"
        "    if args.n < 1:\n"
        "        print(f'demo: error: --n must be >= 1, got {args.n}', file=sys.stderr)\n"
        "        return 2\n"
        "    import wave\n"
        "    return 0\n"
    )
    steps = runs_in_fresh_interpreter(
        "democli", [["--help"], ["--n", "0"], ["--n", "3"]], ["wave", "argparse"], cwd=tmp_path
    )
    assert steps == {
        "import": CommandRun(None, "", []),
        "--help": CommandRun(0, "", ["argparse"]),
        "--n 0": CommandRun(2, "demo: error: --n must be >= 1, got 0\n", ["argparse"]),
        "--n 3": CommandRun(0, "", ["argparse", "wave"]),
    }
    with pytest.raises(
        AssertionError, match=r"(?s)nocli failed in a fresh interpreter: .*No module named 'nocli'"
    ):
        runs_in_fresh_interpreter("nocli", [], [], cwd=tmp_path)
