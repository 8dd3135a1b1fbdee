"""pixelsmith: cascaded higher-resolution and gigapixel SDXL generation (Pixelsmith, NeurIPS 2024).

Public API: :class:`PixelsmithPipeline` (a diffusers SDXL pipeline with Pixelsmith stages) and
:func:`generate_cascade` (base SDXL image, then guided stages up to the target size), with the
settings of a run in :class:`CascadeOptions`.
"""

from transformers.utils import logging as _transformers_logging

# diffusers' SDXL pipeline module reads transformers' CLIP and SigLIP image processors on import,
# which log a one-time "requires torchvision" notice where torchvision is absent; pixelsmith never
# uses an image processor, so the notice is silenced for this import only.
_verbosity = _transformers_logging.get_verbosity()
_transformers_logging.set_verbosity_error()
try:
    from pixelsmith.cascade import generate_cascade
    from pixelsmith.config import PixelsmithConfig
    from pixelsmith.options import CascadeOptions
    from pixelsmith.patches import GridPlanner, Patch, RandomPlanner, minimum_patches
    from pixelsmith.pipelines import (
        PixelsmithOutput,
        PixelsmithPipeline,
        StageStats,
        StepPlan,
        TextConditioning,
    )
finally:
    _transformers_logging.set_verbosity(_verbosity)

__version__ = "0.4.1"

__all__ = [
    "CascadeOptions",
    "GridPlanner",
    "Patch",
    "PixelsmithConfig",
    "PixelsmithOutput",
    "PixelsmithPipeline",
    "RandomPlanner",
    "StageStats",
    "StepPlan",
    "TextConditioning",
    "__version__",
    "generate_cascade",
    "minimum_patches",
]
