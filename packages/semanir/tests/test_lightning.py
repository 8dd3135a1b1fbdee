"""RestorationModule: losses, schedules, metric conventions, a short fit, checkpoint resume,
export, and a 2-process DDP run on the CPU (gloo)."""

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from common_kernels.runtime.errors import InvalidArgument
from semanir.data.datamodule import RestorationDataModule
from semanir.inference import load_model
from semanir.io import write_image
from semanir.lightning_module import (
    RestorationModule,
    WarmupEMAWeightAveraging,
    WarmupSchedule,
    charbonnier_loss,
    fused_adamw_supported,
)
from semanir.metrics import psnr, ssim
from semanir.models import build_model

TINY = "semanir_test_tiny_unet"


def make_images(folder: Path, count: int, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(count * 1000 + size)
    for index in range(count):
        smooth = torch.linspace(0, 1, size).view(1, 1, size).expand(1, size, size)
        texture = 0.3 * torch.rand(1, size, size, generator=generator)
        write_image(folder / f"{index:02d}.png", 0.6 * smooth + texture)
    return folder


@pytest.fixture
def data(tmp_path: Path) -> RestorationDataModule:
    return RestorationDataModule(
        train_dirs=[str(make_images(tmp_path / "train", count=4, size=40))],
        val_dirs=[str(make_images(tmp_path / "val", count=1, size=32))],
        task="denoise",
        sigma_range=(10, 30),
        val_sigma=25,
        patch_size=16,
        batch_size=2,
        num_workers=0,
        repeat=2,
    )


def trainer(root: Path, max_steps: int, **kwargs: object) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def test_charbonnier_loss_value() -> None:
    x, y = torch.zeros(4), torch.tensor([0.0, 0.0, 3.0, 4.0])
    expected = (2 * 1e-3 + math.sqrt(9 + 1e-6) + math.sqrt(16 + 1e-6)) / 4
    assert charbonnier_loss(x, y).item() == pytest.approx(expected, rel=1e-6)


def test_schedules() -> None:
    cosine = WarmupSchedule("cosine", warmup_steps=4, total_steps=14, min_factor=0.1)
    assert [cosine(step) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine(4) == pytest.approx(1.0)
    assert cosine(9) == pytest.approx(0.55)  # half-way: (1 + 0.1) / 2
    assert cosine(14) == pytest.approx(0.1) and cosine(100) == pytest.approx(0.1)
    steps = WarmupSchedule("multistep", milestones=(10, 20), gamma=0.5)
    assert [steps(s) for s in (0, 9, 10, 19, 20, 50)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert WarmupSchedule("constant", warmup_steps=2)(0) == 0.5


def test_metric_conventions_follow_the_task() -> None:
    gray = RestorationModule(TINY, task="denoise")
    assert gray.metric_options(1) == {"y_channel": False, "crop_border": 0}
    jpeg = RestorationModule(TINY, task="jpeg")
    assert jpeg.metric_options(3) == {"y_channel": True, "crop_border": 0}
    sr = RestorationModule("semanir_test_tiny_columnar", task="sr")
    assert sr.upscale == 2 and sr.metric_options(3) == {"y_channel": True, "crop_border": 2}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"loss": "l2"}, "loss: must be 'l1' or 'charbonnier', got 'l2'"),
        ({"scheduler": "linear"}, "scheduler: must be cosine, multistep or constant, got 'linear'"),
        ({"lr": 0.0}, "lr: must be > 0, got 0.0"),
        ({"lr": float("nan")}, "lr: must be > 0, got nan"),
        ({"charbonnier_eps": -1.0}, "charbonnier_eps: must be > 0, got -1.0"),
        ({"gamma": 0}, "gamma: must be > 0, got 0"),
        ({"weight_decay": -0.1}, "weight_decay: must be >= 0, got -0.1"),
        ({"min_lr": -1e-6}, "min_lr: must be >= 0, got -1e-06"),
        ({"betas": (0.9, 1.0)}, "betas: must be two numbers in [0, 1), got [0.9, 1.0]"),
        ({"warmup_steps": -1}, "warmup_steps: must be an integer >= 0, got -1"),
        ({"total_steps": 0}, "total_steps: must be an integer >= 1, got 0"),
        ({"milestones": [10, -5]}, "milestones: must be steps >= 0, got [10, -5]"),
        ({"arch": "nope"}, "arch: unknown model config 'nope'; known: dncnn_denoise_color"),
    ],
)
def test_module_argument_errors(options: dict, message: str) -> None:
    """Each refused before the model is built, naming the argument (InvalidArgument)."""
    with pytest.raises(InvalidArgument) as caught:
        RestorationModule(**{"arch": TINY, **options})
    assert str(caught.value).startswith(message)
    assert caught.value.argument == message.split(":")[0]


