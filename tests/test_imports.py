"""The import graph of every package (issue 25, item 5): no cycle, counting the imports inside
functions too (common-kernels' ``dictionary`` once imported ``_flex`` and ``_triton_tiles``
inside ``prepare`` while both imported ``dictionary``), no module imports the command line,
and every ``cli.py`` stays a thin skin of fewer than 450 lines. The graph is
``common_kernels.runtime.imports.import_graph`` (tested in common-kernels' test_imports.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common_kernels.runtime.imports import find_cycle, import_graph

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for p in (ROOT / "packages").glob("*/src/*") if (p / "__init__.py").is_file())
CLI_LINES = 450


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_no_import_cycle_even_in_functions(source: Path) -> None:
    assert find_cycle(import_graph(source)) is None


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_nothing_imports_the_command_line_and_it_stays_thin(source: Path) -> None:
    cli = f"{source.name}.cli"
    graph = import_graph(source)
    if cli not in graph:
        return
    importers = sorted(name for name, imported in graph.items() if cli in imported)
    assert importers in ([], [f"{source.name}.__main__"]), importers
    lines = len((source / "cli.py").read_text().splitlines())
    assert lines < CLI_LINES, f"{source.name}/cli.py has {lines} lines"


# The cycles that once were, each broken at the edge named here: (package, module, no longer
# imported, still imported).
BROKEN_CYCLES = [
    ("common_kernels", "common_kernels.dictionary", {"common_kernels._flex",
     "common_kernels._triton_tiles"}, set()),
    ("diffeat", "diffeat.catalogue", {"diffeat.capture"}, set()),
    ("diffeat", "diffeat.shapes", set(), {"diffeat.capture", "diffeat.catalogue"}),
    ("vitron", "vitron.evaluation.command", {"vitron.cli"}, {"vitron.options"}),
    ("vitron", "vitron.cli", set(), {"vitron.options", "vitron.evaluation.command"}),
]  # fmt: skip


@pytest.mark.parametrize(("package", "module", "gone", "kept"), BROKEN_CYCLES)
def test_the_cycles_that_once_were_stay_broken(package, module, gone, kept) -> None:
    (source,) = [s for s in SOURCES if s.name == package]
    graph = import_graph(source)
    assert not graph[module] & gone and graph[module] >= kept
