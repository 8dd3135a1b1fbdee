"""cpu_speed.py's measurement driver: one process per configuration (``cpu_speed.py
--worker``), interleaved rounds, and the journal every finished measurement goes to (a run cut
short resumes from it).

A sibling of ``cpu_speed.py``, imported by name (``cpu_speed.py`` puts this folder on
``sys.path``).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from cpu_speed_plan import CURRENT, HERE, baseline_sources, flops_key, spec_key

SCRIPT = HERE / "cpu_speed.py"  # the entry point: its --worker serves one configuration
COMMAND_TIMEOUT_S = 1800
LOSS_STEP_TIMEOUT_S = 30  # and per training step of a loss comparison (0.3.1: 2-10 s a step here)


def losses_timeout(steps: int) -> float:
    """Seconds a worker may take to train ``steps`` steps and answer: a loss comparison of 200
    steps of 0.3.1's code took more than 1800 s on a busy 2-core machine."""
    return COMMAND_TIMEOUT_S + steps * LOSS_STEP_TIMEOUT_S


class WorkerFailed(RuntimeError):
    """A configuration's process died or did not answer in time."""


class Worker:
    """A configuration's process (``--worker``), driven by one command at a time."""

    def __init__(self, spec: dict[str, Any]) -> None:
        threads = str(spec["threads"])
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if spec["code"] != CURRENT:  # that revision's sources come first on the path
            sources = baseline_sources(spec["code"])
            env["PYTHONPATH"] = os.pathsep.join([*sources, env.get("PYTHONPATH", "")])
        self.spec = spec
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by close())
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            env=env,
        )  # fmt: skip

    def read(self, timeout: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        """The next reply; WorkerFailed when the process ends or stays silent too long."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.stderr.seek(0)
            last = (self.stderr.read().strip().splitlines() or ["killed"])[-1]
            self.close()
            if not ready:
                raise WorkerFailed(f"no answer within {timeout:.0f} s")
            raise WorkerFailed(f"exit {self.process.returncode}: {last}")
        return json.loads(line)

    def ask(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        """Send ``command``, return its reply (WorkerFailed after ``timeout`` s of silence)."""
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the process is gone: read() says why
        return self.read(timeout)

    def close(self) -> None:
        """End the process (stdin closed; killed if it does not exit within 30 s)."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.process.kill()
                self.process.wait()
        self.stderr.close()


class Journal:
    """Finished measurements, one JSON line each, read back on resume.

    Records: ``{"record": "start" | "round" | "flops" | "error", "key": ..., ...}``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        if path.is_file():
            self.records = [json.loads(line) for line in path.read_text().splitlines() if line]

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def find(self, record: str, key: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["record"] == record and r["key"] == key]

    def rounds_done(self, key: str) -> set[int]:
        return {r["round"] for r in self.find("round", key)}

    def failed(self, key: str) -> bool:
        return bool(self.find("error", key))


def load_average() -> float:
    """The 1-minute load average (0.0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def measure_group(
    specs: list[dict[str, Any]], rounds: int, journal: Journal, bar: Any = None,
    loss_steps: int = 0,
) -> None:  # fmt: skip
    """Measure one group's configurations in interleaved rounds, journaling every result.

    Configurations that the journal holds complete (or failed) are skipped; the others start in
    fresh processes, warm up one by one, then run their missing rounds: round ``r`` times one
    call of each in turn, the order rotated by ``r``. FLOP counts the journal lacks follow.

    Args:
        specs: the group's configurations.
        rounds: timed rounds per configuration.
        journal: where results go (and what is done already).
        bar: a tqdm bar advanced by one per round of a configuration.
    """

    def complete(spec: dict[str, Any]) -> bool:
        key = spec_key(spec)
        return journal.failed(key) or journal.rounds_done(key) >= set(range(rounds))

    todo = [s for s in specs if not complete(s)]
    counts = {flops_key(s) for s in specs if not journal.find("flops", flops_key(s))}
    losses = {
        spec_key(s) for s in specs
        if loss_steps and s["kind"] == "train" and s["variant"] == "semanir"
        and not journal.find("losses", spec_key(s))
    }  # fmt: skip
    if not todo and not counts and not losses:
        return
    if not todo:  # the rounds were journaled, counts or losses were not: a process for each
        todo = [s for s in specs if spec_key(s) in losses
                or (flops_key(s) in counts and s.get("mode", "fp32") == "fp32")]  # fmt: skip
    workers = {spec_key(s): Worker(s) for s in todo}
    try:
        live = {}
        for key, worker in workers.items():
            try:
                start = worker.read()  # built
                start.update(warmup=worker.ask("warmup"), load=load_average())
                journal.add({"record": "start", "key": key, **start})
                live[key] = worker
            except WorkerFailed as error:
                journal.add({"record": "error", "key": key, "error": str(error)})
        for r in range(rounds):
            keys = list(live)
            keys = keys[r % len(keys) :] + keys[: r % len(keys)] if keys else keys
            for key in keys:
                if r in journal.rounds_done(key) or key not in live:
                    continue
                load = load_average()
                try:
                    result = live[key].ask(f"run {r}")
                except WorkerFailed as error:
                    journal.add({"record": "error", "key": key, "error": str(error)})
                    del live[key]
                    continue
                journal.add({"record": "round", "key": key, "round": r, "load": load, **result})
                if bar is not None:
                    bar.update()
        for key, worker in list(live.items()):
            fkey = flops_key(worker.spec)
            if fkey not in counts or worker.spec.get("mode", "fp32") != "fp32":
                continue  # counted once, eagerly (compiled kernels dispatch no aten op)
            try:
                journal.add({"record": "flops", "key": fkey, **worker.ask("flops")})
                counts.discard(fkey)
            except WorkerFailed as error:
                journal.add({"record": "error", "key": key, "error": f"flop count: {error}"})
        for key, worker in list(live.items()):
            if key not in losses:
                continue
            try:
                journal.add(
                    {
                        "record": "losses",
                        "key": key,
                        **worker.ask(f"losses {loss_steps}", losses_timeout(loss_steps)),
                    }
                )
            except WorkerFailed as error:
                journal.add({"record": "error", "key": key, "error": f"losses: {error}"})
    finally:
        for worker in workers.values():
            worker.close()
