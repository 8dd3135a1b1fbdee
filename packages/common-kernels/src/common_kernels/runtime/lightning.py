"""Lightning pieces shared by the packages that train (semanir's ``fit``, vitron's ``train``).

Needs ``lightning`` (the ``lightning`` extra; the training packages depend on it themselves).

Lightning's default progress bar is tqdm's, which redraws itself with carriage returns: in a
batch job's log it becomes one endless line (hundreds of kB per hour). :func:`progress_callbacks`
keeps that bar on a terminal and otherwise gives :class:`LogProgress`, which writes a plain line
every few seconds and one per validation::

    semanir fit: step 1200/4000 (30%), epoch 5, 1104 s, train/loss 0.0312
    semanir fit: validation at step 1200: val/psnr 30.703, val/ssim 0.86895

A run stopped by Ctrl-C or by a batch scheduler's SIGTERM keeps its work:
:class:`InterruptCheckpoint` finishes the optimizer step, writes a resumable checkpoint and
raises :class:`TrainingInterrupted`, whose :meth:`~TrainingInterrupted.line` tells the user how
to resume.
"""

from __future__ import annotations

import contextlib
import csv
import io
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from common_kernels.runtime.cli import EXIT_INTERRUPTED, EXIT_TERMINATED
from common_kernels.runtime.files import atomic_write
from common_kernels.runtime.progress import is_terminal

INTERRUPTED_NAME = "interrupted.ckpt"