def test_init_weights_follows_the_one_model_name_rule(tmp_path: Path) -> None:
    """A bundled name, a folder that exists or a hub id; a missing folder, a folder without a
    saved model and a bare unknown name are refused before the model is built."""
    module = RestorationModule(
        "semanir_tiny_denoise_gray", init_weights="semanir_tiny_denoise_gray"
    )
    bundled = load_model("semanir_tiny_denoise_gray")
    for name, tensor in bundled.state_dict().items():
        assert torch.equal(module.model.state_dict()[name], tensor), name
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    cases = {
        "./nope": f"init_weights: no model folder ./nope (nothing at {Path.cwd() / 'nope'})",
        "nope": "init_weights: unknown model 'nope': known names: semanir_tiny_denoise_gray, "
        "semanir_tiny_jpeg_gray, semanir_tiny_denoise_color, semanir_tiny_sr_x4; a local folder "
        "starts with ./ or / (or exists), a hub id is owner/name",
        str(tmp_path / "empty"): f"init_weights: {tmp_path / 'empty'} is a folder without "
        "config.json; expected a save_pretrained folder",
        str(tmp_path / "file.txt"): f"init_weights: {tmp_path / 'file.txt'} is a file; expected "
        "a save_pretrained folder",
    }
    for init_weights, message in cases.items():
        with pytest.raises(InvalidArgument) as caught:
            RestorationModule(TINY, init_weights=init_weights)
        assert str(caught.value) == message


def test_config_dict_and_overrides_build_the_same_architecture() -> None:
    by_name = RestorationModule(TINY, arch_overrides={"embed_dim": 4})
    by_config = RestorationModule(by_name.model.config.to_dict())
    assert by_config.model.config == by_name.model.config
    assert by_config.model.config.embed_dim == 4


