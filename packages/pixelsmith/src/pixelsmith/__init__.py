"""pixelsmith: cascaded higher-resolution and gigapixel SDXL generation (Pixelsmith, NeurIPS 2024).

Public API: :class:`PixelsmithPipeline` (a diffusers SDXL pipeline with Pixelsmith stages) and
:func:`generate_cascade` (base SDXL image, then guided stages up to the target size).
"""

from pixelsmith.cascade import generate_cascade
from pixelsmith.config import PixelsmithConfig
from pixelsmith.patches import GridPlanner, Patch, RandomPlanner, minimum_patches
from pixelsmith.pipelines import (
    PixelsmithOutput,
    PixelsmithPipeline,
    StageStats,
    StepPlan,
    TextConditioning,
)

__version__ = "0.2.1"

__all__ = [
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
