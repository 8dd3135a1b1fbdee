"""A training run that continues where it stopped: its data order, its log and its folders.

- :class:`ResumableSampler` shuffles by ``(seed, epoch)`` alone and says how far into the
  epoch's order it got; the training loader, :class:`ResumableLoader`, is torchdata's
  ``StatefulDataLoader``, whose state (this sampler's, and with loader workers that of the
  batches handed out rather than prefetched) Lightning writes into every checkpoint and gives
  back on ``--resume``: the loader is resumable in Lightning's sense, so a run resumed in the
  middle of an epoch sees the rest of that epoch's order. :class:`DataPosition` reads the
  position that 0.3.0 checkpoints kept instead.
- :func:`run_logger` logs a resumed run into the version folder of the run it continues
  (``lightning/lightning_logs/version_N``), keeping that log's rows up to the checkpoint;
  :func:`checkpoint_facts` reads the step and version from the checkpoint before the Trainer
  is built.
- :class:`RunFolders` removes what a run created when it fails before its first optimizer step
  (no empty ``version_N`` or output folder left behind).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torchdata.stateful_dataloader import StatefulDataLoader

from common_kernels.runtime.cli import one_line
from common_kernels.runtime.errors import InvalidValue, literal
from common_kernels.runtime.lightning import ContinuedCSVWriter

LOGS_NAME = "lightning_logs"
LOG_VERSION_KEY = "vitron_log_version"  # in every checkpoint: the run's log folder version_N


class ResumableSampler(torch.utils.data.Sampler[int]):
    """A shuffled order that depends only on ``(seed, epoch)``, with a state: the epoch and how
    many indices of its order were drawn, so that a resumed run draws the rest (Lightning sets
    the epoch; ``StatefulDataLoader`` saves and restores the state).

    Args:
        size: the number of samples.
        seed: the shuffling seed.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.epoch = 0
        self.drawn = 0  # indices of this epoch's order handed out
        self.resume_at = 0  # indices the next iteration skips (a resumed epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        start, self.resume_at = self.resume_at, 0
        self.drawn = start
        for index in order[start:]:
            self.drawn += 1
            yield index

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "drawn": self.drawn}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # the epoch too: with loader workers the first indices are drawn when the iterator is
        # made, which on a resume comes before Lightning's ``set_epoch``
        epoch, drawn = state_dict["epoch"], state_dict["drawn"]
        if drawn >= self.size:  # stopped at the end of an epoch: the next one starts, in the
            epoch, drawn = epoch + 1, 0  # iterator Lightning makes when it resumes (not later)
        self.epoch, self.resume_at = epoch, drawn


class ResumableLoader(StatefulDataLoader):
    """torchdata's ``StatefulDataLoader`` over a :class:`ResumableSampler`: Lightning saves its
    state in every checkpoint and gives it back on resume. A state saved with another number
    of loader workers (``--num-workers`` changed between the runs), which torchdata cannot
    load, resumes through the sampler's position alone: the same batches follow.
    """

    sampler: ResumableSampler

    def __init__(self, dataset: Any, **options: Any) -> None:
        with warnings.catch_warnings():  # torchdata's own call of a deprecated torch function
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
            super().__init__(dataset, **options)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        snapshot = state_dict.get("_snapshot", {}).get("_main_snapshot", state_dict)
        if snapshot.get("_num_workers", 0) == self.num_workers:
            super().load_state_dict(state_dict)
            return
        position = (snapshot.get("_sampler_iter_state") or {}).get("sampler_state")
        if position is not None:
            self.sampler.load_state_dict(position)
        super().load_state_dict({})  # a new iterator, from the sampler's position


