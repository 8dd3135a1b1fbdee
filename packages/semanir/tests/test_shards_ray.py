"""``semanir restore`` beyond one process: ``--shard I/N`` runs (their union is the plain run,
byte for byte; a killed shard resumes; ``--check-shards`` accounts for every input) and, in the
slow lane on a local Ray cluster, ``--ray`` (byte-equal results, a killed worker, a killed
driver, a bad file reported alone)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from common_kernels.runtime.batch_testing import (
    ledger_lines,
    local_ray_cluster,
    noise_photos,
    run_killing_an_actor,
    wait_until,
)
from semanir.cli import main

MODEL = "semanir_tiny_denoise_color"


def killed_while_working(script: str, argv: list[str]) -> int:
    """Run ``semanir`` with the ``working_script`` fixture's source, SIGKILL it once it works
    on its second photo; its exit status."""
    process = subprocess.Popen([sys.executable, "-c", script, *argv], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    for line in iter(process.stdout.readline, ""):
        if line.strip() == "working":
            break
    process.kill()
    return process.wait()


def semanir_process(argv: list[str]) -> subprocess.Popen:
    """``semanir ARGV`` in a process of its own."""
    command = "import sys; from semanir.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", command, *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def results(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> tuple[Path, Path]:
    """The inputs and the plain command's results (``--keep-going``: the broken file is
    set aside, exit 1)."""
    root = tmp_path_factory.mktemp("plain")
    inputs = noise_photos(root / "in", 6, 40, 48)
    assert main(["restore", str(inputs), "-o", str(root / "out"), "--model", MODEL,
                 "--keep-going"]) == 1  # fmt: skip
    return inputs, root / "out"


def test_the_shards_together_equal_the_plain_run_byte_for_byte(plain, tmp_path, capsys):
    inputs, expected = plain
    out = tmp_path / "out"
    for index in range(3):
        code = main(["restore", str(inputs), "-o", str(out), "--model", MODEL, "--shard",
                     f"{index}/3", "--keep-going"])  # fmt: skip
        assert code == (1 if index == 0 else 0)  # shard 0 holds broken.png (name order)
    assert results(out) == results(expected)
    shards = sorted(p.name for p in (out / ".shards").iterdir())
    assert shards == [f"shard-0000{i}-of-00003.jsonl" for i in range(3)]
    lines = ledger_lines(out)
    assert sorted((x["input"], x["status"]) for x in lines) == sorted(
        [("broken.png", "refused")] + [(f"img{i:02d}.png", "written") for i in range(6)]
    )
    capsys.readouterr()
    assert main(["restore", str(inputs), "-o", str(out), "--check-shards", "3"]) == 1
    report = capsys.readouterr().out
    assert report.startswith("6 of 7 input(s) have their outputs, each written once\nrefused: 1\n")
    assert "broken.png: cannot identify image file" in report


def test_a_killed_shard_resumes_and_the_check_finds_every_input_once(
    plain, tmp_path, capsys, working_script
):
    inputs, _ = plain
    out = tmp_path / "out"
    argv = ["restore", str(inputs), "-o", str(out), "--model", MODEL, "--shard", "1/2"]
    assert killed_while_working(working_script, argv) == -signal.SIGKILL
    # shard 1 of the 7 inputs in name order: img02-img05; img02 was done when it was killed
    assert sorted(p.name for p in out.glob("*.png")) == ["img02.png"]  # nothing half-written
    capsys.readouterr()
    assert main(["restore", str(inputs), "-o", str(out), "--check-shards", "2"]) == 1
    report = capsys.readouterr().out
    assert "missing (input: its shard): 6\n  broken.png: shard 0\n  img00.png: shard 0\n" in report
    assert "  img03.png: shard 1\n  img04.png: shard 1\n  img05.png: shard 1" in report
    assert main(argv) == 0  # the resumed shard: only what was missing
    assert "1 image(s) already restored, left out" in capsys.readouterr().err
    assert main(["restore", str(inputs), "-o", str(out), "--shard", "0/2", "--model", MODEL,
                 "--keep-going"]) == 1  # fmt: skip
    capsys.readouterr()
    assert main(["restore", str(inputs), "-o", str(out), "--check-shards", "2"]) == 1
    assert capsys.readouterr().out.startswith("6 of 7 input(s) have their outputs, each "
                                              "written once\nrefused: 1")  # fmt: skip
    statuses = [(x["input"], x["status"]) for x in ledger_lines(out) if x["input"] == "img02.png"]
    assert statuses == [("img02.png", "written"), ("img02.png", "finished")]


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--shard", "0/2", "--in-place"], "--shard: cannot shard an --in-place batch"),
     (["--shard", "2/2"], r"--shard: the shard index must be an int in [0, 1] (0-based), got 2"),
     (["--shard", "one"], "--shard: must be I/N with 0 <= I < N (e.g. 0/4), got 'one'"),
     (["--shard", "0/2", "--add-noise", "25"], "--shard runs a batch, not the --add-noise demo"),
     (["--shard", "0/2", "--ray"], "--shard and --ray exclude each other"),
     (["--ray", "--in-place"], "--ray runs a batch; --in-place is for the plain command"),
     (["--ray", "--ray-batch", "0"], "--ray-batch: must be an int >= 1, got 0"),
     (["--check-shards", "0"], "--shard: the shard count must be an int in [1, 99999], got 0")],
)  # fmt: skip
def test_refused_combinations_name_the_flag(plain, tmp_path, capsys, extra, message):
    inputs, _ = plain
    code = main(["restore", str(inputs), "-o", str(tmp_path / "out"), "--model", MODEL, *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_a_shard_needs_an_output_folder(plain, tmp_path, capsys):
    inputs, _ = plain
    assert main(["restore", str(inputs / "img00.png"), "-o", str(tmp_path / "one.png"),
                 "--model", MODEL, "--shard", "0/1"]) == 2  # fmt: skip
    assert "--shard: needs an output folder (its ledger goes to .shards/ in it), got the file " \
        "name" in capsys.readouterr().err  # fmt: skip


@pytest.fixture(scope="module")
def local_ray():
    with local_ray_cluster() as address:  # the slow lane installs the [ray] extra
        yield address


@pytest.fixture(scope="module")
def slow_batch(tmp_path_factory) -> tuple[Path, Path]:
    """Enough work to stop in the middle (16 photos of 96 px, x8 ensemble), and the plain
    command's results of it."""
    root = tmp_path_factory.mktemp("ray")
    inputs = noise_photos(root / "in", 16, 96, 104)
    argv = ["restore", str(inputs), "-o", str(root / "out"), "--model", MODEL, "--ensemble",
            "--keep-going"]  # fmt: skip
    assert main(argv) == 1
    return inputs, root / "out"


