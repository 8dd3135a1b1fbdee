"""The documentation site (issue 52, item 4; tools/docs_site.py): the generated CLI reference
lists every argument of every parser with its usage, the API reference every public name, the
nav every committed docs page, links to GitHub become links between the site's pages, the
strict configuration fails on a broken link, the gallery's images are small and its numbers
are the README's pinned outputs, its commands use flags the parsers offer, and the docs
workflow builds, checks and deploys. The full strict build and the browser check are slow."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# The docs site's environment (every package and tools/docs-requirements.txt, as `nox -s docs`
# and the docs workflow install them); the repo and slow sessions have neither mkdocs nor it.
pytest.importorskip("mkdocs", reason="pip install -r tools/docs-requirements.txt (nox -s docs)")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent.name for p in ROOT.glob("packages/*/pyproject.toml"))
CLI_PACKAGES = ["diffeat", "itaclip", "pixelsmith", "semanir", "vitron"]


def _load(name: str):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "tools"))


site = _load("docs_site")
reference = site.docs_reference
gallery = _load("docs_gallery")


def _testing():
    """common_kernels.runtime.testing from its file (standard library only)."""
    path = ROOT / "packages/common-kernels/src/common_kernels/runtime/testing.py"
    spec = importlib.util.spec_from_file_location("common_kernels_testing_docs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


TESTING = _testing()


# --- the CLI reference ---------------------------------------------------------------------------


def parsers_of(package: str) -> dict[str, argparse.ArgumentParser]:
    """Independently of the generator: "<program> <command>..." -> parser, from the package's
    parser builder (semanir: its SUBCOMMANDS table)."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        found[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}")

    if package == "semanir":
        from semanir.commands import SUBCOMMANDS

        for command, (make, _) in SUBCOMMANDS.items():
            walk(make(), f"semanir {command}")
    else:
        walk(importlib.import_module(f"{package}.cli").build_parser(), package)
    return found


def sections(markdown: str) -> dict[str, str]:
    """``## heading`` -> the text below it."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def table_arguments(section: str) -> dict[str, list[str]]:
    """First column of each table row -> the row's cells (the header left out)."""
    rows = {}
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| argument |"):
            continue
        cells, cell, code = [], "", False
        for i, char in enumerate(line):  # a pipe separates cells outside code, unescaped
            if char == "`":
                code = not code
            if char == "|" and not code and (i == 0 or line[i - 1] != "\\"):
                cells.append(cell.strip())
                cell = ""
            else:
                cell += char
        rows[cells[1]] = cells[1:]
    return rows


@pytest.mark.parametrize("package", CLI_PACKAGES)
def test_the_cli_reference_lists_every_argument_of_every_parser(package: str) -> None:
    page = reference.cli_reference(package)
    found = sections(page)
    parsers = parsers_of(package)
    assert set(found) == set(parsers), "a command without its section, or a section too many"
    for name, parser in parsers.items():
        rows = table_arguments(found[name])
        flags = {re.sub(r"`", "", f).strip() for cell in rows for f in cell.split(", ")}
        expected = set()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if action.help == argparse.SUPPRESS:
                continue
            expected |= set(action.option_strings) or {action.dest}
            cells = rows[", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"]
            if action.choices is not None and not isinstance(action.choices, range):
                assert all(f"`{c}`" in cells[1] for c in action.choices), (name, cells)
            default = action.default
            if isinstance(default, str | int | float) and default not in (argparse.SUPPRESS, ""):
                shown = str(default).replace("\n", "\\n")
                assert cells[2] == f"`{shown}`" or isinstance(default, bool), (name, cells)
        assert flags == expected, name
        usage = parser.format_usage().removeprefix("usage: ").strip()
        assert f"```text\n{usage}\n```" in found[name]


def test_the_cli_reference_names_a_flag_with_its_help() -> None:
    """One row checked word for word: semanir restore's --tile."""
    rows = table_arguments(sections(reference.cli_reference("semanir"))["semanir restore"])
    (tile,) = [cells for flag, cells in rows.items() if flag == "`--tile`"]
    from semanir.commands import restore_parser

    (action,) = [a for a in restore_parser()._actions if "--tile" in a.option_strings]
    assert tile[3] == " ".join(action.help.split())  # no pipe, no backtick in this one
    assert tile[1] == f"`{action.metavar}`"
    assert reference.cli_reference("common-kernels") is None  # no command line


