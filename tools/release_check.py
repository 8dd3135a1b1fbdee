"""A release rehearsal: every package through a package index, the way a user installs it.

Builds every package's sdist and wheel (``python -m build``, as the release workflows do),
starts a local index (pypiserver on 127.0.0.1, uploads unauthenticated, no fallback to PyPI),
uploads them with twine, and in a fresh virtual environment ``pip install semanir`` from that
index first, with the index this machine's pip normally uses (read from pip's configuration)
for the third-party packages. Then: ``semanir restore`` of a real noisy image writes an image
of the input's size; every package's distribution came from the local index (pip's install
report), and each answers ``--version`` (common-kernels: ``__version__``) with its pyproject
version. The server is stopped however the run ends.

Usage (``nox -s release_check`` runs it with build, twine and pypiserver installed)::

    python tools/release_check.py --work DIR --torch-dir DIR --image PNG --output PNG
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What pip itself falls back to when no index-url is configured anywhere.
PIP_DEFAULT_INDEX = "https://pypi.org/simple"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SERVER_START_S = 60.0


@dataclass(frozen=True)
class Package:
    """One in-tree package: its folder, distribution name, version and command (if any)."""

    folder: str
    name: str
    version: str
    script: str | None

    @property
    def module(self) -> str:
        return self.name.replace("-", "_")


def packages(root: Path = ROOT) -> list[Package]:
    """Every packages/*/pyproject.toml as a :class:`Package`, by folder name."""
    found = []
    for pyproject in sorted((root / "packages").glob("*/pyproject.toml")):
        with pyproject.open("rb") as f:
            project = tomllib.load(f)["project"]
        script = next(iter(project.get("scripts", {})), None)
        found.append(Package(pyproject.parent.name, project["name"], project["version"], script))
    return found


def configured_index(config_list: str, command: str = "install") -> str:
    """The index ``pip <command>`` uses, from the output of ``pip config list``.

    pip reads ``index-url`` from the ``global`` section, then the command's own section, then
    the ``PIP_INDEX_URL`` environment variable (``:env:``), a later one winning; with none of
    them it uses PyPI.

    Args:
        config_list: what ``python -m pip config list`` printed (``section.key='value'`` lines).
        command: the pip command whose section counts besides ``global``.
    """
    values: dict[str, str] = {}
    for line in config_list.splitlines():
        key, sep, value = line.partition("=")
        if not sep or "." not in key:
            continue
        section, _, name = key.strip().rpartition(".")
        if name == "index-url":
            values[section] = ast.literal_eval(value.strip())
    for section in (":env:", command, "global"):
        if values.get(section):
            return values[section].strip()
    return PIP_DEFAULT_INDEX


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; ValueError if ``path`` is not a PNG."""
    head = path.read_bytes()[:24]
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def version_answer(output: str, package: Package) -> str | None:
    """What is wrong with a ``--version`` answer (``NAME VERSION (...)``), or None if right."""
    words = output.split()
    if words[:2] != [package.name, package.version]:
        expected = f"{package.name} {package.version}"
        return f"{package.name} --version said {output.strip()!r}, not {expected!r}"
    return None


def not_from_index(report: dict, server_url: str, names: list[str]) -> list[str]:
    """Which of ``names`` pip's install report (``pip install --report``) did not download
    from the index server at ``server_url`` (its files lie under the server, not under
    ``/simple/``), as ``name: where`` lines (not installed at all counts too)."""
    sources = {
        item["metadata"]["name"].lower().replace("_", "-"): item["download_info"]["url"]
        for item in report["install"]
    }
    wrong = []
    for name in names:
        url = sources.get(name)
        if url is None or not url.startswith(server_url.rstrip("/") + "/"):
            wrong.append(f"{name}: {url or 'not installed by this install'}")
    return wrong


def run(*args: str | Path, env: dict[str, str] | None = None) -> str:
    """Run a command; its stdout, or RuntimeError with its output when it fails."""
    print("+", " ".join(map(str, args)), flush=True)
    done = subprocess.run(list(map(str, args)), capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


def build_all(dist: Path, selected: list[Package]) -> list[Path]:
    """sdist, then the wheel from it, of every package into ``dist``; the files made."""
    for package in selected:
        run(sys.executable, "-m", "build", "--outdir", dist, ROOT / "packages" / package.folder)
    made = sorted(dist.iterdir())
    expected = sorted(
        name
        for p in selected
        for name in (f"{p.module}-{p.version}.tar.gz", f"{p.module}-{p.version}-py3-none-any.whl")
    )
    if [p.name for p in made] != expected:
        raise RuntimeError(f"built {[p.name for p in made]}, expected {expected}")
    return made


def start_server(storage: Path, port: int, log: Path) -> subprocess.Popen:
    """pypiserver on 127.0.0.1:``port`` serving ``storage``; returns once it answers."""
    args = [
        sys.executable, "-m", "pypiserver", "run", "--host", "127.0.0.1", "--port", str(port),
        # Uploads without authentication (-a . -P .); packages it lacks are not redirected to
        # PyPI: pip must find third-party packages on its own configured index.
        "-a", ".", "-P", ".", "--disable-fallback", "--log-file", str(log), str(storage),
    ]  # fmt: skip
    print("+", " ".join(args), flush=True)
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"pypiserver exited {server.returncode} on start:\n{text[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    stop_server(server)
    raise RuntimeError(f"pypiserver did not answer on 127.0.0.1:{port} in {SERVER_START_S:.0f} s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def fresh_venv(path: Path, torch_dir: Path) -> Path:
    """A new virtual environment at ``path`` that sees the shared torch install through a
    .pth file (as the nox sessions do); its python."""
    shutil.rmtree(path, ignore_errors=True)
    run(sys.executable, "-m", "venv", path)
    python = path / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    (Path(purelib.strip()) / "_shared_torch.pth").write_text(f"{torch_dir}\n")
    return python


def pip_install(python: Path, index: str, default_index: str, report: Path, *reqs: str) -> dict:
    """``pip install reqs`` from ``index`` first, ``default_index`` (and pip's configured extra
    indexes, which pip keeps) for the rest; pip's install report."""
    run(
        python, "-m", "pip", "install", "--quiet", "--index-url", index,
        "--extra-index-url", default_index, "--report", report, *reqs,
    )  # fmt: skip
    return json.loads(report.read_text())


