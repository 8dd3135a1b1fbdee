"""A cosine schedule whose length follows ``trainer.max_time``: :class:`FitScheduleToTime`.

A time-boxed run (7 minutes of a GPU) cannot know its number of steps in advance: the speed of
a step depends on the card, the batch and the model. The callback measures the run's own steps
per second (validation pauses included) and sets the cosine's length to the step the run will
reach when ``max_time`` less a reserve ends, re-estimating as it goes; it stops the run there,
so the learning rate has annealed and the reserve is left for the last validation, the
checkpoint and the export. ``trainer.max_time`` stays the hard stop.
"""

from __future__ import annotations

import sys
import time

import lightning as L
from lightning.pytorch.callbacks import Callback, Timer

from common_kernels.runtime.errors import InvalidArgument


class FitScheduleToTime(Callback):
    """Fit the cosine schedule's ``total_steps`` to the time ``trainer.max_time`` leaves.

    From step ``start_step`` of the run (after the first steps' compilation and warm-up) the
    callback times the steps; every ``every_n_steps`` steps it sets the schedule's length to
    ``step + steps_per_s * (time left - reserve_s)`` (never below the current step + 1), and
    stops the run once that step is reached. Without ``max_time`` it does nothing (the length
    stays ``max_steps``'s). The learning rate follows each new length at once (the cosine of
    the current step's progress).

    Args:
        reserve_s: seconds kept after the last step for the final validation, the checkpoint
            and the export, >= 0.
        start_step: steps of this session before timing starts, >= 1.
        every_n_steps: steps between re-estimates, >= 1.
    """

    def __init__(
        self, reserve_s: float = 20.0, start_step: int = 20, every_n_steps: int = 50
    ) -> None:
        if not reserve_s >= 0:
            raise InvalidArgument("reserve_s", f"must be >= 0 seconds, got {reserve_s!r}")
        for name, value in (("start_step", start_step), ("every_n_steps", every_n_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(name, f"must be an integer >= 1, got {value!r}")
        self.reserve_s = float(reserve_s)
        self.start_step = start_step
        self.every_n_steps = every_n_steps
        self._mark: tuple[int, float] | None = None  # (global step, monotonic time) at start
        self._steps_done = 0  # optimizer steps of this session
        self.fitted_total: int | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._mark, self._steps_done, self.fitted_total = None, 0, None

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args) -> None:
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is None or timer._duration is None:
            return
        step = trainer.global_step
        self._steps_done += 1
        if self._steps_done == self.start_step:
            self._mark = (step, time.monotonic())
            return
        if self._mark is None:
            return
        if (step - self._mark[0]) % self.every_n_steps == 0:
            rate = (step - self._mark[0]) / max(time.monotonic() - self._mark[1], 1e-9)
            left = timer._duration - timer.time_elapsed("train") - self.reserve_s
            total = max(step + 1, step + int(rate * left))
            # Under DDP every process takes rank 0's length: one schedule, one stop.
            self._set_total(trainer, int(trainer.strategy.broadcast(total, src=0)))
        if self.fitted_total is not None and step >= self.fitted_total:
            trainer.should_stop = True

    def _set_total(self, trainer: L.Trainer, total: int) -> None:
        """Give every cosine schedule of the run the length ``total`` and its rate at once."""
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            for schedule, group, base_lr in zip(
                scheduler.lr_lambdas, scheduler.optimizer.param_groups, scheduler.base_lrs,
                strict=True,
            ):  # fmt: skip
                if getattr(schedule, "kind", None) != "cosine":
                    continue
                schedule.total_steps = total
                group["lr"] = base_lr * schedule(scheduler.last_epoch)
        if self.fitted_total is None and trainer.is_global_zero:
            print(f"semanir: cosine schedule fitted to max_time: {total} steps", file=sys.stderr,
                  flush=True)  # fmt: skip
        self.fitted_total = total