# --- the API reference ---------------------------------------------------------------------------


@pytest.mark.parametrize("package", PACKAGES)
def test_the_api_reference_documents_every_public_name(package: str) -> None:
    module = reference.IMPORT_NAMES[package]
    documented = re.findall(rf"^::: {module}\.(\w+)$", reference.api_reference(package), re.M)
    public = importlib.import_module(module).__all__
    assert documented == [n for n in public if n != "__version__"]


# --- nav and links ------------------------------------------------------------------------------


def test_the_nav_covers_every_docs_page_and_each_package_has_its_sections() -> None:
    pages = site.nav_pages(site.nav())
    assert len(pages) == len(set(pages)), "a page twice in the nav"
    for path in ROOT.glob("packages/*/docs/*.md"):
        assert f"{path.parent.parent.name}/{path.name}" in pages, path
    for package in PACKAGES:
        assert f"{package}/getting-started.md" in pages
        assert f"{package}/api-reference.md" in pages
        assert (f"{package}/cli-reference.md" in pages) == (package in CLI_PACKAGES)
    for path in (ROOT / "docs").rglob("*.md"):
        assert path.relative_to(ROOT / "docs").as_posix() in pages, path
    nav = dict(next(iter(e.items())) for e in site.nav())
    assert list(nav) == ["Home", "common-kernels", *[p for p in PACKAGES if p != "common-kernels"]]
    titles = [next(iter(e)) for e in nav["semanir"][1:]]
    assert titles[:3] == ["Getting started", "The command line in detail", "Guides"]
    assert titles[-3:] == ["CLI reference", "API reference", "Gallery"]


def test_links_to_github_become_links_between_site_pages(tmp_path: Path) -> None:
    source = ROOT / "packages" / "semanir" / "docs" / "guide.md"
    text = (
        f"[a]({site.BLOB}packages/semanir/docs/cli.md#app) "
        f"[b]({site.BLOB}packages/itaclip/docs/guide.md) "
        f"[c]({site.BLOB}packages/diffeat/README.md) "
        "[d](../README.md) [e](../benchmarks/results/onnx.png) [f](../benchmarks/run.py) "
        "[g](training.md#x) [h](https://pypi.org/) [i](#local) [j](../missing.md)"
    )
    files: dict[str, Path] = {}
    out = site.rewrite_links(text, source, "semanir/guide.md", files)
    assert out == (
        "[a](cli.md#app) [b](../itaclip/guide.md) [c](../diffeat/getting-started.md) "
        "[d](getting-started.md) [e](../files/packages/semanir/benchmarks/results/onnx.png) "
        f"[f]({site.BLOB}packages/semanir/benchmarks/run.py) [g](training.md#x) "
        "[h](https://pypi.org/) [i](#local) [j](../missing.md)"
    )
    assert files == {
        "files/packages/semanir/benchmarks/results/onnx.png":
            ROOT / "packages/semanir/benchmarks/results/onnx.png"
    }  # fmt: skip
    root = site.rewrite_links("[s](packages/semanir)", ROOT / "README.md", "development.md", {})
    assert root == "[s](semanir/index.md)"


def test_the_strict_configuration_fails_on_a_broken_link_and_anchor(tmp_path: Path) -> None:
    """The root mkdocs.yml's validation settings under --strict, on a two-page site."""
    config = site.read_mkdocs_yml()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[there](other.md#no-such-anchor)\n")
    (docs / "other.md").write_text("# Other\n\n[gone](missing.md)\n")
    small = {"site_name": "t", "docs_dir": str(docs), "site_dir": str(tmp_path / "site"),
             "validation": config["validation"], "markdown_extensions": ["toc"],
             "nav": ["index.md", "other.md"]}  # fmt: skip
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(small))
    command = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "-f",
        str(tmp_path / "mkdocs.yml"),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 1
    assert "'missing.md'" in done.stderr
    assert "no-such-anchor" in done.stderr


# --- the gallery ---------------------------------------------------------------------------------


GALLERY = ROOT / "docs" / "gallery"


