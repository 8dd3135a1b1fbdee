"""The import graph of every package (issue 25, item 5): no cycle, counting the imports inside
functions too (common-kernels' ``dictionary`` once imported ``_flex`` and ``_triton_tiles``
inside ``prepare`` while both imported ``dictionary``), no module imports the command line,
and every ``cli.py`` stays a thin skin of fewer than 450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for p in (ROOT / "packages").glob("*/src/*") if (p / "__init__.py").is_file())
CLI_LINES = 450


def module_name(path: Path, source: Path) -> str:
    parts = path.relative_to(source.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module name of ``from X import ...`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_modules(path: Path, module: str, modules: set[str]) -> set[str]:
    """The package's own modules that ``path`` imports anywhere (module level or in a
    function): ``from pkg import io`` counts as importing the module ``pkg.io``."""
    root = module.split(".")[0]
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                   for n in ast.walk(block)}  # fmt: skip
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.ImportFrom):
            name = absolute(node, module, path.name == "__init__.py")
            if name.split(".")[0] == root:
                found |= {name} if node.module else set()  # `from . import x`: x only
                found |= {f"{name}.{alias.name}" for alias in node.names} & modules
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == root}
    return (found & modules) - {module}


def _is_type_checking(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == (
        "TYPE_CHECKING"
    )


def import_graph(source: Path) -> dict[str, set[str]]:
    paths = {module_name(p, source): p for p in source.rglob("*.py")}
    return {name: imported_modules(p, name, set(paths)) for name, p in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path of modules, or None. A package's ``__init__``
    re-exporting its submodules is not a cycle of theirs: edges into a package (``pkg`` or
    ``pkg.sub``) from its own submodules are left out."""
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> list[str] | None:
        if module in stack:
            return [*stack[stack.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph.get(module, ())):
            if module.startswith(imported + "."):  # a submodule importing its package
                continue
            cycle = visit(imported, [*stack, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    return next((c for c in (visit(m, []) for m in sorted(graph)) if c), None)


def test_find_cycle_reports_the_path_and_resolves_relative_imports(tmp_path: Path) -> None:
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
    (source / "third.py").write_text("from pkg.second import f\n")
    graph = import_graph(source)
    assert graph == {
        "pkg": {"pkg.first"}, "pkg.first": {"pkg.second"}, "pkg.second": {"pkg.first"},
        "pkg.third": {"pkg.second"},
    }  # fmt: skip
    assert find_cycle(graph) == ["pkg.first", "pkg.second", "pkg.first"]


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
