"""common_kernels.runtime.lightning: Lightning's progress as plain lines in a log, tqdm on a
terminal."""

from __future__ import annotations

import io

import pytest
import torch

L = pytest.importorskip("lightning")

from common_kernels.runtime.lightning import LogProgress, progress_callbacks  # noqa: E402


class Tiny(L.LightningModule):
    """y = w x on 8 fixed points; logs train/loss and val/loss to the progress bar."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.x = torch.linspace(-1, 1, 8)[:, None]

    def training_step(self, batch, index):
        loss = (self.layer(batch) - 2 * batch).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, index):
        self.log("val/loss", (self.layer(batch) - 2 * batch).pow(2).mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.x, batch_size=2)  # 4 steps per epoch

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.x, batch_size=8)


class Clock:
    """Four seconds more at every reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 4.0
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def fit(callback: LogProgress, max_steps: int = 6) -> None:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[callback], num_sanity_val_steps=1,
        val_check_interval=4,
    )  # fmt: skip
    trainer.fit(Tiny())


def test_plain_lines_every_few_seconds_one_per_validation_and_one_at_the_end() -> None:
    log = io.StringIO()
    fit(LogProgress("demo fit", log_every=10.0, file=log, clock=Clock()))
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0] == "demo fit: training from step 0"
    steps = [line for line in lines if line.startswith("demo fit: step ")]
    # one clock reading per batch end and one per line, 4 s apart: lines after batches 3 and
    # 5 (12 s since the previous line), and the final one after batch 6 (8 s: not timed yet)
    assert [line.split(",")[0] for line in steps] == [
        "demo fit: step 3/6 (50%)",
        "demo fit: step 5/6 (83%)",
        "demo fit: step 6/6 (100%)",
    ]
    assert all("train/loss " in line and " s, " in line for line in steps)
    validations = [line for line in lines if "validation" in line]
    assert len(validations) == 1  # the sanity check writes nothing
    assert validations[0].startswith("demo fit: validation at step 4: val/loss ")
    assert lines[-1] == "demo fit: training ended at step 6"


def test_no_second_final_line_when_the_last_timed_one_counted_every_step() -> None:
    log = io.StringIO()
    fit(LogProgress("demo fit", log_every=10.0, file=log, clock=Clock()), max_steps=5)
    lines = log.getvalue().splitlines()
    steps = [line.split(",")[0] for line in lines if line.startswith("demo fit: step ")]
    assert steps == ["demo fit: step 3/5 (60%)", "demo fit: step 5/5 (100%)"]
    assert lines[-1] == "demo fit: training ended at step 5"


def test_disabled_writes_nothing_and_log_every_is_checked() -> None:
    log = io.StringIO()
    callback = LogProgress("demo fit", file=log)
    callback.disable()
    fit(callback)
    assert log.getvalue() == ""
    with pytest.raises(ValueError, match="log_every must be > 0 seconds, got 0"):
        LogProgress("demo fit", log_every=0)


def test_progress_callbacks_keep_tqdm_on_a_terminal() -> None:
    assert progress_callbacks("demo fit", file=Terminal()) == []
    (callback,) = progress_callbacks("demo fit", file=io.StringIO(), log_every=5.0)
    assert isinstance(callback, LogProgress) and callback.log_every == 5.0
