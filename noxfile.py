"""Build and test every package under packages/ in its own environment.

Sessions (``nox -l``):
  browser     Debian's Chromium for the packages' browser tests of their web pages: installed
              with ``apt-get install -y chromium`` when missing (as root with apt); otherwise
              says that those tests will skip. Tag ``tests``, runs first.
  <package>   build the package's wheel (and the in-tree wheels it depends on), install it with
              its declared dependencies and ``test`` extra, run its tests; tag ``tests``.
  repo        repository invariants (layout, in-tree dependency ranges); tag ``tests``.
  comfyui     the ComfyUI node pack (``comfyui/``) in a real ComfyUI 0.3.64 (the vendored
              source): its requirements, the pack's declared dependencies, ``main.py --cpu``
              driven over HTTP and in Chromium; tag ``tests``.
  slow        every package's ``slow``-marked tests (minutes each), in one environment; not
              tagged ``tests``: the nightly job of ``repo.yml`` runs it.
  gpu         every package's ``gpu``-marked tests with real Triton compilation (CUDA runners);
              ``nox -s gpu -- packages/PKG/tests`` runs one package's.
  gpu_report  the GPU checks in resumable pieces of a few minutes, every output in one folder
              (``tools/gpu_report.py``; offline GPU machines run that script directly).
  gpu_wheelhouse  the wheels an offline GPU machine lacks, into ``gpu-wheelhouse/``.
  docs        the documentation site: strict build, every page checked in Chromium.
  lint        ruff check and ruff format --check.
  bench       every package's benchmarks (``nox -s bench -- --quick`` for a small run).
  build       every package's wheel into ``dist/`` (a wheelhouse: ``pip install --find-links
              dist semanir`` installs from it without the in-tree packages being on PyPI).
  demo        the repository's main job (semanir restores a noisy Set12 image; SHARED_DATA
              overrides the ../shared/data location).
  release_check  a release rehearsal (``tools/release_check.py``): every package's sdist and
              wheel uploaded to a local pypiserver, ``pip install semanir`` (and the others)
              from it into a fresh environment, ``semanir restore`` of a Set12 image, every
              ``--version``. Not tagged ``tests`` (minutes of installs): the ``repo.yml``
              workflow runs it.

torch is large (several GB) and identical for every package, so it is installed once into
``.nox/_torch-<version>`` and made visible to each session through a ``.pth`` file; everything
else a package needs comes from its own declared dependencies. Installs go through uv when it
is installed beside nox (``.ci/run`` and the workflows install it), otherwise through pip.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES_DIR = ROOT / "packages"
TORCH_PINS = ("torch==2.14.1",)
# torchvision's build for that torch: a newer one would fail to load its operators.
TORCH_COMPANIONS = ("torchvision==0.29.1",)
SHARED_TORCH = ROOT / ".nox" / "_torch-2.14.1"
WHEELHOUSE = ROOT / ".nox" / "_wheels"
# What .ci/run installs beside the system Python to run the sessions (kept equal by a test).
CI_PINS = ("nox==2026.10.20", "uv==0.13.9")
CHROMIUM = "/usr/bin/chromium"  # Debian's; the browser tests drive it through Playwright

TIMINGS = ROOT / ".nox" / "timings.jsonl"  # one line per session run: .ci/run prints them

nox.options.default_venv_backend = "venv"
# uv installs a session's dependencies in seconds where pip takes minutes (most of a package
# session's setup); without uv beside nox the sessions install with pip, as before.
UV = importlib.util.find_spec("uv") is not None
nox.options.reuse_existing_virtualenvs = False


def timed(run: Callable[[nox.Session], None]) -> Callable[[nox.Session], None]:
    """Append the session's name, wall time and outcome to :data:`TIMINGS` when it ends."""

    @functools.wraps(run)
    def wrapper(session: nox.Session) -> None:
        start, outcome = time.monotonic(), "failed"
        try:
            run(session)
            outcome = "passed"
        except BaseException as error:  # session.skip() ends a session by an exception too
            outcome = "skipped" if type(error).__name__ == "_SessionSkip" else "failed"
            raise
        finally:
            TIMINGS.parent.mkdir(exist_ok=True)
            with TIMINGS.open("a") as f:
                record = {"session": session.name, "seconds": time.monotonic() - start}
                f.write(json.dumps({**record, "outcome": outcome}) + "\n")

    return wrapper


