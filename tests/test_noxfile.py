"""noxfile.py's installs: a package session installs the wheel just built from the tree, even
when uv's cache (kept between CI runs) holds an older build of the same version."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("nox", reason="the repo session installs nox to import noxfile.py")
pytest.importorskip("uv", reason="the repo session installs uv, as .ci/run does beside nox")

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("noxfile_under_test", ROOT / "noxfile.py")
noxfile = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(noxfile)

PROBE = "nox-refresh-probe"  # not on any index: the test's uv runs with UV_NO_INDEX anyway


class RecordingSession:
    """The part of ``nox.Session`` that ``pip_install`` uses, running commands for real."""

    def __init__(self, venv: Path) -> None:
        self.bin = str(venv / "bin")

    def run(self, *args: str, external: bool = False) -> str:
        done = subprocess.run(args, check=True, capture_output=True, text=True)
        return done.stdout


def write_wheel(folder: Path, value: int) -> Path:
    """A one-module wheel of ``PROBE`` 0.1 whose module says ``X = value`` (same file name each
    time, different contents: a rebuild of an unchanged version)."""
    module, dist_info = "nox_refresh_probe", "nox_refresh_probe-0.1.dist-info"
    files = {
        f"{module}/__init__.py": f"X = {value}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {PROBE}\nVersion: 0.1\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "nox_refresh_probe-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


@pytest.fixture
def probe_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """noxfile.py pointed at one in-tree package, ``PROBE``, whose 'build' writes the wheel."""
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    monkeypatch.setenv("UV_NO_INDEX", "1")
    monkeypatch.setattr(noxfile, "WHEELHOUSE", tmp_path / "wheels")
    monkeypatch.setattr(noxfile, "ROOT", tmp_path)  # pip_install writes its pin files here
    monkeypatch.setattr(noxfile, "PACKAGES", {"probe": {"name": PROBE, "dependencies": []}})
    return tmp_path


def install_build(tree: Path, value: int, name: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Build the probe with ``X = value``, install it into a fresh venv, return what it says."""
    venv = tree / name
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    build = lambda session, packages, wheelhouse=None: write_wheel(noxfile.WHEELHOUSE, value)  # noqa: E731
    monkeypatch.setattr(noxfile, "build_wheels", build)
    session = RecordingSession(venv)
    noxfile.install_packages(session, ["probe"])
    python = venv / "bin" / "python"
    said = subprocess.run([python, "-c", "import nox_refresh_probe as m; print(m.X)"],
                          check=True, capture_output=True, text=True)  # fmt: skip
    return int(said.stdout)


def test_a_rebuilt_wheel_of_the_same_version_is_what_installs(
    probe_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert install_build(probe_tree, 1, "first", monkeypatch) == 1
    assert install_build(probe_tree, 2, "second", monkeypatch) == 2


def test_without_the_refresh_uv_installs_its_cached_build(
    probe_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why install_packages refreshes: with uv's cache alone, the second install is stale (the
    failure a CI machine showed: tests of a new config against the previous build of diffeat)."""
    monkeypatch.setattr(noxfile, "refresh_in_tree", lambda packages: [])
    assert install_build(probe_tree, 1, "first", monkeypatch) == 1
    assert install_build(probe_tree, 2, "second", monkeypatch) == 1


def test_every_in_tree_package_installed_is_refreshed(monkeypatch: pytest.MonkeyPatch) -> None:
    """vitron[test] pulls common-kernels, semanir, itaclip, ... from the wheelhouse: each one is
    named in a --refresh-package, not only vitron."""
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(noxfile, "build_wheels", lambda *a, **k: None)
    monkeypatch.setattr(noxfile, "pip_install", lambda session, *args: calls.append(args))
    monkeypatch.setattr(noxfile, "UV", True)
    noxfile.install_packages(object(), ["vitron"], "test")
    (args,) = calls
    refreshed = {args[i + 1] for i, a in enumerate(args) if a == "--refresh-package"}
    expected = {noxfile.PACKAGES[n]["name"] for n in noxfile.in_tree_dependencies("vitron", "test")}
    assert refreshed == expected | {"vitron"}
    assert {"common-kernels", "semanir", "itaclip"} <= refreshed


def test_the_repo_session_pins_what_ci_runs() -> None:
    """The uv whose cache behaviour the tests above pin down is the one .ci/run installs."""
    ci = (ROOT / ".ci" / "run").read_text()
    for pin in noxfile.CI_PINS:
        assert f"'{pin}'" in ci, f".ci/run does not install {pin}"
