"""Batches split over machines: deterministic shards, a ledger of what each run settled, and the
check that the shards together wrote every input exactly once. Standard library only.

- :class:`Shard` ``I/N`` takes the contiguous block ``[I*n//N, (I+1)*n//N)`` of a batch's ``n``
  inputs in their listing order (files as given, folders by name:
  :func:`~common_kernels.runtime.batch.find_images`), so any scheduler (a Slurm array, a
  Kubernetes indexed job, a shell loop) runs shard ``I`` with the same command line and
  ``I`` = its task index (0-based, as both number them).
- :class:`Ledger`: one JSON line per input a run settles (``written``, ``finished``: its output
  existed, or ``refused`` with the reason), appended and flushed as it goes, under the output
  folder's ``.shards/`` (one file per shard, or per Ray job), so a killed run leaves its record.
- :func:`check_shards` reads the ledgers against the batch: every input has its outputs, none
  was written twice, and the refused ones with their reasons.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from common_kernels.runtime.errors import InvalidArgument

T = TypeVar("T")

LEDGER_FOLDER = ".shards"
STATUSES = ("written", "finished", "refused")
MAX_SHARDS = 99_999  # the 5 digits of a shard's name
SHARD_TEXT = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count).

    Args:
        index: which shard, from 0.
        count: how many shards the batch is split into, >= 1.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or not 1 <= self.count <= MAX_SHARDS:
            raise InvalidArgument(
                "shard", f"the shard count must be an int in [1, {MAX_SHARDS}], got {self.count!r}"
            )
        if not isinstance(self.index, int) or not 0 <= self.index < self.count:
            raise InvalidArgument(
                "shard", f"the shard index must be an int in [0, {self.count - 1}] (0-based), got "
                f"{self.index!r}",
            )  # fmt: skip

    @classmethod
    def parse(cls, text: str | Shard | None) -> Shard | None:
        """``"I/N"`` (or a Shard, or None) -> the Shard."""
        if text is None or isinstance(text, Shard):
            return text
        match = SHARD_TEXT.match(str(text))
        if match is None:
            raise InvalidArgument("shard", f"must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
        return cls(int(match[1]), int(match[2]))

    def bounds(self, total: int) -> tuple[int, int]:
        """``[start, stop)`` of this shard among ``total`` inputs."""
        return self.index * total // self.count, (self.index + 1) * total // self.count

    def select(self, items: Sequence[T]) -> list[T]:
        """This shard's block of ``items`` (in their order)."""
        start, stop = self.bounds(len(items))
        return list(items[start:stop])

    @property
    def name(self) -> str:
        """``shard-00002-of-00004``: the name of its ledger (and of a per-shard file)."""
        return f"shard-{self.index:05d}-of-{self.count:05d}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def ledger_path(output: Path, name: str) -> Path:
    """Where a run's ledger goes: ``OUTPUT/.shards/NAME.jsonl``."""
    return output / LEDGER_FOLDER / f"{name}.jsonl"