def discover_packages() -> dict[str, dict]:
    """Package directory name -> its [project] table, for every packages/*/pyproject.toml."""
    found = {}
    for pyproject in sorted(PACKAGES_DIR.glob("*/pyproject.toml")):
        with pyproject.open("rb") as f:
            found[pyproject.parent.name] = tomllib.load(f)["project"]
    return found


PACKAGES = discover_packages()


def in_tree_dependencies(package: str, extra: str | None = None) -> list[str]:
    """Names of the in-tree packages ``package`` (with ``extra``) needs, transitively, deps first.

    In-tree packages named only in an extra (vitron's specialists in its ``test`` extra) count
    too: their wheels must be in the wheelhouse before ``pip install package[extra]``.
    """
    order: list[str] = []

    def visit(name: str, extras: tuple[str, ...] = ()) -> None:
        project = PACKAGES[name]
        requirements = list(project.get("dependencies", []))
        for group in extras:
            requirements += project.get("optional-dependencies", {}).get(group, [])
        for requirement in requirements:
            dep = _requirement_name(requirement)
            if dep in PACKAGES and dep not in order:
                visit(dep)
                order.append(dep)

    visit(package, (extra,) if extra else ())
    return order


def _requirement_name(requirement: str) -> str:
    for sep in "<>=!~[; ":
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower().replace("_", "-")


