"""Installs work as the READMEs write them: the in-tree packages are not on PyPI, so every
install line either names the in-tree packages it needs (run from a clone) or installs from the
wheelhouse that ``nox -s build`` writes; index-only lines are marked as not working yet.

Resolution is checked with ``pip install --dry-run --report`` in a fresh virtual environment
(the index is reachable, nothing heavy is installed). The default lane resolves two merged
commands, every clone line together and every wheelhouse line together (a set of requirements
that resolves together resolves in any part), and checks statically that each clone line names
every in-tree package it needs at a version its requirements accept; the slow lane resolves
each line as written (25 resolutions, about 9 minutes on 2 cores). Each wheel is really
installed, without its dependencies, from a wheelhouse of the in-tree wheels only, and must
carry every file of its source tree (package data: configs, bundled weights, policies).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))
PYPI_MARKER = "Once a release is published on PyPI"
EXAMPLE_MARKER = re.compile(
    r"<!--\s*example:[^\n]*-->$"
)  # common_kernels.runtime.testing's block marker
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _project(package_dir: Path) -> dict:
    with (package_dir / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]


IN_TREE = {canonicalize_name(_project(d)["name"]): _project(d)["version"] for d in PACKAGE_DIRS}


def install_lines(readme: Path) -> list[tuple[str, bool]]:
    """``(command, marked_as_pypi_only)`` for every ``pip install`` line in a fenced block of
    ``readme``; continuation lines are joined and comments dropped."""
    text = readme.read_text()
    found = []
    for match in FENCE.finditer(text):
        preceding = EXAMPLE_MARKER.sub("", text[: match.start()].rstrip()).rstrip()
        before = preceding.rsplit("\n\n", 1)[-1]  # the paragraph above (a test marker aside)
        block = match.group(2).replace("\\\n", " ")
        for line in block.splitlines():
            if line.startswith("pip install "):
                words = shlex.split(line, comments=True)
                found.append((shlex.join(words), PYPI_MARKER in before))
    return found


def docs_pages(package_dir: Path) -> list[Path]:
    """The package's docs pages, where the README's long sections moved (issue 52): their
    install lines are held to the README's rules."""
    return sorted((package_dir / "docs").glob("*.md"))


README_LINES = (
    [
        pytest.param(command, id=f"{d.name}:{i}")
        for d in PACKAGE_DIRS
        for i, (command, pypi_only) in enumerate(install_lines(d / "README.md"))
        if not pypi_only
    ]
    + [
        pytest.param(command, id=f"{d.name}/docs/{page.name}:{i}")
        for d in PACKAGE_DIRS
        for page in docs_pages(d)
        for i, (command, pypi_only) in enumerate(install_lines(page))
        if not pypi_only
    ]
    + [
        pytest.param(command, id=f"root:{i}")
        for i, (command, pypi_only) in enumerate(install_lines(ROOT / "README.md"))
        if not pypi_only
    ]
)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment (its python), with nothing but pip."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory, venv) -> Path:
    """Every package's wheel, built the way ``nox -s build`` builds them (three at a time: each
    build mostly waits on its isolated build environment's install)."""
    path = tmp_path_factory.mktemp("wheelhouse")
    with ThreadPoolExecutor(max_workers=3) as pool:
        builds = [
            pool.submit(pip, venv, "wheel", "--no-deps", "--wheel-dir", str(path), str(d))
            for d in PACKAGE_DIRS
        ]
    for build in builds:
        build.result()
    return path


def merged_commands() -> dict[str, str]:
    """Every clone line merged into one command and every wheelhouse line into another: each
    package once, with the union of the extras its lines ask for."""
    merged: dict[str, str] = {}
    for kind, prefix in (("clone", []), ("wheelhouse", ["--find-links", "dist"])):
        extras: dict[str, set[str]] = {}
        for param in README_LINES:
            args = shlex.split(param.values[0])[2:]
            if (args[:2] == ["--find-links", "dist"]) != bool(prefix):
                continue
            for arg in args[len(prefix) :]:
                name, _, wanted = arg.partition("[")
                extras.setdefault(name, set()).update(e for e in wanted.rstrip("]").split(",") if e)
        words = [f"{n}[{','.join(sorted(e))}]" if e else n for n, e in sorted(extras.items())]
        merged[kind] = shlex.join(["pip", "install", *prefix, *words])
    return merged


MERGED = merged_commands()


