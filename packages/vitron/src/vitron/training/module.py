"""The three training stages as one LightningModule.

========  ===========================================  ==========================================
stage     trains                                       loss
========  ===========================================  ==========================================
1         projector                                    next-token loss on captions (``plain``)
2         projector, region encoder, LLM (or its       next-token loss on replies with grounding
          LoRA adapters + token embeddings)            and calls, labels masked outside replies
3         signal heads, synergy discriminator, LoRA    next-token + align_weight * alignment of
          adapters if any (LLM frozen otherwise)       signal embeddings + synergy_weight * GRL
                                                       task-discriminator loss
========  ===========================================  ==========================================

The vision tower is always frozen. LoRA (peft) wraps the LLM's linear layers; ``export`` merges
the adapters back and writes a plain ``save_pretrained`` folder.

Scale: any Lightning ``devices`` / ``strategy`` / ``precision`` / ``accumulate_grad_batches``,
and gradient checkpointing of the LLM's blocks (:func:`enable_gradient_checkpointing`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader

from vitron.models.vitron import ALIGN_LOSSES, VitronModel
from vitron.processing import VitronProcessor
from vitron.training.data import ConversationDataset, collate

STAGES = {
    1: "vision-language alignment",
    2: "grounding + invocation tuning",
    3: "embedding alignment + synergy",
}
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")
STRATEGY_PACKAGES = {"deepspeed": "deepspeed", "xla": "torch_xla", "tpu": "torch_xla"}
SHARDED_STRATEGIES = ("fsdp", "deepspeed_stage_3")  # the weights themselves are sharded
LORA_MARKERS = ("lora_A", "lora_B")
EMBEDDING_NAMES = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out")


def stage_template(model: VitronModel, stage: int) -> str:
    """``plain`` for stage 1, the model's conversation template otherwise."""
    return "plain" if stage == 1 else model.config.template


def apply_lora(
    model: VitronModel, rank: int, alpha: float | None = None, dropout: float = 0.05
) -> None:
    """Wrap the LLM with LoRA adapters on all its linear layers (peft)."""
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    config = LoraConfig(
        r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=dropout, target_modules="all-linear"
    )
    model.llm = get_peft_model(model.llm, config)


def is_trainable(name: str, stage: int, lora: bool) -> bool:
    """Whether parameter ``name`` of a Vitron model trains in ``stage``."""
    if name.startswith("vision."):
        return False
    is_lora = any(marker in name for marker in LORA_MARKERS)
    if stage == 1:
        return name.startswith("projector.")
    if stage == 2:
        if name.startswith(("projector.", "region_encoder.")):
            return True
        if name.startswith("llm."):
            return is_lora or not lora or any(f".{e}." in name for e in EMBEDDING_NAMES)
        return False
    return name.startswith(("signal_heads.", "synergy.")) or is_lora


def configure_stage(model: VitronModel, stage: int, lora_rank: int = 0) -> list[str]:
    """Set ``requires_grad`` for a stage (LoRA added first when ``lora_rank`` > 0).

    Returns:
        Names of the trainable parameters.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    if lora_rank and stage == 1:
        raise ValueError("stage 1 trains only the projector; LoRA applies to stages 2 and 3")
    if lora_rank:
        apply_lora(model, lora_rank)
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(is_trainable(name, stage, bool(lora_rank)))
        if param.requires_grad:
            trainable.append(name)
    return trainable


def enable_gradient_checkpointing(model: VitronModel) -> str:
    """Recompute the LLM's block activations in the backward pass instead of keeping them.

    Uses transformers' own checkpointing (non-reentrant) when the LLM supports it, else wraps
    each block of its largest ``nn.ModuleList`` in ``torch.utils.checkpoint``. Either way it is
    active in training mode only.

    Returns:
        ``"transformers"`` or ``"blocks"``: which of the two was used.
    """
    llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    if getattr(llm, "supports_gradient_checkpointing", False):
        # transformers 5 renamed gradient_checkpointing_enable (deprecated) to this
        enable = getattr(llm, "activation_checkpointing_enable", None)
        (enable or llm.gradient_checkpointing_enable)({"use_reentrant": False})
        return "transformers"
    for block in decoder_blocks(llm):
        block.forward = functools.partial(_checkpointed, block, block.forward)
    return "blocks"


def decoder_blocks(llm: nn.Module) -> nn.ModuleList:
    """The LLM's block list: its ``nn.ModuleList`` holding the most parameters."""
    lists = [m for m in llm.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError(f"{type(llm).__name__} has no list of blocks to checkpoint")
    return max(lists, key=lambda blocks: sum(p.numel() for p in blocks.parameters()))


def _checkpointed(block: nn.Module, forward, *args: Any, **kwargs: Any) -> Any:
    """``forward(*args, **kwargs)``, recomputed in the backward pass when training."""
    if not (block.training and torch.is_grad_enabled()):
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def available_strategies() -> tuple[str, ...]:
    """``"auto"`` and every strategy name Lightning registers (some need a package)."""
    from lightning.pytorch.strategies import StrategyRegistry

    return ("auto", *StrategyRegistry.available_strategies())


def strategy_problem(strategy: str) -> str | None:
    """Why a registered strategy cannot train here (``None`` when it can): a package it needs
    is not installed, or it shards the weights, which ``train`` cannot export as one folder."""
    for part, package in STRATEGY_PACKAGES.items():
        if part in strategy and importlib.util.find_spec(package) is None:
            return f"needs {package}, which is not installed (pip install {package})"
    if strategy.startswith(SHARDED_STRATEGIES):
        return (
            "shards the weights themselves, and a sharded model is not exported as one "
            "save_pretrained folder yet; use ddp, or deepspeed_stage_1 / deepspeed_stage_2 "
            "(they shard optimizer states and gradients, not the weights)"
        )
    return None


def lightning_strategy(strategy: str) -> Any:
    """The ``Trainer(strategy=...)`` value: ``"ddp"`` is DDP with ``find_unused_parameters``,
    because a batch leaves parts unused (the region encoder without regions, the signal heads
    of absent tasks); every other name is passed as it is."""
    if strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=True)
    return strategy


