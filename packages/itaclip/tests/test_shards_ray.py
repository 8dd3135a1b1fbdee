"""``itaclip segment`` beyond one process: ``--shard I/N`` (the shards' union is the plain
run byte for byte; a rerun leaves finished outputs alone; ``--check-shards`` accounts for every
image) and, in the slow lane on a local Ray cluster, ``--ray`` (byte-equal outputs, a killed
worker, a bad file refused alone)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common_kernels.runtime.batch_testing import (
    ledger_lines,
    local_ray_cluster,
    noise_photos,
    run_killing_an_actor,
)
from itaclip.cli import main


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def command(tiny_dir, tmp_path_factory) -> list[str]:
    cache = tmp_path_factory.mktemp("cache")
    return ["--classes", "cat,dog|puppy,sky", "--model", f"local-dir:{tiny_dir}", "--pretrained",
            "", "--stride", "224", "--cache-dir", str(cache), "--keep-going"]  # fmt: skip


@pytest.fixture(scope="module")
def plain(command, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("plain")
    images = noise_photos(root / "in", 5, 48, 64)
    assert main(["segment", str(images), "-o", str(root / "out"), *command]) == 1  # broken
    return images, root / "out"


def test_the_shards_together_equal_the_plain_run_and_resume(plain, command, tmp_path, capsys):
    images, expected = plain
    out = tmp_path / "out"
    for index in (1, 0):
        code = main(["segment", str(images), "-o", str(out), *command, "--shard", f"{index}/2"])
        assert code == (1 if index == 0 else 0)  # shard 0 holds broken.png (name order)
    assert outputs(out) == outputs(expected)
    lines = ledger_lines(out)
    assert sorted((x["input"], x["status"]) for x in lines) == sorted(
        [("broken.png", "refused")] + [(f"img{i:02d}.png", "written") for i in range(5)]
    )
    # a rerun of shard 1 finds its outputs: nothing is redone, the ledger says so
    before = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert main(["segment", str(images), "-o", str(out), *command, "--shard", "1/2"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == before
    assert [x["status"] for x in ledger_lines(out)].count("finished") == 3  # img02-img04
    capsys.readouterr()
    assert main(["segment", str(images), "-o", str(out), *command, "--check-shards", "2"]) == 1
    report = capsys.readouterr().out
    assert report.startswith("5 of 6 input(s) have their outputs, each written once\nrefused: 1")
    (out / "img04_labels.png").unlink()  # one of the two outputs lost
    assert main(["segment", str(images), "-o", str(out), *command, "--check-shards", "2"]) == 1
    assert "missing (input: its shard): 1\n  img04.png: shard 1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--shard", "0/2", "--in-place"], "--shard: cannot shard an --in-place batch"),
     (["--shard", "1/1"], "--shard: the shard index must be an int in [0, 0] (0-based), got 1"),
     (["--check-shards", "2", "--ray"], "--check-shards and --ray exclude each other"),
     (["--ray", "--in-place"], "--ray runs a batch; --in-place is for the plain command"),
     (["--ray", "--ray-workers", "0"], "--ray-workers: must be an int >= 1, got 0")],
)  # fmt: skip
def test_refused_combinations_name_the_flag(plain, command, tmp_path, capsys, extra, message):
    images, _ = plain
    assert main(["segment", str(images), "-o", str(tmp_path / "out"), *command, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_ray_outputs_equal_the_plain_run_across_a_killed_worker(plain, command, tmp_path, capsys):
    with local_ray_cluster() as local_ray:  # the slow lane installs the [ray] extra
        images, expected = plain
        more = noise_photos(tmp_path / "more", 12, 96, 112)  # enough work to stop in the middle
        reference = tmp_path / "reference"
        assert main(["segment", str(more), "-o", str(reference), *command]) == 1
        argv = ["segment", str(more), "-o", str(tmp_path / "out"), *command, "--ray", local_ray,
                "--ray-workers", "2", "--ray-batch", "2"]  # fmt: skip
        code, _ = run_killing_an_actor(
            main, argv, "SegmentWorker",
            lambda: len(list((tmp_path / "out").glob("*_labels.png"))) >= 2,
        )  # fmt: skip
        assert code == 1
        captured = capsys.readouterr()
        assert "13 input(s): " in captured.out and ", 1 refused; ledger: " in captured.out
        assert "itaclip segment: refused broken.png: " in captured.err
        assert outputs(tmp_path / "out") == outputs(reference)
        lines = ledger_lines(tmp_path / "out")
        assert sorted(x["input"] for x in lines) == sorted(
            ["broken.png"] + [f"img{i:02d}.png" for i in range(12)]
        )  # each image once
        # the small batch too, and --check-shards 1 after a Ray run
        out = tmp_path / "small"
        assert main(["segment", str(images), "-o", str(out), *command, "--ray", local_ray]) == 1
        assert outputs(out) == outputs(expected)
        capsys.readouterr()
        assert main(["segment", str(images), "-o", str(out), *command, "--check-shards", "1"]) == 1
        assert "5 of 6 input(s) have their outputs, each written once" in capsys.readouterr().out
