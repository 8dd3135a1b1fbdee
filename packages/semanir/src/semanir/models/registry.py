"""Named model configs and the function that builds a model from a name.

Every entry maps a name to a factory returning a fresh config dataclass; the config's
``model_type`` picks the model class. Configs are plain data: building or listing them imports
nothing for side effects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from . import dncnn, semanir_config, window_attention
from .dncnn import DnCNN, DnCNNConfig
from .semanir import SemanIR, SemanIRConfig

ModelConfig = SemanIRConfig | DnCNNConfig

CONFIGS: dict[str, Callable[[], ModelConfig]] = {
    **semanir_config.CONFIGS,
    **window_attention.CONFIGS,
    **dncnn.CONFIGS,
}

MODEL_CLASSES: dict[str, type[SemanIR] | type[DnCNN]] = {"semanir": SemanIR, "dncnn": DnCNN}


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The named config with ``overrides`` applied (and validated).

    Args:
        name: a key of :data:`CONFIGS`.
        **overrides: config fields to change, e.g. ``inference_k=16``.

    Returns:
        A fresh config dataclass.
    """
    if name not in CONFIGS:
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(sorted(CONFIGS))}")
    config = CONFIGS[name]()
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        kind = type(config).__name__
        raise ValueError(f"unknown {kind} fields {unknown} for {name!r}; known: {sorted(fields)}")
    return dataclasses.replace(config, **overrides)


def model_from_config(config: ModelConfig | dict[str, Any]) -> SemanIR | DnCNN:
    """A randomly initialised model for a config dataclass or its dict form."""
    model_type = config["model_type"] if isinstance(config, dict) else config.model_type
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"model_type must be one of {sorted(MODEL_CLASSES)}, got {model_type!r}")
    return MODEL_CLASSES[model_type](config)


def build_model(name: str, **overrides: Any) -> SemanIR | DnCNN:
    """A randomly initialised model for a named config.

    Args:
        name: a key of :data:`CONFIGS`.
        **overrides: config fields to change.
    """
    return model_from_config(get_config(name, **overrides))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
