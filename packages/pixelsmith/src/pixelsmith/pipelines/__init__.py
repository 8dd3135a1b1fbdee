"""Diffusers pipelines of pixelsmith."""

from pixelsmith.pipelines.pixelsmith import (
    DEFAULT_MODEL,
    DEFAULT_VAE,
    PixelsmithOutput,
    PixelsmithPipeline,
    StageStats,
    StepPlan,
    TextConditioning,
    ddim_from_config,
)

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