def ray_argv(inputs: Path, out: Path, address: str) -> list[str]:
    return ["restore", str(inputs), "-o", str(out), "--model", MODEL, "--ensemble", "--ray",
            address, "--ray-workers", "2", "--ray-batch", "2"]  # fmt: skip


@pytest.mark.slow
def test_ray_results_equal_the_plain_run_and_a_bad_file_is_refused_alone(
    slow_batch, local_ray, tmp_path, capsys
):
    inputs, expected = slow_batch
    assert main(ray_argv(inputs, tmp_path, local_ray)) == 1  # broken.png refused
    captured = capsys.readouterr()
    assert "17 input(s): 16 written, 0 finished before, 1 refused; ledger: " in captured.out
    assert "semanir restore: refused broken.png: cannot read" in captured.err
    assert results(tmp_path) == results(expected)
    assert main(["restore", str(inputs), "-o", str(tmp_path), "--check-shards", "1"]) == 1
    assert capsys.readouterr().out.startswith("16 of 17 input(s) have their outputs, each "
                                              "written once\nrefused: 1")  # fmt: skip


@pytest.mark.slow
def test_a_worker_killed_mid_job_still_gives_every_result_once(
    slow_batch, local_ray, tmp_path, capsys
):
    inputs, expected = slow_batch
    code, victim = run_killing_an_actor(
        main, ray_argv(inputs, tmp_path, local_ray), "RestoreWorker",
        lambda: len(list(tmp_path.glob("*.png"))) >= 2,
    )  # fmt: skip
    assert code == 1  # broken.png
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == "zombie"
    assert results(tmp_path) == results(expected)
    lines = ledger_lines(tmp_path)
    assert sorted(x["input"] for x in lines) == sorted(["broken.png", *results(expected)])
    capsys.readouterr()
    assert main(["restore", str(inputs), "-o", str(tmp_path), "--check-shards", "1"]) == 1
    assert "each written once" in capsys.readouterr().out


@pytest.mark.slow
def test_a_rerun_after_a_killed_driver_finishes_only_what_was_missing(
    slow_batch, local_ray, tmp_path, capsys
):
    inputs, expected = slow_batch
    driver = semanir_process(ray_argv(inputs, tmp_path, local_ray))
    wait_until(lambda: len(list(tmp_path.glob("*.png"))) >= 3)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = {p.name for p in tmp_path.glob("*.png")}
    assert 3 <= len(before) < 16
    assert main(ray_argv(inputs, tmp_path, local_ray)) == 1
    written = int(capsys.readouterr().out.split(" written")[0].split(": ")[-1])
    after = results(tmp_path)
    assert after == results(expected)
    # the finished results were not redone: the rerun wrote the rest (a result the killed
    # driver's actors wrote after the count above is finished for the rerun too)
    assert written <= 16 - len(before)
    lines = [x for x in ledger_lines(tmp_path) if x["status"] == "written"]
    assert sorted(x["input"] for x in lines if x["input"] in before) == []  # rerun's ledger
