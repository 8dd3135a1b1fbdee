"""Tiny random models saved with ``save_pretrained``, shared by the command-line and photo tests:
the fixtures ``gray_model``, ``colour_model``, ``sr_model`` (colour, x2) and ``gray_sr_model``;
and ``keep_threads`` for the benchmark tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from semanir.models import build_model

TINY_MODELS = {
    "gray": ("semanir_test_tiny_unet", {}),
    "colour": ("semanir_test_tiny_unet", {"in_channels": 3, "out_channels": 3}),
    "sr": ("semanir_test_tiny_columnar", {}),
    "gray_sr": (
        "semanir_test_tiny_columnar", {"in_channels": 1, "out_channels": 1, "img_mean": (0.5,)}
    ),
}  # fmt: skip


def saved_model(name: str) -> Callable[[pytest.TempPathFactory], Path]:
    """A fixture: the tiny model ``name`` of :data:`TINY_MODELS`, built with seed 0 and saved to
    a fresh folder once per test module."""

    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
        arch, config = TINY_MODELS[name]
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp("models") / name
        build_model(arch, **config).save_pretrained(folder)
        return folder

    return fixture


gray_model = saved_model("gray")
colour_model = saved_model("colour")
sr_model = saved_model("sr")
gray_sr_model = saved_model("gray_sr")


@pytest.fixture
def keep_threads():
    """Restore torch's thread count after a test whose benchmark worker sets it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class RecordBatches:
    """A Lightning callback: (epoch, global step, a fingerprint) of every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, float]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.seen.append(
            (trainer.current_epoch, trainer.global_step, round(batch["lq"].sum().item(), 4))
        )


@pytest.fixture
def fit_recording_batches() -> Callable[..., list[tuple[int, int, float]]]:
    """``fit(root, data, ckpt=None, **trainer_limits)``: fit the tiny test model on the CPU with
    the data module ``data``, a checkpoint after every step under ``root``, and return what
    :class:`RecordBatches` saw; a warning that the loader is not resumable fails it."""
    import warnings

    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from semanir.lightning_module import RestorationModule

    class Recorder(RecordBatches, Callback):
        pass

    def fit(root: Path, data, ckpt: Path | None = None, **limits) -> list[tuple[int, int, float]]:
        record = Recorder()
        every_step = ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=-1)
        trainer = L.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=root, callbacks=[record, every_step],
            **limits,
        )  # fmt: skip
        module = RestorationModule("semanir_test_tiny_unet", lr=1e-2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(module, datamodule=data, ckpt_path=ckpt)
        assert not [w for w in caught if "not resumable" in str(w.message)]
        return record.seen

    return fit


# ``semanir`` run with its restore patched: the first photo is restored, the second announces
# "working" on stdout and waits (for a signal or a kill from the test)
WORKING_SCRIPT = """
import sys, time
import semanir.batch
from semanir.cli import main

restore_photo = semanir.batch.restore_photo
calls = []

def working(*args, **kwargs):  # the first photo is restored, the second in progress
    calls.append(1)
    if len(calls) == 1:
        return restore_photo(*args, **kwargs)
    print("working", flush=True)
    time.sleep(120)

semanir.batch.restore_photo = working
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="session")
def working_script() -> str:
    """The source of :data:`WORKING_SCRIPT` (``python -c SCRIPT ARGV...``)."""
    return WORKING_SCRIPT
