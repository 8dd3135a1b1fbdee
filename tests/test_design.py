"""The design rules of issue 32 that a scan of the sources can hold: files small enough to
read, no dead module-level function, one error contract (no API takes its caller's flag names),
and a README that says where new code goes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))
SOURCES = sorted((ROOT / "packages").glob("*/src/**/*.py"))
MAX_LINES = 800
# Where a module-level function may be used from: the sources, tests, benchmarks and examples
# of every package, the repository's own tests and sessions, and the READMEs and docs pages
# (public API).
USES = [
    *sorted((ROOT / "packages").glob("*/src/**/*.py")),
    *sorted((ROOT / "packages").glob("*/tests/**/*.py")),
    *sorted((ROOT / "packages").glob("*/benchmarks/**/*.py")),
    *sorted((ROOT / "packages").glob("*/examples/**/*.py")),
    *sorted((ROOT / "packages").glob("*/README.md")),
    *sorted((ROOT / "packages").glob("*/docs/*.md")),
    *sorted((ROOT / "tests").glob("*.py")),
    ROOT / "noxfile.py",
]
# Called by name from outside Python: console-script entry points and hook names that a
# framework looks up (pytest, nox, Lightning's CLI).
CALLED_BY_NAME = {"main"}


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("source", SOURCES, ids=relative)
def test_no_source_file_is_longer_than_800_lines(source: Path) -> None:
    lines = len(source.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{relative(source)} has {lines} lines (at most {MAX_LINES})"


@pytest.mark.parametrize("source", SOURCES, ids=relative)
def test_no_api_takes_flag_names(source: Path) -> None:
    """An API names its own arguments in its errors (``InvalidArgument``); a CLI maps them to
    its flags when it prints. So no function takes a ``names`` mapping of flags (a list of
    layer or class names is data, not this) and no package keeps a ``named()`` helper for it."""
    text = source.read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.name != "named", f"{relative(source)}:{node.lineno} defines named()"
            arguments = node.args.args + node.args.kwonlyargs + node.args.posonlyargs
            for argument in arguments:
                annotation = ast.get_source_segment(text, argument.annotation or ast.Pass()) or ""
                flag_map = argument.arg == "names" and (
                    "Names" in annotation or "Mapping[str, str]" in annotation
                )
                assert not flag_map, f"{relative(source)}:{node.lineno} {node.name}() takes names="


def module_functions(source: Path) -> list[tuple[str, int]]:
    """The public functions defined at a module's top level: (name, line)."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    return [
        (node.name, node.lineno)
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and not node.name.startswith("_")
        and node.name not in CALLED_BY_NAME
    ]


def test_every_module_level_function_is_used_somewhere() -> None:
    """A function that nothing calls, re-exports, tests or documents is dead code."""
    texts = {path: path.read_text(encoding="utf-8") for path in USES if path.exists()}
    words: dict[str, int] = {}
    for text in texts.values():
        for word in re.findall(r"\b[A-Za-z_]\w*\b", text):
            words[word] = words.get(word, 0) + 1
    dead = [
        f"{relative(source)}:{line} {name}"
        for source in SOURCES
        for name, line in module_functions(source)
        if words.get(name, 0) <= 1  # its own definition only
    ]
    assert not dead, "never used: " + ", ".join(dead)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_readme_says_where_new_code_goes(package: Path) -> None:
    readme = (package / "README.md").read_text(encoding="utf-8")
    assert re.search(r"^#+ Layout\s*$", readme, re.M), f"{package.name}/README.md: no Layout"


INITS = sorted((ROOT / "packages").glob("*/src/**/__init__.py"))


def public_names(init: Path) -> list[str]:
    """A package's ``__all__`` without importing it: its module-level assignments of data
    (literals, ``dict.fromkeys``, ``sorted`` of a lazy package's name table) evaluated in order
    with nothing else in scope."""
    scope: dict = {"__builtins__": {}, "dict": dict, "sorted": sorted}
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            try:
                value = eval(compile(ast.Expression(node.value), str(init), "eval"), scope)
            except (NameError, TypeError, AttributeError):
                continue  # not data (a call of the package's own helpers)
            scope.update(dict.fromkeys((t.id for t in node.targets), value))
    return list(scope.get("__all__", []))


@pytest.mark.parametrize("init", INITS, ids=lambda p: relative(p.parent))
def test_no_public_name_is_also_a_submodule(init: Path) -> None:
    """``from itaclip import Segmenter, pamr`` gave the submodule ``itaclip.pamr``, not the
    function: importing the submodule (Segmenter's module does) binds its name on the package,
    over the lazy name. So no name of a package's ``__all__`` may be one of its modules."""
    folder = init.parent
    modules = {p.stem for p in folder.glob("*.py")} | {
        p.parent.name for p in folder.glob("*/__init__.py")
    }
    assert sorted(set(public_names(init)) & modules) == []


PROJECT_TEXTS = [
    ROOT / "README.md", ROOT / "noxfile.py", *sorted((ROOT / "tools").glob("*.*")),
    *sorted((ROOT / "docs").glob("**/*.md")), *sorted((ROOT / "packages").glob("*/README.md")),
    *sorted((ROOT / "packages").glob("*/docs/*.md")),
]  # fmt: skip
WHO_LENDS = re.compile(r"\b(lent|lends?|leases?|loans?|workplace)\b", re.IGNORECASE)


@pytest.mark.parametrize("path", PROJECT_TEXTS, ids=relative)
def test_the_project_speaks_of_machines_not_of_who_lends_them(path: Path) -> None:
    """READMEs, docs and tools speak of the project's and its users' machines (a GPU machine
    without network, the folder whose files come back), keeping the facts (limits, what was
    measured when), not of who lends which machine to whom (issue 59)."""
    found = [
        f"{number}: {line.strip()}"
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if WHO_LENDS.search(line)
    ]
    assert found == []
