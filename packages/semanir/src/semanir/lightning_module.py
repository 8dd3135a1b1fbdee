"""``RestorationModule``: training, validation metrics, schedules and export for any model."""

from __future__ import annotations

import inspect
import math
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from numbers import Integral
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torchmetrics import MeanMetric

from common_kernels.runtime.cli import UsageError
from common_kernels.runtime.errors import InvalidArgument, InvalidValue, literal
from common_kernels.runtime.hub import resolve_model_name
from common_kernels.runtime.lightning import InterruptCheckpoint, progress_callbacks
from semanir.bundled import BUNDLED_MODELS
from semanir.data.datamodule import RestorationDataModule, check_data_dirs
from semanir.data.datasets import index_generator
from semanir.inference import load_model
from semanir.memory import (
    available_bytes,
    check_training_memory,
    check_validation_memory,
    human_bytes,
)
from semanir.metrics import psnr, ssim
from semanir.models import build_model, model_from_config
from semanir.runs import (
    NewFolders,
    adopt_checkpoint_version,
    check_checkpoint_path,
    keep_csv_metrics,
)
from semanir.tasks import TaskName, get_task

Loss = Literal["l1", "charbonnier"]
Schedule = Literal["cosine", "multistep", "constant"]
UNKNOWN_LENGTH = 0  # a cosine schedule's total_steps before training starts


