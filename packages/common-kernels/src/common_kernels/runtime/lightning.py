"""Lightning pieces shared by the packages that train (semanir's ``fit``, vitron's ``train``).

Needs ``lightning`` (the ``lightning`` extra; the training packages depend on it themselves).

Lightning's default progress bar is tqdm's, which redraws itself with carriage returns: in a
batch job's log it becomes one endless line (hundreds of kB per hour). :func:`progress_callbacks`
keeps that bar on a terminal and otherwise gives :class:`LogProgress`, which writes a plain line
every few seconds and one per validation::

    semanir fit: step 1200/4000 (30%), epoch 5, 1104 s, train/loss 0.0312
    semanir fit: validation at step 1200: val/psnr 30.703, val/ssim 0.86895
"""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from common_kernels.runtime.files import atomic_write
from common_kernels.runtime.progress import is_terminal


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
