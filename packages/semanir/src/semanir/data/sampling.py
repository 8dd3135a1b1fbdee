"""A training sampler whose order and per-item randomness are functions of (seed, epoch,
position), so that a run stopped in the middle of an epoch resumes exactly where it stopped.

Each epoch visits the dataset in the order of a permutation drawn from ``(seed, epoch)``, and
the item at position ``p`` gets its own seed ``(seed, epoch, p)`` for its crop, degradation and
flip (the datasets accept ``(index, item_seed)`` keys). Nothing depends on torch's global
generator, on the number of loader workers or on which worker loads which item, so the batches
after a resume at ``(epoch, position)`` are the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_order(length: int, seed: int, epoch: int) -> list[int]:
    """The visiting order of epoch ``epoch``: a permutation of ``range(length)``."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    return torch.randperm(length, generator=generator).tolist()


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the item at ``position`` of epoch ``epoch``."""
    state = np.random.SeedSequence([seed, epoch, position]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> 1)  # a non-negative int64


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, item_seed)`` keys in the epoch's order, from a resume position on.

    Lightning calls :meth:`set_epoch` at the start of every epoch (as for a
    ``DistributedSampler``); :meth:`resume_at` makes the first epoch after a restart start at
    the position where the checkpointed run stopped.

    Args:
        length: the dataset's length.
        seed: the run's data seed.
    """

    def __init__(self, length: int, seed: int) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, position)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, position: int) -> None:
        """Start epoch ``epoch`` at ``position`` (items before it were trained on).

        The sampler is also put in that epoch: with loader workers the first indices are drawn
        when the iterator is made, which on a resume comes before Lightning's ``set_epoch``.
        """
        self._resume = (epoch, position)
        self.epoch = epoch

    def start(self) -> int:
        """Where the current epoch starts: the resume position in the resumed epoch, else 0."""
        if self._resume is not None and self._resume[0] == self.epoch:
            return min(self._resume[1], self.length)
        return 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.length, self.seed, self.epoch)
        first = self.start()
        self._resume = None  # later epochs start from their beginning
        for position in range(first, self.length):
            yield order[position], item_seed(self.seed, self.epoch, position)

    def __len__(self) -> int:
        return self.length
