"""Diffusers pipelines of pixelsmith."""

from pixelsmith.pipelines.pixelsmith import (
    PixelsmithOutput,
    PixelsmithPipeline,
    StageStats,
    StepPlan,
    TextConditioning,
    ddim_from_config,
)
from pixelsmith.sources import DEFAULT_MODEL, DEFAULT_VAE

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_VAE",
    "PixelsmithOutput",
    "PixelsmithPipeline",
    "StageStats",
    "StepPlan",
    "TextConditioning",
    "ddim_from_config",
]
