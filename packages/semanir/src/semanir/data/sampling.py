"""Training data that resumes exactly: a sampler whose order and per-item randomness are
functions of (seed, epoch, position), and the loader that checkpoints its position.

Each epoch visits the dataset in the order of a permutation drawn from ``(seed, epoch)``, and
the item at position ``p`` gets its own seed ``(seed, epoch, p)`` for its crop, degradation and
flip (the datasets accept ``(index, item_seed)`` keys). Nothing depends on torch's global
generator, on the number of loader workers or on which worker loads which item, so the batches
after a resume at ``(epoch, position)`` are the batches the uninterrupted run would have seen.

:class:`ResumableDataLoader` is torchdata's ``StatefulDataLoader`` over such a sampler:
Lightning saves its state (``{"epoch", "position"}`` at the last batch handed out, the batches
that loader workers prefetch not counted) in every checkpoint and loads it on a resume, with
any number of workers. torchdata's own state could not replace the sampler: it restores a
count of items, not the draws of the items, and it is tied to the number of workers.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader


def epoch_order(length: int, seed: int, epoch: int) -> list[int]:
    """The visiting order of epoch ``epoch``: a permutation of ``range(length)``."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    return torch.randperm(length, generator=generator).tolist()


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the item at ``position`` of epoch ``epoch``."""
    state = np.random.SeedSequence([seed, epoch, position]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> 1)  # a non-negative int64


class ResumableSampler(DistributedSampler):
    """Yields ``(index, item_seed)`` keys in the epoch's order, from a resume position on.

    Lightning calls :meth:`set_epoch` at the start of every epoch; :meth:`resume_at` (or
    :meth:`load_state_dict`) makes the first epoch after a restart start at the position where
    the checkpointed run stopped. Under DDP, process ``rank`` of ``num_replicas`` takes every
    ``num_replicas``-th item of the epoch's order from its rank on (a ``DistributedSampler``
    subclass, so Lightning does not wrap it in its own).

    Args:
        length: the dataset's length.
        seed: the run's data seed.
        batch_size: an epoch hands out the largest multiple of ``batch_size * num_replicas``
            that ``length`` holds (a loader's ``drop_last``), so that a state saved at the last
            batch of an epoch resumes at the start of the next.
        num_replicas: the number of processes sharing the data (DDP's world size).
        rank: this process's rank among them.
    """

    def __init__(
        self, length: int, seed: int, batch_size: int = 1, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(range(length), num_replicas, rank, shuffle=False, seed=seed)
        self.length = length
        self.used = length - length % (batch_size * num_replicas)  # items per epoch
        self.position = 0  # the items of the current epoch handed out (by all processes)
        self._resume: tuple[int, int] | None = None  # (epoch, position)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def resume_at(self, epoch: int, position: int) -> None:
        """Start epoch ``epoch`` at ``position`` (items before it were trained on); a finished
        epoch resumes at the start of the next.

        The sampler is also put in that epoch: with loader workers the first indices are drawn
        when the iterator is made, which on a resume comes before Lightning's ``set_epoch``.
        """
        if position >= self.used:
            epoch, position = epoch + 1, 0
        self._resume = (epoch, position)
        self.epoch, self.position = epoch, position

    def state_dict(self) -> dict[str, int]:
        """Where the sampler stands: the epoch and how many of its items were handed out."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict` (see :meth:`resume_at`)."""
        self.resume_at(int(state_dict["epoch"]), int(state_dict["position"]))

    def start(self) -> int:
        """Where the current epoch starts: the resume position in the resumed epoch, else 0."""
        if self._resume is not None and self._resume[0] == self.epoch:
            return min(self._resume[1], self.used)
        return 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.length, self.seed, self.epoch)
        first = self.start()
        self._resume = None  # later epochs start from their beginning
        self.position = first
        for position in range(first + self.rank, self.used, self.num_replicas):
            self.position = position - self.rank + self.num_replicas  # handed out once drawn
            yield order[position], item_seed(self.seed, self.epoch, position)

    def __len__(self) -> int:
        return self.used // self.num_replicas


class ResumableDataLoader(StatefulDataLoader):
    """torchdata's ``StatefulDataLoader`` over a :class:`ResumableSampler`, whose state is the
    sampler's ``{"epoch", "position"}`` at the last batch handed out.

    torchdata records the sampler's state with every batch its workers are sent, and gives the
    one of the last batch handed out; batches prefetched by workers are not counted. The state
    is kept in these two numbers only, so a run saved with some number of workers resumes with
    any other (torchdata's full state refuses that).

    Args:
        dataset: a map-style dataset that takes ``(index, item_seed)`` keys.
        sampler: the run's sampler.
        **kwargs: ``DataLoader`` options (``batch_size``, ``num_workers``, ...).
    """

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, **kwargs: Any) -> None:
        with warnings.catch_warnings():  # torchdata 0.11 calls torch's deprecated set_vital
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
            super().__init__(dataset, sampler=sampler, snapshot_every_n_steps=1, **kwargs)

    def state_dict(self) -> dict[str, int]:
        return _sampler_state(super().state_dict())

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        super().load_state_dict({})  # a fresh iterator, from the sampler's position
        if state_dict:
            self.sampler.load_state_dict(state_dict)


def _sampler_state(loader_state: dict[str, Any]) -> dict[str, int]:
    """The :class:`ResumableSampler` state inside a ``StatefulDataLoader`` state (without
    workers: its index sampler's; with workers: that of the last snapshot, taken at every
    batch)."""
    if loader_state.get("_snapshot"):
        if loader_state.get("_steps_since_snapshot", 0):
            raise RuntimeError("the loader's snapshot is older than its last batch")
        loader_state = loader_state["_snapshot"]["_main_snapshot"]
    state = (loader_state.get("_sampler_iter_state") or {}).get("sampler_state")
    if state is None:
        raise RuntimeError(f"no sampler state in the loader's state: {sorted(loader_state)}")
    return {"epoch": int(state["epoch"]), "position": int(state["position"])}