def check_scale_options(strategy: str, precision: str, accumulate_grad_batches: int) -> None:
    """Fail on a strategy that is unknown or needs a missing package, an unknown precision,
    or fewer than 1 batch per step."""
    known = available_strategies()
    if strategy not in known:
        raise ValueError(f"strategy must be one of {', '.join(known)}; got {strategy!r}")
    problem = strategy_problem(strategy)
    if problem is not None:
        raise ValueError(f"strategy {strategy!r} {problem}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if accumulate_grad_batches < 1:
        raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")


class VitronLightningModule(L.LightningModule):
    """One training stage of a Vitron model.

    Args:
        model: the model (its parameters are frozen / unfrozen for the stage here).
        stage: 1, 2 or 3 (see the module docstring).
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warmup steps, then cosine decay to 10% at ``max_steps``.
        max_steps: schedule length.
        lora_rank: LoRA rank for stages 2-3 (0 = none).
        align_weight: weight of the signal-alignment loss (stage 3).
        synergy_weight: weight of the synergy loss (stage 3).
        align_loss: ``"cosine"`` or ``"mse"``.
        gradient_checkpointing: recompute the LLM's block activations in the backward pass
            (less memory, about a third more compute).
    """

    def __init__(
        self,
        model: VitronModel,
        stage: int,
        lr: float = 2e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        max_steps: int = 1000,
        lora_rank: int = 0,
        align_weight: float = 1.0,
        synergy_weight: float = 0.1,
        align_loss: str = "cosine",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if align_loss not in ALIGN_LOSSES:
            raise ValueError(f"align_loss must be one of {ALIGN_LOSSES}, got {align_loss!r}")
        if max_steps < 1 or warmup_steps < 0:
            raise ValueError(
                f"max_steps must be >= 1 and warmup_steps >= 0, got {max_steps}, {warmup_steps}"
            )
        self.model = model
        self.stage = stage
        self.lora = bool(lora_rank)
        self.trainable = configure_stage(model, stage, lora_rank)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.save_hyperparameters(ignore=["model"])
        self.losses: list[float] = []
        self.skipped = 0

    def weights(self) -> dict[str, float]:
        stage3 = self.stage == 3
        return {
            "align_weight": self.hparams.align_weight if stage3 else 0.0,
            "synergy_weight": self.hparams.synergy_weight if stage3 else 0.0,
            "align_loss": self.hparams.align_loss,
        }

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        out = self.model(batch, **self.weights())
        if not out.loss.requires_grad:
            # nothing this stage trains is in the batch (stage 3: no signal with a head; any
            # stage: every supervised token truncated away): skip it (Lightning then makes no
            # optimizer step) instead of failing in backward or stepping on a zero gradient
            self.skipped += 1
            self.log("train/skipped_batches", float(self.skipped), batch_size=len(batch))
            return None
        self.losses.append(float(out.loss.detach()))
        self.log("train/loss", out.loss, batch_size=len(batch), prog_bar=True)
        for name in ("lm_loss", "align_loss", "synergy_loss"):
            value = getattr(out, name)
            if value is not None:
                self.log(f"train/{name}", value, batch_size=len(batch))
        return out.loss

    def validation_step(self, batch, batch_idx: int) -> None:
        out = self.model(batch, **self.weights())
        self.log("val/loss", out.loss, batch_size=len(batch), prog_bar=True)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        warmup, total = self.hparams.warmup_steps, self.hparams.max_steps

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def export(self, directory: str | Path) -> VitronModel:
        """Merge LoRA adapters (if any) into the LLM and ``save_pretrained`` the model."""
        model = self.model
        if self.lora:
            model.llm = model.llm.merge_and_unload()
            self.lora = False
        model.save_pretrained(directory)
        return model


class VitronDataModule(L.LightningDataModule):
    """Training (and optional validation) JSONL files for one stage.

    Args:
        processor: the model's processor.
        train_data: training JSONL.
        val_data: validation JSONL.
        batch_size: samples per batch.
        num_workers: data-loading workers.
        media_root: folder media paths are relative to (default: each JSONL's folder).
        seed: shuffling seed.
        signal_targets: stage-3 targets index of ``train_data`` (``targets.json``).
    """

    def __init__(
        self,
        processor: VitronProcessor,
        train_data: str | Path,
        val_data: str | Path | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        media_root: str | Path | None = None,
        seed: int = 0,
        signal_targets: str | Path | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.train_set = ConversationDataset(train_data, processor, media_root, signal_targets)
        self.val_set = (
            None if val_data is None else ConversationDataset(val_data, processor, media_root)
        )
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=collate,
            num_workers=self.num_workers, generator=generator,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            collate_fn=collate,
            num_workers=self.num_workers,
        )


def stage_processor(model: VitronModel, stage: int) -> VitronProcessor:
    """The model's processor with the stage's template."""
    config = dataclasses.replace(model.config, template=stage_template(model, stage))
    return VitronProcessor(model.tokenizer, config)


def train(
    model: str | Path | VitronModel,
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
    checkpoints: bool = True,
    **trainer_options: Any,
) -> dict[str, Any]:
    """Run one stage and save the result with ``save_pretrained``.

    Args:
        model: a Vitron folder / hub id or a model.
        data: training JSONL.
        output: output folder (the model; Lightning logs and checkpoints in ``lightning/``).
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
            parameters; ``"deepspeed_stage_2"`` needs deepspeed; those that shard the weights,
            ``fsdp*`` and ``deepspeed_stage_3*``, are refused: see :func:`strategy_problem`).
        precision: one of :data:`PRECISIONS` (``"bf16-mixed"``: bf16 autocast over fp32 weights;
            ``"bf16-true"``: bf16 weights, saved in bf16).
        accumulate_grad_batches: batches whose gradients are averaged into one step.
        gradient_checkpointing: see :func:`enable_gradient_checkpointing`.
        signal_targets: a ``targets.json`` index written by
            :func:`vitron.training.targets.build_signal_targets` for ``data`` (stage 3).
        checkpoints: keep Lightning checkpoints.
        **trainer_options: other ``lightning.Trainer`` arguments.

    Returns:
        ``{"first_loss", "last_loss", "skipped_batches", "trainable"}``.
    """
    check_scale_options(strategy, precision, accumulate_grad_batches)
    L.seed_everything(seed, workers=True, verbose=False)
    if not isinstance(model, VitronModel):
        model = VitronModel.from_pretrained(str(model))
    model.train()
    module = VitronLightningModule(
        model, stage, lr=lr, max_steps=max_steps, lora_rank=lora_rank,
        align_weight=align_weight, synergy_weight=synergy_weight,
        gradient_checkpointing=gradient_checkpointing,
    )  # fmt: skip
    datamodule = VitronDataModule(
        stage_processor(model, stage), data, val_data, batch_size, seed=seed,
        signal_targets=signal_targets,
    )  # fmt: skip
    options = {
        "max_steps": max_steps, "accelerator": accelerator, "devices": devices,
        "strategy": lightning_strategy(strategy), "precision": precision,
        "accumulate_grad_batches": accumulate_grad_batches,
        "default_root_dir": str(Path(output) / "lightning"), "enable_checkpointing": checkpoints,
        "logger": checkpoints, "enable_model_summary": False, "log_every_n_steps": 1,
        "limit_val_batches": None if val_data is not None else 0,
    }  # fmt: skip
    options.update(trainer_options)
    trainer = L.Trainer(**options)
    trainer.fit(module, datamodule=datamodule)
    if not module.losses:
        raise ValueError(
            f"no batch of {data} has anything stage {stage} trains (stage 3 needs replies with "
            f"signals whose task has a head); {module.skipped} batch(es) skipped, nothing saved"
        )
    if trainer.is_global_zero:  # the weights are whole on every rank: one of them writes
        module.export(output)
    return {
        "first_loss": module.losses[0],
        "last_loss": module.losses[-1],
        "skipped_batches": module.skipped,
        "trainable": module.trainable,
    }