class DataPosition(L.Callback):
    """Reads the data position of a 0.3.0 checkpoint (a callback state: the epoch and the
    batches trained on), which newer checkpoints keep in the loader's state instead; writes
    nothing.

    Args:
        sampler: the training sampler.
        batch_size: samples per batch.
    """

    def __init__(self, sampler: ResumableSampler, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        drawn = state_dict["batches"] * self.batch_size
        self.sampler.load_state_dict({"epoch": state_dict["epoch"], "drawn": drawn})


@dataclass(frozen=True)
class CheckpointFacts:
    """What a run resumed from a checkpoint needs before its Trainer is built.

    Args:
        step: the optimizer steps the checkpoint was taken after.
        log_version: the version folder of the run that wrote it (None: not recorded).
    """

    step: int = 0
    log_version: int | None = None


def checkpoint_facts(path: str | os.PathLike | None) -> CheckpointFacts:
    """The step and log version of a checkpoint (memory-mapped: its tensors are not read);
    ``CheckpointFacts()`` without one.

    Args:
        path: the checkpoint to resume from (``train``'s ``resume``), or None.

    Raises:
        ValueError: the file is not a Lightning checkpoint.
    """
    if path is None:
        return CheckpointFacts()
    data: Any = "not a file written by torch.save"
    if zipfile.is_zipfile(path):  # a checkpoint of this run: Lightning loads it so right after
        try:
            data = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, EOFError) as err:
            data = one_line(err)
    if not isinstance(data, dict) or "global_step" not in data or "state_dict" not in data:
        why = data if isinstance(data, str) else "no global_step or state_dict in it"
        raise InvalidValue(
            "resume",
            f"{{resume}} {literal(path)} is not a checkpoint written by vitron train "
            f"({literal(why)})",
        )
    return CheckpointFacts(int(data["global_step"]), data.get(LOG_VERSION_KEY))


def run_logger(root: str | os.PathLike, resumed: CheckpointFacts | None = None) -> Any:
    """Lightning's default logger (TensorBoard when installed, else CSV) under
    ``root/lightning_logs``: a new ``version_N``, or the one of the run being resumed.

    Args:
        root: the Trainer's ``default_root_dir``.
        resumed: the checkpoint a resumed run continues from.
    """
    version = None if resumed is None else resumed.log_version
    tensorboard = any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX"))
    if tensorboard:  # a resumed run adds an event file to its folder
        return TensorBoardLogger(save_dir=root, name=LOGS_NAME, version=version)
    step = None if version is None else resumed.step
    return ContinuedCSVLogger(save_dir=root, name=LOGS_NAME, version=version, resume_step=step)


class ContinuedCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``, except that a resumed run continues its version's
    ``metrics.csv`` (rows up to the checkpoint's step kept, later ones appended) where
    Lightning's deletes it with a warning.

    Args:
        save_dir: the folder of ``name/version_N``.
        name: the logs' folder name.
        version: the version folder (None: the next free one).
        resume_step: the resumed checkpoint's step (None: a new run).
    """

    def __init__(
        self, save_dir: str | os.PathLike, name: str, version: int | None, resume_step: int | None
    ) -> None:
        super().__init__(save_dir=save_dir, name=name, version=version)
        self.resume_step = resume_step

    @property
    def experiment(self) -> Any:
        if self._experiment is None and self.resume_step is not None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuedCSVWriter(self.log_dir, self.resume_step)
        return super().experiment


class RunFolders:
    """The folders a run may create under ``output``, noted before it starts, so that a run
    that fails before its first optimizer step removes what it created (a new log version, the
    then empty ``lightning/`` folders and output folder) and nothing else.

    Args:
        output: the run's output folder.
    """

    def __init__(self, output: str | os.PathLike) -> None:
        self.output = Path(output)
        lightning = self.output / "lightning"
        self.logs = lightning / LOGS_NAME
        self.parents = (lightning / "checkpoints", self.logs, lightning, self.output)
        self.existed = {folder for folder in self.parents if folder.exists()}
        self.versions = set(self.logs.iterdir()) if self.logs.is_dir() else set()

    def remove_new(self) -> None:
        """Remove the log versions this run added, then each folder it created that is empty."""
        if self.logs.is_dir():
            for path in self.logs.iterdir():
                if path not in self.versions and path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
        for folder in self.parents:
            if folder not in self.existed:
                with suppress(OSError):  # not empty (or gone): kept
                    folder.rmdir()
