"""tools/gpu_report.py: the offline GPU checks' pieces, resumption, summary and wheelhouse."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("gpu_report", ROOT / "tools" / "gpu_report.py")
gpu_report = importlib.util.module_from_spec(SPEC)
sys.modules["gpu_report"] = gpu_report  # dataclasses look their module up there
SPEC.loader.exec_module(gpu_report)

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1"
failures="1" skipped="2" tests="7"><testcase classname="a.test_x" name="test_ok"/>
<testcase classname="a.test_x" name="test_bad"><failure message="no"/></testcase>
<testcase classname="b.test_y" name="test_err"><error message="boom"/></testcase>
</testsuite></testsuites>"""


def test_junit_counts_lists_the_failing_tests():
    xml_dir = ROOT / "outputs"
    xml_dir.mkdir(exist_ok=True)
    path = xml_dir / "test_junit_counts.xml"
    path.write_text(JUNIT)
    try:
        assert gpu_report.junit_counts(path) == (
            "7 tests: 3 passed, 1 failed, 1 errors, 2 skipped\n"
            "- FAILED a.test_x::test_bad\n- FAILED b.test_y::test_err"
        )
    finally:
        path.unlink()


def test_the_gpu_lane_collects_exactly_the_modules_with_gpu_marks():
    marked = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "packages").glob("*/tests/test_*.py")
        if "pytest.mark.gpu" in path.read_text()
    }
    found = {path.relative_to(ROOT).as_posix() for path in gpu_report.gpu_test_files()}
    assert found == marked
    assert {
        "packages/common-kernels/tests/test_gpu.py",
        "packages/semanir/tests/test_gpu.py",
    } <= found


def test_the_wheelhouse_pins_exact_versions_and_nothing_of_torchs_stack():
    names = [req.split("==")[0] for req in gpu_report.MISSING_ON_GPU_MACHINE]
    assert all(req.count("==") == 1 for req in gpu_report.MISSING_ON_GPU_MACHINE)
    assert len(set(names)) == len(names)
    torch_stack = {"torch", "torchvision", "triton", "numpy", "transformers", "lightning"}
    assert not torch_stack & set(names)
    assert not [n for n in names if n.startswith(("nvidia-", "cuda-"))]


def test_an_unknown_piece_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_report.main(["run", "tests", "benchmarks", "--installed"])
    assert exit_info.value.code == 2
    assert "PIECE: benchmarks is not one of tests, kernels, semanir" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["tests", "tests=0", "tests=1.5", "bench=10"])