@pytest.fixture(scope="module")
def merged_resolutions(venv: Path, wheelhouse: Path, tmp_path_factory) -> dict[str, dict]:
    """The two merged commands' dry-run resolutions, side by side."""
    folder = tmp_path_factory.mktemp("merged")
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = {
            kind: pool.submit(resolve, venv, _args(command, wheelhouse), folder / f"{kind}.json")
            for kind, command in MERGED.items()
        }
    return {kind: job.result() for kind, job in jobs.items()}


@pytest.fixture(scope="module")
def resolutions(venv: Path, wheelhouse: Path, tmp_path_factory) -> dict[str, dict]:
    """Every README line's dry-run resolution, run four at a time (each waits on the index);
    a line that several READMEs repeat is resolved once (each resolution costs 10-35 s of pip
    reading the index)."""
    folder = tmp_path_factory.mktemp("reports")
    commands = list(dict.fromkeys(param.values[0] for param in README_LINES))
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = {
            command: pool.submit(resolve, venv, _args(command, wheelhouse), folder / f"{i}.json")
            for i, command in enumerate(commands)
        }
    return {command: job.result() for command, job in jobs.items()}


def _args(command: str, wheelhouse: Path) -> list[str]:
    """The arguments after ``pip install``, with ``dist`` replaced by the built wheelhouse."""
    args = shlex.split(command)[2:]
    if args[:2] == ["--find-links", "dist"]:
        args[1] = str(wheelhouse)  # what `nox -s build` writes to dist/
    return args


