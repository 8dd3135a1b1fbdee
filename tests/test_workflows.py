"""The GitHub Actions workflows: valid against GitHub's workflow schema (check-jsonschema's
vendored copy, offline), generated from the pyprojects by tools/workflows.py and current, one CI
and one release workflow per package, naming only nox sessions that exist, triggered by the
package's in-tree dependencies, and releasing on a tag that names the pyproject's version."""

from __future__ import annotations

import ast
import copy
import fnmatch
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
PACKAGE_DIRS = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))
PACKAGES = [d.name for d in PACKAGE_DIRS]
SPEC = importlib.util.spec_from_file_location("workflows", ROOT / "tools" / "workflows.py")
generator = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(generator)


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans only: PyYAML (YAML 1.1) reads the key ``on`` as True."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|false)$"), list("tf"))


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_Loader)


def _project(package: str) -> dict:
    with (ROOT / "packages" / package / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]


def steps_run(workflow: dict) -> list[str]:
    return [s["run"] for job in workflow["jobs"].values() for s in job["steps"] if "run" in s]


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    import check_jsonschema

    schema_file = (
        Path(check_jsonschema.__file__).parent / "builtin_schemas/vendor/github-workflows.json"
    )
    schema = json.loads(schema_file.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def nox_sessions() -> set[str]:
    """The sessions noxfile.py defines: each ``@nox.session`` function by its name, and the
    per-package sessions (``@nox.session(name=package)`` in a loop) by package name."""
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            call = deco if isinstance(deco, ast.Call) else None
            target = call.func if call else deco
            if ast.unparse(target) != "nox.session":
                continue
            name = next((k.value for k in (call.keywords if call else []) if k.arg == "name"), None)
            if name is None:
                found.add(node.name)
            elif isinstance(name, ast.Constant):
                found.add(name.value)
            else:  # the per-package sessions, named by the loop over PACKAGES
                found.update(PACKAGES)
    return found


def in_tree_dependencies(package: str) -> set[str]:
    """Independently of the generator: every in-tree package reachable through dependencies
    and extras."""
    names = {_project(p)["name"]: p for p in PACKAGES}
    found, todo = set(), [package]
    while todo:
        project = _project(todo.pop())
        extras = project.get("optional-dependencies", {}).values()
        for text in [*project.get("dependencies", []), *(r for group in extras for r in group)]:
            dep = names.get(Requirement(text).name.lower().replace("_", "-"))
            if dep and dep != package and dep not in found:
                found.add(dep)
                todo.append(dep)
    return found


def test_the_workflows_are_what_the_generator_writes() -> None:
    stale = [
        p.name
        for p, text in generator.expected().items()
        if not p.exists() or p.read_text() != text
    ]
    assert not stale, f"run python tools/workflows.py: {stale} are out of date"


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.y*ml")), ids=lambda p: p.name)
def test_the_workflow_is_valid_for_github(path: Path, validator) -> None:
    errors = [e.message for e in validator.iter_errors(load(path))]
    assert not errors, errors


def test_the_schema_refuses_a_broken_workflow(validator) -> None:
    """The check has teeth: a misspelt key and a job without runs-on are errors."""
    workflow = copy.deepcopy(load(WORKFLOWS / "semanir.yml"))
    workflow["jobs"]["lint"]["runs_on"] = workflow["jobs"]["lint"].pop("runs-on")
    assert list(validator.iter_errors(workflow))
    assert not list(validator.iter_errors(load(WORKFLOWS / "semanir.yml")))


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.y*ml")), ids=lambda p: p.name)
def test_every_nox_session_named_exists(path: Path) -> None:
    sessions = nox_sessions()
    assert {"lint", "gpu", "repo", "slow", *PACKAGES} <= sessions
    named = [m for run in steps_run(load(path)) for m in re.findall(r"nox -s (\S+)", run)]
    assert set(named) <= sessions, f"{path.name} names sessions noxfile.py lacks"


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.y*ml")), ids=lambda p: p.name)
def test_actions_are_pinned_by_major_version(path: Path) -> None:
    workflow = load(path)
    uses = [s["uses"] for job in workflow["jobs"].values() for s in job["steps"] if "uses" in s]
    loose = [u for u in uses if not re.fullmatch(r"[\w.-]+/[\w.-]+@(release/)?v\d+", u)]
    assert not loose, loose


@pytest.mark.parametrize("package", PACKAGES)
def test_the_package_workflow(package: str) -> None:
    workflow = load(WORKFLOWS / f"{package}.yml")
    deps = in_tree_dependencies(package)
    assert "common-kernels" in deps or package == "common-kernels"
    if package == "vitron":  # its extras name every other package
        assert deps == set(PACKAGES) - {"vitron"}
    for event in ("push", "pull_request"):
        paths = workflow["on"][event]["paths"]
        for dep in {package, *deps}:
            assert f"packages/{dep}/**" in paths, f"{event}: {dep} changes do not run {package}"
    jobs = workflow["jobs"]
    assert set(jobs) == {"test", "gpu", "lint"}

    versions = jobs["test"]["strategy"]["matrix"]["python-version"]
    declared = [
        c.rsplit(" :: ", 1)[1]
        for c in _project(package)["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert versions == declared and len(versions) >= 2
    assert jobs["test"]["runs-on"] == "ubuntu-latest"
    assert f"python -m nox -s {package}" in steps_run({"jobs": {"t": jobs["test"]}})

    assert {"self-hosted", "gpu"} <= set(jobs["gpu"]["runs-on"])
    gpu_runs = steps_run({"jobs": {"g": jobs["gpu"]}})
    assert f"python3 -m nox -s gpu -- packages/{package}/tests" in gpu_runs
    assert (ROOT / "packages" / package / "tests").is_dir()
    assert "python -m nox -s lint" in steps_run({"jobs": {"l": jobs["lint"]}})


@pytest.mark.parametrize("package", PACKAGES)
def test_the_release_workflow(package: str) -> None:
    project = _project(package)
    workflow = load(WORKFLOWS / f"release-{package}.yml")
    assert set(workflow["on"]) == {"push"}
    (pattern,) = workflow["on"]["push"]["tags"]
    assert pattern == f"{project['name']}-v*"
    assert fnmatch.fnmatchcase(f"{project['name']}-v{project['version']}", pattern)
    others = [_project(p)["name"] for p in PACKAGES if p != package]
    assert not [n for n in others if fnmatch.fnmatchcase(f"{n}-v1.0.0", pattern)]

    runs = steps_run({"jobs": {"b": workflow["jobs"]["build"]}})
    assert f"python -m build --outdir dist packages/{package}" in runs
    assert "python -m twine check --strict dist/*" in runs
    publish = workflow["jobs"]["publish"]
    assert publish["needs"] == "build"
    assert publish["permissions"] == {"id-token": "write"}
    assert publish["environment"]["name"] == "pypi"
    assert [s["uses"] for s in publish["steps"]][-1] == "pypa/gh-action-pypi-publish@release/v1"
    assert workflow["permissions"] == {"contents": "read"}  # only publish gets a token


@pytest.mark.parametrize("package", ["semanir", "common-kernels"])
def test_the_release_refuses_a_tag_that_is_not_the_version(package: str, tmp_path: Path) -> None:
    """The workflow's tag step, run as a shell script: the pyproject's version passes, another
    version and another package's tag fail, naming both."""
    workflow = load(WORKFLOWS / f"release-{package}.yml")
    (step,) = [s for s in workflow["jobs"]["build"]["steps"] if "tag" in s.get("name", "")]
    python = tmp_path / "python"
    python.symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    project = _project(package)

    def run(tag: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-e", "-c", step["run"]], cwd=ROOT, env={**env, "GITHUB_REF_NAME": tag},
            capture_output=True, text=True,
        )  # fmt: skip

    assert run(f"{project['name']}-v{project['version']}").returncode == 0
    for tag in (f"{project['name']}-v0.0.1", f"vitron-v{project['version']}"):
        done = run(tag)
        assert done.returncode == 1
        assert f"tag {tag} does not match {project['name']} {project['version']}" in done.stdout
