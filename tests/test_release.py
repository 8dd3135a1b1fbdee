"""Every package is ready to publish on PyPI: it ships the Apache-2.0 text its pyproject declares,
its metadata is complete (project URLs, classifiers, keywords), its README renders there, and
(slow) its sdist and wheel build, pass ``twine check --strict`` and ``check-wheel-contents``, and
the wheel built from the sdist holds exactly the files of the wheel built from the tree.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))
REPO_URL = "https://github.com/vision-kernels/monorepo"
RAW_URL = "https://raw.githubusercontent.com/vision-kernels/monorepo"
# sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt, byte for byte.
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
URL_LABELS = {"Homepage", "Documentation", "Repository", "Issues", "Changelog"}
# A Markdown link or image, its target in group "target"; nested brackets in the text allowed.
MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?(?P<target>[^)\s>]+)", re.S)
MD_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(?P<target>[^\s>]+)", re.M)
HTML_TARGET = re.compile(r"<(?:img|a)\s[^>]*?(?:src|href)=\"(?P<target>[^\"]+)\"")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _project(package_dir: Path) -> dict:
    with (package_dir / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]


def _ids(package_dir: Path) -> str:
    return package_dir.name


def readme_targets(readme: Path) -> list[str]:
    """Every link and image target of ``readme``'s prose (fenced code blocks are not links)."""
    text = FENCE.sub("", readme.read_text())
    return [
        m["target"]
        for pattern in (MD_LINK, MD_REFERENCE, HTML_TARGET)
        for m in pattern.finditer(text)
    ]


def tree_path(url: str) -> Path | None:
    """The file or folder of this tree that a URL into the repository's main branch names."""
    for prefix in (f"{REPO_URL}/blob/main/", f"{REPO_URL}/tree/main/", f"{RAW_URL}/main/"):
        if url.startswith(prefix):
            return ROOT / url.removeprefix(prefix).split("#")[0]
    return None


@pytest.mark.parametrize("package_dir", PACKAGE_DIRS, ids=_ids)
def test_the_package_ships_the_apache_license_it_declares(package_dir: Path) -> None:
    project = _project(package_dir)
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    digest = hashlib.sha256((package_dir / "LICENSE").read_bytes()).hexdigest()
    assert digest == APACHE_2_SHA256, f"{package_dir.name}/LICENSE is not the Apache-2.0 text"


@pytest.mark.parametrize("package_dir", PACKAGE_DIRS, ids=_ids)
def test_the_metadata_is_complete(package_dir: Path) -> None:
    project = _project(package_dir)
    urls = project["urls"]
    assert set(urls) == URL_LABELS
    assert urls["Repository"] == REPO_URL
    assert urls["Issues"] == f"{REPO_URL}/issues"
    for label in ("Homepage", "Documentation", "Changelog"):
        path = tree_path(urls[label])
        assert path is not None and path.exists(), f"{label} = {urls[label]} is not in the tree"
        assert package_dir in (path, *path.parents), f"{label} points outside {package_dir.name}"

    classifiers = project["classifiers"]
    assert classifiers == sorted(set(classifiers), key=classifiers.index), "duplicates"
    versions = [
        c.rsplit(" :: ", 1)[1] for c in classifiers if re.fullmatch(r".*Python :: 3\.\d+", c)
    ]
    assert versions, "no Python version classifiers"
    requires = SpecifierSet(project["requires-python"])
    assert all(requires.contains(v + ".0") for v in versions), (versions, str(requires))
    lowest = min(versions, key=lambda v: int(v.split(".")[1]))
    assert requires == SpecifierSet(f">={lowest}"), (
        "requires-python and the oldest classifier differ"
    )
    minors = sorted(int(v.split(".")[1]) for v in versions)
    assert minors == list(range(minors[0], minors[-1] + 1)), f"a gap in {versions}"
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    assert any(c.startswith("Operating System :: ") for c in classifiers)
    assert any(c.startswith("Topic :: ") for c in classifiers)
    # PEP 639: a `license` expression replaces the deprecated License classifiers.
    assert not [c for c in classifiers if c.startswith("License :: ")]
    keywords = project["keywords"]
    assert len(keywords) >= 3 and len(set(keywords)) == len(keywords), keywords


