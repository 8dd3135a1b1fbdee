"""Helpers for the batch commands' ``--shard``/``--ray`` tests: :func:`noise_photos` (the
inputs), :func:`local_ray_cluster` (a Ray cluster on this machine), :func:`run_killing_an_actor`
and :func:`ray_actor_pids` (an actor killed mid-job), :func:`wait_until` and
:func:`ledger_lines` (what the runs recorded). Standard library only at import (numpy, Pillow,
psutil and ray are imported by the helpers that need them)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def local_ray_cluster(num_cpus: int = 2) -> Iterator[str]:
    """A Ray cluster on this machine for the block (``ray`` imported here: the packages'
    ``[ray]`` extra); yields its address, which ``--ray ADDRESS`` of another process joins."""
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def ray_actor_pids(worker: str) -> list[int]:
    """The PIDs of the Ray Data actors running the class ``worker`` (Ray titles their
    processes ``ray::MapWorker(MapBatches(<worker>))``)."""
    import psutil

    named = [(p.pid, p.info["cmdline"] or [""]) for p in psutil.process_iter(["cmdline"])]
    return [pid for pid, words in named if f"MapBatches({worker})" in words[0]]


def wait_until(condition: Callable[[], object], timeout: float = 300.0) -> None:
    """Poll ``condition`` every 50 ms until it holds; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s")
        time.sleep(0.05)


def ledger_lines(output: str | os.PathLike) -> list[dict]:
    """Every line the runs of a batch recorded in ``OUTPUT/.shards/*.jsonl``, file by file."""
    folder = Path(output) / ".shards"
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines()]  # fmt: skip


def noise_photos(folder: Path, count: int, height: int, width: int) -> Path:
    """``count`` seeded noise PNGs ``img00.png``... of ``height x width`` RGB, and
    ``broken.png``, a file that is not an image (a batch's inputs in its tests)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index:02d}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def run_killing_an_actor(
    main: Callable[[list[str]], int], argv: list[str], worker: str,
    ready: Callable[[], object],
) -> tuple[int, int]:  # fmt: skip
    """Run ``main(argv)`` (a ``--ray`` batch) in a thread; once ``ready()`` holds and an actor
    of ``worker`` runs, SIGKILL that actor; returns the command's exit status and the PID."""
    import threading

    codes: list[int] = []
    run = threading.Thread(target=lambda: codes.append(main(argv)))
    run.start()
    wait_until(lambda: ready() and ray_actor_pids(worker))
    victim = ray_actor_pids(worker)[0]
    os.kill(victim, signal.SIGKILL)
    run.join(timeout=600)
    assert codes, "the command did not end"
    return codes[0], victim
