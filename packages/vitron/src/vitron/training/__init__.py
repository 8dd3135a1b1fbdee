"""Training: the JSONL conversation format and the three stages (Lightning; LoRA via peft)."""

from vitron.training.data import ConversationDataset, collate, read_records
from vitron.training.module import (
    STAGES,
    VitronDataModule,
    VitronLightningModule,
    apply_lora,
    configure_stage,
    is_trainable,
    stage_processor,
    train,
)

__all__ = [
    "STAGES",
    "ConversationDataset",
    "VitronDataModule",
    "VitronLightningModule",
    "apply_lora",
    "collate",
    "configure_stage",
    "is_trainable",
    "read_records",
    "stage_processor",
    "train",
]