def test_a_bad_time_limit_is_refused_before_any_work(limit, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_report.main(["run", "--installed", "--limit", limit])
    assert exit_info.value.code == 2
    assert (
        f"--limit: {limit!r} is not PIECE=SECONDS with PIECE one of tests, kernels, semanir and "
        "SECONDS a positive integer"
    ) in capsys.readouterr().err


def test_without_cuda_the_report_says_so_and_runs_nothing(tmp_path, capsys, monkeypatch):
    machine = {"device": "", "torch": "2.14.1", "cuda": "None", "triton": "3.7.0"}
    monkeypatch.setattr(gpu_report, "probe_machine", lambda python: machine)
    assert gpu_report.main(["run", "--installed", "--out", str(tmp_path / "r")]) == 1
    assert "there is no CUDA device on this machine" in capsys.readouterr().out
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "- device: none: torch sees no CUDA device, so no piece ran" in summary
    assert not (tmp_path / "r" / "outcomes.json").exists()


def fake_pieces(out: Path, seconds: dict[str, float]):
    """Commands standing in for the pieces: tests writes a JUnit XML with one failure and exits
    1 (as pytest does), kernels sleeps, semanir writes its JSON and table."""
    scripts = {
        "tests": f"import pathlib; pathlib.Path({str(out / 'gpu-lane.partial.xml')!r})"
        f".write_text({JUNIT!r}); raise SystemExit(1)",
        "kernels": f"import time; time.sleep({seconds['kernels']})",
        "semanir": textwrap.dedent(f"""
            import pathlib
            folder = pathlib.Path({str(out / "semanir")!r}); folder.mkdir(exist_ok=True)
            (folder / 'quick-cuda.md').write_text('| model | ms |\\n| --- | --- |\\n| x | 1 |')
            (folder / 'quick-cuda.json').write_text('[]')
        """),
    }
    return lambda piece, python, out_: [sys.executable, "-c", scripts[piece.name]]


def test_pieces_run_in_turn_survive_failures_and_timeouts_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "report"
    machine = {"device": "Fake GPU", "torch": "2.11.0", "cuda": "13.0", "triton": "3.6.0"}
    monkeypatch.setattr(gpu_report, "probe_machine", lambda python: machine)
    monkeypatch.setattr(gpu_report, "piece_command", fake_pieces(out, {"kernels": 30}))
    limits = {"kernels": 1}
    monkeypatch.setattr(
        gpu_report,
        "PIECES",
        tuple(
            gpu_report.Piece(p.name, limits.get(p.name, 60), p.done_file) for p in gpu_report.PIECES
        ),
    )
    assert (
        gpu_report.run_report(
            out, tmp_path / "wh", tmp_path / "env", ["tests", "kernels", "semanir"], install=False
        )
        == 1
    )
    summary = (out / "summary.md").read_text()
    assert "- device: Fake GPU\n- torch 2.11.0 (CUDA 13.0), triton 3.6.0, python" in summary
    assert "| tests | failed  |" in summary  # a failing test fails the piece; its XML is kept
    assert "| kernels | timed out stopped after its 1 s |" in summary
    assert "| semanir | passed  |" in summary
    assert "7 tests: 3 passed, 1 failed, 1 errors, 2 skipped" in summary
    assert "| x | 1 |" in summary
    assert (out / "gpu-lane.xml").exists() and not (out / "gpu-lane.partial.xml").exists()
    with tarfile.open(tmp_path / "report.tar.gz") as tar:
        assert "report/summary.md" in tar.getnames()

    # Again: finished pieces are not rerun, the one that timed out is.
    monkeypatch.setattr(gpu_report, "piece_command", fake_pieces(out, {"kernels": 0}))
    gpu_report.run_report(
        out, tmp_path / "wh", tmp_path / "env", ["tests", "kernels", "semanir"], install=False
    )
    summary = (out / "summary.md").read_text()
    assert "| tests | done earlier  |" in summary
    assert "| semanir | done earlier  |" in summary
    assert "| kernels | failed  |" in summary  # it exited 0 but wrote no quick-cuda.json

    # A command naming one piece keeps the others' earlier outcomes in the summary.
    gpu_report.run_report(out, tmp_path / "wh", tmp_path / "env", ["kernels"], install=False)
    summary = (out / "summary.md").read_text()
    assert "| tests | failed  |" in summary and "| semanir | passed  |" in summary


def test_a_timed_out_piece_leaves_no_process_behind(tmp_path):
    marker = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time, pathlib; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"pathlib.Path({str(marker)!r}).write_text(str(child.pid)); time.sleep(60)"
    )
    piece = gpu_report.Piece("kernels", 8, "none.json")  # time to start both
    outcome = gpu_report.run_piece(
        piece, [sys.executable, "-c", script], tmp_path, tmp_path / "log"
    )
    assert outcome.status == "timed out" and outcome.returncode is None
    status = Path(f"/proc/{int(marker.read_text())}/status")

    def dead() -> bool:  # gone, or a zombie where no init process reaps orphans (containers)
        return not status.exists() or "State:\tZ" in status.read_text()

    deadline = time.monotonic() + 10  # SIGKILL is delivered at once, the exit takes a moment
    while not dead() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dead()


def gpu_machine_site(folder: Path) -> Path:
    """A site folder standing in for an offline GPU machine's: links to what this interpreter has
    installed of torch, torchvision, pip and :data:`PRESENT_ON_GPU_MACHINE`, with everything
    they require (their base requirements, transitively), and nothing else: not the wheelhouse's
    packages, not this tree's. Loose ``.pth`` files (a torch linked in by one) come along; names
    of that list not installed here are installed into the folder from the index."""
    from importlib import metadata

    from packaging.requirements import Requirement

    def key(name: str) -> str:
        return name.lower().replace("_", "-").replace(".", "-")

    site = Path(sysconfig.get_paths()["purelib"])
    # A folder a loose .pth adds (nox's shared torch, with fsspec beside it) comes along whole,
    # but what its distributions require must be followed: lightning's fsspec[http] -> aiohttp.
    added = [
        line.strip()
        for pth in site.glob("*.pth")
        for line in pth.read_text().splitlines()
        if line.strip() and not line.startswith(("#", "import")) and Path(line.strip()).is_dir()
    ]
    dists = {key(d.metadata["Name"]): d for d in metadata.distributions(path=[str(site), *added])}
    roots = ["torch", "torchvision", "pip", *gpu_report.PRESENT_ON_GPU_MACHINE]
    wanted, seen, todo = set(), set(), [(name, "") for name in roots]
    while todo:  # (distribution, one of the extras asked of it): lightning needs fsspec[http]
        name, extra = todo.pop()
        name = key(name)
        if (name, extra) in seen or name not in dists:
            continue
        seen.add((name, extra))
        wanted.add(name)
        for line in dists[name].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                todo += [(requirement.name, e) for e in ("", *requirement.extras)]
    assert {"lightning", "transformers"} <= wanted  # torch may come through a loose .pth
    assert not wanted & {key(r.split("==")[0]) for r in gpu_report.MISSING_ON_GPU_MACHINE}
    recorded, linked = set(), set()
    for name, dist in dists.items():
        tops = {Path(f).parts[0] for f in dist.files or [] if Path(f).parts[0] != ".."}
        recorded |= tops
        if name in wanted:
            linked |= tops
    linked |= {p.name for p in site.glob("*.pth") if p.name not in recorded}
    folder.mkdir()
    for top in sorted(linked):
        if (site / top).exists():
            (folder / top).symlink_to(site / top)
    absent = [n for n in gpu_report.PRESENT_ON_GPU_MACHINE if key(n) not in dists]
    if absent:  # on the machines, not here (pathspec, sentencepiece): from the index
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
             str(folder), *absent],
            check=True,
        )  # fmt: skip
    return folder


