"""``vitron train`` survives signals (issue 25, item 1): SIGTERM / SIGINT end the current
optimizer step, write ``interrupted.ckpt`` atomically and exit 143 / 130 with one line saying
how to resume; ``--resume`` ends with exactly the weights of an uninterrupted run; periodic
checkpoints by steps."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vitron.cli import main
from vitron.tiny import tiny_model
from vitron.training import TrainConfig, train
from vitron.training.resume import LOG_VERSION_KEY

CAPTIONS = ("a noisy square", "red dots on grey", "three green lines")

# the run sends itself the signal during step 4 (global_step 3): mid-epoch, 3 batches per epoch
SIGNAL_SCRIPT = """
import os, signal, subprocess, sys, time
import torch
from vitron.cli import main
from vitron.training.module import VitronLightningModule

SIGNAL = os.environ.get("SEND_SIGNAL")
STEP = int(os.environ.get("SIGNAL_STEP") or 3)  # the signal comes during step STEP + 1
TO_GROUP = os.environ.get("TO_GROUP")  # the whole job, loader workers included, as srun does
plain_step = VitronLightningModule.training_step

def training_step(self, batch, batch_idx):
    if SIGNAL and self.trainer.global_step == STEP:
        if TO_GROUP:  # sent by another process, as a scheduler does
            code = f"import os; os.killpg({os.getpgrp()}, {int(getattr(signal, SIGNAL))})"
            subprocess.run([sys.executable, "-c", code], start_new_session=True, check=True)
            time.sleep(0.5)  # the workers are gone (or not) before the step goes on
        else:
            os.kill(os.getpid(), getattr(signal, SIGNAL))
    return plain_step(self, batch, batch_idx)

