"""What a package imports, for the packages' tests: the static import graph of its modules
(:func:`import_graph`, :func:`find_cycle`: no cycles, a thin command line) and what a command
loads when it runs (:func:`runs_in_fresh_interpreter`: ``--help`` and refusals before the
heavy libraries). Standard library only.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple


def _module_name(path: Path, source: Path) -> str:
    parts = path.relative_to(source.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module name of ``from X import ...`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _is_type_checking(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return "TYPE_CHECKING" in (getattr(test, "id", None), getattr(test, "attr", None))


def _imported_modules(path: Path, module: str, modules: set[str]) -> set[str]:
    root = module.split(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                   for n in ast.walk(block)}  # fmt: skip
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.ImportFrom):
            name = _absolute(node, module, path.name == "__init__.py")
            if name.split(".")[0] == root:
                found |= {name} if node.module else set()  # `from . import x`: x only
                found |= {f"{name}.{alias.name}" for alias in node.names} & modules
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == root}
    return (found & modules) - {module}


def import_graph(source: str | os.PathLike) -> dict[str, set[str]]:
    """The modules of the package ``source`` and the package's own modules each imports,
    anywhere in it (module level or in a function, relative imports resolved; ``if
    TYPE_CHECKING:`` imports left out): ``from pkg import io`` imports the module ``pkg.io``.

    Args:
        source: the package's folder (``src/pkg``).
    """
    source = Path(source)
    paths = {_module_name(p, source): p for p in source.rglob("*.py")}
    return {name: _imported_modules(p, name, set(paths)) for name, p in paths.items()}


def find_cycle(graph: Mapping[str, Collection[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (:func:`import_graph`) as a path of modules, or None. A
    package's ``__init__`` re-exporting its submodules is not a cycle of theirs: edges into a
    package (``pkg`` or ``pkg.sub``) from its own submodules are left out.

    Args:
        graph: each module's imported modules.
    """
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


class CommandRun(NamedTuple):
    """One step of :func:`runs_in_fresh_interpreter`: the exit status (None for the import),
    what was written to stderr, and which watched modules were loaded by then."""

    status: int | None
    stderr: str
    loaded: list[str]


_FRESH_RUNS = """
import contextlib, importlib, io, json, sys
module, argvs, watched = sys.argv[1], json.loads(sys.argv[2]), set(json.loads(sys.argv[3]))

def loaded():
    return sorted({name.split(".")[0] for name in sys.modules} & watched)

cli = importlib.import_module(module)
steps = {"import": [None, "", loaded()]}
for argv in argvs:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except SystemExit as stop:  # argparse's --help
            status = stop.code
    steps[" ".join(argv)] = [status, err.getvalue(), loaded()]
print(json.dumps(steps))
"""


def runs_in_fresh_interpreter(
    module: str,
    argvs: Sequence[Sequence[str]],
    watched: Sequence[str],
    cwd: str | os.PathLike | None = None,
) -> dict[str, CommandRun]:
    """Import a command's module in a fresh interpreter, then call its ``main(argv)`` for each
    of ``argvs`` in turn: what each step returned, wrote to stderr and had imported.

    A command's ``--help`` and its refusals of bad input should come before its heavy imports
    (diffusers, transformers, open_clip take seconds): a test asserts on the modules loaded,
    never on seconds.

    Args:
        module: the command's module (``"pixelsmith.cli"``), with a ``main(argv)``.
        argvs: the argument lists, run in order in the same interpreter.
        watched: top-level module names to report (``["diffusers", "transformers"]``).
        cwd: the folder to run in.

    Returns:
        ``"import"`` and each ``" ".join(argv)`` -> its :class:`CommandRun`.
    """
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_RUNS, module, json.dumps([list(a) for a in argvs]),
         json.dumps(list(watched))],
        capture_output=True, text=True, cwd=cwd,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"{module} failed in a fresh interpreter: {done.stderr[-2000:]}")
    steps = json.loads(done.stdout.splitlines()[-1])
    return {step: CommandRun(*values) for step, values in steps.items()}
