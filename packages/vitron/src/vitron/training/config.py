"""The settings of one training stage (``TrainConfig``) and the checks of ``train``'s inputs.

Every check names the argument it refuses and the accepted range; ``names`` maps an argument
to the caller's spelling (see :mod:`vitron.checks`), so ``train(...)`` and ``vitron train`` give
the same message. Nothing here imports Lightning at module level.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common_kernels.runtime.errors import InvalidValue, literal
from vitron.checks import (
    check_at_least,
    check_input_file,
    check_nonnegative,
    check_output_folder,
    check_positive,
    check_seed,
)
from vitron.training.sizes import check_num_workers

STAGES = {
    1: "vision-language alignment",
    2: "grounding + invocation tuning",
    3: "embedding alignment + synergy",
}
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
# strategy name part -> the package it needs
STRATEGY_PACKAGES = {"deepspeed": "deepspeed", "xla": "torch_xla", "tpu": "torch_xla"}


def available_strategies() -> tuple[str, ...]:
    """``"auto"`` and every strategy name Lightning registers (some need a package)."""
    from lightning.pytorch.strategies import StrategyRegistry

    return ("auto", *StrategyRegistry.available_strategies())


def strategy_problem(strategy: str) -> str | None:
    """Why a registered strategy cannot train here (``None`` when it can): a package it needs
    is not installed."""
    for part, package in STRATEGY_PACKAGES.items():
        if part in strategy and importlib.util.find_spec(package) is None:
            return f"needs {package}, which is not installed (pip install {package})"
    return None


def check_devices(devices: int | str | list[int]) -> None:
    """``devices``: ``"auto"``, a count >= 1 (-1: all), or distinct indices ``[0, 1]``."""
    if devices == "auto":
        return
    if isinstance(devices, list | tuple):
        good = bool(devices) and all(isinstance(i, int) and i >= 0 for i in devices)
        if good and len(set(devices)) == len(devices):
            return
    elif (
        isinstance(devices, int)
        and not isinstance(devices, bool)
        and (devices >= 1 or devices == -1)
    ):
        return
    raise InvalidValue(
        "devices",
        f"{{devices}} must be auto, a count >= 1 (-1: all), or distinct indices "
        f"0,1,...; got {literal(devices)}",
    )


def parse_devices(text: str) -> int | str | list[int]:
    """``"auto"``, ``"2"`` or ``"0,1"`` -> the ``devices`` value (checked)."""
    value: Any = text
    try:
        if "," in text:
            value = [int(part) for part in text.split(",") if part.strip()]
        elif text != "auto":
            value = int(text)
    except ValueError:
        pass
    try:
        check_devices(value)
    except InvalidValue as err:  # named as given: "0,0", not [0, 0]
        raise InvalidValue(
            "devices", err.template.rsplit("; got ", 1)[0] + "; got " + literal(text)
        ) from None
    return value


def check_train_settings(settings: Mapping[str, Any]) -> None:
    """Each training setting in its range (``TrainConfig`` fields, all of them given).

    Args:
        settings: field -> value, every field of :class:`TrainConfig`.

    Raises:
        ValueError: the first setting out of range; the message names it and the range.
    """
    if settings["stage"] not in STAGES:
        raise InvalidValue(
            "stage", f"{{stage}} must be 1, 2 or 3, got {literal(settings['stage'])}"
        )
    for name, low in (("max_steps", 1), ("batch_size", 1), ("lora_rank", 0), ("num_workers", 0)):
        check_at_least(settings[name], low, name)
    if settings["lora_rank"] and settings["stage"] == 1:
        raise InvalidValue(
            "lora_rank",
            "{lora_rank} applies to {stage} 2 and 3 (stage 1 trains only the projector), got "
            "{stage} 1",
        )
    check_num_workers(settings["num_workers"])
    check_positive(settings["lr"], "lr")
    check_nonnegative(settings["align_weight"], "align_weight")
    check_nonnegative(settings["synergy_weight"], "synergy_weight")
    check_seed(settings["seed"])
    accelerator = settings["accelerator"]
    if accelerator not in ACCELERATORS:
        raise InvalidValue(
            "accelerator",
            f"{{accelerator}} {literal(accelerator)}: expected one of "
            f"{literal(', '.join(ACCELERATORS))}",
        )
    if accelerator in ("cuda", "gpu") and not torch.cuda.is_available():
        mps = ", mps" if torch.backends.mps.is_available() else ""
        raise InvalidValue(
            "accelerator",
            f"{{accelerator}} {literal(accelerator)}: no CUDA device is available "
            f"(available: auto, cpu{literal(mps)})",
        )
    check_devices(settings["devices"])
    check_scale_options(
        settings["strategy"], settings["precision"], settings["accumulate_grad_batches"]
    )
    steps, minutes = settings["checkpoint_every_n_steps"], settings["checkpoint_every_minutes"]
    if steps is not None:
        check_at_least(steps, 1, "checkpoint_every_n_steps")
    if minutes is not None:
        check_positive(minutes, "checkpoint_every_minutes")


def check_scale_options(strategy: str, precision: str, accumulate_grad_batches: int) -> None:
    """Fail on a strategy that is unknown or needs a missing package, an unknown precision,
    or fewer than 1 batch per step.

    Args:
        strategy: a Lightning strategy name or ``"auto"``.
        precision: one of :data:`PRECISIONS`.
        accumulate_grad_batches: batches per optimizer step.
    """
    if strategy != "auto":  # Lightning's registry (a 4 s import) only for a strategy named
        known = available_strategies()
        if strategy not in known:
            raise InvalidValue(
                "strategy",
                f"{{strategy}} {literal(strategy)}: expected one of {literal(', '.join(known))}",
            )
    problem = strategy_problem(strategy)
    if problem is not None:
        raise InvalidValue("strategy", f"{{strategy}} {literal(strategy)} {literal(problem)}")
    if precision not in PRECISIONS:
        raise InvalidValue(
            "precision",
            f"{{precision}} {literal(precision)}: expected one of {literal(', '.join(PRECISIONS))}",
        )
    check_at_least(accumulate_grad_batches, 1, "accumulate_grad_batches")


@dataclass
class TrainConfig:
    """The settings of one training stage, checked when built.

    Args:
        stage: 1 (alignment), 2 (grounding + invocation tuning) or 3 (signals + synergy).
        max_steps: optimizer steps, >= 1 (at most ``MAX_EPOCHS`` passes over the data:
            :func:`~vitron.training.sizes.check_train_sizes`, as the bounds below that need the
            model's config or the data).
        batch_size: samples per batch, >= 1 (a step takes ``accumulate_grad_batches`` batches;
            at most the data's records, and what one device's memory holds).
        lr: peak learning rate, > 0 (AdamW; cosine decay to 10%).
        lora_rank: LoRA rank, >= 0 (0 = no LoRA; stages 2 and 3; at most the LLM's hidden
            size).
        align_weight: stage-3 signal-alignment weight, >= 0.
        synergy_weight: stage-3 synergy weight, >= 0.
        seed: in [0, 2^32 - 1]; the weights' randomness and the shuffling.
        accelerator: one of :data:`ACCELERATORS`.
        devices: ``"auto"``, a count >= 1 (-1: all) or device indices.
        strategy: ``"auto"`` or a Lightning strategy name.
        precision: one of :data:`PRECISIONS`.
        accumulate_grad_batches: batches averaged into one step, >= 1 (at most one epoch's).
        gradient_checkpointing: recompute the LLM's block activations in backward.
        checkpoint_every_n_steps: also write a resumable checkpoint every N steps (>= 1;
            None: not by steps).
        checkpoint_every_minutes: also write one every M minutes of training (> 0; None: not
            by time).
        num_workers: data-loading worker processes, in [0, the CPU cores this process may
            use] (0: load in the main process).
    """

    stage: int
    max_steps: int = 1000
    batch_size: int = 4
    lr: float = 2e-5
    lora_rank: int = 0
    align_weight: float = 1.0
    synergy_weight: float = 0.1
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    gradient_checkpointing: bool = False
    checkpoint_every_n_steps: int | None = None
    checkpoint_every_minutes: float | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        check_train_settings(dataclasses.asdict(self))


@dataclass(frozen=True)
class TrainFiles:
    """The files of one stage, once :func:`check_train` has checked them (what
    :func:`vitron.training.module.fit` reads and writes).

    Args:
        model: a Vitron folder / hub id, or a model.
        data: the training JSONL.
        output: the output folder.
        val_data: the validation JSONL, or ``None``.
        signal_targets: the stage-3 targets index, or ``None``.
        resume: the checkpoint to continue from, or ``None``.
    """

    model: str | Path | Any
    data: str | Path
    output: str | Path
    val_data: str | Path | None = None
    signal_targets: str | Path | None = None
    resume: str | Path | None = None


def check_train(
    model: str | Path | Any,
    data: str | Path,
    output: str | Path,
    config: TrainConfig,
    *,
    val_data: str | Path | None = None,
    signal_targets: str | Path | None = None,
    resume: str | Path | None = None,
) -> None:
    """Check ``train``'s files, and its size-like settings against them, before any weights
    load (:func:`vitron.training.sizes.check_train_sizes`: the model's ``config.json``, the
    records of ``data`` and the machine's memory).

    Args:
        model: a Vitron folder / hub id (checked by the loader rule) or a model (not checked).
        data: the training JSONL (must exist, parse, and every file it names exist).
        output: the output folder (must be writable).
        config: the checked settings.
        val_data: the validation JSONL (must exist when given).
        signal_targets: the stage-3 targets index (stage 3 only; must exist).
        resume: a checkpoint to resume from (must exist, be a Lightning checkpoint, and be
            saved before ``config.max_steps``).

    Raises:
        ValueError: a bad input, naming it.
        FileNotFoundError: ``model`` is a path and nothing is there.
        common_kernels.runtime.hub.HubUnreachableError: ``model`` is a hub id out of reach.
        vitron.options.ModelLoadError: the model's ``config.json`` cannot be read.
    """
    from vitron.models.sources import check_model_source
    from vitron.options import read_model_config
    from vitron.training.data import check_media
    from vitron.training.sizes import check_train_sizes

    check_input_file(data, "data")
    if val_data is not None:
        check_input_file(val_data, "val_data")
    if signal_targets is not None:
        if config.stage != 3:
            raise InvalidValue(
                "signal_targets",
                f"{{signal_targets}} applies to {{stage}} 3, got {{stage}} {literal(config.stage)}",
            )
        check_input_file(signal_targets, "signal_targets")
    if resume is not None:
        from vitron.training.resume import checkpoint_facts

        check_input_file(resume, "resume")
        step = checkpoint_facts(resume).step
        if step >= config.max_steps:
            raise InvalidValue(
                "resume",
                f"{{resume}} {literal(resume)} was saved at step {literal(step)}, and "
                f"{{max_steps}} is {literal(config.max_steps)}: nothing is left to train "
                f"(raise {{max_steps}})",
            )
    check_output_folder(output, "output")
    if isinstance(model, str | Path):
        model_config = read_model_config(model, check_model_source(model))
        name = str(model)
    else:
        model_config, name = model.config, "the model"
    records = check_media(data, "data")
    if val_data is not None:
        check_media(val_data, "val_data")
    check_train_sizes(config, model_config, len(records), data, name)
