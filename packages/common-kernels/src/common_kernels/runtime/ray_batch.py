"""A batch of files on a Ray cluster, the same for every package's batch command (``--ray``).

The driver lists the inputs once and checks where each result goes (as the plain command does);
Ray Data then sends the jobs in batches to a pool of actors (``RayOptions.workers`` of them,
each with ``gpus_per_worker``), each loading the model once (the package's worker class) and
writing its results atomically to the output folder, which must be storage every node sees. An
actor that dies (its node lost, its process killed) is restarted and its batch retried (Ray
Data retries actor tasks without limit); the worker skips a result that exists, so a retried
batch never writes a file twice. Each input comes back as a row (``written``, ``finished``, or
``refused`` with the reason: a bad file does not stop the job), recorded in the run's
:class:`~common_kernels.runtime.shards.Ledger` and counted in a :class:`RaySummary`.

Ray is imported here only: it is each package's ``[ray]`` extra.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common_kernels.runtime.batch import Skipped
from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.progress import progress as show_progress
from common_kernels.runtime.shards import Ledger


@dataclass(frozen=True)
class RayOptions:
    """How a batch runs on Ray.

    Args:
        address: the cluster (``"auto"``: the one ``ray start`` made on this machine, or
            ``HOST:PORT``, ``ray://HOST:PORT``); None: ``ray.init()``'s default (``RAY_ADDRESS``,
            else a new local cluster).
        workers: actors in the pool (each loads the model once), >= 1.
        gpus_per_worker: GPUs each actor reserves (0: CPU actors).
        cpus_per_worker: CPUs each actor reserves.
        batch_size: inputs per actor call, >= 1.
    """

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    batch_size: int = 8

    def __post_init__(self) -> None:
        for name, low in (("workers", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidArgument(f"ray_{name}", f"must be an int >= {low}, got {value!r}")
        for name in ("gpus_per_worker", "cpus_per_worker"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(f"ray_{name}", f"must be a number >= 0, got {value!r}")


@dataclass
class RaySummary:
    """Every input of a Ray run, accounted for.

    Args:
        written: results written by this run.
        finished: inputs whose results existed (an earlier run, or a retried batch).
        refused: inputs refused, with the reason.
    """

    written: int = 0
    finished: int = 0
    refused: list[Skipped] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.written + self.finished + len(self.refused)

    def line(self) -> str:
        return (f"{self.total} input(s): {self.written} written, {self.finished} finished "
                f"before, {len(self.refused)} refused")  # fmt: skip


def import_ray(package: str) -> object:
    """``ray`` with Ray Data, or an ImportError saying which extra installs it."""
    try:
        import ray
        import ray.data  # Ray Data is the engine
    except ImportError as error:
        raise ImportError(
            f"--ray needs Ray with Ray Data: pip install '{package}[ray]' ({error})"
        ) from None
    return ray


def run_on_ray(
    jobs: Sequence[dict],
    worker: type,
    worker_args: tuple,
    options: RayOptions,
    *,
    package: str,
    ledger: Ledger,
    desc: str = "ray",
    progress: bool = True,
) -> RaySummary:
    """Run ``jobs`` on Ray's actor pool; every input comes back once, recorded in ``ledger``.

    Args:
        jobs: one dict per input with a unique ``"key"`` (its place in the batch) and the
            strings the worker needs (paths).
        worker: the actor class: ``worker(*worker_args)`` loads the model; ``worker(batch)``
            takes a batch of jobs (a dict of numpy arrays) and returns a dict with ``"key"``,
            ``"status"`` (``written``, ``finished``, ``refused``) and ``"reason"`` per job.
        worker_args: the constructor's arguments (picklable).
        options: the cluster and the pool.
        package: the package whose ``[ray]`` extra installs Ray (for the error).
        ledger: where each input is recorded as its row comes back.
        desc: the progress bar's label.
        progress: show progress on the driver.

    Raises:
        RuntimeError: rows missing or repeated (a lost input must not pass silently).
    """
    ray = import_ray(package)
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)  # fmt: skip
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver's own bar counts inputs
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    blocks = max(1, math.ceil(len(jobs) / options.batch_size))  # a block: about one batch
    dataset = ray.data.from_items(list(jobs), override_num_blocks=blocks)
    results = dataset.map_batches(
        worker, fn_constructor_args=worker_args, batch_size=options.batch_size,
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_gpus=options.gpus_per_worker or None, num_cpus=options.cpus_per_worker,
        batch_format="numpy",
    )  # fmt: skip
    summary, seen = RaySummary(), set()
    expected = {job["key"] for job in jobs}
    rows = show_progress(results.iter_rows(), desc=desc, total=len(jobs), unit="images",
                         disable=not progress)  # fmt: skip
    for row in rows:
        key, status = str(row["key"]), str(row["status"])
        reason = str(row["reason"]) or None
        if key in seen or key not in expected:
            raise RuntimeError(f"Ray returned {key!r} twice or unasked")
        seen.add(key)
        ledger.record(key, status, reason)
        if status == "written":
            summary.written += 1
        elif status == "finished":
            summary.finished += 1
        else:
            summary.refused.append(Skipped(Path(key), reason or "refused"))
    if seen != expected:
        missing = sorted(expected - seen)
        raise RuntimeError(f"Ray returned no result for {len(missing)} input(s): {missing[:5]}")
    return summary


class RowWorker(abc.ABC):
    """The base of a package's Ray worker: :meth:`settle` one job at a time; a file it cannot
    read or a job its model refuses (``ValueError``, ``OSError``) is ``refused`` with the
    reason and the batch goes on (any other error fails the run, as a bug should)."""

    @abc.abstractmethod
    def settle(self, job: dict) -> str:
        """Process one job (a dict of strings); returns ``"written"`` or ``"finished"``."""

    def __call__(self, batch: dict) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"key": [], "status": [], "reason": []}
        for index in range(len(batch["key"])):
            job = {name: str(values[index]) for name, values in batch.items()}
            try:
                status, reason = self.settle(job), ""
            except (ValueError, OSError) as error:
                status, reason = "refused", " ".join(str(error).split()) or type(error).__name__
            out["key"].append(job["key"])
            out["status"].append(status)
            out["reason"].append(reason)
        return out