@pytest.mark.parametrize("package_dir", PACKAGE_DIRS, ids=_ids)
def test_the_readme_links_resolve_on_pypi(package_dir: Path) -> None:
    """PyPI shows the README without the repository around it: a relative link or image there
    is broken, so every target is absolute (or an anchor), and those into this repository's main
    branch name a file that exists."""
    targets = readme_targets(package_dir / "README.md")
    relative = [t for t in targets if not re.match(r"(https?:|mailto:|#)", t)]
    assert not relative, f"relative links break on PyPI; use {REPO_URL}/blob/main/...: {relative}"
    missing = [t for t in targets if (path := tree_path(t)) is not None and not path.exists()]
    assert not missing, f"links to files that are not in the tree: {missing}"


def test_the_link_checker_sees_relative_links_and_images(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "See [the guide](docs/guide.md) and ![a\nplot](results/plot.png).\n"
        '<img src="docs/app.png">\n\n[ref]: CHANGELOG.md\n'
        "```\n[not a link](inside/code.md)\n```\n[web](https://example.org)\n"
    )
    assert readme_targets(readme) == [
        "docs/guide.md", "results/plot.png", "https://example.org", "CHANGELOG.md", "docs/app.png",
    ]  # fmt: skip


def _run(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _wheel_files(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as zf:
        return {name: hashlib.sha256(zf.read(name)).hexdigest() for name in zf.namelist()}


@pytest.mark.slow
@pytest.mark.parametrize("package_dir", PACKAGE_DIRS, ids=_ids)
def test_the_release_artifacts(package_dir: Path, tmp_path: Path) -> None:
    """What the release workflow builds: ``python -m build`` (the sdist, then the wheel from it),
    and a wheel from the tree to compare with; both pass twine's and check-wheel-contents'
    checks (the latter with the package's [tool.check-wheel-contents])."""
    project = _project(package_dir)
    dist, tree = tmp_path / "dist", tmp_path / "tree"
    _run(sys.executable, "-m", "build", "--outdir", str(dist), str(package_dir))
    _run(sys.executable, "-m", "build", "--wheel", "--outdir", str(tree), str(package_dir))
    dist_name = project["name"].replace("-", "_")
    stem = f"{dist_name}-{project['version']}"
    sdist, wheel = dist / f"{stem}.tar.gz", dist / f"{stem}-py3-none-any.whl"
    assert sorted(p.name for p in dist.iterdir()) == sorted([sdist.name, wheel.name])

    # The wheel built from the sdist is the wheel built from the tree, file for file.
    from_sdist, from_tree = _wheel_files(wheel), _wheel_files(tree / wheel.name)
    assert sorted(from_sdist) == sorted(from_tree)
    assert from_sdist == from_tree, [n for n in from_sdist if from_sdist[n] != from_tree[n]]

    license_text = (package_dir / "LICENSE").read_bytes()
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read(f"{stem}.dist-info/licenses/LICENSE") == license_text
        metadata = zf.read(f"{stem}.dist-info/METADATA").decode()
    with tarfile.open(sdist) as tf:
        assert tf.extractfile(f"{stem}/LICENSE").read() == license_text
    assert "License-Expression: Apache-2.0" in metadata
    assert "Description-Content-Type: text/markdown" in metadata

    # Every package-data file of the source tree is in the wheel, byte for byte (semanir's
    # bundled weights and configs among them).
    source = package_dir / "src" / dist_name
    data = [p for p in source.rglob("*") if p.is_file() and p.suffix not in {".py", ".pyc"}]
    data = [p for p in data if "__pycache__" not in p.parts]
    for path in data:
        name = path.relative_to(source.parent).as_posix()
        assert from_tree.get(name) == hashlib.sha256(path.read_bytes()).hexdigest(), name
    if project["name"] == "semanir":
        weights = [p for p in data if p.name == "model.safetensors"]
        assert len(weights) >= 4, weights

    out = _run(sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel))
    assert out.count("PASSED") == 2, out
    config = package_dir / "pyproject.toml"
    out = _run(sys.executable, "-m", "check_wheel_contents", "--config", str(config), str(wheel))
    assert out.strip().endswith(f"{wheel}: OK"), out
