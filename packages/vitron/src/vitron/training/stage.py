"""``train``: one training stage, its checks before anything heavy is imported.

:func:`train` checks every setting (:class:`~vitron.training.config.TrainConfig`) and file
(:func:`~vitron.training.config.check_train`) before it imports Lightning, peft and the model
(:func:`vitron.training.module.fit`), so that a bad argument is refused at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitron.training.config import TrainConfig, TrainFiles, check_train


def train(
    model: str | Path | Any,
    data: str | Path,
    output: str | Path,
    *,
    stage: int,
    max_steps: int = 1000,
    batch_size: int = 4,
    lr: float = 2e-5,
    lora_rank: int = 0,
    align_weight: float = 1.0,
    synergy_weight: float = 0.1,
    val_data: str | Path | None = None,
    seed: int = 0,
    accelerator: str = "auto",
    devices: int | str | list[int] = 1,
    strategy: str = "auto",
    precision: str = "32-true",
    accumulate_grad_batches: int = 1,
    gradient_checkpointing: bool = False,
    signal_targets: str | Path | None = None,
    checkpoint_every_n_steps: int | None = None,
    checkpoint_every_minutes: float | None = None,
    num_workers: int = 0,
    resume: str | Path | None = None,
    checkpoints: bool = True,
    **trainer_options: Any,
) -> dict[str, Any]:
    """Run one stage and save the result with ``save_pretrained``.

    Every setting is checked (:class:`~vitron.training.config.TrainConfig`) and every file
    (:func:`~vitron.training.config.check_train`) before the model is loaded. SIGINT and
    SIGTERM stop at the end of the current optimizer step with a resumable checkpoint
    (:class:`InterruptCheckpoint`, raising :class:`TrainingInterrupted`); ``resume`` continues
    from it to the weights an uninterrupted run ends with.

    Args:
        model: a Vitron folder / hub id or a model.
        data: training JSONL.
        output: output folder (the model; Lightning logs in ``lightning/``, resumable
            checkpoints in ``lightning/checkpoints/``).
        stage: 1, 2 or 3.
        max_steps: optimisation steps.
        batch_size: samples per batch (a step takes ``accumulate_grad_batches`` batches).
        lr: peak learning rate.
        lora_rank: LoRA rank (0 = none).
        align_weight: stage-3 alignment weight.
        synergy_weight: stage-3 synergy weight.
        val_data: validation JSONL.
        seed: seed of the weights' randomness and the shuffling.
        accelerator: Lightning accelerator.
        devices: Lightning devices (a count, ``"auto"``, or device indices).
        strategy: ``"auto"`` or a Lightning strategy name (``"ddp"``: DDP that allows unused
            parameters; ``"fsdp"``: see :func:`fsdp_strategy`; ``"deepspeed*"`` needs
            deepspeed; the weights of ``fsdp*`` and ``deepspeed_stage_3*`` are gathered into
            the saved folder: see :func:`save_trained`).
        precision: one of :data:`PRECISIONS` (``"bf16-mixed"``: bf16 autocast over fp32 weights;
            ``"bf16-true"``: bf16 weights, saved in bf16).
        accumulate_grad_batches: batches whose gradients are averaged into one step.
        gradient_checkpointing: see :func:`enable_gradient_checkpointing`.
        signal_targets: a ``targets.json`` index written by
            :func:`vitron.training.targets.build_signal_targets` for ``data`` (stage 3).
        checkpoint_every_n_steps: write a resumable checkpoint every N optimizer steps.
        checkpoint_every_minutes: write a resumable checkpoint every M minutes.
        num_workers: data-loading worker processes (0: the main process loads); they leave
            SIGINT and SIGTERM to the main process, which saves the checkpoint.
        resume: a checkpoint of this run to continue from (``interrupted.ckpt`` or a periodic
            one); the other arguments must be those of the run that wrote it.
        checkpoints: keep Lightning's end-of-epoch checkpoints and logs.
        **trainer_options: other ``lightning.Trainer`` arguments.

    Returns:
        ``{"first_loss", "last_loss", "skipped_batches", "trainable"}`` (losses of this
        process's steps: a resumed run starts at its checkpoint's step).

    Raises:
        TrainingInterrupted: SIGINT or SIGTERM; the checkpoint to resume from is written.
    """
    config = TrainConfig(
        stage=stage, max_steps=max_steps, batch_size=batch_size, lr=lr, lora_rank=lora_rank,
        align_weight=align_weight, synergy_weight=synergy_weight, seed=seed,
        accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
        accumulate_grad_batches=accumulate_grad_batches,
        gradient_checkpointing=gradient_checkpointing,
        checkpoint_every_n_steps=checkpoint_every_n_steps,
        checkpoint_every_minutes=checkpoint_every_minutes, num_workers=num_workers,
    )  # fmt: skip
    check_train(
        model, data, output, config, val_data=val_data, signal_targets=signal_targets,
        resume=resume,
    )  # fmt: skip
    from vitron.training.module import fit  # Lightning, peft, transformers: after the checks

    files = TrainFiles(model, data, output, val_data, signal_targets, resume)
    return fit(files, config, checkpoints=checkpoints, **trainer_options)
