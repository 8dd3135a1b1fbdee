"""Repository invariants: every package is complete and depends on in-tree packages by name."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECTS = sorted((ROOT / "packages").glob("*/pyproject.toml"))


def _project(pyproject: Path) -> dict:
    with pyproject.open("rb") as f:
        return tomllib.load(f)["project"]


IN_TREE = {_project(p)["name"]: Version(_project(p)["version"]) for p in PYPROJECTS}


def test_packages_are_discovered() -> None:
    assert "common-kernels" in IN_TREE
    assert len(IN_TREE) == len(PYPROJECTS)


@pytest.mark.parametrize("pyproject", PYPROJECTS, ids=lambda p: p.parent.name)
def test_package_layout(pyproject: Path) -> None:
    package_dir = pyproject.parent
    import_name = _project(pyproject)["name"].replace("-", "_")
    for required in ("README.md", "CHANGELOG.md", "tests", f"src/{import_name}/__init__.py"):
        assert (package_dir / required).exists(), f"{package_dir.name} lacks {required}"
    changelog = (package_dir / "CHANGELOG.md").read_text()
    assert f"## {_project(pyproject)['version']}" in changelog, "CHANGELOG has no entry for it"


@pytest.mark.parametrize("pyproject", PYPROJECTS, ids=lambda p: p.parent.name)
def test_in_tree_dependencies_by_name_with_admitting_range(pyproject: Path) -> None:
    project = _project(pyproject)
    extras = project.get("optional-dependencies", {}).values()
    requirements = [*project.get("dependencies", []), *(r for group in extras for r in group)]
    for text in requirements:
        requirement = Requirement(text)
        assert requirement.url is None, f"{text!r}: depend by name, never by path or URL"
        if requirement.name in IN_TREE:
            assert requirement.specifier, f"{text!r}: give a compatible range"
            assert IN_TREE[requirement.name] in requirement.specifier, (
                f"{text!r} does not admit the in-tree version {IN_TREE[requirement.name]}"
            )


def test_the_readme_table_gives_each_packages_version() -> None:
    """The top-level README's package table names the version each pyproject declares (it once
    lagged three releases behind)."""
    rows = [
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| [")
    ]
    shown = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        name = cells[0].split("]")[0].lstrip("[")
        shown[name] = cells[3]
    assert shown == {name: str(version) for name, version in IN_TREE.items()}
