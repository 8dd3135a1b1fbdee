"""vitron's import graph (issue 25, item 2): no cycle, counting the imports inside functions
too (``vitron.evaluation.command`` used to import ``vitron.cli``, which imported it back), and
no module imports the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import vitron

SOURCE = Path(vitron.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): imports for annotations only."""
    test = getattr(node, "test", None)
    name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
    return isinstance(node, ast.If) and name == "TYPE_CHECKING"


def runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` that can run, in functions too (not under TYPE_CHECKING)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if is_type_checking(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The vitron modules ``path`` imports anywhere: at module level, in a function or a class,
    as ``import vitron.x`` or ``from vitron.x import y`` (``y`` counts when it is a module)."""
    found = set()
    for node in runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            if node.module == "vitron" or (node.module or "").startswith("vitron."):
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names} & modules
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "vitron"}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in SOURCE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path of modules (first module repeated), or None."""
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


def test_imported_modules_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nfrom typing import TYPE_CHECKING\nfrom vitron.checks import named\n"
        "if TYPE_CHECKING:\n    from vitron.router import Router\n"
        "def f():\n    from vitron import io\n    import vitron.cli\n"
    )
    modules = {"vitron.io", "vitron.checks", "vitron.cli", "vitron.router"}
    assert imported_modules(source, modules) == {"vitron.checks", "vitron", "vitron.io",
                                                 "vitron.cli"}  # fmt: skip


def test_find_cycle_reports_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_vitron_has_no_import_cycle_even_in_functions():
    graph = import_graph()
    assert {"vitron.cli", "vitron.options", "vitron.evaluation.command"} <= set(graph)
    assert "vitron.options" in graph["vitron.evaluation.command"]
    assert graph["vitron.cli"] >= {"vitron.options", "vitron.evaluation.command"}
    assert find_cycle(graph) is None


def test_nothing_imports_the_command_line():
    importers = sorted(
        name for name, imported in import_graph().items() if "vitron.cli" in imported
    )
    assert importers == []