VitronLightningModule.training_step = training_step
torch.set_num_threads(1)
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder and three distinct captions of one image."""
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(root / "img.png")
    lines = [
        {"id": str(k), "images": ["img.png"], "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": caption}]}
        for k, caption in enumerate(CAPTIONS)
    ]  # fmt: skip
    (root / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    tiny_model(seed=0).save_pretrained(root / "model")
    (root / "send_signal.py").write_text(textwrap.dedent(SIGNAL_SCRIPT))
    return root


def run_train(
    files: Path,
    output: Path,
    *extra: str,
    signal_name: str = "",
    to_group: bool = False,
    signal_step: int = 3,
) -> subprocess.CompletedProcess:
    argv = ["train", "--model", str(files / "model"), "--data", str(files / "data.jsonl"),
            "--stage", "2", "-o", str(output), "--max-steps", "6", "--batch-size", "1",
            "--lr", "1e-2", "--accelerator", "cpu", *extra]  # fmt: skip
    env = {"SEND_SIGNAL": signal_name, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
           "TO_GROUP": "1" if to_group else "", "SIGNAL_STEP": str(signal_step)}  # fmt: skip
    return subprocess.run(
        [sys.executable, str(files / "send_signal.py"), *argv], capture_output=True, text=True,
        timeout=600, env=env, start_new_session=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(files: Path) -> dict[str, torch.Tensor]:
    result = run_train(files, files / "straight")
    assert result.returncode == 0, result.stderr[-2000:]
    return load_file(files / "straight" / "model.safetensors")


@pytest.mark.parametrize(
    ("signal_name", "status", "workers", "step", "resume_workers"),
    [
        # in the second epoch (3 batches an epoch); slow (35 s each): the two SIGTERM cases below
        # keep the checkpoint-and-resume path in the default lane
        pytest.param("SIGTERM", 143, 0, 4, 0, marks=pytest.mark.slow),
        pytest.param("SIGINT", 130, 0, 4, 0, marks=pytest.mark.slow),
        # sent to the job's process group: the loader worker must leave it to the main process
        ("SIGTERM", 143, 1, 4, 1),
        # at the end of the first epoch (the resumed run starts the second), resumed with
        # another number of loader workers than the stopped run had
        ("SIGTERM", 143, 1, 3, 0),
    ],
)
def test_signal_saves_a_checkpoint_and_resume_gives_the_same_weights(
    files, uninterrupted, signal_name, status, workers, step, resume_workers
):
    output = files / f"stopped-{signal_name}-{workers}-{step}"
    stopped = run_train(
        files, output, "--num-workers", str(workers), signal_name=signal_name,
        to_group=workers > 0, signal_step=step - 1,
    )  # fmt: skip
    checkpoint = output / "lightning" / "checkpoints" / "interrupted.ckpt"
    assert stopped.returncode == status, stopped.stderr[-2000:]
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"vitron train: {signal_name} at step {step}, saved {checkpoint}; resume with the same "
        f"command and --resume {checkpoint}"
    )
    assert checkpoint.is_file() and not (output / "model.safetensors").exists()
    # stderr is a pipe, as a batch job's log: plain progress lines, no tqdm bar
    assert "\r" not in stopped.stderr and "it/s" not in stopped.stderr
    assert "vitron train: training from step 0" in stopped.stderr.splitlines()
    assert not [p.name for p in checkpoint.parent.iterdir() if p.name.startswith(".")]  # no temp
    assert torch.load(checkpoint, weights_only=False)["global_step"] == step
    flags = ("--num-workers", str(resume_workers), "--resume", str(checkpoint))
    resumed = run_train(files, output, *flags)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lines = resumed.stderr.splitlines()
    assert f"vitron train: training from step {step}" in lines
    assert "vitron train: training ended at step 6" in lines
    assert "not resumable" not in resumed.stderr  # Lightning's warning: the loader is
    got = load_file(output / "model.safetensors")
    assert got.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        assert torch.equal(got[name], value), name
    # the resumed run logged into the stopped run's version folder, each step once
    logs = output / "lightning" / "lightning_logs"
    assert sorted(p.name for p in logs.iterdir()) == ["version_0"]
    with (logs / "version_0" / "metrics.csv").open(newline="") as table:
        assert [int(row["step"]) for row in csv.DictReader(table)] == [0, 1, 2, 3, 4, 5]


def legacy_checkpoint(checkpoint: Path, target: Path) -> Path:
    """``checkpoint`` as vitron 0.3.0 wrote it: the data position in a ``DataPosition`` callback
    state (epoch, batches trained on in it), no loader state, no log version."""
    data = torch.load(checkpoint, weights_only=False)
    (loader,) = data["loops"]["fit_loop"]["state_dict"].pop("combined_loader")
    position = loader["_sampler_iter_state"]["sampler_state"]
    data["callbacks"]["DataPosition"] = {"epoch": position["epoch"], "batches": position["drawn"]}
    del data[LOG_VERSION_KEY]
    torch.save(data, target)
    return target


def test_resume_from_a_0_3_0_checkpoint_gives_the_same_weights(files, uninterrupted):
    output = files / "stopped-legacy"
    stopped = run_train(files, output, signal_name="SIGTERM")
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    checkpoint = output / "lightning" / "checkpoints" / "interrupted.ckpt"
    old = legacy_checkpoint(checkpoint, output / "old.ckpt")
    assert old.stat().st_size > 0 and torch.load(old, weights_only=False)["global_step"] == 4
    resumed = run_train(files, output, "--num-workers", "1", "--resume", str(old))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = load_file(output / "model.safetensors")
    for name, value in uninterrupted.items():
        assert torch.equal(got[name], value), name


def test_periodic_checkpoints_by_steps(files, tmp_path):
    result = train(
        files / "model", files / "data.jsonl", tmp_path / "out", stage=1, max_steps=4,
        batch_size=1, accelerator="cpu", checkpoints=False, enable_progress_bar=False,
        checkpoint_every_n_steps=2,
    )  # fmt: skip
    assert result["last_loss"] > 0
    folder = tmp_path / "out" / "lightning" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-step=4.ckpt"]  # the latest kept
    assert torch.load(folder / "step-step=4.ckpt", weights_only=False)["global_step"] == 4


@pytest.mark.parametrize(
    ("settings", "flags", "message"),
    [
        ({"checkpoint_every_n_steps": 0}, ["--checkpoint-every-steps", "0"],
         "{checkpoint_every_n_steps} must be >= 1, got 0"),
        ({"checkpoint_every_minutes": -1.0}, ["--checkpoint-every-minutes", "-1"],
         "{checkpoint_every_minutes} must be a finite number > 0, got -1.0"),
        ({"max_steps": 0}, ["--max-steps", "0"], "{max_steps} must be >= 1, got 0"),
        ({"num_workers": -1}, ["--num-workers", "-1"], "{num_workers} must be >= 0, got -1"),
        ({"lr": 0.0}, ["--lr", "0"], "{lr} must be a finite number > 0, got 0.0"),
    ],
)  # fmt: skip
def test_train_settings_same_message_from_api_and_cli(
    files, tmp_path, capsys, settings, flags, message
):
    from vitron.cli import FLAGS as TRAIN_FLAGS

    with pytest.raises(ValueError) as caught:
        TrainConfig(stage=2, **settings)
    assert str(caught.value) == message.format_map({k: k for k in TRAIN_FLAGS})
    argv = ["train", "--model", str(files / "model"), "--data", str(files / "data.jsonl"),
            "--stage", "2", "-o", str(tmp_path / "o"), *flags]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"vitron train: error: {message.format_map(TRAIN_FLAGS)}\n"


def test_resume_file_must_exist(files, tmp_path, capsys):
    missing = str(tmp_path / "no.ckpt")
    argv = ["train", "--model", str(files / "model"), "--data", str(files / "data.jsonl"),
            "--stage", "2", "-o", str(tmp_path / "o"), "--resume", missing]  # fmt: skip
    assert main(argv) == 2
    assert (
        capsys.readouterr().err
        == f"vitron train: error: --resume {tmp_path / 'no.ckpt'} does not exist\n"
    )
    with pytest.raises(ValueError, match=r"^resume .*no\.ckpt does not exist$"):
        train(
            files / "model",
            files / "data.jsonl",
            tmp_path / "o",
            stage=2,
            resume=tmp_path / "no.ckpt",
        )


def test_a_failed_start_leaves_no_folder_behind(files, tmp_path, capsys):
    """An image that exists but does not decode fails the first batch: one line, exit 2, and
    neither the output folder nor a log version is left; an earlier run's log is kept."""
    (tmp_path / "bad.png").write_bytes(b"not a png")
    record = {"images": ["bad.png"], "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a cat"}]}  # fmt: skip
    (tmp_path / "bad.jsonl").write_text(json.dumps(record) + "\n")
    output = tmp_path / "out"
    argv = ["train", "--model", str(files / "model"), "--data", str(tmp_path / "bad.jsonl"),
            "--stage", "2", "-o", str(output), "--max-steps", "2", "--batch-size", "1",
            "--accelerator", "cpu"]  # fmt: skip
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["vitron train: training from step 0", lines[-1]]  # no tips, no notices
    bad = tmp_path / "bad.png"
    assert lines[-1] == (
        f"vitron train: error: {bad} is not a readable image (cannot identify image file '{bad}')"
    )
    assert not output.exists()
    earlier = output / "lightning" / "lightning_logs" / "version_0"
    earlier.mkdir(parents=True)
    (earlier / "metrics.csv").write_text("epoch,step,train/loss\n0,0,5.5\n")
    assert main(argv) == 2
    assert sorted(p.relative_to(output).as_posix() for p in output.rglob("*")) == [
        "lightning", "lightning/lightning_logs", "lightning/lightning_logs/version_0",
        "lightning/lightning_logs/version_0/metrics.csv",
    ]  # fmt: skip
    assert (earlier / "metrics.csv").read_text() == "epoch,step,train/loss\n0,0,5.5\n"


