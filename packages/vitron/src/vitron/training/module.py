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
and gradient checkpointing of the LLM's blocks (:func:`enable_gradient_checkpointing`). The
strategies that shard the weights (``fsdp*``, ``deepspeed_stage_3*``) gather a full state dict
on rank 0 at the end, which :func:`export_state_dict` writes as the same ``save_pretrained``
folder as the unsharded strategies.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader

from common_kernels.runtime.cli import leave_signals_to_the_main_process
from common_kernels.runtime.lightning import InterruptCheckpoint, progress_callbacks
from vitron.models.loading import empty_weights
from vitron.models.vitron import ALIGN_LOSSES, VitronModel
from vitron.processing import VitronProcessor
from vitron.training.config import STAGES, TrainConfig, TrainFiles
from vitron.training.data import ConversationDataset, collate
from vitron.training.resume import (
    LOG_VERSION_KEY,
    DataPosition,
    ResumableLoader,
    ResumableSampler,
    RunFolders,
    checkpoint_facts,
    run_logger,
)

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


def lightning_strategy(strategy: str, model: VitronModel) -> Any:
    """The ``Trainer(strategy=...)`` value for ``model``.

    ``"ddp"`` is DDP with ``find_unused_parameters``, because a batch leaves parts unused (the
    region encoder without regions, the signal heads of absent tasks); ``"fsdp"`` and
    ``"fsdp_cpu_offload"`` are :func:`fsdp_strategy`; every other name is passed as it is.

    Args:
        strategy: a name of :func:`available_strategies`.
        model: the model to train (FSDP wraps its LLM's decoder layers).
    """
    if strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=True)
    if strategy.startswith("fsdp"):
        return fsdp_strategy(model, cpu_offload=strategy == "fsdp_cpu_offload")
    return strategy


def fsdp_strategy(model: VitronModel, cpu_offload: bool = False) -> Any:
    """Lightning's FSDP sharding each decoder layer of the LLM as one unit (the rest of the
    model is the root unit), with full (not sharded) state dicts.

    Args:
        model: the model to train.
        cpu_offload: keep the sharded parameters on the CPU between uses.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    layer = type(decoder_blocks(model.llm)[0])
    return FSDPStrategy(auto_wrap_policy={layer}, state_dict_type="full", cpu_offload=cpu_offload)


def shards_weights(strategy: Any) -> bool:
    """Whether a Lightning strategy object shards the weights themselves (FSDP, ZeRO stage 3)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    if isinstance(strategy, FSDPStrategy):
        return True
    return isinstance(strategy, DeepSpeedStrategy) and bool(strategy.zero_stage_3)


def full_state_dict(strategy: Any) -> dict[str, torch.Tensor]:
    """The LightningModule's whole state dict, on the CPU on rank 0 (empty on other ranks).

    Every rank must call it (the shards are gathered collectively): FSDP through Lightning's
    full-state-dict context (rank 0 only, offloaded to the CPU), DeepSpeed ZeRO stage 3 one
    parameter at a time with ``deepspeed.zero.GatheredParameters``; any other strategy returns
    its ``lightning_module_state_dict()``.

    Args:
        strategy: the trainer's strategy after ``fit``.
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy

    if not (isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3):
        return strategy.lightning_module_state_dict()
    from deepspeed.zero import GatheredParameters

    state = {}
    for name, tensor in strategy.lightning_module.state_dict(keep_vars=True).items():
        with GatheredParameters([tensor] if isinstance(tensor, nn.Parameter) else []):
            if strategy.is_global_zero:
                state[name] = tensor.detach().to("cpu", copy=True)
    return state


def assign_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Assign ``state``'s tensors to ``model``'s parameters and buffers (which may be on the
    meta device); names that are one tied parameter in ``model`` stay one parameter.

    Args:
        model: the model.
        state: a tensor for every parameter and persistent buffer (one name per tied group
            suffices).
    """
    expected = model.state_dict(keep_vars=True)
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ValueError(
            f"the state dict has {len(unexpected)} unknown tensor(s), e.g. {unexpected[:3]}"
        )
    groups: dict[int, list[str]] = {}
    for name, target in expected.items():
        groups.setdefault(id(target), []).append(name)
    assigned: dict[str, torch.Tensor] = {}
    for names in groups.values():
        present = [name for name in names if name in state]
        if not present:
            raise ValueError(f"the state dict lacks {names[0]}")
        target, tensor = expected[names[0]], state[present[0]]
        if tensor.shape != target.shape:
            raise ValueError(
                f"{present[0]} has shape {tuple(tensor.shape)}, the model's is "
                f"{tuple(target.shape)}"
            )
        if isinstance(target, nn.Parameter):
            tensor = nn.Parameter(tensor, target.requires_grad)
        assigned.update(dict.fromkeys(names, tensor))
    model.load_state_dict(assigned, assign=True)


