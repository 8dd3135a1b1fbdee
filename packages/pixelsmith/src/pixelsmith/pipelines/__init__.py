"""Diffusers pipelines of pixelsmith."""

from transformers.utils import logging as _transformers_logging

from pixelsmith.sources import DEFAULT_MODEL, DEFAULT_VAE

# diffusers' SDXL pipeline module reads transformers' CLIP and SigLIP image processors on import,
# which log a one-time "requires torchvision" notice where torchvision is absent; pixelsmith never
# uses an image processor, so the notice is silenced for this import only (every import of a
# pipelines module runs this first).
_verbosity = _transformers_logging.get_verbosity()
_transformers_logging.set_verbosity_error()
try:
    from pixelsmith.pipelines.pixelsmith import (
        PixelsmithOutput,
        PixelsmithPipeline,
        StageStats,
        StepPlan,
        TextConditioning,
        ddim_from_config,
    )
finally:
    _transformers_logging.set_verbosity(_verbosity)

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