class LogProgress(ProgressBar):
    """Lightning's training progress as plain lines: one every ``log_every`` seconds (step,
    share of ``max_steps``, epoch, elapsed seconds, the progress-bar metrics), one with the
    metrics of each validation, and one at the end.

    Args:
        desc: first word(s) of every line (the command, e.g. ``"semanir fit"``).
        log_every: seconds between two step lines.
        file: the stream (default: ``sys.stderr`` at write time).
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        desc: str,
        *,
        log_every: float = 10.0,
        file: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if not log_every > 0:
            raise ValueError(f"log_every must be > 0 seconds, got {log_every!r}")
        self.desc, self.log_every, self.file, self.clock = desc, log_every, file, clock
        self.enabled = True
        self._start = self._last = 0.0
        self._shown_step = -1

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def _write(self, text: str) -> None:
        if self.enabled:
            print(f"{self.desc}: {text}", file=self.file or sys.stderr, flush=True)

    def _metrics(self, trainer: Trainer, prefix: str) -> str:
        """The progress-bar metrics whose names start with ``prefix``, sorted by name."""
        values = sorted(
            (name, value)
            for name, value in trainer.progress_bar_metrics.items()
            if name.startswith(prefix)
        )
        return ", ".join(f"{name} {_number(value)}" for name, value in values)

    def _step_line(self, trainer: Trainer) -> str:
        step, total = trainer.global_step, trainer.max_steps
        count = f"step {step}/{total} ({100 * step // total}%)" if total > 0 else f"step {step}"
        line = f"{count}, epoch {trainer.current_epoch}, {self.clock() - self._start:.0f} s"
        metrics = self._metrics(trainer, "train")
        return f"{line}, {metrics}" if metrics else line

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = self._last = self.clock()
        self._shown_step = -1
        self._write(f"training from step {trainer.global_step}")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        now = self.clock()
        if now - self._last >= self.log_every:
            self._write(self._step_line(trainer))
            self._last, self._shown_step = now, trainer.global_step

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = self._metrics(trainer, "val")
        self._write(f"validation at step {trainer.global_step}: {metrics or 'no metrics'}")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._shown_step != trainer.global_step:
            self._write(self._step_line(trainer))
        self._write(f"training ended at step {trainer.global_step}")


def _number(value: Any) -> str:
    return f"{float(value):.5g}" if not isinstance(value, str) else value


def progress_callbacks(
    desc: str,
    *,
    existing: Sequence[Callback] = (),
    enabled: bool | None = True,
    file: IO[str] | None = None,
    log_every: float = 10.0,
) -> list[Callback]:
    """What to add to a Trainer's callbacks for progress: a :class:`LogProgress` when the
    stream is not a terminal (a log file, a pipe); nothing on a terminal (Lightning's tqdm bar),
    when the bar is off, or when ``existing`` already holds a progress bar.

    Args:
        desc: first word(s) of every line (the command).
        existing: the callbacks the trainer gets anyway.
        enabled: the trainer's ``enable_progress_bar`` (None: Lightning's default, on).
        file: the stream the progress goes to (default: ``sys.stderr``).
        log_every: seconds between two step lines in a log.
    """
    stream = sys.stderr if file is None else file
    has_bar = any(isinstance(callback, ProgressBar) for callback in existing)
    if enabled is False or has_bar or is_terminal(stream):
        return []
    return [LogProgress(desc, log_every=log_every, file=file)]


class ContinuedCSVWriter(ExperimentWriter):
    """The ``CSVLogger`` writer of a resumed run: it continues the ``metrics.csv`` of its
    version folder where Lightning's own writer deletes it (with a warning).

    The rows logged before ``step`` stay, later ones are dropped (the run trains those steps
    again), in one atomic rewrite; new rows are appended under the same columns. Give it to a
    logger before the run starts (``logger._experiment = ContinuedCSVWriter(...)``, or from a
    ``CSVLogger`` subclass's ``experiment``).

    Args:
        log_dir: the run's version folder.
        step: the resumed checkpoint's step; None keeps every row.
    """

    def __init__(self, log_dir: str, step: int | None = None) -> None:
        self.step = step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            rows = [row for row in reader if self._kept(row)]
            self.metrics_keys = sorted(reader.fieldnames or [])
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows)
        with atomic_write(path) as temp:
            Path(temp).write_text(text.getvalue(), newline="")

    def _kept(self, row: dict[str, str]) -> bool:
        return self.step is None or float(row.get("step") or 0) < self.step


class TrainingInterrupted(BaseException):
    """Training stopped on SIGINT or SIGTERM after its resumable checkpoint was written.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that nothing catches it by accident.

    Args:
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
        step: the optimizer steps taken.
        checkpoint: the checkpoint to resume from.
    """

    def __init__(self, signal_name: str, step: int, checkpoint: Path) -> None:
        super().__init__(f"{signal_name} at step {step}, saved {checkpoint}")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint

    @property
    def exit_status(self) -> int:
        """130 for SIGINT (as shells report Ctrl-C), 143 for SIGTERM."""
        return EXIT_INTERRUPTED if self.signal_name == "SIGINT" else EXIT_TERMINATED

    def line(self, prog: str, resume_flag: str) -> str:
        """What a command prints: ``PROG: SIGTERM at step 3, saved PATH; resume with the same
        command and FLAG PATH``.

        Args:
            prog: the command (``"semanir fit"``).
            resume_flag: its option that resumes from a checkpoint (``"--ckpt_path"``).
        """
        return f"{prog}: {self}; resume with the same command and {resume_flag} {self.checkpoint}"


class InterruptCheckpoint(Callback):
    """Stop cleanly on SIGINT (Ctrl-C) or SIGTERM (what a batch scheduler sends).

    During a fit the signals only mark the run: the current optimizer step finishes (all of its
    accumulated batches; Lightning itself ends a run at the end of the batch a SIGTERM came in,
    so a SIGTERM is saved there), its logged values reach the loggers, a resumable checkpoint
    (weights, optimizer, schedule, the callbacks' state such as the data position) is written
    atomically as ``interrupted.ckpt``, and :class:`TrainingInterrupted` stops training. A
    second Ctrl-C stops at once, without a checkpoint.

    The handlers are set when the fit starts and restored when it ends; after an exception
    Lightning restores the handlers it found, these ones, so a caller that goes on afterwards
    (an API rather than a command) wraps ``trainer.fit`` in :meth:`catching`.

    Args:
        directory: the folder of the checkpoint; None: the folder of the run's checkpoints (the
            ``ModelCheckpoint``'s, else ``LOG_DIR/checkpoints``).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = None if directory is None else Path(directory)
        self.received: str | None = None
        self._handlers = contextlib.ExitStack()

    @contextlib.contextmanager
    def catching(self) -> Iterator[None]:
        """Mark SIGINT and SIGTERM in this block instead of stopping at once (main thread only;
        the previous handlers come back after)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._mark) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _mark(self, signum: int, frame: object) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = self.received or signal.Signals(signum).name

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._handlers.enter_context(self.catching())

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._handlers.close()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._handlers.close()

    def checkpoint_path(self, trainer: Trainer) -> Path:
        """Where the checkpoint goes: ``directory``, else the folder of the run's checkpoints."""
        if self.directory is not None:
            return self.directory / INTERRUPTED_NAME
        callback = trainer.checkpoint_callback
        if callback is not None and getattr(callback, "dirpath", None):
            return Path(callback.dirpath) / INTERRUPTED_NAME
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / INTERRUPTED_NAME

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        batch_idx = args[-1]
        received = self.received or ("SIGTERM" if trainer.received_sigterm else None)
        mid_step = (batch_idx + 1) % trainer.accumulate_grad_batches
        if received is None or (mid_step and not trainer.received_sigterm):
            return  # no signal, or in the middle of an optimizer step's batches
        # Lightning hands a step's logged values to the loggers after this hook: first, so
        # that the log (which a resumed run continues) has every step trained
        connector = getattr(trainer, "_logger_connector", None)
        if connector is not None and trainer.loggers:
            connector.update_train_step_metrics()
        path = self.checkpoint_path(trainer)
        if trainer.is_global_zero:
            with atomic_write(path, make_parents=True) as temp:
                trainer.save_checkpoint(temp)
        else:  # a collective save: the other ranks take part, rank 0 writes
            trainer.save_checkpoint(path)
        raise TrainingInterrupted(received, trainer.global_step, path)