def export_state_dict(
    module: VitronLightningModule, state: Mapping[str, torch.Tensor], directory: str | Path
) -> None:
    """Write a full state dict of ``module`` as the folder :meth:`VitronLightningModule.export`
    writes: a new model with ``module``'s architecture (built without weights) takes over the
    tensors, its LoRA adapters (if any) are merged, and it is ``save_pretrained`` atomically;
    its config says the weights are trained (``random_weights`` False).

    Args:
        module: the trained module (its model may be sharded; only its config, tokenizer and
            LoRA rank are read).
        state: the module's full state dict (keys ``model.<name>``; see :func:`full_state_dict`).
        directory: the folder to write.
    """
    trained = module.model
    config = dataclasses.replace(trained.config, random_weights=False)  # trained now
    with empty_weights():
        model = VitronModel(config, trained.tokenizer)
        if module.lora:
            apply_lora(model, module.hparams.lora_rank)
    model.llm.tie_weights()  # the skeleton unties tied weights (see VitronModel._from_pretrained)
    prefix = "model."
    assign_state_dict(model, {name.removeprefix(prefix): t for name, t in state.items()})
    if module.lora:
        model.llm = model.llm.merge_and_unload()
    model.save_pretrained(directory)


def save_trained(strategy: Any, module: VitronLightningModule, directory: str | Path) -> None:
    """Save the trained model as one ``save_pretrained`` folder, written by rank 0.

    Unsharded weights are whole on every rank and rank 0 exports them; sharded ones are gathered
    by every rank (:func:`full_state_dict`) and rank 0 writes them (:func:`export_state_dict`).

    Args:
        strategy: the trainer's strategy after ``fit``.
        module: the trained module.
        directory: the folder to write.
    """
    if not shards_weights(strategy):
        if strategy.is_global_zero:
            module.export(directory)
        return
    state = full_state_dict(strategy)
    if strategy.is_global_zero:
        export_state_dict(module, state, directory)


def periodic_checkpoints(
    directory: Path, every_n_steps: int | None, every_minutes: float | None
) -> list[L.Callback]:
    """Lightning ``ModelCheckpoint`` callbacks writing a resumable checkpoint every
    ``every_n_steps`` optimizer steps and every ``every_minutes`` minutes (each keeps its latest
    one: ``step-{step}.ckpt``, ``time-{step}.ckpt``)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    found: list[L.Callback] = []
    if every_n_steps is not None:
        found.append(
            ModelCheckpoint(
                dirpath=directory, filename="step-{step}", every_n_train_steps=every_n_steps,
                save_top_k=1, monitor="step", mode="max", save_on_train_epoch_end=False,
            )
        )  # fmt: skip
    if every_minutes is not None:
        found.append(
            ModelCheckpoint(
                dirpath=directory, filename="time-{step}",
                train_time_interval=datetime.timedelta(minutes=every_minutes),
                save_top_k=1, monitor="step", mode="max", save_on_train_epoch_end=False,
            )
        )  # fmt: skip
    return found


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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The run's log version goes into every checkpoint: a resumed run logs there too."""
        checkpoint[LOG_VERSION_KEY] = None if self.logger is None else self.logger.version

    def export(self, directory: str | Path) -> VitronModel:
        """Merge LoRA adapters (if any) into the LLM and ``save_pretrained`` the model, whose
        config now says its weights are trained (``random_weights`` False, though it may have
        started from ``vitron tiny-model``)."""
        model = self.model
        if self.lora:
            model.llm = model.llm.merge_and_unload()
            self.lora = False
        model.config.random_weights = False
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
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.train_set = ConversationDataset(train_data, processor, media_root, signal_targets)
        self.val_set = (
            None if val_data is None else ConversationDataset(val_data, processor, media_root)
        )
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.sampler = ResumableSampler(len(self.train_set), seed)

    def train_dataloader(self) -> Any:
        """A resumable loader (torchdata's ``StatefulDataLoader``, see
        :mod:`vitron.training.resume`): Lightning checkpoints where it is in the epoch."""
        return ResumableLoader(
            self.train_set, sampler=self.sampler, batch_size=self.batch_size, collate_fn=collate,
            num_workers=self.num_workers, worker_init_fn=leave_signals_to_the_main_process,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            collate_fn=collate,
            num_workers=self.num_workers,
            worker_init_fn=leave_signals_to_the_main_process,
        )


