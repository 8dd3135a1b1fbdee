"""SemanIR and its baselines (dense window attention, DnCNN), with named configs."""

from .dncnn import DnCNN, DnCNNConfig
from .registry import (
    CONFIGS,
    MODEL_CLASSES,
    build_model,
    count_parameters,
    get_config,
    model_from_config,
)
from .semanir import SemanIR, SemanIRConfig
from .window_attention import dense_window_attention

__all__ = [
    "CONFIGS",
    "MODEL_CLASSES",
    "DnCNN",
    "DnCNNConfig",
    "SemanIR",
    "SemanIRConfig",
    "build_model",
    "count_parameters",
    "dense_window_attention",
    "get_config",
    "model_from_config",
]