class FirstStep(Callback):
    """Records the global step and learning rate at the first training batch of a fit."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.lr: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if self.first is None:
            self.first = trainer.global_step
            self.lr = trainer.optimizers[0].param_groups[0]["lr"]


def test_the_cpu_optimizer_is_fused_adamw_and_steps_as_the_default_one() -> None:
    module = RestorationModule(TINY, lr=1e-2, weight_decay=0.05, warmup_steps=1)
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["fused"] is True
    params = list(module.model.parameters())
    reference = [p.detach().clone().requires_grad_() for p in params]
    default = torch.optim.AdamW(reference, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05)
    assert default.param_groups[0]["fused"] is None  # foreach on the CPU
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):  # same gradients, three steps: the moments too
        for p, q in zip(params, reference, strict=True):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        optimizer.step()
        default.step()
    for p, q in zip(params, reference, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_fused_adamw_is_asked_for_one_floating_cpu_or_cuda_device_only() -> None:
    assert fused_adamw_supported([torch.nn.Parameter(torch.zeros(2))])
    assert not fused_adamw_supported([torch.nn.Parameter(torch.zeros(2, device="meta"))])
    assert not fused_adamw_supported(
        [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, device="meta"))]
    )
    assert not fused_adamw_supported(
        [torch.nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)]
    )


def test_fit_checkpoint_resume_and_export(tmp_path: Path, data: RestorationDataModule) -> None:
    L.seed_everything(0)
    module = RestorationModule(TINY, lr=1e-2, warmup_steps=1, export_dir=str(tmp_path / "export"))
    initial = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    first = trainer(tmp_path, max_steps=3, callbacks=[checkpoints])
    first.fit(module, datamodule=data)

    assert first.global_step == 3
    assert math.isfinite(first.callback_metrics["train/loss"].item())
    changed = [n for n, p in module.model.named_parameters() if not torch.equal(p, initial[n])]
    assert len(changed) == len(initial)  # every parameter was updated
    checkpoint = tmp_path / "ckpt" / "epoch=0-step=3.ckpt"
    assert checkpoint.is_file()

    reloaded = RestorationModule.load_from_checkpoint(checkpoint)
    assert reloaded.hparams.lr == 1e-2
    for name, value in module.model.state_dict().items():
        assert torch.equal(reloaded.model.state_dict()[name], value), name

    exported = load_model(str(tmp_path / "export"))
    for name, value in module.model.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value), name

    resumed_module = RestorationModule(TINY, lr=1e-2, warmup_steps=1)
    first_step = FirstStep()
    second = trainer(tmp_path, max_steps=5, callbacks=[first_step])
    second.fit(resumed_module, datamodule=data, ckpt_path=checkpoint)
    assert first_step.first == 3 and second.global_step == 5
    # the restored cosine schedule was stretched from 3 to the new max_steps (5)
    [schedule] = second.lr_scheduler_configs[0].scheduler.lr_lambdas
    assert schedule.total_steps == 5
    assert first_step.lr == pytest.approx(1e-2 * schedule(3))


def test_validation_logs_psnr_of_the_restored_images(
    tmp_path: Path, data: RestorationDataModule
) -> None:
    module = RestorationModule(TINY)
    [metrics] = trainer(tmp_path, max_steps=1).validate(module, datamodule=data, verbose=False)
    sample = data.val_set[0]
    with torch.no_grad():
        output = module.model.eval()(sample["lq"][None]).clamp(0, 1)
    expected = psnr(output, sample["gt"][None]).item()
    assert metrics["val/psnr"] == pytest.approx(expected, abs=1e-4)
    assert 0 < metrics["val/ssim"] <= 1


def test_validation_metrics_are_means_over_all_images_of_the_epoch(tmp_path: Path) -> None:
    """Three 32x32 images in batches of 2 and 1: the logged values are the per-image means."""
    data = RestorationDataModule(
        train_dirs=[str(make_images(tmp_path / "train", count=2, size=24))],
        val_dirs=[str(make_images(tmp_path / "val", count=3, size=32))],
        task="denoise",
        sigma=25,
        patch_size=16,
        val_batch_size=2,
        num_workers=0,
    )
    module = RestorationModule(TINY)
    [metrics] = trainer(tmp_path, max_steps=1).validate(module, datamodule=data, verbose=False)
    samples = [data.val_set[i] for i in range(3)]
    lq = torch.stack([s["lq"] for s in samples])  # (3, 1, 32, 32)
    gt = torch.stack([s["gt"] for s in samples])
    with torch.no_grad():
        output = module.model.eval()(lq).clamp(0, 1)
    per_image_psnr, per_image_ssim = psnr(output, gt), ssim(output, gt)  # (3,)
    batch_means = (per_image_psnr[:2].mean() + per_image_psnr[2]) / 2
    assert abs(batch_means - per_image_psnr.mean()) > 1e-3  # the test tells the two apart
    assert metrics["val/psnr"] == pytest.approx(per_image_psnr.mean().item(), abs=1e-4)
    assert metrics["val/ssim"] == pytest.approx(per_image_ssim.mean().item(), abs=1e-6)


def test_cosine_schedule_needs_a_length(tmp_path: Path, data: RestorationDataModule) -> None:
    module = RestorationModule(TINY)
    endless = L.Trainer(accelerator="cpu", max_time={"seconds": 30}, logger=False)
    with pytest.raises(ValueError, match="the cosine schedule needs a length"):
        endless.fit(module, datamodule=data)


DDP_SCRIPT = textwrap.dedent(
    """
    import sys

    import lightning as L
    import torch

    from semanir.data.datamodule import RestorationDataModule
    from semanir.lightning_module import RestorationModule

    root = sys.argv[1]
    torch.set_num_threads(1)
    L.seed_everything(0, workers=True)
    data = RestorationDataModule(
        train_dirs=[root + "/train"], sigma=25, patch_size=16, batch_size=2, num_workers=0
    )
    module = RestorationModule("semanir_test_tiny_unet", lr=1e-2, scheduler="constant")
    initial = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    rank = trainer.global_rank
    torch.save(
        {"initial": initial, "final": module.model.state_dict(), "step": trainer.global_step,
         "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else ""},
        f"{root}/rank{rank}.pt",
    )
    print(f"rank {rank} finished", flush=True)
    """
)


# Slow lane (nightly, nox -s slow): two gloo processes (50 s).
@pytest.mark.slow
def test_ddp_two_processes_on_cpu_keep_identical_weights(tmp_path: Path) -> None:
    make_images(tmp_path / "train", count=8, size=24)
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 finished" in result.stdout and "rank 1 finished" in result.stdout
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [r["step"] for r in ranks] == [3, 3]
    assert [r["backend"] for r in ranks] == ["gloo", "gloo"]
    for name, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][name]), name
    moved = [n for n, v in ranks[0]["final"].items() if not torch.equal(v, ranks[0]["initial"][n])]
    assert moved  # the run trained


def test_init_weights_start_from_a_saved_model(tmp_path: Path) -> None:
    torch.manual_seed(3)
    saved = RestorationModule(arch=TINY).model
    saved.save_pretrained(tmp_path / "start")
    torch.manual_seed(4)  # another random initialisation, replaced by the saved weights
    module = RestorationModule(arch=TINY, init_weights=str(tmp_path / "start"))
    for name, tensor in saved.state_dict().items():
        assert torch.equal(module.model.state_dict()[name], tensor), name
    with pytest.raises(InvalidArgument) as caught:
        RestorationModule(
            arch=TINY, arch_overrides={"embed_dim": 12}, init_weights=str(tmp_path / "start")
        )
    assert str(caught.value).startswith(
        f"init_weights: {tmp_path / 'start'} holds weights of another architecture than arch "
        "(with arch_overrides): Error(s) in loading state_dict for SemanIR: size mismatch for "
        "shallow.weight: copying a param with shape torch.Size([8, 1, 3, 3]) from checkpoint"
    )
    assert "\n" not in str(caught.value)


class RecordWeights(Callback):
    """The model's weights after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({n: p.detach().clone() for n, p in pl_module.model.named_parameters()})


def test_ema_of_weights_is_what_validation_and_export_see(
    tmp_path: Path, data: RestorationDataModule
) -> None:
    """The bundled recipe's EMAWeightAveraging: export holds the average, computed here by the
    recurrence e_1 = w_1, e_t = decay * e_{t-1} + (1 - decay) * w_t."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    torch.manual_seed(0)
    module = RestorationModule(
        arch=TINY, lr=1e-2, scheduler="constant", export_dir=str(tmp_path / "out")
    )
    record = RecordWeights()  # runs before the EMA callback's update: sees the raw weights
    ema = EMAWeightAveraging(decay=0.5)
    trainer(tmp_path, max_steps=3, callbacks=[record, ema], limit_val_batches=0).fit(module, data)
    expected = dict(record.steps[0])
    for weights in record.steps[1:]:
        expected = {n: 0.5 * expected[n] + 0.5 * w for n, w in weights.items()}
    exported = load_model(str(tmp_path / "out"))
    for name, tensor in exported.named_parameters():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=1e-6, msg=name)
    assert not torch.equal(expected["shallow.weight"], record.steps[-1]["shallow.weight"])


def test_warmup_ema_follows_the_num_updates_recurrence(
    tmp_path: Path, data: RestorationDataModule
) -> None:
    """e_1 = w_1, then e = d * e + (1 - d) * w with d = min(decay, (1 + t) / (10 + t)) after t
    averaged updates: TensorFlow's ExponentialMovingAverage num_updates rule, restated here."""
    torch.manual_seed(0)
    module = RestorationModule(
        arch=TINY, lr=1e-2, scheduler="constant", export_dir=str(tmp_path / "out")
    )
    record = RecordWeights()
    ema = WarmupEMAWeightAveraging(decay=0.3)  # warm-up 0.18, 0.25, then the 0.3 cap
    trainer(tmp_path, max_steps=5, callbacks=[record, ema], limit_val_batches=0).fit(module, data)
    expected = dict(record.steps[0])
    decays = []
    for t, weights in enumerate(record.steps[1:], start=1):  # t = updates already averaged
        d = min(0.3, (1 + t) / (10 + t))
        decays.append(d)
        expected = {n: d * expected[n] + (1 - d) * w for n, w in weights.items()}
    assert decays == pytest.approx([2 / 11, 3 / 12, 0.3, 0.3])  # warm-up, then the cap
    exported = load_model(str(tmp_path / "out"))
    for name, tensor in exported.named_parameters():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=1e-6, msg=name)