def share_torch(session: nox.Session) -> None:
    """Install torch once into a shared folder and expose it to this session via a .pth file."""
    if not (SHARED_TORCH / "torch").is_dir():
        tmp = SHARED_TORCH.with_suffix(".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        session.run("python", "-m", "pip", "install", "--quiet", "--target", str(tmp), *TORCH_PINS)
        tmp.rename(SHARED_TORCH)
    purelib = session.run(
        "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", silent=True
    ).strip()
    (Path(purelib) / "_shared_torch.pth").write_text(f"{SHARED_TORCH}\n")


def uv(session: nox.Session, *args: str) -> None:
    """Run uv from nox's own interpreter (it need not be on PATH)."""
    session.run(sys.executable, "-m", "uv", *args, external=True)


def pip_install(session: nox.Session, *args: str) -> None:
    """Install requirements into the session's environment, with uv when nox has it.

    torch is already visible through the shared folder's .pth; pip sees it there, uv does not,
    so uv is told to leave torch out (an override whose marker never holds) and to take the
    torchvision built for it.
    """
    if not UV:
        session.run("python", "-m", "pip", "install", "--quiet", *args)
        return
    pins = ROOT / ".nox" / "_uv"
    pins.mkdir(parents=True, exist_ok=True)
    (pins / "overrides.txt").write_text("torch; sys_platform == 'never'\n")
    (pins / "constraints.txt").write_text("\n".join(TORCH_COMPANIONS) + "\n")
    python = str(Path(session.bin) / "python")
    uv(session, "pip", "install", "--quiet", "--python", python,
       "--overrides", str(pins / "overrides.txt"), "--constraints", str(pins / "constraints.txt"),
       *args)  # fmt: skip


def build_wheels(session: nox.Session, packages: list[str], wheelhouse: Path = WHEELHOUSE) -> None:
    """Build the wheels of ``packages`` into ``wheelhouse`` (replacing older builds)."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    for name in packages:
        dist_name = PACKAGES[name]["name"].replace("-", "_")
        for old in wheelhouse.glob(f"{dist_name}-*.whl"):
            old.unlink()
        source = str(PACKAGES_DIR / name)
        if UV:
            uv(session, "build", "--quiet", "--wheel", "--out-dir", str(wheelhouse), source)
        else:
            session.run("python", "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "--wheel-dir", str(wheelhouse), source)  # fmt: skip


def install_packages(session: nox.Session, packages: list[str], extra: str | None = None) -> None:
    """Install the built wheels by name; in-tree dependencies resolve from the wheelhouse."""
    deps = [dep for name in packages for dep in in_tree_dependencies(name, extra)]
    deps = [dep for dep in dict.fromkeys(deps) if dep not in packages]
    build_wheels(session, deps)
    build_wheels(session, packages)
    suffix = f"[{extra}]" if extra else ""
    requirements = [f"{PACKAGES[name]['name']}{suffix}" for name in packages]
    pip_install(session, *refresh_in_tree(deps + packages), "--find-links", str(WHEELHOUSE),
                *requirements)  # fmt: skip


def refresh_in_tree(packages: list[str]) -> list[str]:
    """uv's ``--refresh-package`` for each in-tree package: uv's cache keys a find-links wheel
    by its file name, so a rebuilt wheel of an unchanged version would install the cached,
    older build (pip reads the file each time, so it needs nothing)."""
    if not UV:
        return []
    return [arg for name in packages for arg in ("--refresh-package", PACKAGES[name]["name"])]


def cuda_available(session: nox.Session) -> bool:
    out = session.run("python", "-c", "import torch; print(torch.cuda.is_available())", silent=True)
    return out.strip().endswith("True")


def test_env(session: nox.Session) -> dict[str, str]:
    return {} if cuda_available(session) else {"TRITON_INTERPRET": "1"}


@nox.session(venv_backend="none", tags=["tests"])
@timed
def browser(session: nox.Session) -> None:
    """Debian's Chromium for the browser tests (``apt-get install -y chromium`` when missing)."""
    chromium = os.environ.get("CHROMIUM", CHROMIUM)
    if shutil.which(chromium):
        session.log(f"Chromium for the browser tests: {chromium}")
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        session.skip(
            f"no Chromium at {chromium} and no way to install it here (needs root and apt-get): "
            "the packages' browser tests will skip; install it with: apt-get install -y chromium"
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-q", external=True, env=env)
    session.run("apt-get", "install", "-y", "-q", "chromium", external=True, env=env)
    if not shutil.which(chromium):
        session.error(f"apt-get installed chromium, but there is still none at {chromium}")


# Two workers, each test file on one (module fixtures built once, a file's tests in order), each
# worker and the CLIs it starts on one torch thread: two workers of two OpenMP threads each on
# the 2-core CI machine spin against each other (pixelsmith's suite: 258 s serial, 820 s so).
# common-kernels keeps the machine's threads: its kernels' parallel loops are under test.
# `-n 0` in posargs runs serially.
XDIST = ("-n", "2", "--dist", "loadfile")


def one_thread_per_worker(package: str) -> dict[str, str]:
    return {} if package == "common-kernels" else {"OMP_NUM_THREADS": "1"}


def make_test_session(package: str) -> None:
    @nox.session(name=package, tags=["tests"])
    @timed
    def run_tests(session: nox.Session) -> None:
        share_torch(session)
        install_packages(session, [package], "test")
        session.run(
            "python", "-m", "pytest", str(PACKAGES_DIR / package / "tests"),
            # --durations: the slowest tests in every CI log, against the 30-minute budget
            "-m", "not gpu", "-p", "no:cacheprovider", "--durations=15", *XDIST, *session.posargs,
            env={**test_env(session), **one_thread_per_worker(package)},
        )  # fmt: skip

    run_tests.__doc__ = f"Build, install and test {PACKAGES[package]['name']}."


for _package in PACKAGES:
    make_test_session(_package)


@nox.session(tags=["tests"])
@timed
def repo(session: nox.Session) -> None:
    """Repository invariants: package layout, in-tree dependency ranges, the import graph (with
    common-kernels' test helpers, ``common_kernels.runtime.testing``)."""
    share_torch(session)
    install_packages(session, ["common-kernels"])
    # check-jsonschema: its vendored GitHub workflow schema; pyyaml: reading the workflows;
    # nox and uv at .ci/run's pins: tests/test_noxfile.py runs this file's installs.
    pip_install(session, "pytest>=8", "pytest-xdist>=3.5", "packaging>=24", "numpy>=1.24",
                "pillow>=10", "check-jsonschema>=0.29", "pyyaml>=6", *CI_PINS)  # fmt: skip
    session.run(
        "python", "-m", "pytest", str(ROOT / "tests"), "-p", "no:cacheprovider", "--durations=15",
        *XDIST, *session.posargs,
    )  # fmt: skip


# ComfyUI's source, vendored beside the repository (GPL-3.0; never copied into it)
COMFYUI_TARBALL = ROOT.parent / "shared" / "vendor" / "ComfyUI-v0.3.64-a125cd8.tar.gz"
COMFYUI_PACK = ROOT / "comfyui"
# ComfyUI's audio nodes alone need torchaudio (a build for this torch would be another download)
COMFYUI_LEFT_OUT = ("torchaudio",)


def comfyui_requirements(tarball: Path, target: Path) -> Path:
    """ComfyUI's ``requirements.txt`` from its source tarball, without :data:`COMFYUI_LEFT_OUT`,
    written to ``target``."""
    import tarfile

    with tarfile.open(tarball) as archive:
        text = archive.extractfile("ComfyUI/requirements.txt").read().decode()
    kept = [line for line in text.splitlines() if _requirement_name(line) not in COMFYUI_LEFT_OUT]
    target.write_text("\n".join(kept) + "\n")
    return target


@nox.session(tags=["tests"])
@timed
def comfyui(session: nox.Session) -> None:
    """The ComfyUI node pack in a real ComfyUI: ComfyUI's requirements and the pack's declared
    dependencies (the in-tree wheels by name), then ``comfyui/tests`` (they unpack ComfyUI, start
    ``main.py --cpu`` with the pack and stop it by its PID)."""
    tarball = Path(os.environ.get("COMFYUI_TARBALL", COMFYUI_TARBALL))
    if not tarball.is_file():
        session.skip(f"no ComfyUI source at {tarball} (set COMFYUI_TARBALL)")
    share_torch(session)
    pack = tomllib.loads((COMFYUI_PACK / "pyproject.toml").read_text())["project"]
    wanted = {_requirement_name(requirement) for requirement in pack["dependencies"]}
    names = [name for name, info in PACKAGES.items() if info["name"] in wanted]
    build_wheels(session, names)
    requirements = comfyui_requirements(tarball, Path(session.create_tmp()) / "comfyui.txt")
    pip_install(session, *refresh_in_tree(names), "--find-links", str(WHEELHOUSE),
                "-r", str(requirements), *pack["dependencies"],
                *pack["optional-dependencies"]["test"])  # fmt: skip
    session.run(
        "python", "-m", "pytest", str(COMFYUI_PACK / "tests"), "-p", "no:cacheprovider",
        "--durations=15", *session.posargs,
        env={**test_env(session), "COMFYUI_TARBALL": str(tarball)},
    )  # fmt: skip


@nox.session
@timed
def slow(session: nox.Session) -> None:
    """Every package's and the repository's slow-marked tests (RUN_SLOW=1), all packages
    installed in one env. Not tagged ``tests`` (about 35 minutes on a 2-core machine: it holds
    the minute-long tests, README blocks and per-line install resolutions kept out of the
    default lane's 30 minutes):
    ``repo.yml`` runs it nightly, ``nox -s slow`` here."""
    share_torch(session)
    install_packages(session, list(PACKAGES), "test")
    # tests/test_release.py: build the sdists and wheels, check them as PyPI would;
    # check-jsonschema, pyyaml: tests/test_workflows.py is collected here too.
    pip_install(session, "build>=1.2", "twine>=6.1", "check-wheel-contents>=0.6",
                "check-jsonschema>=0.29", "pyyaml>=6")  # fmt: skip
    # vitron's GGUF planner on llama.cpp (tests/test_planner_llamacpp.py): llama-cpp-python has
    # no wheel for this platform, and its source build (about 6 minutes) stays out of the
    # default lane, which keeps the transformers path
    pip_install(session, "llama-cpp-python>=0.3.36")
    # the packages' [ray] extra: the --ray batch tests on a local Ray cluster
    pip_install(session, "ray[data]>=2.60,<3")
    tests = [str(PACKAGES_DIR / name / "tests") for name in PACKAGES] + [str(ROOT / "tests")]
    session.run(
        "python", "-m", "pytest", *tests, "-m", "slow and not gpu", "-p", "no:cacheprovider",
        env={**test_env(session), "RUN_SLOW": "1"},
    )  # fmt: skip


@nox.session
@timed
def gpu(session: nox.Session) -> None:
    """Every package's gpu-marked tests, compiling the Triton kernels for CUDA.

    ``nox -s gpu -- packages/semanir/tests`` runs only the tests named after ``--`` (paths and
    pytest options; a package's GPU job in .github/workflows runs its own tests this way).
    """
    share_torch(session)
    if not cuda_available(session):
        session.skip("no CUDA device on this machine")
    install_packages(session, list(PACKAGES), "test")
    tests = session.posargs or [str(PACKAGES_DIR / name / "tests") for name in PACKAGES]
    session.run("python", "-m", "pytest", *tests, "-m", "gpu", "-p", "no:cacheprovider")


@nox.session
@timed
def gpu_report(session: nox.Session) -> None:
    """The GPU checks on a machine with network: ``nox -s gpu_report -- [--out DIR] [PIECE ...]``.

    Installs every package with its ``test`` extra from the index, then runs
    ``tools/gpu_report.py run --installed`` (pieces ``tests``, ``kernels``, ``semanir``, each
    under its own time limit, resumable; every output in ``outputs/gpu-report`` by default). On
    a GPU machine without network, run ``python3 tools/gpu_report.py run`` there instead, with
    the wheelhouse of ``nox -s gpu_wheelhouse`` beside the tree (README, "GPU").
    """
    share_torch(session)
    if not cuda_available(session):
        session.skip("no CUDA device on this machine")
    install_packages(session, list(PACKAGES), "test")
    session.run("python", str(ROOT / "tools" / "gpu_report.py"), "run", "--installed",
                *session.posargs)  # fmt: skip


@nox.session(venv_backend="none")
@timed
def gpu_wheelhouse(session: nox.Session) -> None:
    """The wheels an offline GPU machine lacks, for its Python 3.12 on x86-64 Linux, into
    ``gpu-wheelhouse/`` (``pip download``; nothing of torch's stack; at most 40 MiB)."""
    session.run("python3", str(ROOT / "tools" / "gpu_report.py"), "wheelhouse", *session.posargs)


@nox.session
@timed
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository."""
    pip_install(session, "ruff==0.17.6")
    session.run("ruff", "check", str(ROOT))
    session.run("ruff", "format", "--check", str(ROOT))


@nox.session
@timed
def docs(session: nox.Session) -> None:
    """The documentation site (``tools/docs_site.py``): the strict build (a broken link, anchor
    or reference fails), every page checked in Chromium, the site's tests. Not tagged ``tests``
    (minutes of building and browsing): the ``docs.yml`` workflow runs it."""
    share_torch(session)
    install_packages(session, list(PACKAGES))
    pip_install(session, "-r", str(ROOT / "tools" / "docs-requirements.txt"), "pytest>=8")
    session.run("python", str(ROOT / "tools" / "docs_site.py"), "build")
    session.run("python", str(ROOT / "tools" / "docs_site.py"), "check")
    session.run("python", "-m", "pytest", str(ROOT / "tests" / "test_docs_site.py"),
                "-p", "no:cacheprovider", env={"RUN_SLOW": "1"})  # fmt: skip


@nox.session
@timed
def bench(session: nox.Session) -> None:
    """Run every package's benchmarks/run.py; pass ``-- --quick`` for a small run."""
    share_torch(session)
    with_bench = [
        name for name in PACKAGES if (PACKAGES_DIR / name / "benchmarks" / "run.py").exists()
    ]
    install_packages(session, with_bench, "bench")
    for name in with_bench:
        session.run("python", str(PACKAGES_DIR / name / "benchmarks" / "run.py"), *session.posargs)


@nox.session
@timed
def build(session: nox.Session) -> None:
    """Every package's wheel into ``dist/``: ``pip install --find-links dist PACKAGE`` then
    installs any package with its in-tree dependencies from there and the rest from PyPI."""
    build_wheels(session, list(PACKAGES), ROOT / "dist")
    session.log(f"wheels in {ROOT / 'dist'}: pip install --find-links dist PACKAGE")


@nox.session
@timed
def demo(session: nox.Session) -> None:
    """The main job: add noise to a Set12 image, restore it with semanir's bundled weights."""
    share_torch(session)
    install_packages(session, ["semanir"])
    data = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
    out = ROOT / "outputs" / "demo"
    session.run(
        "semanir", "restore", str(data / "set12" / "05.png"), "--add-noise", "25", "--seed", "0",
        "--save-noisy", "-o", str(out / "05_restored.png"),
    )  # fmt: skip
    session.log(f"noisy input and restored image written to {out}")


@nox.session
@timed
def release_check(session: nox.Session) -> None:
    """A release rehearsal: build, upload to a local index, ``pip install semanir`` from it into
    a fresh environment, restore a real image, check every package's ``--version``."""
    share_torch(session)  # the fresh environment sees this torch too, through a .pth
    pip_install(session, "build>=1.2", "twine>=6.1", "pypiserver>=2.3")
    data = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
    session.run(
        "python", str(ROOT / "tools" / "release_check.py"),
        "--work", str(ROOT / ".nox" / "_release_check"), "--torch-dir", str(SHARED_TORCH),
        "--image", str(data / "set12" / "01.png"),
        "--output", str(ROOT / "outputs" / "release_check" / "01_restored.png"),
    )  # fmt: skip