def test_missing_media_and_bad_checkpoints_are_named_before_the_model_loads(files, tmp_path):
    record = {"images": ["img.png", "gone.png"], "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a cat"}]}  # fmt: skip
    (files / "gone.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError) as caught:
        train(files / "model", files / "gone.jsonl", tmp_path / "o", stage=2)
    assert str(caught.value) == (
        f"data {files / 'gone.jsonl'}:1: images[1] gone.png does not exist (paths are relative "
        f"to {files})"
    )
    torch.save({"global_step": 3, "state_dict": {}}, tmp_path / "at3.ckpt")
    with pytest.raises(ValueError) as caught:
        train(files / "model", files / "data.jsonl", tmp_path / "o", stage=2, max_steps=3,
              resume=tmp_path / "at3.ckpt")  # fmt: skip
    assert str(caught.value) == (
        f"resume {tmp_path / 'at3.ckpt'} was saved at step 3, and max_steps is 3: nothing is "
        "left to train (raise max_steps)"
    )
    with pytest.raises(ValueError) as caught:
        train(files / "model", files / "data.jsonl", tmp_path / "o", stage=2,
              resume=files / "data.jsonl")  # fmt: skip
    assert str(caught.value) == (
        f"resume {files / 'data.jsonl'} is not a checkpoint written by vitron train (not a file "
        "written by torch.save)"
    )
    assert not (tmp_path / "o").exists()