def test_warmup_ema_rejects_a_decay_outside_0_1() -> None:
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\], got 1.5"):
        WarmupEMAWeightAveraging(decay=1.5)


def test_a_gray_model_starts_a_colour_model_that_matches_it_on_gray_images(tmp_path: Path) -> None:
    torch.manual_seed(0)
    gray = build_model(TINY)
    with torch.no_grad():
        gray.reconstruct.weight.mul_(100)  # a visible correction
    gray.save_pretrained(tmp_path / "gray")
    module = RestorationModule(
        arch=TINY, arch_overrides={"in_channels": 3, "out_channels": 3},
        init_weights=str(tmp_path / "gray"),
    )  # fmt: skip
    colour = module.model.eval()
    assert colour.shallow.weight.shape[1] == 3 and colour.reconstruct.weight.shape[0] == 3
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        expected = gray.eval()(x)  # (2, 1, H, W)
        out = colour(x.expand(-1, 3, -1, -1))  # (2, 3, H, W)
    for channel in range(3):
        torch.testing.assert_close(out[:, channel : channel + 1], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, x.expand(-1, 3, -1, -1), atol=1e-3)  # not the identity


INTERRUPT_SCRIPT = textwrap.dedent(
    """
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch
    from lightning.pytorch.callbacks import Callback

    from semanir.cli import main


    class SignalAtStep(Callback):
        \"\"\"Sends this process a signal after an optimizer step, as a scheduler would.\"\"\"

        def __init__(self, step: int, name: str, group: bool = False) -> None:
            self.step, self.name, self.group = step, name, group

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == self.step and not self.group:
                os.kill(os.getpid(), getattr(signal, self.name))

        def on_before_backward(self, trainer, *args):
            # the whole job, loader workers included, as srun or Ctrl-C in a terminal do,
            # in the middle of the step that ends at ``step``
            # (sent by another process: a worker told by its parent to stop exits quietly)
            if trainer.global_step == self.step - 1 and self.group:
                code = f"import os; os.killpg({os.getpgrp()}, {int(getattr(signal, self.name))})"
                subprocess.run([sys.executable, "-c", code], start_new_session=True, check=True)
                time.sleep(0.5)  # the workers are gone (or not) before the backward


    torch.set_num_threads(1)
    sys.exit(main(sys.argv[1:]))
    """
)

