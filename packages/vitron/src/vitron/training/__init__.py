"""Training: the JSONL conversation format and the three stages (Lightning; LoRA via peft).

The names below load their module at first use (PEP 562): ``vitron train --help`` and the
command's argument checks import this package, and importing Lightning (about 4.5 s) for them
had made every ``vitron`` command start that much later.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    """``vitron.training.NAME``: imported from its module on first use, then cached here."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'vitron.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
