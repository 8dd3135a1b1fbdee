"""pixelsmith: cascaded higher-resolution and gigapixel SDXL generation (Pixelsmith, NeurIPS 2024).

Public API: :class:`PixelsmithPipeline` (a diffusers SDXL pipeline with Pixelsmith stages) and
:func:`generate_cascade` (base SDXL image, then guided stages up to the target size), with the
settings of a run in :class:`CascadeOptions`.

The names load on first use (PEP 562): ``import pixelsmith`` (and the ``pixelsmith`` command's
parsing and checks) do not import diffusers or transformers, which take seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common_kernels.runtime.lazy import lazy_names

if TYPE_CHECKING:
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

__version__ = "0.4.6"

# each public name -> the module that defines it
_MODULES = {
    "generate_cascade": "pixelsmith.cascade",
    "PixelsmithConfig": "pixelsmith.config",
    "CascadeOptions": "pixelsmith.options",
    **dict.fromkeys(("GridPlanner", "Patch", "RandomPlanner", "minimum_patches"),
                    "pixelsmith.patches"),
    **dict.fromkeys(("PixelsmithOutput", "PixelsmithPipeline", "StageStats", "StepPlan",
                     "TextConditioning"), "pixelsmith.pipelines"),
}  # fmt: skip


__getattr__, __dir__ = lazy_names(__name__, _MODULES)

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
