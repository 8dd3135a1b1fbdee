"""Training: the JSONL conversation format and the three stages (Lightning; LoRA via peft).

The names below load their module at first use (PEP 562): ``vitron train --help`` and the
command's argument checks import this package, and importing Lightning (about 4.5 s) for them
had made every ``vitron`` command start that much later.
"""

from __future__ import annotations

from common_kernels.runtime.lazy import lazy_names

_MODULE_OF = {
    "InterruptCheckpoint": "common_kernels.runtime.lightning",
    "TrainingInterrupted": "common_kernels.runtime.lightning",
    **dict.fromkeys(
        ("PRECISIONS", "STAGES", "TrainConfig", "available_strategies", "check_train"),
        "vitron.training.config",
    ),
    **dict.fromkeys(
        ("ConversationDataset", "TargetIndex", "collate", "read_records"), "vitron.training.data"
    ),
    **dict.fromkeys(
        (
            "VitronDataModule",
            "VitronLightningModule",
            "apply_lora",
            "configure_stage",
            "enable_gradient_checkpointing",
            "is_trainable",
            "stage_processor",
        ),
        "vitron.training.module",
    ),
    "train": "vitron.training.stage",
    "build_signal_targets": "vitron.training.targets",
}

__all__ = sorted(_MODULE_OF)

__getattr__, __dir__ = lazy_names(__name__, _MODULE_OF)
