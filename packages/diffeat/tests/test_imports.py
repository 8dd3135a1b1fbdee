"""The package's import graph (issue 25, item 2): no cycle, counting the imports inside
functions too (``catalogue`` used to import ``capture`` lazily while ``capture`` imported
``catalogue``), and no module imports the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import diffeat

SOURCE = Path(diffeat.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The diffeat modules that ``path`` imports anywhere (module level or in a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diffeat"):
            found.add(node.module)
            # `from diffeat import io` imports the module diffeat.io
            found |= {f"{node.module}.{a.name}" for a in node.names} & modules
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("diffeat")}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in SOURCE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path of modules, or None."""
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> list[str] | None:
        if module in stack:
            return [*stack[stack.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph.get(module, ())):
            cycle = visit(imported, [*stack, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    return next((c for c in (visit(m, []) for m in sorted(graph)) if c), None)


def test_find_cycle_reports_the_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_has_no_import_cycle_even_in_functions():
    graph = import_graph()
    assert {"diffeat.capture", "diffeat.catalogue", "diffeat.shapes", "diffeat.cli"} <= set(graph)
    assert "diffeat.capture" not in graph["diffeat.catalogue"]
    assert graph["diffeat.shapes"] >= {"diffeat.capture", "diffeat.catalogue"}
    assert find_cycle(graph) is None


def test_nothing_imports_the_command_line():
    importers = sorted(
        name for name, imported in import_graph().items() if "diffeat.cli" in imported
    )
    assert importers == []