class Ledger:
    """What one run settled, one JSON line per input: ``{"input", "status", "reason"?,
    "time"}``, appended and flushed line by line (a killed run keeps its lines; a resumed run
    appends to them).

    Args:
        path: the ``.jsonl`` file (its folder is made).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def record(self, key: str, status: str, reason: str | None = None) -> None:
        """Settle input ``key`` (its place in the batch, e.g. ``sub/a.png``)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        line = {"input": key, "status": status, "time": round(time.time(), 3)}
        if reason is not None:
            line["reason"] = reason
        self.stream.write(json.dumps(line) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_ledgers(folder: Path) -> Iterator[dict]:
    """Every line of every ledger under ``folder`` (``OUTPUT/.shards``); a last line cut short
    by a kill is left out."""
    for path in sorted(folder.glob("*.jsonl")):
        for text in path.read_text(encoding="utf-8").splitlines():
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(line, dict) and line.get("status") in STATUSES and "input" in line:
                yield line


@dataclass
class ShardCheck:
    """What :func:`check_shards` found.

    Args:
        total: the inputs of the batch.
        done: inputs whose outputs all exist.
        missing: inputs without all their outputs, each with the shard that owns it.
        twice: inputs written more than once, with the count.
        refused: inputs refused (and without outputs), with the last reason.
    """

    total: int
    done: int = 0
    missing: list[tuple[str, int]] = field(default_factory=list)
    twice: list[tuple[str, int]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every input written, exactly once."""
        return self.done == self.total and not self.twice

    def summary(self, limit: int = 20) -> str:
        """The verdict, then the inputs that spoil it (up to ``limit`` of each kind)."""
        head = (
            f"{self.done} of {self.total} input(s) have their outputs"
            f"{', each written once' if not self.twice else ''}"
        )
        lines = [head]
        for title, items in (
            ("missing (input: its shard)", [f"{k}: shard {s}" for k, s in self.missing]),
            ("written more than once", [f"{k}: {n} times" for k, n in self.twice]),
            ("refused", [f"{k}: {r}" for k, r in self.refused]),
        ):
            if items:
                lines.append(f"{title}: {len(items)}")
                lines += [f"  {item}" for item in items[:limit]]
                lines += [f"  ... {len(items) - limit} more"] if len(items) > limit else []
        return "\n".join(lines)


def check_shards(
    output: Path, keys: Sequence[str], outputs: Sequence[Sequence[Path]], count: int
) -> ShardCheck:
    """Whether the shards of a batch wrote every input exactly once, from their outputs on
    disk and the runs' ledgers.

    Args:
        output: the output folder (its ``.shards/`` holds the ledgers).
        keys: every input's key, in the batch's order (what the runs recorded).
        outputs: every input's output files, in the same order.
        count: the number of shards the batch was split into.
    """
    written: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for line in read_ledgers(output / LEDGER_FOLDER):
        if line["status"] == "written":
            written[line["input"]] = written.get(line["input"], 0) + 1
        elif line["status"] == "refused":
            reasons[line["input"]] = line.get("reason", "")
    done = [all(Path(f).is_file() for f in files) for files in outputs]
    return shard_check(keys, done, written, reasons, count)


def shard_check(
    keys: Sequence[str],
    done: Sequence[bool],
    written: dict[str, int],
    reasons: dict[str, str],
    count: int,
) -> ShardCheck:
    """The verdict on ``count`` shards from what is known of each input, however a package
    records it (ledgers, a file's metadata).

    Args:
        keys: every input's key, in the batch's order.
        done: whether each input's outputs are all there, in the same order.
        written: how many times each key was written.
        reasons: why each refused key was refused.
        count: the number of shards (each missing input is named with the one that owns it).
    """
    owner = {}
    for shard in [Shard(i, count) for i in range(max(count, 1))]:  # Shard(0, 0) refuses 0
        start, stop = shard.bounds(len(keys))
        owner.update({keys[i]: shard.index for i in range(start, stop)})
    check = ShardCheck(len(keys))
    for key, complete in zip(keys, done, strict=True):
        if complete:
            check.done += 1
        elif key in reasons:
            check.refused.append((key, reasons[key]))
        else:
            check.missing.append((key, owner[key]))
    check.twice = [(key, n) for key, n in written.items() if n > 1 and key in owner]
    return check


def check_shard_output(output: Path, shard: Shard | None, in_place: bool) -> None:
    """A sharded run writes into an output folder, and not in place: a re-run of an in-place
    shard could not tell a result from an input it would then process twice."""
    if shard is None:
        return
    if in_place:
        raise InvalidArgument(
            "shard", "cannot shard an {in_place} batch: a resumed shard could not tell its "
            "results from its inputs", mentions={"in_place": "in_place=True"},
        )  # fmt: skip
    if output.suffix and not output.is_dir():
        raise InvalidArgument("shard", "needs an output folder (its ledger goes to "
                              f"{LEDGER_FOLDER}/ in it), got the file name {output}")  # fmt: skip


def checked_shard(
    shard: Shard | str | None, output: str | os.PathLike, in_place: bool
) -> Shard | None:
    """A batch API's ``shard`` argument parsed (``"I/N"``, a Shard or None) and checked against
    its output (:func:`check_shard_output`)."""
    shard = Shard.parse(shard)
    check_shard_output(Path(output), shard, in_place)
    return shard


def now_name(prefix: str) -> str:
    """A ledger name unique to this run: ``PREFIX-<utc time>-<pid>``."""
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