def pip(python: Path, *args: str) -> None:
    result = subprocess.run(
        [str(python), "-m", "pip", "--quiet", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stderr[-3000:]}"


def resolve(python: Path, args: list[str], report: Path) -> dict[str, tuple[str, str]]:
    """What ``pip install ARGS`` would install into ``python``'s environment: name ->
    (version, where it comes from)."""
    pip(python, "install", "--dry-run", "--ignore-installed", "--report", str(report), *args)
    installs = json.loads(report.read_text())["install"]
    return {
        canonicalize_name(item["metadata"]["name"]): (
            item["metadata"]["version"],
            item["download_info"]["url"],
        )
        for item in installs
    }


def in_tree_requirements(package_dir: Path, extras: list[str]) -> list[tuple[str, Requirement]]:
    """``(who requires it, requirement)`` for every in-tree package that ``package_dir`` with
    ``extras`` needs, transitively (each package and extras set visited once)."""
    edges: list[tuple[str, Requirement]] = []
    seen: set[tuple[Path, tuple[str, ...]]] = set()
    pending = [(package_dir, tuple(sorted(extras)))]
    while pending:
        current, groups = pending.pop()
        if (current, groups) in seen:
            continue
        seen.add((current, groups))
        project = _project(current)
        requirements = list(project.get("dependencies", []))
        for group in groups:
            requirements += project.get("optional-dependencies", {})[group]
        for text in requirements:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            if name in IN_TREE:
                edges.append((project["name"], requirement))
                pending.append((_dir_of(name), tuple(sorted(requirement.extras))))
    return edges


def _dir_of(name: str) -> Path:
    return next(d for d in PACKAGE_DIRS if canonicalize_name(_project(d)["name"]) == name)


def test_every_install_line_works_today_or_is_marked() -> None:
    """A README line either installs from the clone / the wheelhouse or sits under the
    'not on PyPI yet' marker; every package README has a clone line for itself."""
    pages = [page for d in PACKAGE_DIRS for page in (d / "README.md", *docs_pages(d))]
    for readme in [ROOT / "README.md", *pages]:
        for command, pypi_only in install_lines(readme):
            args = shlex.split(command)[2:]
            local = args[0].startswith("./packages/") or args[:2] == ["--find-links", "dist"]
            assert local or pypi_only, f"{readme.relative_to(ROOT)}: {command!r} cannot work yet"
            assert not (local and pypi_only), f"{readme}: {command!r} is marked PyPI-only"
    for package_dir in PACKAGE_DIRS:
        commands = [c for c, pypi_only in install_lines(package_dir / "README.md") if not pypi_only]
        assert any(f"./packages/{package_dir.name}" in c for c in commands), package_dir.name


def test_the_merged_commands_cover_every_line() -> None:
    """Each README line's packages and extras are in its merged command."""
    for param in README_LINES:
        args = shlex.split(param.values[0])[2:]
        merged = shlex.split(MERGED["wheelhouse" if args[0] == "--find-links" else "clone"])[2:]
        for arg in args:
            if arg.startswith("-") or arg == "dist":
                continue
            name, _, extras = arg.partition("[")
            match = next(m for m in merged if m.partition("[")[0] == name)
            assert set(extras.rstrip("]").split(",")) - {""} <= set(
                match.partition("[")[2].rstrip("]").split(",")
            ), (param.values[0], match)


@pytest.mark.parametrize(
    "command",
    [p for p in README_LINES if not p.values[0].startswith("pip install --find-links")],
)
def test_each_clone_line_names_the_in_tree_packages_it_needs(command: str) -> None:
    """Without an index holding them, pip can only take an in-tree dependency from the clone if
    the line names its folder; its version must satisfy every requirement on it."""
    args = shlex.split(command)[2:]
    named = {canonicalize_name(_project(_requested(arg)[0])["name"]) for arg in args}
    for arg in args:
        for owner, requirement in in_tree_requirements(*_requested(arg)):
            name = canonicalize_name(requirement.name)
            assert name in named, (
                f"{command!r}: {owner} needs {name}, whose folder it does not name"
            )
            assert requirement.specifier.contains(IN_TREE[name], prereleases=True), (
                f"{owner} requires {str(requirement)!r}; in-tree {name} is {IN_TREE[name]}"
            )


@pytest.mark.parametrize("kind", sorted(MERGED))
def test_the_merged_install_lines_resolve(
    kind: str, merged_resolutions: dict, wheelhouse: Path
) -> None:
    """Every clone line together (and every wheelhouse line together) resolves from the
    repository root, every in-tree package from the clone or the wheelhouse at its version."""
    _check_resolution(MERGED[kind], merged_resolutions[kind], wheelhouse)


@pytest.mark.slow  # 25 pip resolutions, ~9 minutes; the merged commands above cover the lines
@pytest.mark.parametrize("command", README_LINES)
def test_readme_install_line_resolves(command: str, resolutions: dict, wheelhouse: Path) -> None:
    """The line resolves as written from the repository root, and every in-tree package comes
    from the clone (or the wheelhouse), at the in-tree version, never from an index."""
    _check_resolution(command, resolutions[command], wheelhouse)


def _check_resolution(command: str, chosen: dict, wheelhouse: Path) -> None:
    args = _args(command, wheelhouse)
    wanted: set[str] = set()
    for arg in args:
        if arg.startswith("-") or arg == str(wheelhouse):
            continue
        package_dir, extras = _requested(arg)
        wanted |= {canonicalize_name(_project(package_dir)["name"])}
        wanted |= {canonicalize_name(r.name) for _, r in in_tree_requirements(package_dir, extras)}
    for name in wanted:
        assert name in chosen, f"{command!r} does not install {name}"
        version, url = chosen[name]
        assert version == IN_TREE[name], f"{command!r}: {name} {version}, in-tree {IN_TREE[name]}"
        assert url.startswith((ROOT.as_uri(), wheelhouse.as_uri())), f"{name} from {url}"


def _requested(arg: str) -> tuple[Path, list[str]]:
    """The package folder and extras of an install argument: ``./packages/NAME[EXTRAS]`` or a
    requirement on an in-tree package by name."""
    if arg.startswith("./packages/"):
        path, _, extras = arg.partition("[")
        return ROOT / path, [e for e in extras.rstrip("]").split(",") if e]
    requirement = Requirement(arg)
    return _dir_of(canonicalize_name(requirement.name)), sorted(requirement.extras)


@pytest.mark.parametrize("package_dir", PACKAGE_DIRS, ids=lambda d: d.name)
def test_wheel_installs_from_wheelhouse_with_its_files(
    package_dir: Path, venv: Path, wheelhouse: Path, tmp_path
) -> None:
    """Each wheel installs by name from a wheelhouse holding only the in-tree wheels (no index)
    and carries every tracked file of its source tree. (That its in-tree dependencies resolve
    from the wheelhouse is checked by the README's ``--find-links dist`` lines.)"""
    name = canonicalize_name(_project(package_dir)["name"])
    target = tmp_path / "site"
    pip(venv, "install", "--no-index", "--no-deps", "--find-links", str(wheelhouse),
        "--target", str(target), name)  # fmt: skip
    tracked = subprocess.run(
        ["git", "ls-files", "src"], cwd=package_dir, capture_output=True, text=True, check=True
    ).stdout.split()
    missing = [f for f in tracked if not (target / Path(f).relative_to("src")).is_file()]
    assert not missing, f"{name}'s wheel lacks {missing}"
    wheel = next(wheelhouse.glob(f"{name.replace('-', '_')}-{IN_TREE[name]}-*.whl"))
    assert zipfile.ZipFile(wheel).testzip() is None