@pytest.mark.slow
def test_a_stand_in_gpu_machine_installs_everything_offline_and_says_it_has_no_cuda(tmp_path):
    """A virtual environment that sees torch and the GPU machines' libraries (linked from this
    environment) stands in for one: with ``PIP_NO_INDEX=1`` and the wheelhouse only, the
    report installs every package and says that there is no CUDA device."""
    wheelhouse = tmp_path / "wheelhouse"
    gpu_report.build_wheelhouse(wheelhouse, this_machine=True)
    assert sum(w.stat().st_size for w in wheelhouse.glob("*.whl")) <= 40 * 2**20
    host = tmp_path / "host"
    venv.EnvBuilder(with_pip=False).create(host)
    python = host / "bin" / "python"
    host_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    farm = gpu_machine_site(tmp_path / "machine-site")
    (Path(host_site) / "machine.pth").write_text(f"import site; site.addsitedir({str(farm)!r})\n")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PYTHONPATH": ""}
    lacking = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print([m for m in ('diffusers', "
         "'open_clip', 'jsonargparse', 'semanir') if u.find_spec(m)], bool(u.find_spec('torch')))"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert lacking == "[] True"  # torch, not what the wheelhouse and the tree provide
    result = subprocess.run(
        [str(python), str(ROOT / "tools" / "gpu_report.py"), "run", "--wheelhouse",
         str(wheelhouse), "--env", str(tmp_path / "gpu-env"), "--out", str(tmp_path / "out")],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert "everything installed, but there is no CUDA device on this machine" in said, said
    probe = (
        "import importlib.metadata as m, common_kernels, semanir, itaclip, pixelsmith, diffeat, "
        "vitron, diffusers, open_clip, jsonargparse, torchdata, imagecodecs; "
        "print(' '.join(m.version(d) for d in ('semanir', 'vitron')), semanir.__file__)"
    )
    versions = subprocess.run(
        [str(tmp_path / "gpu-env" / "bin" / "python"), "-c", probe],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert versions[:2] == [gpu_report.tree_version("semanir"), gpu_report.tree_version("vitron")]
    assert versions[2].startswith(str(tmp_path / "gpu-env"))  # installed there, from the tree


def test_the_readmes_gpu_commands_are_commands_of_the_script(capsys):
    spec = importlib.util.spec_from_file_location(
        "ck_testing",
        ROOT / "packages/common-kernels/src/common_kernels/runtime/testing.py",
    )
    testing = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = testing
    spec.loader.exec_module(testing)
    commands = [
        testing.program_words(command)
        for example in testing.shell_examples(ROOT / "README.md")
        for command in example.commands()
        if "tools/gpu_report.py" in command
    ]
    assert [words[:3] for words in commands] == [["python3", "tools/gpu_report.py", "run"]]
    for words in commands:
        with pytest.raises(SystemExit) as exit_info:
            gpu_report.main([*words[2:], "--help"])
        assert exit_info.value.code == 0
        assert "--wheelhouse WHEELHOUSE" in capsys.readouterr().out


def test_training_data_copies_are_lossless_webp_and_16_bit_images_are_refused(tmp_path):
    np = pytest.importorskip("numpy")
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    source = tmp_path / "train"
    source.mkdir()
    gray = rng.integers(0, 256, (23, 17), dtype=np.uint8)
    rgb = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    image_module.fromarray(gray).save(source / "a.png")
    image_module.fromarray(rgb).save(source / "b.bmp")
    (source / "notes.txt").write_text("not an image")
    before, after = gpu_report.webp_copy([source], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == ["a.webp", "b.webp"]
    with image_module.open(tmp_path / "out" / "train" / "a.webp") as back:
        assert np.array_equal(np.asarray(back.convert("L")), gray)
    with image_module.open(tmp_path / "out" / "train" / "b.webp") as back:
        assert np.array_equal(np.asarray(back), rgb)
    assert before == (source / "a.png").stat().st_size + (source / "b.bmp").stat().st_size
    assert after == sum(p.stat().st_size for p in (tmp_path / "out" / "train").iterdir())
    gpu_report.webp_copy([source / "a.png"], tmp_path / "one")  # a single image
    assert [p.name for p in (tmp_path / "one" / "train").iterdir()] == ["a.webp"]
    with pytest.raises(SystemExit, match=r"missing\.png does not exist"):
        gpu_report.webp_copy([source / "missing.png"], tmp_path / "one")
    deep = tmp_path / "deep"
    deep.mkdir()
    image_module.fromarray(gray.astype(np.uint16) * 257).save(deep / "c.png")
    with pytest.raises(SystemExit, match=r"c.png is I;16; only 8-bit gray \(L\) or RGB"):
        gpu_report.webp_copy([deep], tmp_path / "out")
    assert not (tmp_path / "out" / "deep" / "c.webp").exists()