def stage_processor(model: VitronModel, stage: int) -> VitronProcessor:
    """The model's processor with the stage's template."""
    config = dataclasses.replace(model.config, template=stage_template(model, stage))
    return VitronProcessor(model.tokenizer, config)


def fit(
    files: TrainFiles, config: TrainConfig, *, checkpoints: bool = True, **trainer_options: Any
) -> dict[str, Any]:
    """One stage of :func:`vitron.training.train` after its checks: load, fit, save.

    Args:
        files: the checked model, data, output and optional files.
        config: the checked settings.
        checkpoints: keep Lightning's end-of-epoch checkpoints and logs.
        **trainer_options: other ``lightning.Trainer`` arguments.
    """
    c, model = config, files.model
    L.seed_everything(c.seed, workers=True, verbose=False)
    if not isinstance(model, VitronModel):
        model = VitronModel.from_pretrained(str(model))
    model.train()
    module = VitronLightningModule(
        model, c.stage, lr=c.lr, max_steps=c.max_steps, lora_rank=c.lora_rank,
        align_weight=c.align_weight, synergy_weight=c.synergy_weight,
        gradient_checkpointing=c.gradient_checkpointing,
    )  # fmt: skip
    datamodule = VitronDataModule(
        stage_processor(model, c.stage), files.data, files.val_data, c.batch_size, c.num_workers,
        seed=c.seed, signal_targets=files.signal_targets,
    )  # fmt: skip
    root = Path(files.output) / "lightning"
    interrupt = InterruptCheckpoint(root / "checkpoints")
    periodic = periodic_checkpoints(
        root / "checkpoints", c.checkpoint_every_n_steps, c.checkpoint_every_minutes
    )
    position = DataPosition(datamodule.sampler, c.batch_size)  # reads 0.3.0 checkpoints
    callbacks = [position, interrupt, *periodic, *trainer_options.pop("callbacks", [])]
    resumed = checkpoint_facts(files.resume)
    options = {
        "max_steps": c.max_steps, "accelerator": c.accelerator, "devices": c.devices,
        "strategy": lightning_strategy(c.strategy, model), "precision": c.precision,
        "accumulate_grad_batches": c.accumulate_grad_batches, "default_root_dir": str(root),
        "enable_checkpointing": checkpoints or bool(periodic),
        "logger": run_logger(root, resumed) if checkpoints else False,
        "enable_model_summary": False, "log_every_n_steps": 1,
        "limit_val_batches": None if files.val_data is not None else 0, "callbacks": callbacks,
    }  # fmt: skip
    options.update(trainer_options)
    # in a log (not a terminal): plain progress lines instead of tqdm's bar
    options["callbacks"] = [
        *options["callbacks"],
        *progress_callbacks(
            "vitron train",
            existing=options["callbacks"],
            enabled=options.get("enable_progress_bar"),
        ),
    ]
    folders = RunFolders(files.output)
    trainer = None
    try:
        trainer = L.Trainer(**options)
        with interrupt.catching():
            trainer.fit(module, datamodule=datamodule, ckpt_path=files.resume)
        if not module.losses:
            raise ValueError(
                f"no batch of {files.data} has anything stage {c.stage} trains (stage 3 needs "
                f"replies with signals whose task has a head); {module.skipped} batch(es) "
                "skipped, nothing saved"
            )
    except BaseException:
        if trainer is None or trainer.global_step <= resumed.step:  # not one step: no trace
            folders.remove_new()
        raise
    save_trained(trainer.strategy, module, files.output)
    return {
        "first_loss": module.losses[0],
        "last_loss": module.losses[-1],
        "skipped_batches": module.skipped,
        "trainable": module.trainable,
    }
