"""``FitScheduleToTime``: the cosine's length follows the time ``max_time`` leaves (a fake clock:
one second per step), the run stops there with the rate annealed, and bad options are refused."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Timer

import semanir.time_schedule as time_schedule
from common_kernels.runtime.errors import InvalidArgument
from semanir.data import RestorationDataModule
from semanir.io import write_image
from semanir.lightning_module import RestorationModule
from semanir.time_schedule import FitScheduleToTime


class StepClock(Timer):
    """A Timer whose elapsed training time is one second per optimizer step."""

    def time_elapsed(self, stage: str = "train") -> float:
        return float(self.trainer.global_step)

    def setup(self, trainer, module, stage) -> None:
        self.trainer = trainer


def test_the_cosine_ends_where_max_time_less_the_reserve_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(2):
        write_image(tmp_path / "train" / f"{index}.png", torch.rand(1, 16, 16))
    data = RestorationDataModule(
        train_dirs=[str(tmp_path / "train")], sigma_range=(0, 50), patch_size=8, batch_size=1,
        num_workers=0, device_cache=True,
    )  # fmt: skip
    clock = StepClock(duration=timedelta(seconds=100))
    fit_to_time = FitScheduleToTime(reserve_s=20, start_step=5, every_n_steps=10)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1000, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[clock, fit_to_time],
    )  # fmt: skip
    monkeypatch.setattr(
        time_schedule, "time", SimpleNamespace(monotonic=lambda: float(trainer.global_step))
    )
    module = RestorationModule("semanir_test_tiny_unet", lr=1e-3, min_lr=1e-6, warmup_steps=2)
    trainer.fit(module, datamodule=data)
    # 1 step/s, 100 s, 20 s kept: 80 steps, below max_steps (1000) and before the Timer (100).
    assert fit_to_time.fitted_total == 80 and trainer.global_step == 80
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.lr_lambdas[0].total_steps == 80
    assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(1e-6, rel=1e-6)


def test_without_max_time_the_length_is_max_steps(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "0.png", torch.rand(1, 16, 16))
    data = RestorationDataModule(train_dirs=[str(tmp_path / "train")], sigma=10, patch_size=8,
                                 batch_size=1, num_workers=0, device_cache=True)  # fmt: skip
    fit_to_time = FitScheduleToTime(start_step=1, every_n_steps=1)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[fit_to_time],
    )  # fmt: skip
    trainer.fit(RestorationModule("semanir_test_tiny_unet"), datamodule=data)
    assert fit_to_time.fitted_total is None and trainer.global_step == 6
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0].total_steps == 6


@pytest.mark.parametrize(
    ("options", "argument"),
    [({"reserve_s": -1}, "reserve_s"), ({"start_step": 0}, "start_step"),
     ({"every_n_steps": 1.5}, "every_n_steps")],
)  # fmt: skip
def test_bad_options_are_refused(options: dict, argument: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        FitScheduleToTime(**options)
    assert caught.value.argument == argument
