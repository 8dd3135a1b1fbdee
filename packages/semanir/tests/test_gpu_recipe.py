"""The GPU recipe ``denoise_gray_small_gpu`` (issue 50): its config instantiates as written, a
CPU dry run of its command trains, validates, checkpoints and exports small EMA weights, a new
run starts from the export, and a ``max_time`` stop still writes ``last.ckpt`` and the export."""

from __future__ import annotations

import csv
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import yaml

from semanir.data.device_cache import DeviceImageStore
from semanir.inference import load_model
from semanir.io import write_image
from semanir.lightning_cli import bundled_configs_dir
from semanir.lightning_module import RestorationCLI, RestorationModule, WarmupEMAWeightAveraging
from semanir.time_schedule import FitScheduleToTime

RECIPE = bundled_configs_dir() / "denoise_gray_small_gpu.yaml"
OUTPUTS = Path("outputs") / "denoise_gray_small_gpu"
# The recipe's command with what a 2-core CPU needs: the CPU, a tiny model and small batches.
CPU_OVERRIDES = [
    "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
    "--model.arch", "semanir_test_tiny_unet", "--data.batch_size", "4",
    "--data.patch_size", "32", "--data.num_workers", "0",
]  # fmt: skip


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with data/train400 (6 gray 48x48 images) and data/set12 (2 of 32x32)."""
    generator = torch.Generator().manual_seed(0)
    for folder, count, side in (("train400", 6, 48), ("set12", 2, 32)):
        for index in range(count):
            image = torch.rand(1, side, side, generator=generator)
            write_image(tmp_path / "data" / folder / f"{index}.png", image)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["semanir"])  # keep pytest's arguments away from the CLI
    return tmp_path


def fit(*arguments: str, config: str = "denoise_gray_small_gpu") -> int:
    from semanir.cli import main

    return main(["fit", "--config", config, "--data.data_root", "data", *arguments])


def test_the_recipe_instantiates_as_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["semanir"])
    monkeypatch.setattr(os, "cpu_count", lambda: 16)  # the GPU machine's CPUs
    cli = RestorationCLI(
        args=["--config", str(RECIPE), "--trainer.accelerator", "cpu",
              "--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )  # fmt: skip
    config = cli.config
    assert config.trainer.precision == "bf16-mixed" and config.trainer.max_time == "00:00:06:20"
    assert cli.model.hparams.arch == "semanir_small_denoise_gray"
    assert cli.model.hparams.export_dir == "outputs/denoise_gray_small_gpu/pretrained"
    data = cli.datamodule.hparams
    assert data.device_cache is True and (data.batch_size, data.patch_size) == (64, 64)
    assert tuple(data.sigma_range) == (0, 55) and data.val_sigma == 25
    kinds = {type(c) for c in cli.trainer.callbacks}
    assert {WarmupEMAWeightAveraging, FitScheduleToTime} <= kinds
    assert type(cli.trainer.logger).__name__ == "CSVLogger"
    written = yaml.safe_load(RECIPE.read_text())
    assert written["trainer"]["accelerator"] == "gpu"


def test_a_cpu_dry_run_trains_validates_checkpoints_and_exports(workdir: Path) -> None:
    assert fit(*CPU_OVERRIDES, "--trainer.max_steps", "3", "--trainer.val_check_interval", "2") == 0
    version = workdir / OUTPUTS / "lightning_logs" / "version_0"
    assert (version / "checkpoints" / "last.ckpt").is_file()
    with (version / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert any(row.get("val/psnr") for row in rows)
    export = workdir / OUTPUTS / "pretrained"
    weights = export / "model.safetensors"
    assert (export / "config.json").is_file() and weights.stat().st_size < 16 * 2**20
    exported = load_model(str(export))
    checkpoint = torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)
    # The export is the EMA of the weights, as the checkpoint holds them (saved averaged).
    for name, value in exported.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][f"model.{name}"]), name
    # A later run starts from the export: the module's first weights are the exported ones.
    module = RestorationModule("semanir_test_tiny_unet", init_weights=str(export))
    for name, value in exported.state_dict().items():
        assert torch.equal(module.model.state_dict()[name], value), name
    assert fit(*CPU_OVERRIDES, "--trainer.max_steps", "1", "--model.init_weights", str(export)) == 0
    assert (
        workdir / OUTPUTS / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    ).is_file()


def test_a_max_time_stop_still_writes_last_ckpt_and_the_export(workdir: Path) -> None:
    """The recipe without the schedule fitting (whose 15 s reserve would stop a 3 s run
    first): Lightning's Timer stops it, and the end of fit still checkpoints and exports."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["trainer"]["callbacks"] = [
        c
        for c in recipe["trainer"]["callbacks"]
        if not c["class_path"].endswith("FitScheduleToTime")
    ]
    (workdir / "no_fit.yaml").write_text(yaml.safe_dump(recipe))
    limit = "00:00:00:03"
    assert fit(*CPU_OVERRIDES, "--data.patch_size", "16", "--trainer.max_time", limit,
               "--trainer.max_steps", "1000000", config="no_fit.yaml") == 0  # fmt: skip
    last = workdir / OUTPUTS / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert 0 < checkpoint["global_step"] < 1_000_000  # stopped by the time, not the steps
    timer = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("Timer"))
    assert timer["time_elapsed"]["train"] >= timedelta(seconds=3).total_seconds()
    assert (workdir / OUTPUTS / "pretrained" / "model.safetensors").is_file()


def test_the_recipe_draws_its_batches_on_the_device_it_trains_on() -> None:
    """On CUDA the store and the batches are on the GPU (checked where a GPU is present)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    images = [torch.randint(256, (1, 180, 180), dtype=torch.uint8) for _ in range(4)]
    store = DeviceImageStore(images, 64, sigma=None, sigma_range=(0, 55), device="cuda")
    batch, _ = store.draw(64, seed=0)
    assert batch["lq"].device.type == "cuda" and batch["lq"].shape == (64, 1, 64, 64)