def test_the_gallery_images_are_small_and_each_is_shown() -> None:
    images = sorted(p for p in GALLERY.rglob("*") if p.suffix in (".png", ".jpg"))
    assert len(images) >= 12 + 5
    pages = "".join(p.read_text() for p in GALLERY.glob("*.md"))
    for image in images:
        assert image.stat().st_size < gallery.MAX_IMAGE_BYTES, image
        assert f"]({image.relative_to(GALLERY).as_posix()})" in pages, f"{image} is not shown"
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", pages):
        assert (GALLERY / target).is_file(), target


def test_the_semanir_gallery_shows_the_readme_pinned_outputs() -> None:
    """The gallery's PSNRs are the README's pinned rows (to 0.005 dB), and its page says them."""
    readme = (ROOT / "packages/semanir/README.md").read_text()
    row = re.compile(r"^\| `(\w+)` \| `[^`]+` \| [^|]+ \| ([\d.]+) \| ([\d.]+) \|$", re.M)
    pinned = {m[1]: (float(m[2]), float(m[3])) for m in row.finditer(readme)}
    rows = json.loads((GALLERY / "semanir.json").read_text())
    assert {row["model"] for row in rows} == set(pinned) and len(rows) == 4
    page = (GALLERY / "semanir.md").read_text()
    for row in rows:
        before, after = pinned[row["model"]]
        assert abs(row["psnr_degraded"] - before) < 0.005, row
        assert abs(row["psnr_restored"] - after) < 0.005, row
        assert f"**{row['psnr_degraded']:.2f} dB**" in page
        assert f"**{row['psnr_restored']:.2f} dB**" in page


@pytest.mark.parametrize("page", sorted(GALLERY.glob("*.md")), ids=lambda p: p.name)
def test_the_gallery_commands_use_flags_the_parsers_offer(page: Path) -> None:
    """Every shell block is marked as checked with its reason, and each ``--flag`` of a package
    command is one its parser takes (the deepest subcommand the words name)."""
    checked = 0
    for example in TESTING.shell_examples(page):
        assert example.mode == "check" and example.reason, example.id
        for words in example.commands():
            if words[0] not in CLI_PACKAGES:
                continue
            parsers = parsers_of(words[0])
            name = next(n for n in sorted(parsers, key=len, reverse=True)
                        if words[: len(n.split())] == n.split())  # fmt: skip
            offered = {s for a in parsers[name]._actions for s in a.option_strings}
            used = {w.split("=")[0] for w in words if w.startswith("-")}
            assert used <= offered, f"{name}: {used - offered}"
            checked += 1
    if page.name != "index.md":
        assert checked >= 2, page


# --- the workflow --------------------------------------------------------------------------------


def test_the_docs_workflow_builds_checks_and_deploys() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/docs.yml").read_text())
    runs = [s.get("run", "") for s in workflow["jobs"]["build"]["steps"]]
    assert "python -m nox -s docs" in runs
    # The session installs every package and the site's tools, builds strictly, then checks.
    noxfile = (ROOT / "noxfile.py").read_text()
    session = noxfile[noxfile.index("def docs(") :].split("\n\n\n")[0]
    assert "install_packages(session, list(PACKAGES))" in session
    assert "docs-requirements.txt" in session
    assert session.index('"build")') < session.index('"check")')
    upload = [s for s in workflow["jobs"]["build"]["steps"]
              if s.get("uses", "").startswith("actions/upload-pages-artifact")]  # fmt: skip
    assert upload[0]["with"]["path"] == "build/docs-site/site"
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert "refs/heads/main" in deploy["if"]


# --- the whole site (slow) -----------------------------------------------------------------------


@pytest.mark.slow
def test_the_site_builds_strictly_and_every_page_works_in_chromium(tmp_path: Path) -> None:
    if not Path(site.os.environ.get("CHROMIUM", "/usr/bin/chromium")).is_file():
        pytest.skip("no Chromium: apt-get install -y chromium (or set CHROMIUM)")
    site.build(quiet=True)
    report = site.check(screenshots=tmp_path / "shots")
    assert report.problems == []
    expected = {p.removesuffix(".md").removesuffix("index") + "/" for p in
                site.nav_pages(site.nav())}  # fmt: skip
    opened = set(site.site_pages(site.OUTPUT))
    assert {p.replace("//", "/").lstrip("/") for p in expected} <= opened
    assert report.pages == len(opened) and report.links > 100
    assert any(h.split("#")[0].endswith("semanir/cli-reference/") for h in report.search_hits)
    assert len(report.screenshots) == report.pages + 1
    for shot in report.screenshots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot
