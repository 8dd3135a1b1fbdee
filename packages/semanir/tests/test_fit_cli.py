"""``semanir fit`` / ``validate`` (issue 33): ordinary mistakes are one line before Lightning
starts, a failed start leaves no folder, a resumed run logs into its own version folder, and the
libraries' tips and notices are off unless ``--verbose``."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from semanir.cli import main
from semanir.io import write_image

CONFIG = textwrap.dedent(
    """
    seed_everything: 0
    trainer:
      accelerator: cpu
      max_steps: 4
      log_every_n_steps: 1
      enable_model_summary: false
      default_root_dir: run
      logger:
        class_path: lightning.pytorch.loggers.CSVLogger
        init_args:
          save_dir: run
      callbacks:
        - class_path: lightning.pytorch.callbacks.ModelCheckpoint
          init_args:
            save_last: true
            every_n_train_steps: 2
    model:
      arch: semanir_test_tiny_unet
      lr: 1.0e-2
      export_dir: run/export
    data:
      train_dirs: [train]
      val_dirs: [val]
      task: denoise
      sigma_range: [0, 50]
      patch_size: 16
      batch_size: 2
      num_workers: 0
    """
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with the config (outputs under ``run/``), 4 training and 1 validation
    images of 24x24."""
    generator = torch.Generator().manual_seed(0)
    for folder, count in (("train", 4), ("val", 1)):
        (tmp_path / folder).mkdir()
        for index in range(count):
            write_image(
                tmp_path / folder / f"{index}.png", torch.rand(1, 24, 24, generator=generator)
            )
    (tmp_path / "config.yaml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["semanir"])  # keep pytest's arguments away from the CLI
    return tmp_path


def fit(*extra: str, command: str = "fit") -> subprocess.CompletedProcess:
    """``semanir COMMAND --config config.yaml EXTRA...`` in a subprocess, in the working folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "semanir.cli", command, "--config", "config.yaml", *extra],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip


def refusal(capsys: pytest.CaptureFixture[str], *extra: str, command: str = "fit") -> list[str]:
    """``semanir COMMAND --config config.yaml EXTRA...`` in this process, in the working folder:
    exit status 2 and no ``run/`` folder; returns the lines it wrote to stderr."""
    assert main([command, "--config", "config.yaml", *extra]) == 2
    assert not Path("run").exists()
    return capsys.readouterr().err.splitlines()


def known_models() -> str:
    return (
        "semanir_tiny_denoise_gray, semanir_tiny_jpeg_gray, semanir_tiny_denoise_color, "
        "semanir_tiny_sr_x4"
    )


MISTAKES = {
    "missing checkpoint": (
        ["--ckpt_path", "nope.ckpt"],
        "--ckpt_path: no checkpoint nope.ckpt (nothing at {cwd}/nope.ckpt)",
    ),
    "checkpoint is a folder": (
        ["--ckpt_path", "train"],
        "--ckpt_path: train is a folder; expected a checkpoint file",
    ),
    "missing init weights": (
        ["--model.init_weights", "./nope"],
        "--model.init_weights: no model folder ./nope (nothing at {cwd}/nope)",
    ),
    "unknown init weights": (
        ["--model.init_weights", "nope"],
        f"--model.init_weights: unknown model 'nope': known names: {known_models()}; a local "
        "folder starts with ./ or / (or exists), a hub id is owner/name",
    ),
    "init weights without a model": (
        ["--model.init_weights", "train"],
        "--model.init_weights: train is a folder without config.json; expected a "
        "save_pretrained folder",
    ),
    "batch size 0": (
        ["--data.batch_size", "0"],
        "--data.batch_size: must be an integer >= 1, got 0",
    ),
    "patch size 0": (
        ["--data.patch_size", "0"],
        "--data.patch_size: must be an integer >= 1, got 0",
    ),
    "negative workers": (
        ["--data.num_workers", "-1"],
        "--data.num_workers: must be an integer >= 0, got -1",
    ),
    "validation batch 0": (
        ["--data.val_batch_size", "0"],
        "--data.val_batch_size: must be an integer >= 1, got 0",
    ),
    "repeat 0": (["--data.repeat", "0"], "--data.repeat: must be an integer >= 1, got 0"),
    "noise range": (
        ["--data.sigma_range", "[0, 300]"],
        "--data.sigma_range: must be [low, high] with low <= high, each in [0, 255], got [0.0, "
        "300.0]",
    ),
    "noise level and range": (
        ["--data.sigma", "25"],
        "--data.sigma: give --data.sigma or --data.sigma_range, not both",
    ),
    "noise for jpeg": (
        ["--data.task", "jpeg"],
        "--data.sigma_range: applies to task 'denoise' only, not 'jpeg'",
    ),
    "negative max steps": (
        ["--trainer.max_steps", "-5"],
        "--trainer.max_steps: must be a number of steps >= 1, or -1 for no limit, got -5",
    ),
    "zero max steps": (
        ["--trainer.max_steps", "0"],
        "--trainer.max_steps: must be a number of steps >= 1, or -1 for no limit, got 0",
    ),
    "zero max epochs": (
        ["--trainer.max_epochs", "0"],
        "--trainer.max_epochs: must be a number of epochs >= 1, or -1 for no limit, got 0",
    ),
    "zero val check interval": (
        ["--trainer.val_check_interval", "0"],
        "--trainer.val_check_interval: must be a number of training batches >= 1 or a fraction "
        "of an epoch in (0, 1], got 0",
    ),
    "val check fraction above 1": (
        ["--trainer.val_check_interval", "1.5"],
        "--trainer.val_check_interval: must be a number of training batches >= 1 or a fraction "
        "of an epoch in (0, 1], got 1.5",
    ),
    "zero check_val_every_n_epoch": (
        ["--trainer.check_val_every_n_epoch", "0"],
        "--trainer.check_val_every_n_epoch: must be an integer >= 1, got 0",
    ),
    "zero log interval": (
        ["--trainer.log_every_n_steps", "0"],
        "--trainer.log_every_n_steps: must be an integer >= 1, got 0",
    ),
    "zero accumulation": (
        ["--trainer.accumulate_grad_batches", "0"],
        "--trainer.accumulate_grad_batches: must be an integer >= 1, got 0",
    ),
    "zero learning rate": (["--model.lr", "0"], "--model.lr: must be > 0, got 0.0"),
    "negative warmup": (
        ["--model.warmup_steps", "-1"],
        "--model.warmup_steps: must be an integer >= 0, got -1",
    ),
    "unknown architecture": (
        ["--model.arch", "nope"],
        "--model.arch: unknown model config 'nope'; known: dncnn_denoise_color, ",
    ),
}


DATA = {"train_dirs": ["train"], "task": "denoise", "sigma_range": (0, 50), "patch_size": 16}
DATA_MISTAKES = {
    "batch_size": ({"batch_size": 0}, "batch_size: must be an integer >= 1, got 0"),
    "val_batch_size": ({"val_batch_size": 0}, "val_batch_size: must be an integer >= 1, got 0"),
    "num_workers": ({"num_workers": -1}, "num_workers: must be an integer >= 0, got -1"),
    "repeat": ({"repeat": 0}, "repeat: must be an integer >= 1, got 0"),
    "patch_size": ({"patch_size": 0}, "patch_size: must be an integer >= 1, got 0"),
    "val_patch_size": ({"val_patch_size": -8}, "val_patch_size: must be an integer >= 1, got -8"),
    "task": ({"task": "deblur"}, "task: must be one of denoise, jpeg, sr, demosaic, paired, got "
             "'deblur'"),
    "channels": ({"channels": "cmyk"}, "channels: must be one of gray, rgb, got 'cmyk'"),
    "bayer_pattern": ({"bayer_pattern": "RGBG"}, "bayer_pattern: must be one of RGGB, BGGR, "
                      "GRBG, GBRG, got 'RGBG'"),
    "sr scale": ({"task": "sr", "sigma_range": None, "scale": 8},
                 "scale: task 'sr' needs 2, 3 or 4, got 8"),
    "sr patch": ({"task": "sr", "sigma_range": None, "scale": 3},
                 "patch_size: must be a multiple of the scale 3, got 16"),
    "scale for denoise": ({"scale": 2}, "scale: applies to tasks 'sr' and 'paired', not 'denoise'"),
    "no noise": ({"sigma_range": None}, "sigma_range: task 'denoise' needs sigma (fixed) or "
                 "sigma_range (drawn)"),
    "both noises": ({"sigma": 25}, "sigma: give sigma or sigma_range, not both"),
    "sigma": ({"sigma_range": None, "sigma": 300}, "sigma: must be in [0, 255], got 300"),
    "val_sigma": ({"val_sigma": -1}, "val_sigma: must be in [0, 255], got -1"),
    "reversed range": ({"sigma_range": (50, 0)}, "sigma_range: must be [low, high] with low <= "
                       "high, each in [0, 255], got [50, 0]"),
    "quality": ({"task": "jpeg", "sigma_range": None, "quality": 100},
                "quality: must be an integer in [1, 95], got 100"),
    "quality for denoise": ({"quality_range": (10, 40)},
                            "quality_range: applies to task 'jpeg' only, not 'denoise'"),
    "demosaic gray": ({"task": "demosaic", "sigma_range": None},
                      "channels: task 'demosaic' needs 'rgb', got 'gray'"),
    "paired": ({"task": "paired", "sigma_range": None},
               "train_lq_dir: task 'paired' needs train_lq_dir (degraded images) and train_dirs"),
}  # fmt: skip


@pytest.mark.parametrize("mistake", list(DATA_MISTAKES))
def test_data_options_are_checked_by_the_data_module(mistake: str) -> None:
    """The API's end of the checks: each names its own argument, before any image is read."""
    from common_kernels.runtime.errors import InvalidArgument
    from semanir.data.datamodule import RestorationDataModule

    options, message = DATA_MISTAKES[mistake]
    with pytest.raises(InvalidArgument) as caught:
        RestorationDataModule(**{**DATA, **options})
    assert str(caught.value) == message


def test_trainer_options_and_checkpoint_are_checked_by_the_api(tmp_path: Path) -> None:
    from common_kernels.runtime.errors import InvalidArgument
    from semanir.lightning_module import check_trainer_options
    from semanir.runs import check_checkpoint_path

    for name, (value, text) in {
        "max_steps": (0, "must be a number of steps >= 1, or -1 for no limit, got 0"),
        "max_epochs": (-2, "must be a number of epochs >= 1, or -1 for no limit, got -2"),
        "min_steps": (-1, "must be an integer >= 0, got -1"),
        "num_sanity_val_steps": (-2, "must be an integer >= -1, got -2"),
        "limit_val_batches": (1.5, "must be a number of batches >= 0 or a fraction in [0, 1], "
                              "got 1.5"),
        "gradient_clip_val": (-1.0, "must be >= 0, got -1.0"),
        "val_check_interval": (0.0, "must be a number of training batches >= 1 or a fraction "
                               "of an epoch in (0, 1], got 0.0"),
    }.items():  # fmt: skip
        with pytest.raises(InvalidArgument) as caught:
            check_trainer_options(**{name: value})
        assert str(caught.value) == f"{name}: {text}"
    check_trainer_options(max_steps=-1, max_epochs=-1, val_check_interval="00:00:10:00",
                          limit_val_batches=0, check_val_every_n_epoch=None)  # fmt: skip
    for name in ("last", "best", "registry:model"):
        check_checkpoint_path(name)  # Lightning's own names pass
    with pytest.raises(InvalidArgument) as caught:
        check_checkpoint_path(tmp_path / "a{b}.ckpt")
    assert str(caught.value) == (
        f"ckpt_path: no checkpoint {tmp_path}/a{{b}}.ckpt (nothing at {tmp_path}/a{{b}}.ckpt)"
    )


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_an_ordinary_mistake_is_one_line_before_lightning_starts(
    workdir: Path, capsys: pytest.CaptureFixture[str], mistake: str
) -> None:
    """Exit status 2, one line naming the flag as typed, no traceback, no folder written."""
    extra, message = MISTAKES[mistake]
    assert main(["fit", "--config", "config.yaml", *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    expected = f"semanir fit: error: {message.format(cwd=workdir)}"
    if mistake == "unknown architecture":  # the list of known configs follows
        assert line.startswith(expected)
    else:
        assert line == expected
    assert not (workdir / "run").exists()


def test_validate_names_a_missing_checkpoint(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert refusal(capsys, "--ckpt_path", "gone/last.ckpt", command="validate") == [
        f"semanir validate: error: --ckpt_path: no checkpoint gone/last.ckpt (nothing at "
        f"{workdir}/gone/last.ckpt)"
    ]


def test_a_bad_input_found_at_the_start_is_one_line_and_leaves_no_folder(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Images smaller than the patch and a folder without images are found from the images'
    headers before the trainer is made: one line, no folder (a fresh run's ``run/``; next to
    an earlier run, no new ``version_1``)."""
    small = ", ".join(f"train/{index}.png (24x24)" for index in range(4))
    assert refusal(capsys, "--data.patch_size", "32") == [
        "semanir fit: error: --data.patch_size 32 is larger than the smallest training image "
        f"(24 px a side): 4 image(s) smaller, {small}; use a --data.patch_size of at most 24"
    ]

    assert main(["fit", "--config", "config.yaml", "--trainer.max_steps", "1"]) == 0
    logs = workdir / "run" / "lightning_logs"
    before = sorted(path.relative_to(workdir) for path in (workdir / "run").rglob("*"))
    assert [path.name for path in logs.iterdir()] == ["version_0"]
    (workdir / "empty").mkdir()
    capsys.readouterr()
    assert main(["fit", "--config", "config.yaml", "--data.train_dirs", "[empty]"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("semanir fit: error: --data.train_dirs: no images (.png, ")
    assert line.endswith(" found in empty")
    after = sorted(path.relative_to(workdir) for path in (workdir / "run").rglob("*"))
    assert after == before  # no version_1, nothing else


def metrics_steps(version: Path) -> list[int]:
    with (version / "metrics.csv").open(newline="") as file:
        return sorted({int(row["step"]) for row in csv.DictReader(file) if row["train/loss"]})


# Slow lane (nightly, nox -s slow): two fits (50 s); the default lane keeps resuming from a
# checkpoint (test_lightning).
@pytest.mark.slow
def test_a_resumed_run_logs_into_the_version_folder_of_its_checkpoint(workdir: Path) -> None:
    """``--ckpt_path run/lightning_logs/version_0/checkpoints/last.ckpt``: no version_1; the
    resumed steps are appended to version_0's metrics.csv, its last.ckpt moves on, and Lightning
    says nothing about a changed checkpoint folder or a loader that is not resumable."""
    first = fit()
    assert first.returncode == 0, first.stderr[-3000:]
    version = workdir / "run" / "lightning_logs" / "version_0"
    assert metrics_steps(version) == [0, 1, 2, 3]
    resumed = fit("--ckpt_path", str(version / "checkpoints" / "last.ckpt"),
                  "--trainer.max_steps", "8", "--verbose")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [path.name for path in version.parent.iterdir()] == ["version_0"]
    assert metrics_steps(version) == list(range(8))
    last = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 8
    for notice in ("not resumable", "dirpath has changed", "exists and is not empty"):
        assert notice not in resumed.stderr  # --verbose: Lightning's warnings would show
    assert "Restoring states from the checkpoint" in resumed.stderr


# Slow lane (nightly, nox -s slow): two fits (90 s); the default lane keeps the resumed fit's
# quiet log.
@pytest.mark.slow
def test_library_tips_and_notices_only_with_verbose(workdir: Path) -> None:
    """Lightning's "💡 Tip" lines, "GPU available" and "Seed set" notices and deprecation
    warnings are off: every stderr line is semanir's own, for fit and for a validation from a
    checkpoint. ``--verbose`` keeps them."""
    quiet = fit("--trainer.max_steps", "2")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    lines = quiet.stderr.splitlines()
    assert lines and all(line.startswith("semanir fit: ") for line in lines), quiet.stderr
    verbose = fit("--trainer.max_steps", "2", "--verbose")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "💡 Tip" in verbose.stderr and "GPU available" in verbose.stderr
    assert "Seed set to 0" in verbose.stderr
    checkpoint = workdir / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    validated = fit("--ckpt_path", str(checkpoint), command="validate")
    assert validated.returncode == 0, validated.stderr[-3000:]
    lines = validated.stderr.splitlines()  # nothing on the checkpoint's training callbacks
    assert lines and all(line.startswith("semanir validate: ") for line in lines), lines


def test_fit_help_lists_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["fit", "--help"])
    assert done.value.code == 0
    assert "--verbose" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data.batch_size", "0"], "--data.batch_size: must be an integer >= 1, got 0"),
        (["--data.patch_size", "0"], "--data.patch_size: must be an integer >= 1, got 0"),
        ([], "data.train_dirs: train400 not found in {cwd} (no data.data_root, no "
         "$SEMANIR_DATA); set --data.data_root DIR or $SEMANIR_DATA to the folder that holds "
         "them"),
    ],
)  # fmt: skip
def test_arguments_are_checked_before_the_data_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    extra: list[str], message: str,
) -> None:  # fmt: skip
    """In a folder without the shipped config's data, a bad data argument is what is reported
    (it was the missing folder); with good arguments, the missing folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEMANIR_DATA", raising=False)
    monkeypatch.setattr(sys, "argv", ["semanir"])
    assert main(["fit", "--config", "denoise_gray_tiny", *extra]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"semanir fit: error: {message.format(cwd=tmp_path)}"
    ]
    assert list(tmp_path.iterdir()) == []


def no_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make building the Lightning trainer fail the test (a check must come before it)."""
    from lightning.pytorch.cli import LightningCLI

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a trainer was built")

    monkeypatch.setattr(LightningCLI, "instantiate_trainer", refuse)


def test_a_patch_larger_than_a_training_image_is_refused_before_the_trainer(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The limit is the smallest training image's side (a random crop cannot be larger; the
    loader used to find it only when the trainer set the data up), rounded down to the scale."""
    from common_kernels.runtime.errors import InvalidValue
    from semanir.data.datamodule import RestorationDataModule

    write_image(workdir / "train" / "small.png", torch.rand(1, 20, 30))
    data = RestorationDataModule(**{**DATA, "patch_size": 24})
    with pytest.raises(InvalidValue) as caught:
        data.prepare_datasets("fit")
    assert str(caught.value) == (
        "patch_size 24 is larger than the smallest training image (20 px a side): 1 image(s) "
        "smaller, train/small.png (20x30); use a patch_size of at most 20"
    )
    sr = RestorationDataModule(**{**DATA, "sigma_range": None, "task": "sr", "scale": 3,
                                  "patch_size": 21})  # fmt: skip
    with pytest.raises(InvalidValue) as caught:
        sr.prepare_datasets("fit")
    assert str(caught.value).endswith("use a patch_size of at most 18")

    no_trainer(monkeypatch)
    assert refusal(capsys, "--data.patch_size", "24") == [
        "semanir fit: error: --data.patch_size 24 is larger than the smallest training image "
        "(20 px a side): 1 image(s) smaller, train/small.png (20x30); use a --data.patch_size "
        "of at most 20"
    ]


def test_more_workers_than_cpus_are_refused(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from common_kernels.runtime.errors import InvalidArgument
    from semanir.data.datamodule import RestorationDataModule

    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    RestorationDataModule(**{**DATA, "num_workers": 3})
    with pytest.raises(InvalidArgument) as caught:
        RestorationDataModule(**{**DATA, "num_workers": 4})
    assert str(caught.value) == (
        "num_workers: must be an integer in [0, 3] (this machine's CPUs, os.cpu_count()), got 4"
    )
    no_trainer(monkeypatch)
    assert refusal(capsys, "--data.num_workers", "4") == [
        "semanir fit: error: --data.num_workers: must be an integer in [0, 3] (this machine's "
        "CPUs, os.cpu_count()), got 4"
    ]


MEMORY_REFUSALS = {
    "batch size": (
        ["--data.batch_size", "4096"], 2**30,
        "--data.batch_size 4096: a training step needs an estimated 3.64 GiB (4096 x 932.50 KiB "
        "per 16 px patch + 186.99 KiB of weights, gradients and AdamW state), more than the "
        "1.00 GiB available on cpu; use a --data.batch_size of at most 1124",
    ),
    "patch size": (
        [], 2**20,
        "--data.patch_size 16: a training step on a single patch needs an estimated 1.09 MiB "
        "(932.50 KiB per 16 px patch + 186.99 KiB of weights, gradients and AdamW state), more "
        "than the 1.00 MiB available on cpu; use a --data.patch_size of at most 15",
    ),
    "model": (
        ["--model.arch_overrides", "{embed_dim: 64}"], 2**20,
        "--model.arch_overrides: training a model of 566,606 parameters needs an estimated "
        "10.81 MiB for its weights, gradients and AdamW state alone, more than the 1.00 MiB "
        "available on cpu; use a smaller model",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MEMORY_REFUSALS))
def test_a_training_step_larger_than_the_memory_is_refused_before_it_runs(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """The estimate of one step (the tiny test model: 2,984 bytes per pixel of a patch, 9,574
    parameters), against the device's available memory (here set), names the flag to lower."""
    from semanir import lightning_module

    extra, budget, message = MEMORY_REFUSALS[case]
    monkeypatch.setattr(lightning_module, "available_bytes", lambda device: budget)
    # the model's own check (its fp32 weights on the host, 2.16 MiB in "model") comes first:
    # the next test's
    monkeypatch.setattr(lightning_module, "check_model_memory", lambda arch, overrides: None)
    assert refusal(capsys, *extra) == [f"semanir fit: error: {message}"]


def test_a_model_whose_weights_exceed_the_memory_is_refused_before_it_is_built(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Counted on the meta device: no weight is allocated."""
    from common_kernels.runtime.errors import InvalidValue
    from semanir import lightning_module

    monkeypatch.setattr(lightning_module, "available_bytes", lambda device: 2**20)
    with pytest.raises(InvalidValue) as caught:
        lightning_module.RestorationModule(
            arch="semanir_test_tiny_unet", arch_overrides={"embed_dim": 256}
        )
    assert str(caught.value) == (
        "arch_overrides: a model of 8,999,822 parameters needs 34.33 MiB for its fp32 weights "
        "alone, more than the 1.00 MiB available on the host; use a smaller model"
    )
    no_trainer(monkeypatch)
    extra = ["--model.arch_overrides", "{embed_dim: 256}"]
    assert refusal(capsys, *extra) == [
        "semanir fit: error: --model.arch_overrides: a model of 8,999,822 parameters needs "
        "34.33 MiB for its fp32 weights alone, more than the 1.00 MiB available on the host; "
        "use a smaller model"
    ]


def test_a_validation_batch_of_whole_images_of_different_sizes_is_refused_before_any_work(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 49: a batch stacks its images, so ``val_batch_size`` > 1 over whole images of
    several sizes failed in the first validation; now it is one line from the headers."""
    write_image(workdir / "val" / "1.png", torch.rand(1, 32, 40))
    write_image(workdir / "val" / "2.png", torch.rand(1, 24, 24))
    no_trainer(monkeypatch)
    assert refusal(capsys, "--data.val_batch_size", "2") == [
        "semanir fit: error: --data.val_batch_size 2 stacks whole validation images, which come "
        "in 2 sizes (24x24, 32x40); use a --data.val_batch_size of 1 or set --data.val_patch_size "
        "(center crops of one size)"
    ]
    # Center crops are of one size, and one image a batch needs none.
    from semanir.data.datamodule import RestorationDataModule

    data = RestorationDataModule(
        **{**DATA, "val_dirs": ["val"], "val_batch_size": 2, "val_patch_size": 16}
    )
    data.prepare_datasets("fit")
    assert data.val_input_size == (16, 16)
    data = RestorationDataModule(**{**DATA, "val_dirs": ["val"], "val_batch_size": 1})
    data.prepare_datasets("fit")
    assert data.val_input_size == (32, 40)  # the largest input, for the memory check


def test_a_validation_batch_larger_than_the_memory_is_refused_before_it_runs(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The training step fits the budget; 64 whole 24x24 validation images at once do not
    (:func:`semanir.memory.check_validation_memory`, checked against its formula in
    test_memory.py)."""
    from semanir import lightning_module

    monkeypatch.setattr(lightning_module, "available_bytes", lambda device: 16 * 2**20)
    monkeypatch.setattr(lightning_module, "check_model_memory", lambda arch, overrides: None)
    for index in range(1, 64):
        write_image(workdir / "val" / f"{index}.png", torch.rand(1, 24, 24))
    (line,) = refusal(capsys, "--data.val_batch_size", "64")
    assert line.startswith(
        "semanir fit: error: --data.val_batch_size 64: validating 64 24x24 px inputs at once "
        "needs an estimated "
    )
    assert line.endswith("more than the 16.00 MiB available on cpu; use a --data.val_batch_size "
                         "of at most 44")  # fmt: skip