INTERRUPT_CONFIG = textwrap.dedent(
    """
    seed_everything: 0
    trainer:
      accelerator: cpu
      max_steps: 6
      logger: false
      enable_progress_bar: false
      enable_model_summary: false
      num_sanity_val_steps: 0
      limit_val_batches: 0
      default_root_dir: {root}
      callbacks:
        - class_path: lightning.pytorch.callbacks.ModelCheckpoint
          init_args:
            dirpath: {root}/checkpoints
            save_last: true
            every_n_train_steps: 2
        - class_path: lightning.pytorch.callbacks.EMAWeightAveraging
          init_args:
            decay: 0.9
    model:
      arch: semanir_test_tiny_unet
      lr: 1.0e-2
      scheduler: cosine
      warmup_steps: 2
      export_dir: {root}/export
    data:
      train_dirs: [{data}]
      task: denoise
      sigma_range: [0, 50]
      patch_size: 16
      batch_size: 2
      num_workers: 0
      repeat: 2
    """
)


def run_fit(folder: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    """``semanir fit`` of the tiny config in a subprocess, outputs under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder.parent / "fit.py"
    script.write_text(INTERRUPT_SCRIPT)
    config = folder / "config.yaml"
    config.write_text(INTERRUPT_CONFIG.format(root=folder, data=data))
    return subprocess.run(
        [sys.executable, str(script), "fit", "--config", str(config), *extra],
        capture_output=True, text=True, timeout=600, cwd=folder.parent, start_new_session=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The tiny images and the exported weights of a run that was never interrupted."""
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("fit")
    data = make_images(root / "data", count=4, size=24)
    result = run_fit(root / "straight", data)
    assert result.returncode == 0, result.stderr[-2000:]
    return data, load_file(root / "straight" / "export" / "model.safetensors")


@pytest.mark.parametrize(
    ("signal_name", "status"),
    [("SIGTERM", 143), pytest.param("SIGINT", 130, marks=pytest.mark.slow)],
)
def test_interrupted_fit_saves_a_checkpoint_and_resumes_to_the_same_weights(
    tmp_path: Path, uninterrupted: tuple[Path, dict], signal_name: str, status: int
) -> None:
    """A run stopped by a signal after step 3 (mid-epoch: 4 steps per epoch) exits with 143 or
    130 and one line naming its checkpoint; resumed from it, it ends with exactly the weights
    of a run that was never interrupted (data order, degradations, k draws, optimizer, EMA)."""
    from safetensors.torch import load_file

    data, expected = uninterrupted
    signal_callback = (
        '--trainer.callbacks+={"class_path": "__main__.SignalAtStep", '
        f'"init_args": {{"step": 3, "name": "{signal_name}"}}}}'
    )
    stopped = run_fit(tmp_path / "stopped", data, signal_callback)
    checkpoint = tmp_path / "stopped" / "checkpoints" / "interrupted.ckpt"
    assert stopped.returncode == status, stopped.stderr[-2000:]
    last_line = stopped.stderr.strip().splitlines()[-1]
    assert last_line == (
        f"semanir fit: {signal_name} at step 3, saved {checkpoint}; resume with the same "
        f"command and --ckpt_path {checkpoint}"
    )
    assert checkpoint.is_file() and not (tmp_path / "stopped" / "export").exists()
    resumed = run_fit(tmp_path / "stopped", data, "--ckpt_path", str(checkpoint))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "not resumable" not in resumed.stderr  # Lightning's warning: the loader is now
    got = load_file(tmp_path / "stopped" / "export" / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


# Slow lane (nightly, nox -s slow): 55 s; the default lane keeps SIGTERM to the fit and its resume
# to the same weights.
@pytest.mark.slow
def test_a_signal_to_the_whole_job_reaches_loader_workers_and_the_run_still_resumes(
    tmp_path: Path, uninterrupted: tuple[Path, dict]
) -> None:
    """SIGTERM sent to the process group (a scheduler, or Ctrl-C in a terminal) with two loader
    workers: the workers ignore it, the main process saves its checkpoint and exits 143, and
    the resumed run ends with the uninterrupted run's weights. The stop is in the second epoch:
    with workers the resumed iterator draws its first indices before Lightning's
    ``set_epoch``, which once replayed the first epoch's order."""
    from safetensors.torch import load_file

    data, expected = uninterrupted
    signal_callback = (
        '--trainer.callbacks+={"class_path": "__main__.SignalAtStep", '
        '"init_args": {"step": 5, "name": "SIGTERM", "group": true}}'
    )
    workers = "--data.num_workers=2"
    stopped = run_fit(tmp_path / "stopped", data, signal_callback, workers)
    checkpoint = tmp_path / "stopped" / "checkpoints" / "interrupted.ckpt"
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "killed by signal" not in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1].startswith("semanir fit: SIGTERM at step 5")
    resumed = run_fit(tmp_path / "stopped", data, "--ckpt_path", str(checkpoint), workers)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "not resumable" not in resumed.stderr
    got = load_file(tmp_path / "stopped" / "export" / "model.safetensors")
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_fit_in_a_log_writes_plain_progress_lines_and_periodic_checkpoints(
    tmp_path: Path, uninterrupted: tuple[Path, dict]
) -> None:
    """stderr is a pipe here, as in a batch job's log: no tqdm bar (no carriage return), plain
    lines instead; ``--checkpoint_minutes`` keeps the latest time-based checkpoint."""
    data, _ = uninterrupted
    result = run_fit(
        tmp_path / "logged", data, "--trainer.enable_progress_bar=true",
        "--checkpoint_minutes=0.00001",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stderr and "it/s" not in result.stderr
    lines = result.stderr.splitlines()
    assert "semanir fit: training from step 0" in lines
    assert any(line.startswith("semanir fit: step 6/6 (100%), epoch ") for line in lines)
    assert lines[-1] == "semanir fit: training ended at step 6"
    periodic = sorted(p.name for p in (tmp_path / "logged" / "checkpoints").glob("periodic*"))
    assert periodic == ["periodic-step=6.ckpt"]


def test_checkpoint_minutes_out_of_range_is_one_line_before_the_trainer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from semanir.cli import main

    data = make_images(tmp_path / "data", count=2, size=24)
    config = tmp_path / "config.yaml"
    config.write_text(INTERRUPT_CONFIG.format(root=tmp_path / "run", data=data))
    for value in ("-1", "2000"):
        assert main(["fit", "--config", str(config), "--checkpoint_minutes", value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == (
            f"semanir fit: error: --checkpoint_minutes must be in [0, 1440] minutes, got "
            f"{float(value)!r}"
        )
    assert not (tmp_path / "run").exists()
