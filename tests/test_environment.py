"""Collecting the tests leaves the environment as it was.

A test module that sets an environment variable at import changes it for every test collected
after it, in every package of a combined run: ``nox -s gpu`` collects all packages' tests in one
process, and a ``TRITON_INTERPRET=1`` set that way once made the GPU lane run compiled kernels
under Triton's interpreter. The repository's conftest fails any run whose collection changed
``os.environ`` (so the combined GPU-lane collection checks every package at once); here that
hook is shown to catch a leaking module, and every test module is scanned for module-level
writes to the environment.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_MODULES = sorted(
    p for p in (ROOT / "packages").glob("*/tests/**/*.py") if ".nox" not in p.parts
)
ENVIRON_WRITERS = {"setdefault", "update", "pop", "clear", "__setitem__", "__delitem__"}


def _writes_environment(node: ast.AST) -> bool:
    """Whether a statement writes os.environ (assignment, deletion, a mutating call, putenv)."""
    for sub in ast.walk(node):
        if isinstance(sub, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = sub.targets if isinstance(sub, (ast.Assign, ast.Delete)) else [sub.target]
            if any(isinstance(t, ast.Subscript) and _is_environ(t.value) for t in targets):
                return True
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
            if sub.func.attr in ENVIRON_WRITERS and _is_environ(sub.func.value):
                return True
            if sub.func.attr in ("putenv", "unsetenv"):
                return True
    return False


def _is_environ(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ"


def _module_level_statements(tree: ast.Module):
    """Statements that run at import: the module body and the bodies of its if/try blocks
    (not functions or classes)."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                pending.extend(getattr(node, field, []) or [])
            continue
        if isinstance(node, ast.ExceptHandler):
            pending.extend(node.body)
            continue
        yield node


def test_test_modules_are_found() -> None:
    names = {p.parent.parent.name for p in TEST_MODULES}
    assert {"common-kernels", "semanir"} <= names


@pytest.mark.parametrize("module", TEST_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_test_module_writes_the_environment_at_import(module: Path) -> None:
    tree = ast.parse(module.read_text(encoding="utf-8"))
    offending = [n.lineno for n in _module_level_statements(tree) if _writes_environment(n)]
    assert not offending, (
        f"{module.relative_to(ROOT)} writes os.environ at import (lines {offending}); "
        "use monkeypatch or a fixture"
    )


def test_the_scan_finds_each_kind_of_write() -> None:
    for source in (
        "import os\nos.environ['A'] = '1'",
        "import os\nos.environ.setdefault('A', '1')",
        "import os\nif True:\n    os.environ.update(A='1')",
        "import os\nos.putenv('A', '1')",
        "import os\ndel os.environ['A']",
    ):
        tree = ast.parse(source)
        assert any(_writes_environment(n) for n in _module_level_statements(tree)), source
    clean = ast.parse("import os\ndef f(m):\n    os.environ['A'] = '1'\nx = os.environ.get('A')")
    assert not any(_writes_environment(n) for n in _module_level_statements(clean))


def _collect(tmp_path: Path, module_source: str) -> subprocess.CompletedProcess:
    """``pytest --collect-only`` of one test module with the repository's conftest as plugin."""
    (tmp_path / "test_module.py").write_text(module_source)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    env.pop("LEAKED_BY_TEST", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "conftest",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip


def test_conftest_fails_a_collection_that_changes_the_environment(tmp_path: Path) -> None:
    leaking = "import os\nos.environ['LEAKED_BY_TEST'] = '1'\ndef test_x():\n    pass\n"
    result = _collect(tmp_path, leaking)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "collecting the tests changed the environment (LEAKED_BY_TEST)" in (
        result.stdout + result.stderr
    )
    clean = "import os\ndef test_x(monkeypatch):\n    monkeypatch.setenv('A', '1')\n"
    result = _collect(tmp_path, clean)
    assert result.returncode == 0, result.stdout + result.stderr
