"""Training: the JSONL conversation format and the three stages (Lightning; LoRA via peft)."""

from common_kernels.runtime.lightning import InterruptCheckpoint, TrainingInterrupted
from vitron.training.config import (
    PRECISIONS,
    STAGES,
    TrainConfig,
    available_strategies,
    check_train,
)
from vitron.training.data import ConversationDataset, TargetIndex, collate, read_records
from vitron.training.module import (
    VitronDataModule,
    VitronLightningModule,
    apply_lora,
    configure_stage,
    enable_gradient_checkpointing,
    is_trainable,
    stage_processor,
    train,
)
from vitron.training.targets import build_signal_targets

__all__ = [
    "PRECISIONS",
    "STAGES",
    "ConversationDataset",
    "InterruptCheckpoint",
    "TargetIndex",
    "TrainConfig",
    "TrainingInterrupted",
    "VitronDataModule",
    "VitronLightningModule",
    "apply_lora",
    "available_strategies",
    "build_signal_targets",
    "check_train",
    "collate",
    "configure_stage",
    "enable_gradient_checkpointing",
    "is_trainable",
    "read_records",
    "stage_processor",
    "train",
]
