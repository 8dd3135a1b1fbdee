"""Where a ``semanir fit``/``validate`` run writes, and what it leaves behind.

- A resumed run logs into the version folder of its checkpoint (:func:`adopt_checkpoint_version`),
  appending to that folder's ``metrics.csv`` (:func:`keep_csv_metrics`), instead of starting
  ``version_N+1`` next to it.
- A run that fails before its first training step leaves no folder behind (:class:`NewFolders`):
  the log, checkpoint and export folders it created are removed again (never a folder that
  existed before, and never one that holds a checkpoint).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from common_kernels.runtime.errors import InvalidArgument, literal
from common_kernels.runtime.lightning import ContinuedCSVWriter

# Checkpoint paths that Lightning resolves itself (``trainer.fit(ckpt_path="last")``).
LIGHTNING_CHECKPOINT_NAMES = ("last", "best", "hpc", "registry")


def check_checkpoint_path(ckpt_path: str | os.PathLike | None) -> None:
    """Refuse a checkpoint that is not there, before anything starts.

    Args:
        ckpt_path: a ``.ckpt`` file, one of Lightning's names (``last``, ``best``, ``hpc``,
            ``registry[:...]``), or None (no checkpoint).

    Raises:
        InvalidArgument: nothing at ``ckpt_path``, or a folder.
    """
    if ckpt_path is None:
        return
    name = os.fspath(ckpt_path)
    if name in LIGHTNING_CHECKPOINT_NAMES or name.startswith("registry:") or "://" in name:
        return
    path = Path(name).expanduser()
    if path.is_dir():
        raise InvalidArgument(
            "ckpt_path", literal(f"{name} is a folder; expected a checkpoint file")
        )
    if not path.is_file():
        missing = f"no checkpoint {name} (nothing at {path.absolute()})"
        raise InvalidArgument("ckpt_path", literal(missing))


def adopt_checkpoint_version(trainer: L.Trainer, ckpt_path: str | None) -> bool:
    """Make each logger without a fixed version write into the version folder the checkpoint
    lies in (``.../version_N/checkpoints/last.ckpt`` or ``.../version_N/x.ckpt``), when that
    folder is one of the logger's; returns whether one did.

    Args:
        trainer: the run's trainer, before it starts.
        ckpt_path: the checkpoint the run resumes from.
    """
    if not ckpt_path or not Path(ckpt_path).is_file():
        return False
    folder = Path(ckpt_path).resolve().parent
    adopted = False
    for logger in trainer.loggers:
        root = getattr(logger, "root_dir", None)
        if root is None or "://" in str(root) or getattr(logger, "_version", 0) is not None:
            continue  # not a local versioned logger, or its version was chosen
        for version in (folder.parent, folder):
            if version.parent == Path(root).resolve():
                logger._version = version.name  # CSVLogger/TensorBoardLogger: root/version
                adopted = True
                break
    return adopted


def keep_csv_metrics(trainer: L.Trainer) -> None:
    """Let a resumed run's ``CSVLogger`` append to the ``metrics.csv`` of its version folder
    (Lightning's CSV writer would delete it, with a warning): its writer is
    :class:`~common_kernels.runtime.lightning.ContinuedCSVWriter`, which keeps every row and
    column."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger) and logger._experiment is None:
            logger._experiment = ContinuedCSVWriter(logger.log_dir)


class NewFolders:
    """The output folders a run may create that do not exist yet, so that a failed start can
    remove them again.

    Args:
        trainer: the run's trainer, after its loggers' versions are settled, before it starts.
        extra: more folders the run writes (the model's ``export_dir``).
    """

    def __init__(self, trainer: L.Trainer, extra: Iterable[str | os.PathLike | None] = ()) -> None:
        self.trainer = trainer
        self.folders = sorted(
            {top for path in self._outputs(trainer, extra) if (top := _new(path))}
        )
        self.progress = _Stepped()
        trainer.callbacks.append(self.progress)

    @staticmethod
    def _outputs(trainer: L.Trainer, extra: Iterable) -> Iterator[Path]:
        candidates = [trainer.default_root_dir, *extra]
        for logger in trainer.loggers:
            candidates += [getattr(logger, "save_dir", None), getattr(logger, "log_dir", None)]
        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint):
                candidates.append(callback.dirpath)
        for candidate in candidates:
            if candidate is not None and "://" not in str(candidate):
                yield Path(candidate).expanduser().absolute()

    def remove_unused(self) -> list[Path]:
        """After a failure: remove the folders this run created, unless it took a training step
        or one of them holds a checkpoint; returns those removed."""
        if self.progress.stepped or not self.trainer.is_global_zero:
            return []
        removed = []
        for folder in self.folders:
            if folder.is_dir() and not any(folder.rglob("*.ckpt")):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed


def _new(path: Path) -> Path | None:
    """The outermost folder on the way to ``path`` that does not exist (None: it exists)."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


class _Stepped(Callback):
    """Whether the run finished a training step."""

    def __init__(self) -> None:
        self.stepped = False

    def on_train_batch_end(self, *args: object) -> None:
        self.stepped = True
