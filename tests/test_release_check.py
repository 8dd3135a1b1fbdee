"""The release rehearsal (``nox -s release_check``, tools/release_check.py): the session exists
and CI runs it, and the script's pieces (pip's index configuration, pip's install report, the
``--version`` answers, the PNG check, the refusal of bad arguments) do what they say."""

from __future__ import annotations

import ast
import importlib.util
import socket
import sys
import tomllib
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("release_check", ROOT / "tools" / "release_check.py")
release_check = importlib.util.module_from_spec(SPEC)
sys.modules["release_check"] = release_check  # dataclasses look their module up there
SPEC.loader.exec_module(release_check)
Package = release_check.Package
SERVER = "http://127.0.0.1:8123/"


def _session_decorator(name: str) -> ast.Call | ast.Attribute:
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            for deco in node.decorator_list:
                target = deco.func if isinstance(deco, ast.Call) else deco
                if ast.unparse(target) == "nox.session":
                    return deco
    raise AssertionError(f"noxfile.py has no nox session {name}")


def test_the_session_exists_and_ci_runs_it() -> None:
    deco = _session_decorator("release_check")
    tags = [k.value for k in getattr(deco, "keywords", []) if k.arg == "tags"]
    # Minutes of installs: not in the default `nox -t tests` lane, but in the repo workflow.
    assert not tags, "release_check is not tagged: .ci/run would spend minutes on it"
    workflow = (ROOT / ".github" / "workflows" / "repo.yml").read_text()
    assert "python -m nox -s release_check" in workflow


def test_the_packages_are_read_from_the_pyprojects() -> None:
    found = {p.folder: p for p in release_check.packages()}
    folders = sorted(p.parent.name for p in (ROOT / "packages").glob("*/pyproject.toml"))
    assert sorted(found) == folders
    for folder, package in found.items():
        with (ROOT / "packages" / folder / "pyproject.toml").open("rb") as f:
            project = tomllib.load(f)["project"]
        assert (package.name, package.version) == (project["name"], project["version"])
    assert found["common-kernels"].script is None
    assert found["common-kernels"].module == "common_kernels"
    assert found["semanir"].script == "semanir"


@pytest.mark.parametrize(
    ("config", "index"),
    [
        ("", release_check.PIP_DEFAULT_INDEX),
        # This machine's kind: local mirrors as extra indexes only; the index is pip's default.
        (
            "global.cert='/etc/ssl/certs/ca-certificates.crt'\n"
            "global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'\n"
            "global.find-links='/opt/wheels'\n:env:.find-links='/opt/wheels'\n",
            release_check.PIP_DEFAULT_INDEX,
        ),
        ("global.index-url='https://mirror.example/simple'\n", "https://mirror.example/simple"),
        (
            "global.index-url='https://a.example/simple'\n"
            "install.index-url='https://b.example/simple'\n",
            "https://b.example/simple",
        ),
        (
            "global.index-url='https://a.example/simple'\n"
            ":env:.index-url='https://env.example/simple'\n"
            "install.index-url='https://b.example/simple'\n",
            "https://env.example/simple",
        ),
        # Another command's section does not count for `pip install`.
        ("download.index-url='https://d.example/simple'\n", release_check.PIP_DEFAULT_INDEX),
        # An empty value is no setting.
        (
            ":env:.index-url=''\nglobal.index-url='https://a.example/simple'\n",
            "https://a.example/simple",
        ),
    ],
)
def test_the_default_index_comes_from_pips_configuration(config: str, index: str) -> None:
    assert release_check.configured_index(config) == index


def test_the_install_report_names_what_did_not_come_from_the_index() -> None:
    def item(name: str, url: str) -> dict:
        return {"metadata": {"name": name}, "download_info": {"url": url}}

    report = {
        "install": [
            # pypiserver's links: /packages/..., beside /simple/.
            item("semanir", SERVER + "packages/semanir-0.4.13-py3-none-any.whl"),
            item("common_kernels", SERVER + "packages/common_kernels-0.4.11.tar.gz"),
            item("vitron", "https://pypi.example/packages/vitron-9.0-py3-none-any.whl"),
            # Same host, another port: another server.
            item("itaclip", "http://127.0.0.1:8124/packages/itaclip-0.4.2-py3-none-any.whl"),
        ]
    }
    names = ["semanir", "common-kernels", "vitron", "itaclip", "diffeat"]
    assert release_check.not_from_index(report, SERVER, names) == [
        "vitron: https://pypi.example/packages/vitron-9.0-py3-none-any.whl",
        "itaclip: http://127.0.0.1:8124/packages/itaclip-0.4.2-py3-none-any.whl",
        "diffeat: not installed by this install",
    ]
    assert release_check.not_from_index(report, SERVER.rstrip("/"), names[:2]) == []


def test_a_version_answer_must_start_with_the_name_and_version() -> None:
    package = Package("semanir", "semanir", "0.4.13", "semanir")
    answer = "semanir 0.4.13 (common-kernels 0.4.11, torch 2.14.1, Python 3.11.7)\n"
    assert release_check.version_answer(answer, package) is None
    assert release_check.version_answer("semanir 0.4.1\n", package) == (
        "semanir --version said 'semanir 0.4.1', not 'semanir 0.4.13'"
    )
    assert release_check.version_answer("", package) is not None


def test_png_size_reads_the_header(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("L", (7, 5)).save(path)
    assert release_check.png_size(path) == (7, 5)
    jpeg = tmp_path / "a.jpg"
    Image.new("RGB", (7, 5)).save(jpeg)
    with pytest.raises(ValueError, match="is not a PNG file"):
        release_check.png_size(jpeg)


def test_the_free_port_can_be_bound() -> None:
    port = release_check.free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_bad_arguments_are_refused_before_any_work(tmp_path: Path) -> None:
    work, image = tmp_path / "work", tmp_path / "01.png"
    with pytest.raises(SystemExit, match=r"--image: no file .*01\.png .*SHARED_DATA"):
        release_check.rehearse(work, tmp_path, image, tmp_path / "out.png")
    Image.new("L", (4, 4)).save(image)
    with pytest.raises(SystemExit, match=r"--torch-dir: .* holds no torch install"):
        release_check.rehearse(work, tmp_path, image, tmp_path / "out.png")
    assert not work.exists()
