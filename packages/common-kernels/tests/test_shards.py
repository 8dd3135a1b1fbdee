"""Shards of a batch, their ledgers and the exactly-once check; the Ray runner's options and,
on a local Ray cluster (slow lane), its accounting and retries."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from common_kernels.runtime.batch import add_distributed_options, distributed_mode
from common_kernels.runtime.cli import Parser
from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.ray_batch import RayOptions, RowWorker, import_ray, run_on_ray
from common_kernels.runtime.shards import (
    Ledger,
    Shard,
    check_shard_output,
    check_shards,
    ledger_path,
    read_ledgers,
)


@pytest.mark.parametrize("total", [0, 1, 2, 7, 10, 101])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_the_shards_tile_the_batch_in_order_and_differ_by_at_most_one(total, count):
    items = list(range(total))
    blocks = [Shard(i, count).select(items) for i in range(count)]
    assert [x for block in blocks for x in block] == items  # each item once, in order
    sizes = [len(block) for block in blocks]
    assert max(sizes) - min(sizes) <= 1
    # the definition: shard I takes [I*n//N, (I+1)*n//N)
    assert blocks[-1] == items[(count - 1) * total // count :]


@pytest.mark.parametrize(
    ("text", "message"),
    [("x", re.escape("shard: must be I/N with 0 <= I < N (e.g. 0/4), got 'x'")),
     ("1/", "shard: must be I/N"), ("-1/4", "shard: must be I/N"),
     ("4/4", r"shard: the shard index must be an int in \[0, 3\] \(0-based\), got 4"),
     ("0/0", r"shard: the shard count must be an int in \[1, 99999\], got 0"),
     ("0/100000", r"shard: the shard count must be an int in \[1, 99999\], got 100000")],
)  # fmt: skip
def test_a_bad_shard_is_refused_naming_it(text, message):
    with pytest.raises(InvalidArgument, match=message):
        Shard.parse(text)


def test_shard_text_round_trips_and_names_its_ledger():
    shard = Shard.parse(" 2 / 16 ")
    assert (shard.index, shard.count, str(shard)) == (2, 16, "2/16")
    assert shard.name == "shard-00002-of-00016"
    assert Shard.parse(None) is None and Shard.parse(shard) is shard
    assert ledger_path(Path("out"), shard.name) == Path("out/.shards/shard-00002-of-00016.jsonl")


def test_a_sharded_output_is_a_folder_and_not_in_place(tmp_path):
    shard = Shard(0, 2)
    with pytest.raises(InvalidArgument, match="cannot shard an in_place=True batch"):
        check_shard_output(tmp_path, shard, in_place=True)
    with pytest.raises(InvalidArgument, match=r"needs an output folder .* got the file name"):
        check_shard_output(tmp_path / "out.png", shard, in_place=False)
    check_shard_output(tmp_path / "out.png", None, in_place=True)  # no shard: no rule
    (tmp_path / "dir.v2").mkdir()
    check_shard_output(tmp_path / "dir.v2", shard, in_place=False)  # an existing folder


def write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"result")
    return path


def test_ledger_lines_are_appended_flushed_and_a_cut_last_line_is_ignored(tmp_path):
    path = ledger_path(tmp_path, "shard-00000-of-00001")
    with Ledger(path) as ledger:
        ledger.record("a.png", "written")
        ledger.record("b.png", "refused", "not an image")
        assert len(path.read_text().splitlines()) == 2  # on disk before close
    with Ledger(path) as ledger:  # a resumed run appends
        ledger.record("a.png", "finished")
    with open(path, "a") as stream:
        stream.write('{"input": "c.png", "sta')  # a kill mid-line
    lines = list(read_ledgers(path.parent))
    assert [(x["input"], x["status"], x.get("reason")) for x in lines] == [
        ("a.png", "written", None), ("b.png", "refused", "not an image"),
        ("a.png", "finished", None)]  # fmt: skip
    with pytest.raises(ValueError, match="status must be one of written, finished, refused"):
        Ledger(path).record("a.png", "done")


def test_check_shards_accounts_for_every_input(tmp_path):
    keys = [f"{i}.png" for i in range(5)]
    outputs = [[tmp_path / f"{i}.png"] for i in range(5)]
    with Ledger(ledger_path(tmp_path, Shard(0, 2).name)) as ledger:  # inputs 0, 1
        for key, (target,) in zip(keys[:2], outputs[:2], strict=True):
            write(target)
            ledger.record(key, "written")
    check = check_shards(tmp_path, keys, outputs, 2)
    assert not check.ok and check.done == 2
    assert check.missing == [("2.png", 1), ("3.png", 1), ("4.png", 1)]  # shard 1 never ran
    with Ledger(ledger_path(tmp_path, Shard(1, 2).name)) as ledger:  # inputs 2, 3, 4
        for key, (target,) in zip(keys[2:4], outputs[2:4], strict=True):
            write(target)
            ledger.record(key, "written")
        ledger.record("4.png", "refused", "truncated file")
    check = check_shards(tmp_path, keys, outputs, 2)
    assert (check.ok, check.done, check.missing) == (False, 4, [])
    assert check.refused == [("4.png", "truncated file")]
    write(outputs[4][0])  # fixed and re-run by hand: now every input has its output
    check = check_shards(tmp_path, keys, outputs, 2)
    assert check.ok and check.summary() == "5 of 5 input(s) have their outputs, each written once"
    with Ledger(ledger_path(tmp_path, "ray-2")) as ledger:  # another run wrote 0.png again
        ledger.record("0.png", "written")
    check = check_shards(tmp_path, keys, outputs, 2)
    assert not check.ok and check.twice == [("0.png", 2)]
    assert "written more than once: 1\n  0.png: 2 times" in check.summary()


def test_the_distributed_flags_exclude_each_other():
    parser = Parser(prog="tool")
    add_distributed_options(parser, results="masks")
    args = parser.parse_args(["--ray"])
    assert (args.ray, distributed_mode(args)) == ("", "ray")  # no address: Ray's default
    assert distributed_mode(parser.parse_args(["--check-shards", "3"])) == "check-shards"
    assert distributed_mode(parser.parse_args([])) == "plain"
    with pytest.raises(ValueError, match="--shard and --ray exclude each other"):
        distributed_mode(parser.parse_args(["--shard", "0/2", "--ray", "auto"]))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"workers": 0}, "ray_workers: must be an int >= 1, got 0"),
     ({"batch_size": 1.5}, "ray_batch_size: must be an int >= 1, got 1.5"),
     ({"gpus_per_worker": -1}, "ray_gpus_per_worker: must be a number >= 0, got -1")],
)  # fmt: skip
def test_ray_options_are_checked(options, message):
    with pytest.raises(InvalidArgument, match=message):
        RayOptions(**options)


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"--ray needs Ray with Ray Data: pip install "
                       r"'semanir\[ray\]'"):  # fmt: skip
        import_ray("semanir")


class Doubler(RowWorker):
    """A toy worker: writes twice its input number into ``<out>/<key>``; refuses negative ones;
    the first time it meets ``kill_at`` it kills its own process (a worker lost mid-batch)."""

    def __init__(self, out: str, kill_at: int | None) -> None:
        self.out, self.kill_at = Path(out), kill_at

    def settle(self, job: dict) -> str:
        target = self.out / job["key"]
        if target.is_file():
            return "finished"
        value = int(job["value"])
        if value < 0:
            raise ValueError(f"{value} is negative")
        marker = self.out / ".killed"
        if value == self.kill_at and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        target.write_text(str(2 * value))
        return "written"


@pytest.fixture(scope="module")
def local_ray():
    import ray  # the slow lane installs the packages' [ray] extras

    # the workers cannot import this test module by name: it travels by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_runs_every_input_once_across_a_killed_worker(tmp_path, local_ray):
    jobs = [{"key": f"{i}.txt", "value": str(i)} for i in range(12)]
    jobs.append({"key": "neg.txt", "value": "-3"})
    write(tmp_path / "0.txt").write_text("0")  # finished by an earlier run
    path = ledger_path(tmp_path, "ray")
    with Ledger(path) as ledger:
        summary = run_on_ray(jobs, Doubler, (str(tmp_path), 7), RayOptions(workers=2,
                             batch_size=2), package="common-kernels", ledger=ledger,
                             progress=False)  # fmt: skip
    assert (tmp_path / ".killed").exists()  # a worker really died mid-batch
    # 0.txt existed; a result the killed try wrote before dying is finished for the retry
    assert summary.written + summary.finished == 12 and 1 <= summary.finished <= 2
    assert [(str(s.path), s.reason) for s in summary.refused] == [("neg.txt", "-3 is negative")]
    for i in range(12):
        assert (tmp_path / f"{i}.txt").read_text() == str(2 * i)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(line["input"] for line in lines) == sorted(job["key"] for job in jobs)