def charbonnier_loss(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Mean of sqrt((x - y)^2 + eps^2), a smooth L1."""
    return torch.sqrt((x - y).square() + eps**2).mean()


@dataclass
class WarmupSchedule:
    """Learning-rate factor per optimizer step: linear warmup, then cosine, steps or constant.

    A dataclass (not a closure) so that ``LambdaLR`` stores it in checkpoints.

    Args:
        kind: "cosine" (decay to ``min_factor`` at ``total_steps``), "multistep" (times ``gamma``
            at each milestone) or "constant".
        warmup_steps: steps of linear warmup from 1 / warmup_steps to 1.
        total_steps: length of the cosine decay, warmup included.
        min_factor: final cosine factor.
        milestones: steps at which "multistep" multiplies by ``gamma``.
        gamma: "multistep" decay factor.
    """

    kind: Schedule
    warmup_steps: int = 0
    total_steps: int = 1
    min_factor: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "cosine":
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            return self.min_factor + (1 - self.min_factor) * cosine
        if self.kind == "multistep":
            return self.gamma ** sum(step >= milestone for milestone in self.milestones)
        return 1.0


# Devices where torch's fused AdamW runs (one kernel over every parameter): on 2 CPU threads it
# takes the tiny x4 SR model's optimizer step from 5.4 to 1.5 ms, the tiny gray denoiser's from
# 7.9 to 2.1 ms.
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def fused_adamw_supported(params: list[nn.Parameter]) -> bool:
    """Whether torch's fused AdamW takes these parameters: floating point, all on one device of
    :data:`FUSED_ADAMW_DEVICES` (other devices keep the default, foreach or per-tensor)."""
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in FUSED_ADAMW_DEVICES
        and all(p.is_floating_point() for p in params)
    )


class RestorationModule(L.LightningModule):
    """Train a restoration model on ``{"lq", "gt"}`` batches.

    Validation logs ``val/psnr`` and ``val/ssim`` on 8-bit-rounded outputs with the field's
    conventions: the BT.601 Y channel for colour "sr" and "jpeg", a border crop of the scale
    for "sr", RGB/gray and no crop otherwise. Each is the mean of the per-image values over the
    whole validation set (torchmetrics ``MeanMetric``, summed over all processes under DDP).

    Args:
        arch: a registry name of ``semanir.models.build_model`` (e.g.
            "semanir_tiny_denoise_gray"), or a config dict (``config.to_dict()``, the content of
            a saved ``config.json``).
        arch_overrides: config fields that replace those of ``arch``.
        task: the data module's task; selects the metric conventions.
        loss: "l1" or "charbonnier".
        charbonnier_eps: epsilon of the Charbonnier loss.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        scheduler: "cosine", "multistep" or "constant", after ``warmup_steps`` of linear warmup.
        warmup_steps: optimizer steps of warmup.
        total_steps: length of the cosine schedule (None = the trainer's estimate, which needs
            ``max_steps`` or ``max_epochs``).
        min_lr: learning rate at the end of the cosine schedule.
        milestones: optimizer steps at which "multistep" multiplies the rate by ``gamma``.
        gamma: "multistep" decay factor.
        export_dir: if set, the trained model is written there with ``save_pretrained`` when
            ``fit`` ends (by the global-zero process).
        init_weights: a ``save_pretrained`` folder or hub id whose weights initialise the model
            (fine-tuning); its architecture must equal ``arch`` with ``arch_overrides``. Only
            the starting point: a resumed run (``--ckpt_path``) takes the checkpoint's weights.
    """

    def __init__(
        self,
        arch: str | dict[str, Any] = "semanir_tiny_denoise_gray",
        arch_overrides: dict[str, Any] | None = None,
        task: TaskName = "denoise",
        loss: Loss = "l1",
        charbonnier_eps: float = 1e-3,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.99),
        scheduler: Schedule = "cosine",
        warmup_steps: int = 0,
        total_steps: int | None = None,
        min_lr: float = 1e-6,
        milestones: list[int] | None = None,
        gamma: float = 0.5,
        export_dir: str | None = None,
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        check_optimization(
            loss=loss, charbonnier_eps=charbonnier_eps, lr=lr, weight_decay=weight_decay,
            betas=betas, scheduler=scheduler, warmup_steps=warmup_steps, total_steps=total_steps,
            min_lr=min_lr, milestones=milestones, gamma=gamma,
        )  # fmt: skip
        source = None if init_weights is None else check_init_weights(init_weights)
        self.save_hyperparameters()
        check_model_memory(arch, arch_overrides or {})
        self.model = build_arch(arch, arch_overrides or {})
        self.val_psnr, self.val_ssim = MeanMetric(), MeanMetric()
        if source is not None:
            load_initial_weights(self.model, source, init_weights)

    @property
    def upscale(self) -> int:
        """The model's output / input size ratio."""
        return int(self.model.upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def compute_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.hparams.loss == "charbonnier":
            return charbonnier_loss(output, target, self.hparams.charbonnier_eps)
        return F.l1_loss(output, target)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        k = self.training_k()
        output = self.model(batch["lq"]) if k is None else self.model(batch["lq"], k=k)
        loss = self.compute_loss(output, batch["gt"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["lq"].shape[0])
        return loss

    def training_k(self) -> int | None:
        """This step's dictionary size: a draw from the model's ``train_k_choices`` seeded by
        (the run's seed, the step), so a resumed run draws what the uninterrupted run drew;
        None for models without a dictionary."""
        config = getattr(self.model, "config", None)
        choices = getattr(config, "train_k_choices", None)
        if not choices or getattr(config, "dictionary", "dense") == "dense":
            return None
        generator = index_generator(torch.initial_seed() % 2**63, self.global_step)
        return choices[int(torch.randint(len(choices), (), generator=generator))]

    def metric_options(self, num_channels: int) -> dict[str, Any]:
        """PSNR/SSIM conventions of the task (:meth:`semanir.tasks.Task.metric_options`) for
        images with ``num_channels`` channels."""
        return get_task(self.hparams.task).metric_options(num_channels, self.upscale)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        output = self.model(batch["lq"]).clamp(0, 1)
        gt = batch["gt"]
        options = self.metric_options(gt.shape[1])
        self.log("val/loss", self.compute_loss(output, gt), batch_size=gt.shape[0], sync_dist=True)
        self.val_psnr.update(psnr(output, gt, **options))  # one value per image
        self.val_ssim.update(ssim(output, gt, **options))
        self.log("val/psnr", self.val_psnr, prog_bar=True)
        self.log("val/ssim", self.val_ssim, prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = list(self.model.parameters())
        optimizer = torch.optim.AdamW(
            params,
            lr=hp.lr,
            betas=tuple(hp.betas),
            weight_decay=hp.weight_decay,
            fused=fused_adamw_supported(params) or None,
        )
        schedule = WarmupSchedule(
            kind=hp.scheduler,
            warmup_steps=hp.warmup_steps,
            total_steps=UNKNOWN_LENGTH,  # the cosine's length is set when training starts
            min_factor=hp.min_lr / hp.lr,
            milestones=tuple(hp.milestones or ()),
            gamma=hp.gamma,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_train_start(self) -> None:
        self._follow_configured_schedule_length()

    def _follow_configured_schedule_length(self) -> None:
        """Give the cosine schedule its length when training starts, after a resume too.

        Not in ``configure_optimizers``: the trainer's estimate of the length loads the
        training data, which before a resume's restore keeps the loader from taking the
        checkpoint's data position (Lightning issue 20550). ``LambdaLR`` restores the
        checkpoint's ``WarmupSchedule`` (and its ``total_steps``), so a resume with a larger
        ``max_steps`` is stretched to the new length from the current step on, said in one line.
        The learning rate is set at once to the factor of the current step.
        """
        if self.hparams.scheduler != "cosine":
            return
        scheduler = self.lr_schedulers()
        schedule = scheduler.lr_lambdas[0]
        total = self._total_steps()
        if schedule.total_steps == total:
            return
        if schedule.total_steps != UNKNOWN_LENGTH:
            _say(
                f"cosine schedule length {schedule.total_steps} -> {total} steps, from step "
                f"{scheduler.last_epoch}"
            )
        schedule.total_steps = total
        for group, base_lr in zip(
            scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True
        ):
            group["lr"] = base_lr * schedule(scheduler.last_epoch)

    def _total_steps(self) -> int:
        if self.hparams.total_steps is not None:
            return self.hparams.total_steps
        estimate = self.trainer.estimated_stepping_batches
        if not math.isfinite(estimate):
            raise ValueError(
                "the cosine schedule needs a length: set model.total_steps, trainer.max_steps or "
                "trainer.max_epochs (max_time alone does not fix the number of steps)"
            )
        return int(estimate)

    def on_fit_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            self.export(self.hparams.export_dir)

    def export(self, directory: str | Path) -> Path:
        """Write the model with ``save_pretrained`` (weights + config) to ``directory``."""
        directory = Path(directory)
        self.model.save_pretrained(directory)
        return directory


def check_optimization(
    *,
    loss: str,
    charbonnier_eps: float,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    scheduler: str,
    warmup_steps: int,
    total_steps: int | None,
    min_lr: float,
    milestones: list[int] | None,
    gamma: float,
) -> None:
    """Refuse a loss, optimizer or schedule setting out of range, naming the argument
    (:class:`~common_kernels.runtime.errors.InvalidArgument`). Arguments as in
    :class:`RestorationModule`."""
    if loss not in ("l1", "charbonnier"):
        raise InvalidArgument("loss", f"must be 'l1' or 'charbonnier', got {loss!r}")
    if scheduler not in ("cosine", "multistep", "constant"):
        raise InvalidArgument(
            "scheduler", f"must be cosine, multistep or constant, got {scheduler!r}"
        )
    _positive("charbonnier_eps", charbonnier_eps)
    _positive("lr", lr)
    _positive("gamma", gamma)
    for name, value in (("weight_decay", weight_decay), ("min_lr", min_lr)):
        if not value >= 0:
            raise InvalidArgument(name, f"must be >= 0, got {value!r}")
    if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
        raise InvalidArgument("betas", f"must be two numbers in [0, 1), got {list(betas)}")
    _count("warmup_steps", warmup_steps, low=0)
    if total_steps is not None:
        _count("total_steps", total_steps, low=1)
    if not all(_is_integer(step, low=0) for step in milestones or ()):
        raise InvalidArgument("milestones", f"must be steps >= 0, got {list(milestones)}")


def _positive(name: str, value: float) -> None:
    if not value > 0:  # NaN included
        raise InvalidArgument(name, f"must be > 0, got {value!r}")


def _count(name: str, value: int, *, low: int) -> None:
    if not _is_integer(value, low=low):
        raise InvalidArgument(name, f"must be an integer >= {low}, got {value!r}")


def check_init_weights(init_weights: str) -> Path | str:
    """What ``init_weights`` names, by the one rule of every package (a bundled model's name,
    a ``save_pretrained`` folder that exists, or a hub id ``owner/name``), before any model
    is built.

    Raises:
        InvalidArgument: ``init_weights`` names nothing of that kind, or a folder without a
            saved model.
    """
    try:
        source = resolve_model_name(init_weights, known=BUNDLED_MODELS, argument="init_weights")
    except FileNotFoundError as error:
        raise InvalidArgument("init_weights", literal(error)) from None
    if isinstance(source, Path) and not (source / "config.json").is_file():
        what = "a file" if source.is_file() else "a folder without config.json"
        raise InvalidArgument(
            "init_weights",
            literal(f"{init_weights} is {what}; expected a save_pretrained folder"),
        )
    return source


@rank_zero_only
def _say(text: str) -> None:
    """One line of the module's own on stderr (Lightning's info lines are off in a quiet run)."""
    print(f"semanir: {text}", file=sys.stderr, flush=True)


def build_arch(arch: str | dict[str, Any], overrides: dict[str, Any]) -> nn.Module:
    """A fresh model from a registry name or a config dict, with ``overrides`` applied."""
    if not isinstance(arch, str):
        return model_from_config({**arch, **overrides})
    try:
        return build_model(arch, **overrides)
    except KeyError as error:
        raise InvalidArgument("arch", literal(error.args[0])) from None


def check_model_memory(arch: str | dict[str, Any], overrides: dict[str, Any]) -> None:
    """Refuse a model whose fp32 weights alone exceed the host's available memory, counted
    on the meta device before any weight is allocated (a width or depth of ``arch_overrides``
    too large for the machine).

    Raises:
        InvalidValue: naming ``arch_overrides`` (or ``arch`` without overrides): the
            parameter count, the estimate and the limit.
    """
    with torch.device("meta"):
        probe = build_arch(arch, overrides)
    parameters = sum(p.numel() for p in probe.parameters())
    need, budget = 4 * parameters, available_bytes(torch.device("cpu"))
    if need > budget:
        name = "arch_overrides" if overrides else "arch"
        raise InvalidValue(
            name,
            f"{{{name}}}: a model of {parameters:,} parameters needs {human_bytes(need)} for "
            f"its fp32 weights alone, more than the {human_bytes(budget)} available on the "
            "host; use a smaller model",
        )


def load_initial_weights(model: nn.Module, source: Path | str, given: str | None = None) -> None:
    """Copy the weights saved in ``source`` (a bundled name, folder or hub id) into ``model``,
    strictly.

    A gray model may start a colour model of the same body: its input convolution is spread
    evenly over the three input channels and its output convolution repeated for each, so the
    colour model computes on a gray image (R = G = B) exactly what the gray model computes.

    Args:
        model: the model to initialise.
        source: where the weights are (:func:`check_init_weights`).
        given: ``source`` as the user wrote it, for the messages.
    """
    saved = load_model(source)
    state = saved.state_dict()
    if _is_gray(saved) and _is_colour(model):
        state = gray_to_colour_state(state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InvalidArgument(
            "init_weights",
            f"{literal(given or source)} holds weights of another architecture "
            f"than {{arch}} (with {{arch_overrides}}): "
            f"{literal(' '.join(str(error).split()))}",
        ) from error


def _is_gray(model: nn.Module) -> bool:
    return getattr(model, "in_channels", None) == 1 and getattr(model, "out_channels", None) == 1


def _is_colour(model: nn.Module) -> bool:
    return getattr(model, "in_channels", None) == 3 and getattr(model, "out_channels", None) == 3


def gray_to_colour_state(state: dict[str, torch.Tensor], colour: nn.Module) -> dict[str, Any]:
    """A gray model's state dict widened to ``colour``'s 3-channel input and output layers.

    Every tensor whose shape differs from ``colour``'s in a channel dimension of size 1 -> 3 is
    widened: an input dimension (dim 1 of the first convolution) by splitting the weight into
    thirds, an output dimension (dim 0 of the last convolution, and its bias) by repeating it.
    """
    target = colour.state_dict()
    widened = {}
    for name, value in state.items():
        want = target.get(name)
        if want is None or want.shape == value.shape:
            widened[name] = value
        elif value.ndim > 1 and value.shape[1] == 1 and want.shape[1] == 3:
            widened[name] = value.expand(-1, 3, *value.shape[2:]) / 3  # (C, 3, k, k)
        elif value.shape[0] == 1 and want.shape[0] == 3:
            widened[name] = value.expand(3, *value.shape[1:]).clone()  # (3, ...)
        else:
            widened[name] = value  # load_state_dict names the mismatch
    return widened


def warmup_ema_avg_fn(decay: float) -> Any:
    """``AveragedModel``'s ``avg_fn`` of an EMA whose decay warms up with the update count n.

    The decay of the (n + 1)-th update is ``min(decay, (1 + n) / (10 + n))`` (the ``num_updates``
    rule of TensorFlow's ``ExponentialMovingAverage``): 0.9 at n = 8, 0.99 at n = 890, the full
    0.999 after about 9000 updates. Tensor arithmetic only: no host synchronisation on CUDA.

    Args:
        decay: the largest decay, in [0, 1].
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")

    def average(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        step_decay = ((1.0 + n) / (10.0 + n)).clamp(max=decay).to(averaged.dtype)
        return averaged + (current - averaged) * (1.0 - step_decay)

    return average


class WarmupEMAWeightAveraging(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` with the decay warm-up of :func:`warmup_ema_avg_fn`.

    A fixed decay keeps ``decay ** n`` of the first weights in the average after n steps (37%
    after 1000 steps at 0.999): in a short fine-tuning that starts far from its task (a colour
    model from a gray one), or from a random initialisation, the average then lags far behind the
    trained weights. The warm-up follows the weights closely at first and reaches ``decay`` after
    about ``10 / (1 - decay)`` steps. Validation, checkpoints and the export use the average.

    Args:
        decay: the largest decay, in [0, 1].
        **kwargs: the other arguments of ``EMAWeightAveraging`` (``device``,
            ``update_every_n_steps``, ``update_starting_at_step``, ...).
    """

    def __init__(self, decay: float = 0.999, **kwargs: Any) -> None:
        average = warmup_ema_avg_fn(decay)  # checks decay first, with its own message
        super().__init__(decay=decay, **kwargs)
        self._kwargs["avg_fn"] = average


def check_checkpoint_minutes(minutes: float) -> None:
    """Refuse a ``--checkpoint_minutes`` outside [0, 1440] (NaN included)."""
    if not 0 <= minutes <= 1440:
        raise ValueError(f"--checkpoint_minutes must be in [0, 1440] minutes, got {minutes!r}")


def periodic_checkpoints(minutes: float) -> list[ModelCheckpoint]:
    """A checkpoint every ``minutes`` of training (the latest kept; resumable like
    ``last.ckpt``), or nothing for 0.

    Args:
        minutes: in [0, 1440].
    """
    check_checkpoint_minutes(minutes)
    if minutes == 0:
        return []
    return [
        ModelCheckpoint(
            filename="periodic-{step}", train_time_interval=timedelta(minutes=minutes),
            save_top_k=1, monitor=None,
        )
    ]  # fmt: skip


def check_trainer_options(
    *,
    max_steps: int = -1,
    max_epochs: int | None = None,
    min_steps: int | None = None,
    min_epochs: int | None = None,
    val_check_interval: Any = None,
    check_val_every_n_epoch: int | None = 1,
    log_every_n_steps: int | None = None,
    accumulate_grad_batches: int = 1,
    limit_train_batches: int | float | None = None,
    limit_val_batches: int | float | None = None,
    num_sanity_val_steps: int | None = None,
    gradient_clip_val: float | None = None,
    **_: Any,
) -> None:
    """Refuse ``Trainer`` lengths, intervals and counts out of range, naming the argument
    (:class:`~common_kernels.runtime.errors.InvalidArgument`), before a trainer is built. Arguments
    as
    in ``lightning.Trainer``; the others are ignored."""
    for name, value, what in (
        ("max_steps", max_steps, "steps"),
        ("max_epochs", max_epochs, "epochs"),
    ):
        if value is not None and value != -1 and not _is_integer(value, low=1):
            raise InvalidArgument(
                name, f"must be a number of {what} >= 1, or -1 for no limit, got {value!r}"
            )
    for name, value, low in (
        ("min_steps", min_steps, 0), ("min_epochs", min_epochs, 0),
        ("check_val_every_n_epoch", check_val_every_n_epoch, 1),
        ("log_every_n_steps", log_every_n_steps, 1),
        ("accumulate_grad_batches", accumulate_grad_batches, 1),
        ("num_sanity_val_steps", num_sanity_val_steps, -1),
    ):  # fmt: skip
        if value is not None and not _is_integer(value, low=low):
            raise InvalidArgument(name, f"must be an integer >= {low}, got {value!r}")
    if isinstance(val_check_interval, (int, float)) and not (
        _is_integer(val_check_interval, low=1) or _is_fraction(val_check_interval, zero=False)
    ):
        raise InvalidArgument(
            "val_check_interval",
            f"must be a number of training batches >= 1 or a fraction of an epoch in (0, 1], "
            f"got {val_check_interval!r}",
        )
    for name, value in (
        ("limit_train_batches", limit_train_batches), ("limit_val_batches", limit_val_batches)
    ):  # fmt: skip
        if value is not None and not (_is_integer(value, low=0) or _is_fraction(value)):
            raise InvalidArgument(
                name, f"must be a number of batches >= 0 or a fraction in [0, 1], got {value!r}"
            )
    if gradient_clip_val is not None and not gradient_clip_val >= 0:
        raise InvalidArgument("gradient_clip_val", f"must be >= 0, got {gradient_clip_val!r}")


def _is_integer(value: object, *, low: int) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= low


def _is_fraction(value: object, *, zero: bool = True) -> bool:
    """A float in [0, 1] (``zero=False``: in (0, 1])."""
    if not isinstance(value, float):
        return False
    return (value >= 0 if zero else value > 0) and value <= 1


CHECKED_TRAINER_OPTIONS = tuple(inspect.signature(check_trainer_options).parameters)[:-1]
# Each API argument's flag on the command line (``data.task`` is the one ``model.task`` follows).
TRAINING_FLAGS = {
    **{name: f"--model.{name}" for name in inspect.signature(RestorationModule).parameters},
    **{name: f"--data.{name}" for name in inspect.signature(RestorationDataModule).parameters},
    **{name: f"--trainer.{name}" for name in CHECKED_TRAINER_OPTIONS},
    "ckpt_path": "--ckpt_path",
}


def training_device(trainer: L.Trainer) -> tuple[torch.device, int] | None:
    """The device one training process runs on and the number of processes sharing its
    memory (a CPU run's processes share the host's); None where its free memory cannot be
    asked without harm (CUDA before a forking launcher: the children could not use CUDA)."""
    device = trainer.strategy.root_device
    if device.type != "cuda":
        return device, trainer.num_devices if device.type == "cpu" else 1
    launcher = getattr(trainer.strategy, "launcher", None)
    if getattr(launcher, "_start_method", None) == "fork":
        return None
    return device, 1


def check_fit_memory(
    module: RestorationModule, data: RestorationDataModule, trainer: L.Trainer
) -> None:
    """Refuse a training step that would not fit in the memory of the trainer's device, before
    it runs (:func:`semanir.memory.check_training_memory`, naming ``batch_size``,
    ``patch_size`` or the model's ``arch``/``arch_overrides``), and a validation batch that
    would not (:func:`semanir.memory.check_validation_memory`, naming ``val_batch_size`` or
    ``val_patch_size``)."""
    placement = training_device(trainer)
    if placement is None:
        return
    device, processes = placement
    check_training_memory(
        module.model.config.to_dict(),
        parameters=sum(p.numel() for p in module.model.parameters()),
        patch_size=data.hparams.patch_size,
        batch_size=data.hparams.batch_size,
        budget=available_bytes(device),
        where=str(device),
        processes=processes,
        model_argument="arch_overrides" if module.hparams.arch_overrides else "arch",
    )
    if data.val_set is not None:
        height, width = data.val_input_size
        check_validation_memory(
            module.model.config.to_dict(),
            parameters=sum(p.numel() for p in module.model.parameters()),
            height=height,
            width=width,
            batch_size=data.hparams.val_batch_size,
            budget=available_bytes(device),
            where=str(device),
            processes=processes,
        )


# Lightning's warnings on a validation from a checkpoint about the training's callbacks (which
# do not run in a validation): shown with --verbose only.
VALIDATE_NOTICES = ("Be aware that when using `ckpt_path`", "The dirpath has changed from")


class RestorationCLI(LightningCLI):
    """LightningCLI over ``RestorationModule`` + ``RestorationDataModule``.

    ``data.task`` is linked to ``model.task``, so a config names the task once. Before the
    trainer is built, ``--ckpt_path``, the data folders, the trainer's lengths and intervals
    and (when the classes are made) every model and data option are checked, each refused
    with an :class:`~common_kernels.runtime.errors.InvalidArgument` (:data:`TRAINING_FLAGS` names
    its
    flag). A resumed ``fit`` logs into its checkpoint's version folder, and a run that fails
    before its first step removes the folders it created (:mod:`semanir.runs`).

    Args:
        args: command-line arguments starting with the subcommand (None = ``sys.argv[1:]``).
        **kwargs: further ``LightningCLI`` options (e.g. ``run=False``).
    """

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(RestorationModule, RestorationDataModule, args=args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """LightningCLI's subcommands and the method arguments they do not take from the
        command line; ``validate``'s and ``test``'s ``verbose`` (print the results, always on
        here) is left out, so that ``--verbose`` means the same in every subcommand."""
        commands = LightningCLI.subcommands()
        for name in ("validate", "test"):
            commands[name] = {*commands[name], "verbose"}
        return commands

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("data.task", "model.task")
        parser.add_argument(
            "--checkpoint_minutes",
            type=float,
            default=30.0,
            help="fit: also save a resumable checkpoint (periodic-step=N.ckpt, the latest kept) "
            "every this many minutes of training, in [0, 1440]; 0: off (default: 30)",
        )
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="keep the libraries' notices, tips and deprecation warnings (default: off)",
        )

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The configured trainer, with plain progress lines instead of tqdm's bar when stderr
        is not a terminal, and (``fit``) a checkpoint every ``--checkpoint_minutes``.

        The data folders and the images' headers (``patch_size`` against the smallest training
        image) are checked here, first: after the model and the data module, whose
        construction checks their arguments, so that a bad argument is reported before a
        missing folder (``--data.batch_size 0`` in a folder without the data names the batch
        size), and before the trainer makes its log folders. The memory a training step
        needs on the trainer's device is checked once the trainer is made, before it runs
        (:func:`check_fit_memory`)."""
        if self.subcommand in ("fit", "validate"):
            data = self.config[self.subcommand].data
            if self.subcommand == "fit":
                check_data_dirs("data.train_dirs", data.train_dirs, data.data_root)
            check_data_dirs("data.val_dirs", data.val_dirs, data.data_root)
            self.datamodule.prepare_datasets(self.subcommand)
        trainer = self._get(self.config_init, "trainer", default={})
        callbacks = list(trainer.get("callbacks") or [])
        callbacks += progress_callbacks(
            f"semanir {self.subcommand}", existing=callbacks,
            enabled=trainer.get("enable_progress_bar"),
        )  # fmt: skip
        if self.subcommand == "fit":
            callbacks += periodic_checkpoints(self._get(self.config, "checkpoint_minutes"))
        built = super().instantiate_trainer(**kwargs, callbacks=callbacks)
        if self.subcommand == "fit":
            check_fit_memory(self.model, self.datamodule, built)
        return built

    def before_instantiate_classes(self) -> None:
        """The checks of ``fit``/``validate`` that need no class: ``--checkpoint_minutes``,
        ``--ckpt_path`` and the trainer's options (the data folders come later:
        :meth:`instantiate_trainer`)."""
        if self.subcommand not in ("fit", "validate"):
            return
        config = self.config[self.subcommand]
        try:
            check_checkpoint_minutes(config.checkpoint_minutes)
        except ValueError as error:
            raise UsageError(str(error)) from None
        check_checkpoint_path(config.ckpt_path)
        check_trainer_options(**config.trainer.as_dict())

    def _run_subcommand(self, subcommand: str) -> None:
        """Run ``fit``/``validate`` (LightningCLI's runner): a resumed fit in its checkpoint's
        version folder, and a failure before the first training step leaves no new folder."""
        resumed = subcommand == "fit" and adopt_checkpoint_version(
            self.trainer, self.config[subcommand].get("ckpt_path")
        )
        if resumed:
            keep_csv_metrics(self.trainer)
        folders = NewFolders(self.trainer, extra=[self.model.hparams.get("export_dir")])
        try:
            with warnings.catch_warnings():
                if resumed:  # its own folders: their checkpoints are expected
                    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists")
                if subcommand == "validate" and not self.config[subcommand].verbose:
                    for notice in VALIDATE_NOTICES:  # about the checkpoint's training callbacks
                        warnings.filterwarnings("ignore", message=notice)
                super()._run_subcommand(subcommand)
        except Exception:
            folders.remove_unused()
            raise

    def before_fit(self) -> None:
        """Every fit stops cleanly on SIGINT/SIGTERM with a resumable checkpoint."""
        self.trainer.callbacks.append(InterruptCheckpoint())