def rehearse(work: Path, torch_dir: Path, image: Path, output: Path) -> None:
    """Build, serve, upload, install and check every package (see the module docstring)."""
    if not image.is_file():
        raise SystemExit(f"--image: no file {image} (set SHARED_DATA to the data folder)")
    if not (torch_dir / "torch").is_dir():
        raise SystemExit(f"--torch-dir: {torch_dir} holds no torch install")
    selected = packages()
    shutil.rmtree(work, ignore_errors=True)
    dist, storage = work / "dist", work / "index"
    dist.mkdir(parents=True)
    storage.mkdir()
    built = build_all(dist, selected)

    # The index this machine's pip uses when told nothing: third-party packages come from it.
    default_index = configured_index(run(sys.executable, "-m", "pip", "config", "list"))
    port = free_port()
    server_url = f"http://127.0.0.1:{port}/"
    index = f"{server_url}simple/"
    server = start_server(storage, port, work / "pypiserver.log")
    try:
        run(
            sys.executable, "-m", "twine", "upload", "--non-interactive", "--repository-url",
            server_url, "-u", "x", "-p", "x", *built,
        )  # fmt: skip
        served = sorted(p.name for p in storage.iterdir())
        if served != [p.name for p in built]:
            raise RuntimeError(f"the index holds {served} after the upload, not {built}")

        python = fresh_venv(work / "venv", torch_dir)
        bin_dir = python.parent
        by_name = {p.name: p for p in selected}
        semanir = by_name["semanir"]
        report = pip_install(
            python, index, default_index, work / "semanir.json", f"semanir=={semanir.version}"
        )
        problems = not_from_index(report, server_url, ["semanir", "common-kernels"])
        others = [p for p in selected if p.name not in {"semanir", "common-kernels"}]
        report = pip_install(
            python, index, default_index, work / "others.json",
            *(f"{p.name}=={p.version}" for p in others),
        )  # fmt: skip
        problems += not_from_index(report, server_url, [p.name for p in others])

        output.parent.mkdir(parents=True, exist_ok=True)
        output.unlink(missing_ok=True)
        run(
            bin_dir / "semanir", "restore", image, "--add-noise", "25", "--seed", "0",
            "-o", output,
        )  # fmt: skip
        if not output.is_file():
            problems.append(f"semanir restore wrote no {output}")
        elif png_size(output) != png_size(image):
            problems.append(f"{output} is {png_size(output)}, the input {png_size(image)}")

        for package in selected:
            if package.script is None:
                code = f"import {package.module} as m; print('{package.name}', m.__version__)"
                answer = run(python, "-c", code)
            else:
                answer = run(bin_dir / package.script, "--version")
            print(answer.strip(), flush=True)
            problems += filter(None, [version_answer(answer, package)])
    finally:
        stop_server(server)
    if problems:
        raise RuntimeError("the release rehearsal failed:\n  " + "\n  ".join(problems))
    print(f"release rehearsal passed: {len(selected)} packages through {index}; {output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied)")
    parser.add_argument("--torch-dir", type=Path, required=True, help="the shared torch install")
    parser.add_argument("--image", type=Path, required=True, help="a real PNG to restore")
    parser.add_argument("--output", type=Path, required=True, help="where the restored PNG goes")
    args = parser.parse_args(argv)
    # The fresh environment's commands must not inherit the nox session's environment.
    os.environ.pop("VIRTUAL_ENV", None)
    rehearse(args.work, args.torch_dir, args.image, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
