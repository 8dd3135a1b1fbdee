"""Stage-3 signal targets: each call's specialist conditioning, built once from the specialists.

A signal embedding is trained to match what its specialist conditions on (``conditioning_target``
of the adapter: itaclip's CLIP text embedding, the diffusion text encoder's end-of-text state).
:func:`build_signal_targets` computes it for every call of a training JSONL whose specialist
consumes signals, from the call's ``text``, and writes two files to a folder:

- ``targets.safetensors``: one float32 vector per call, named ``<record key>/<call id>``;
- ``targets.json``: the index, ``{"format": 1, "data": ..., "tensors": "targets.safetensors",
  "records": {<record key>: {<call id>: {"tensor", "task", "specialist", "text"}}}}``.

A record's key is its ``id``, or ``line N`` (its line in the JSONL) without one. Both files are
written atomically, tensors first, so an index never points at missing tensors. Stage-3
training reads them with ``train(..., signal_targets="OUT/targets.json")`` (``vitron train
--signal-targets``); :class:`vitron.training.data.TargetIndex` is the reader.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from vitron.checks import check_input_file, check_output_folder
from vitron.specialists.base import Consumes
from vitron.specialists.registry import SpecialistRegistry
from vitron.training.data import (
    TARGETS_FORMAT,
    read_records,
    record_counts,
    record_key,
    record_messages,
)

INDEX_NAME = "targets.json"
TENSORS_NAME = "targets.safetensors"


@dataclass(frozen=True)
class TargetJob:
    """One call whose conditioning is to be computed.

    Args:
        key: the record's key.
        call_id: the call's id.
        task: the call's task.
        specialist: the adapter serving the task.
        text: the call's ``text`` argument.
    """

    key: str
    call_id: str
    task: str
    specialist: str
    text: str

    @property
    def tensor(self) -> str:
        return f"{self.key}/{self.call_id}"


def plan_targets(data: str | Path, registry: SpecialistRegistry) -> list[TargetJob]:
    """The calls of a JSONL that take a signal, checked (nothing is loaded or written).

    Args:
        data: the training JSONL.
        registry: the specialists (only which adapter serves a task is read).

    Returns:
        One job per call whose specialist consumes signals and that has a ``text``.
    """
    jobs: list[TargetJob] = []
    seen_keys: dict[str, int] = {}
    for record in read_records(data):
        where = f"{data}:{record['_line']}"
        key = record_key(record)
        if key in seen_keys:
            raise ValueError(f"{where}: id {key!r} is also the id of line {seen_keys[key]}")
        seen_keys[key] = record["_line"]
        by_id: dict[str, TargetJob] = {}
        for message in record_messages(record, record_counts(record), where):
            calls = message.invocation.calls if message.invocation is not None else ()
            for call in calls:
                if call.task not in registry.by_task:
                    continue  # no specialist: no conditioning to learn
                specialist = registry.specialist(call.task)
                text = call.args.get("text")
                if Consumes.SIGNAL not in specialist.consumes or not text:
                    continue
                job = TargetJob(key, call.id, call.task, specialist.name, str(text))
                if by_id.get(call.id, job) != job:
                    raise ValueError(
                        f"{where}: call id {call.id!r} is used twice with different tasks or "
                        "texts; signal targets are stored per call id"
                    )
                by_id[call.id] = job
        jobs.extend(by_id.values())
    return jobs


def compute_targets(
    jobs: list[TargetJob], registry: SpecialistRegistry, progress: bool = True
) -> dict[str, Tensor]:
    """Each job's conditioning (specialist by specialist, each loaded and on its device once;
    a (task, text) pair is encoded once).

    Args:
        jobs: from :func:`plan_targets`.
        registry: the specialists.
        progress: show a progress bar on stderr.

    Returns:
        Tensor name -> float32 CPU vector.
    """
    from common_kernels.runtime.progress import progress as show_progress

    groups: dict[str, list[TargetJob]] = defaultdict(list)
    for job in jobs:
        groups[job.specialist].append(job)
    ordered = [job for group in groups.values() for job in group]
    counted = iter(show_progress(ordered, desc="targets", unit="calls", disable=not progress))
    tensors: dict[str, Tensor] = {}
    for group in groups.values():
        with registry.specialist(group[0].task).active() as specialist:
            encoded: dict[tuple[str, str], Tensor] = {}
            for job in itertools.islice(counted, len(group)):  # this group's jobs, counted
                if (job.task, job.text) not in encoded:
                    target = specialist.conditioning_target(job.task, job.text)
                    encoded[job.task, job.text] = target.float().cpu().contiguous()
                tensors[job.tensor] = encoded[job.task, job.text].clone()  # one storage each
    next(counted, None)  # past the last job: the progress writes its final line
    return tensors


def build_signal_targets(
    data: str | Path,
    registry: SpecialistRegistry,
    output: str | Path,
    progress: bool = True,
) -> Path:
    """Compute the stage-3 targets of a training JSONL and write them to ``output``.

    Args:
        data: the training JSONL.
        registry: the specialists whose conditioning the signals learn.
        output: the folder for ``targets.safetensors`` and ``targets.json``.
        progress: show a progress bar on stderr.

    Returns:
        The path of ``targets.json``.

    Raises:
        InvalidArgument: (``data``) not an existing file; (``output``) a folder that cannot be
            created or written. Checked before any specialist loads.
    """
    from common_kernels.runtime.files import atomic_write
    from vitron.io import write_json

    data = check_input_file(data, "data")
    output = check_output_folder(output, "output")
    jobs = plan_targets(data, registry)
    if not jobs:
        raise ValueError(
            f"{data} has no call that takes a signal (tasks whose specialist consumes signals, "
            "with a text argument): nothing to build"
        )
    tensors = compute_targets(jobs, registry, progress)
    records: dict[str, dict[str, Any]] = defaultdict(dict)
    for job in jobs:
        records[job.key][job.call_id] = {
            "tensor": job.tensor, "task": job.task, "specialist": job.specialist,
            "text": job.text,
        }  # fmt: skip
    with atomic_write(output / TENSORS_NAME, make_parents=True) as temp:
        save_file(tensors, str(temp))
    index = {"format": TARGETS_FORMAT, "data": data.name, "tensors": TENSORS_NAME}
    return write_json(output / INDEX_NAME, {**index, "records": dict(records)})
