"""The GPU checks on a machine without network, with that machine's own torch.

On a machine with network (here), gather the wheels an offline GPU machine lacks::

    python3 tools/gpu_report.py wheelhouse            # -> gpu-wheelhouse/ (nox -s gpu_wheelhouse)

Copy the tree with ``gpu-wheelhouse/`` beside its packages to the GPU machine, then there::

    python3 tools/gpu_report.py run                   # -> outputs/gpu-report/ and its .tar.gz
    python3 tools/gpu_report.py install               # only the environment (.gpu-env/bin/...)

``training-data FOLDER...`` copies image folders as lossless WebP into ``.gpu-data/`` (for
``tools/gpu_one_call.sh``, which also trains SemanIR's GPU recipe in the same call).

``run`` makes a virtual environment (``.gpu-env``) that sees the machine's own packages (torch
and the rest of its stack through a ``.pth`` file), installs every package of this tree into it
without build isolation and without an index (the missing dependencies from the wheelhouse),
then runs the pieces, each in its own process under its own time limit:

  tests    the ``gpu``-marked tests of every package (JUnit XML and log)
  kernels  common-kernels' ``--device cuda --quick`` benchmark (JSON + table)
  semanir  SemanIR's ``--device cuda --quick`` model benchmark (JSON + table)

A piece that fails or runs out of time is recorded and the next one runs; a finished piece is
skipped when the command is run again, and an interrupted benchmark resumes from its journal.
Every output lands in one folder with a ``summary.md``, and the folder is packed into one
``.tar.gz`` beside it to bring back. Without a CUDA device, ``run`` installs everything, writes
a summary saying so, and exits with status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import venv
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES_DIR = ROOT / "packages"
DEFAULT_WHEELHOUSE = ROOT / "gpu-wheelhouse"
DEFAULT_OUT = ROOT / "outputs" / "gpu-report"
DEFAULT_ENV = ROOT / ".gpu-env"
WHEELHOUSE_LIMIT_BYTES = 40 * 2**20

# What the offline GPU machines lack among this tree's dependencies (their image, read on
# 2026-11-17, has torch 2.11, triton, transformers 5, lightning, peft, accelerate, timm,
# safetensors and the scientific stack). Pinned so that the wheelhouse is the same wherever it
# is built; nothing of torch's stack.
MISSING_ON_GPU_MACHINE = (
    "diffusers==0.42.1",  # diffeat, pixelsmith, vitron's specialists
    "importlib-metadata==8.7.0",  # diffusers
    "open-clip-torch==3.3.0",  # itaclip
    "ftfy==6.3.1",  # open_clip's text cleaning
    "wcwidth==0.2.13",  # ftfy (the last pure-Python release: 35 kB instead of 0.8 MB)
    "torchdata==0.11.0",  # semanir's resumable loaders, vitron's training
    "jsonargparse==4.53.0",  # semanir fit (LightningCLI), with [signatures]:
    "docstring-parser==0.18.0",
    "typeshed-client==2.15.0",
    "imagecodecs==2025.8.2",  # common-kernels[images]: 16-bit PNGs (the smallest cp312 wheel)
    "hatchling==1.33.0",  # the packages' build backend, installed since builds run without
    "tomlkit==0.13.3",  # isolation there
    "trove-classifiers==2026.9.21.13",
)
# What this tree uses of the GPU machines' image besides torch and torchvision (names as that
# list gives them): a stand-in machine installs these (tests/test_gpu_report.py).
PRESENT_ON_GPU_MACHINE = (
    "accelerate", "einops", "filelock", "huggingface-hub", "lightning", "matplotlib", "ninja",
    "numpy", "packaging", "pathspec", "peft", "pillow", "pluggy", "protobuf", "psutil", "pytest",
    "pyyaml", "regex", "requests", "safetensors", "scikit-image", "sentencepiece", "tifffile",
    "timm", "tokenizers", "torchmetrics", "tqdm", "transformers", "typing-extensions", "urllib3",
    "zipp",
)  # fmt: skip
# The GPU machines' python and platform (Python 3.12 on x86-64 Linux, glibc 2.35 or later).
GPU_MACHINE_PYTHON = "3.12"
GPU_MACHINE_PLATFORMS = (
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
# The in-tree packages in dependency order; vitron with the extras its GPU tests use.
INSTALL_ORDER = (
    "common-kernels",
    "semanir",
    "itaclip",
    "pixelsmith",
    "diffeat",
    "vitron[specialists,highres,features,train,open-clip]",
)


@dataclass(frozen=True)
class Piece:
    """One resumable part of the report.

    Args:
        name: what the summary and the command line call it.
        limit_s: wall-clock seconds before the piece is stopped (its process group killed).
        done_file: the output, relative to the report folder, whose presence marks it finished.
    """

    name: str
    limit_s: int
    done_file: str


PIECES = (
    Piece("tests", 180, "gpu-lane.xml"),
    Piece("kernels", 120, "common-kernels/quick-cuda.json"),
    Piece("semanir", 120, "semanir/quick-cuda.json"),
)


@dataclass
class Outcome:
    """What a piece did: ``status`` is passed, failed, timed out, or done earlier."""

    piece: str
    status: str
    seconds: float
    returncode: int | None
    detail: str = ""


def tree_version(package: str) -> str:
    """The version ``packages/<package>/pyproject.toml`` declares."""
    import tomllib

    with (PACKAGES_DIR / package / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["version"]


def build_wheelhouse(folder: Path, *, this_machine: bool = False) -> list[Path]:
    """Download the wheels of :data:`MISSING_ON_GPU_MACHINE` into ``folder`` (needs an index).

    Args:
        folder: where the wheels go (created; wheels of other versions there are removed so
            that pip sees one version of each).
        this_machine: download for this interpreter and platform instead of the GPU machines'
            (to stand one in for them here).
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = []
    if not this_machine:
        target = ["--python-version", GPU_MACHINE_PYTHON, "--implementation", "cp"]
        for platform in GPU_MACHINE_PLATFORMS:
            target += ["--platform", platform]
    for old in folder.glob("*.whl"):
        old.unlink()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            *target,
            "--dest",
            str(folder),
            *MISSING_ON_GPU_MACHINE,
        ],
        check=True,
    )
    wheels = sorted(folder.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    if size > WHEELHOUSE_LIMIT_BYTES:
        raise SystemExit(
            f"gpu_report: the wheelhouse holds {size / 2**20:.1f} MiB, more than its "
            f"{WHEELHOUSE_LIMIT_BYTES / 2**20:.0f} MiB limit (it travels with the tree)"
        )
    return wheels


def webp_copy(sources: Sequence[Path], to: Path) -> tuple[int, int]:
    """Each 8-bit image of each source as a lossless WebP in ``to/<folder name>/``.

    Args:
        sources: image folders, or single images (copied into ``to/<their folder's name>/``),
            as Pillow reads them (PNG, BMP, JPEG, TIFF).
        to: the folder the copies go to (``.gpu-data``, which travels to the GPU machine).

    Returns the bytes of the sources and of the copies. Every copy is decoded again and
    compared with its source, pixel for pixel, before it is kept (renamed from a temporary
    name); a 16-bit image is refused, since WebP holds 8 bits.
    """
    import numpy as np
    from PIL import Image

    before = after = 0
    for source in sources:
        if not source.exists():
            raise SystemExit(f"gpu_report: training-data: {source} does not exist")
        files = sorted(source.iterdir()) if source.is_dir() else [source]
        target = to / (source.name if source.is_dir() else source.parent.name)
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            if path.suffix.lower() not in (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff"):
                continue
            with Image.open(path) as image:
                if image.mode not in ("L", "RGB"):
                    raise SystemExit(
                        f"gpu_report: training-data: {path} is {image.mode}; only 8-bit gray (L) "
                        "or RGB images convert to WebP without loss"
                    )
                pixels = np.asarray(image)
                copy = target / f"{path.stem}.webp"
                partial = copy.with_name(copy.name + ".partial")
                image.save(partial, format="WEBP", lossless=True, method=6, quality=100)
            with Image.open(partial) as back:
                if not np.array_equal(np.asarray(back.convert(image.mode)), pixels):
                    partial.unlink()
                    raise SystemExit(f"gpu_report: training-data: {path} did not survive WebP")
            partial.replace(copy)
            before += path.stat().st_size
            after += copy.stat().st_size
    return before, after


def env_python(env: Path) -> Path:
    return env / "bin" / "python"


def make_env(env: Path) -> Path:
    """A virtual environment at ``env`` that also sees this interpreter's packages.

    ``venv --system-site-packages`` would expose the base interpreter's packages, not those of
    the environment this script runs in (the GPU machines' torch lives in a virtual
    environment), so a ``.pth`` file appends this interpreter's site folders instead; pip (the
    machine's own) then counts what they hold as installed and installs the rest into ``env``.
    """
    python = env_python(env)
    if not python.exists():
        # No pip of its own: the machine's pip runs there. With one, ensurepip's setuptools
        # (Python 3.11) would shadow the machine's newer one that torch requires.
        venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    host = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    # addsitedir, not a plain path line: the machine's own .pth files (a torch installed
    # elsewhere and linked in by one, editable installs) must be read too.
    lines = "".join(f"import site; site.addsitedir({str(p)!r})\n" for p in host)
    (Path(purelib) / "_gpu_machine_site.pth").write_text(lines)
    return python


def tree_signature() -> str:
    """A digest of every file's path, size and modification time under packages/*/ (tests and
    benchmarks aside): equal while the installed tree is current."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGES_DIR.glob("*/src/**/*")) + sorted(
        PACKAGES_DIR.glob("*/pyproject.toml")
    ):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(ROOT)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def install_tree(env: Path, wheelhouse: Path) -> Path:
    """Make ``env`` and install hatchling, then every package of the tree, from the wheelhouse
    only; skipped when ``env`` already holds this tree (rerunning after an interruption)."""
    stamp = env / "tree-installed.txt"
    if stamp.exists() and stamp.read_text() == tree_signature():
        return env_python(env)
    if not wheelhouse.is_dir():
        raise SystemExit(
            f"gpu_report: --wheelhouse {wheelhouse} does not exist; build it where there is "
            "network with `python3 tools/gpu_report.py wheelhouse` (or `nox -s gpu_wheelhouse`) "
            "and copy it beside the tree"
        )
    python = make_env(env)
    print(f"gpu_report: installing the tree into {env} from {wheelhouse} (no index)", flush=True)
    pip = [
        str(python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--find-links",
        str(wheelhouse),
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, "hatchling"], check=True)
    targets = []
    for entry in INSTALL_ORDER:
        name, _, extras = entry.partition("[")
        targets.append(f"{PACKAGES_DIR / name}[{extras}" if extras else str(PACKAGES_DIR / name))
    subprocess.run([*pip, "--no-build-isolation", *targets], check=True)
    stamp.write_text(tree_signature())
    return python


def probe_machine(python: Path) -> dict[str, str]:
    """The CUDA device's name ('' without one) and the torch, CUDA and Triton versions that
    ``python`` sees."""
    probe = (
        "import json, importlib.metadata as m, torch; print(json.dumps({'device': "
        "torch.cuda.get_device_name(0) if torch.cuda.is_available() else '', 'torch': "
        "torch.__version__, 'cuda': str(torch.version.cuda), 'triton': m.version('triton')}))"
    )
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def gpu_test_files() -> list[Path]:
    """The test modules that hold ``gpu``-marked tests (collecting every module would import the
    pages' libraries, which the GPU lane does not need)."""
    return sorted(
        path
        for path in PACKAGES_DIR.glob("*/tests/test_*.py")
        if "pytest.mark.gpu" in path.read_text()
    )


def piece_command(piece: Piece, python: Path, out: Path) -> list[str]:
    if piece.name == "tests":
        return [
            str(python),
            "-m",
            "pytest",
            *map(str, gpu_test_files()),
            "-m",
            "gpu",
            "-p",
            "no:cacheprovider",
            "-q",
            f"--junitxml={out / 'gpu-lane.partial.xml'}",
        ]
    package = {"kernels": "common-kernels", "semanir": "semanir"}[piece.name]
    return [
        str(python),
        str(PACKAGES_DIR / package / "benchmarks" / "run.py"),
        "--device",
        "cuda",
        "--quick",
        "--out",
        str(out / package),
    ]


def run_piece(piece: Piece, command: Sequence[str], out: Path, log: Path) -> Outcome:
    """Run ``command`` for ``piece`` under its time limit, its output appended to ``log``.

    The process runs in its own group so that a timeout stops its children too. The tests'
    JUnit XML is written under a partial name and renamed once pytest has finished (a failing
    test still finishes the piece: the XML records it).
    """
    start = time.monotonic()
    with log.open("a") as sink:
        sink.write(f"\n$ {' '.join(command)}\n")
        sink.flush()
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=piece.limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return Outcome(
                piece.name,
                "timed out",
                time.monotonic() - start,
                None,
                f"stopped after its {piece.limit_s} s",
            )
    seconds = time.monotonic() - start
    partial = out / "gpu-lane.partial.xml"
    if piece.name == "tests" and partial.exists() and returncode in (0, 1):
        partial.rename(out / piece.done_file)
    finished = (out / piece.done_file).exists()
    status = "passed" if returncode == 0 and finished else "failed"
    return Outcome(piece.name, status, seconds, returncode)


def junit_counts(xml: Path) -> str:
    """'N tests: P passed, F failed, E errors, S skipped' and the failing tests' ids."""
    suites = ET.parse(xml).getroot()
    suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
    total, failures, errors, skipped = (
        int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")
    )
    passed = total - failures - errors - skipped
    lines = [
        f"{total} tests: {passed} passed, {failures} failed, {errors} errors, {skipped} skipped"
    ]
    for case in suite.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            lines.append(f"- FAILED {case.get('classname')}::{case.get('name')}")
    return "\n".join(lines)


def write_summary(out: Path, machine: dict[str, str], outcomes: Sequence[Outcome]) -> Path:
    lines = [
        "# GPU report",
        "",
        f"- device: {machine['device'] or 'none: torch sees no CUDA device, so no piece ran'}",
        f"- torch {machine['torch']} (CUDA {machine['cuda']}), triton {machine['triton']}, "
        f"python {sys.version.split()[0]}",
        f"- written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        "",
    ]
    if outcomes:
        lines += ["| piece | status | seconds | exit |", "| --- | --- | --- | --- |"]
        for o in outcomes:
            lines.append(
                f"| {o.piece} | {o.status} {o.detail} | {o.seconds:.0f} | "
                f"{o.returncode if o.returncode is not None else '-'} |"
            )
    if (out / "gpu-lane.xml").exists():
        lines += ["", "## GPU lane", "", junit_counts(out / "gpu-lane.xml")]
    for package in ("common-kernels", "semanir"):
        table = out / package / "quick-cuda.md"
        if table.exists():
            lines += ["", f"## {package} quick benchmark", "", table.read_text().strip()]
    summary = out / "summary.md"
    partial = summary.with_suffix(".md.partial")
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(summary)
    return summary


def pack(out: Path) -> Path:
    """The report folder as one ``<folder>.tar.gz`` beside it (one file to bring back)."""
    archive = out.parent / f"{out.name}.tar.gz"
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(out, arcname=out.name)
    partial.replace(archive)
    return archive


def run_report(
    out: Path,
    wheelhouse: Path,
    env: Path,
    names: Sequence[str],
    *,
    install: bool = True,
    limits: dict[str, int] | None = None,
) -> int:
    """Install, then run the named pieces; the exit status is 0 only if every piece passed."""
    out.mkdir(parents=True, exist_ok=True)
    python = install_tree(env, wheelhouse) if install else Path(sys.executable)
    machine = probe_machine(python)
    device = machine["device"]
    if not device:
        write_summary(out, machine, [])
        print(
            "gpu_report: everything installed, but there is no CUDA device on this machine "
            f"(torch sees none); nothing ran. Summary: {out / 'summary.md'}"
        )
        return 1
    outcomes_file = out / "outcomes.json"
    earlier = json.loads(outcomes_file.read_text()) if outcomes_file.exists() else {}
    outcomes = []
    for piece in PIECES:
        if piece.name not in names:
            if piece.name in earlier:  # run by an earlier command: the summary keeps it
                outcomes.append(Outcome(**earlier[piece.name]))
            continue
        piece = dataclasses.replace(piece, limit_s=(limits or {}).get(piece.name, piece.limit_s))
        if (out / piece.done_file).exists() and piece.name in earlier:
            outcomes.append(Outcome(**{**earlier[piece.name], "status": "done earlier"}))
            continue
        print(f"gpu_report: {piece.name} (at most {piece.limit_s} s) on {device}", flush=True)
        outcome = run_piece(
            piece, piece_command(piece, python, out), out, out / f"{piece.name}.log"
        )
        print(f"gpu_report: {piece.name} {outcome.status} in {outcome.seconds:.0f} s", flush=True)
        outcomes.append(outcome)
        earlier[piece.name] = asdict(outcome)
        outcomes_file.write_text(json.dumps(earlier, indent=1))
    summary = write_summary(out, machine, outcomes)
    archive = pack(out)
    print(f"gpu_report: {summary}; everything packed in {archive}")
    return 0 if all(o.status in ("passed", "done earlier") for o in outcomes) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    wheels = commands.add_parser("wheelhouse", help="download the wheels a GPU machine lacks")
    wheels.add_argument("folder", nargs="?", type=Path, default=DEFAULT_WHEELHOUSE)
    wheels.add_argument(
        "--this-machine",
        action="store_true",
        help="for this interpreter and platform (a stand-in GPU machine)",
    )
    data = commands.add_parser(
        "training-data", help="image folders as lossless WebP copies, to carry to a GPU machine"
    )
    data.add_argument("folders", nargs="+", type=Path, metavar="FOLDER_OR_IMAGE")
    data.add_argument("--to", type=Path, default=ROOT / ".gpu-data", help="default: .gpu-data")
    install = commands.add_parser("install", help="only install the tree offline into --env")
    install.add_argument("--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE)
    install.add_argument("--env", type=Path, default=DEFAULT_ENV, help="virtual environment folder")
    run = commands.add_parser("run", help="install offline and run the GPU checks")
    run.add_argument(
        "pieces", nargs="*", metavar="PIECE", help="tests, kernels, semanir (default: all)"
    )
    run.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report folder")
    run.add_argument("--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE)
    run.add_argument("--env", type=Path, default=DEFAULT_ENV, help="virtual environment folder")
    run.add_argument(
        "--installed",
        action="store_true",
        help="this interpreter already has the packages: no environment, no install",
    )
    run.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="PIECE=SECONDS",
        help="another time limit for a piece (defaults: tests 180, kernels 120, semanir 120)",
    )
    args = parser.parse_args(argv)
    if args.command == "wheelhouse":
        wheels_got = build_wheelhouse(args.folder, this_machine=args.this_machine)
        size = sum(w.stat().st_size for w in wheels_got) / 2**20
        print(f"gpu_report: {len(wheels_got)} wheels, {size:.1f} MiB, in {args.folder}")
        return 0
    if args.command == "training-data":
        before, after = webp_copy(args.folders, args.to)
        print(
            f"gpu_report: {before / 1e6:.1f} MB of images as {after / 1e6:.1f} MB of lossless "
            f"WebP in {args.to}"
        )
        return 0
    if args.command == "install":
        python = install_tree(args.env, args.wheelhouse)
        print(f"gpu_report: the tree is installed; its interpreter is {python}")
        return 0
    known = [p.name for p in PIECES]
    unknown = [name for name in args.pieces if name not in known]
    if unknown:
        run.error(f"PIECE: {', '.join(unknown)} is not one of {', '.join(known)}")
    limits = {}
    for entry in args.limit:
        name, _, seconds = entry.partition("=")
        if name not in known or not seconds.isdigit() or int(seconds) < 1:
            run.error(
                f"--limit: {entry!r} is not PIECE=SECONDS with PIECE one of "
                f"{', '.join(known)} and SECONDS a positive integer"
            )
        limits[name] = int(seconds)
    names = args.pieces or known
    return run_report(
        args.out, args.wheelhouse, args.env, names, install=not args.installed, limits=limits
    )


if __name__ == "__main__":
    sys.exit(main())
