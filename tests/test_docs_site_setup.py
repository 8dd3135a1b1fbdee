"""``python3 tools/docs_site.py build`` in a fresh clone (issue 59, item 4): without the packages
and the docs tools it says in one line what is missing and the one command that installs and
builds everything, with no traceback and nothing half-written. Runs in the repo session, which
has neither mkdocs nor the packages (tests/test_docs_site.py runs in the docs session)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_site():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        spec = importlib.util.spec_from_file_location("docs_site", ROOT / "tools" / "docs_site.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["docs_site"] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "tools"))


site = _load_site()


def test_build_without_the_packages_says_what_to_run_and_writes_nothing() -> None:
    """A fresh clone with nothing installed (this interpreter without its site-packages): one
    line naming what is missing and the one command that installs and builds, no traceback,
    nothing written under build/docs-site (it raised ModuleNotFoundError and left src.partial)."""
    before = sorted(site.SITE.rglob("*")) if site.SITE.exists() else None
    done = subprocess.run(
        [sys.executable, "-S", str(ROOT / "tools" / "docs_site.py"), "build"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("docs_site build: needs mkdocs, mkdocs-material, mkdocstrings, ")
    assert "common-kernels, diffeat, itaclip, pixelsmith, semanir, vitron installed" in line
    assert line.endswith(f"; {site.NOX_LINE} installs them and builds the site")
    assert (sorted(site.SITE.rglob("*")) if site.SITE.exists() else None) == before


def test_a_failed_assembly_leaves_no_partial_source(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(site, "SITE", tmp_path / "docs-site")
    monkeypatch.setattr(site, "missing_for_build", list)

    def half_written(folder: Path) -> None:
        (folder / "pages").mkdir(parents=True)
        (folder / "pages" / "index.md").write_text("# half")
        raise RuntimeError("a page could not be generated")

    monkeypatch.setattr(site, "assemble", half_written)
    with pytest.raises(RuntimeError, match="a page could not be generated"):
        site.build()
    assert sorted(p.name for p in (tmp_path / "docs-site").iterdir()) == []


def hub_weight_cells(path: Path, link: str) -> dict[str, str]:
    """Package -> its "needs hub weights" cell in a table whose first cell links ``link``."""
    import re

    row = re.compile(rf"^\| \[([a-z-]+)\]\({link}\) \|.* \| ([^|]+) \|$")
    return {m.group(1): m.group(2) for m in map(row.match, path.read_text().splitlines()) if m}


def test_the_home_page_table_says_what_the_readme_says():
    """The site's home table gave diffeat's hub weights as SD 1.5, SDXL and PixArt-Sigma only,
    three releases after the README's list had grown: both tables now give the same cell."""
    readme = hub_weight_cells(ROOT / "README.md", r"packages/[a-z-]+")
    home = hub_weight_cells(ROOT / "docs" / "index.md", r"[a-z-]+/index\.md")
    assert len(readme) == 6 and home == readme
