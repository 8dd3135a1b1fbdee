"""common_kernels.runtime.lightning: SIGINT / SIGTERM finish the optimizer step, write a
resumable ``interrupted.ckpt`` and raise ``TrainingInterrupted``; the handlers come back after."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning")

from common_kernels.runtime.lightning import (  # noqa: E402
    InterruptCheckpoint,
    TrainingInterrupted,
)


class Tiny(L.LightningModule):
    """A linear layer fitted to zero on 8 points, 4 batches an epoch; logs its loss."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, index):
        self.log("train/loss", loss := self.layer(batch).square().mean())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.linspace(-1, 1, 8)[:, None], batch_size=2)


class SignalAtBatch(L.Callback):
    """Sends ``signum`` to this process before training batch ``batch`` (counted from 0)."""

    def __init__(self, batch: int, signum: int) -> None:
        self.batch, self.signum = batch, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


def fit(tmp_path: Path, interrupt: InterruptCheckpoint, *callbacks, **options) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[interrupt, *callbacks],
        **options,
    )  # fmt: skip
    with interrupt.catching():  # an API that goes on after the fit restores the handlers
        trainer.fit(Tiny())
    return trainer


@pytest.mark.parametrize(
    ("signum", "name"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")]
)
def test_a_signal_stops_after_the_step_with_a_checkpoint(tmp_path, signum, name) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupt = InterruptCheckpoint(tmp_path / "ckpts")
    with pytest.raises(TrainingInterrupted) as stop:
        fit(tmp_path, interrupt, SignalAtBatch(1, signum), enable_checkpointing=False)
    path = tmp_path / "ckpts" / "interrupted.ckpt"
    assert (stop.value.signal_name, stop.value.step, stop.value.checkpoint) == (name, 2, path)
    assert str(stop.value) == f"{name} at step 2, saved {path}"
    assert torch.load(path, weights_only=False)["global_step"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["interrupted.ckpt"]  # no temporary
    assert {sig: signal.getsignal(sig) for sig in before} == before


@pytest.mark.parametrize(("signum", "step"), [(signal.SIGINT, 1), (signal.SIGTERM, 0)])
def test_the_step_of_accumulated_batches_is_finished_first(tmp_path, signum, step) -> None:
    """SIGINT during batch 0 of a 2-batch step: saved after batch 1 (step 1). SIGTERM: saved
    after batch 0 (Lightning ends the run at the end of the batch a SIGTERM came in)."""
    with pytest.raises(TrainingInterrupted) as stop:
        fit(tmp_path, InterruptCheckpoint(), SignalAtBatch(0, signum), accumulate_grad_batches=2)
    assert stop.value.step == step
    # no directory: the folder of the run's checkpoints
    assert stop.value.checkpoint == tmp_path / "checkpoints" / "interrupted.ckpt"
    assert torch.load(stop.value.checkpoint, weights_only=False)["global_step"] == step


def test_a_fit_without_a_signal_restores_the_handlers(tmp_path) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupt = InterruptCheckpoint(tmp_path)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[interrupt],
    )  # fmt: skip
    trainer.fit(Tiny())  # setup and teardown alone, no catching() around the fit
    assert trainer.global_step == 2 and interrupt.received is None
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert not (tmp_path / "interrupted.ckpt").exists()


def test_the_line_a_command_prints_and_its_status() -> None:
    path = Path("runs/checkpoints/interrupted.ckpt")
    term, sigint = TrainingInterrupted("SIGTERM", 3, path), TrainingInterrupted("SIGINT", 7, path)
    assert (term.exit_status, sigint.exit_status) == (143, 130)
    assert term.line("semanir fit", "--ckpt_path") == (
        "semanir fit: SIGTERM at step 3, saved runs/checkpoints/interrupted.ckpt; resume with "
        "the same command and --ckpt_path runs/checkpoints/interrupted.ckpt"
    )
    assert isinstance(term, BaseException) and not isinstance(term, Exception)
