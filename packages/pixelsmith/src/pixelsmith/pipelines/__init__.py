"""Diffusers pipelines of pixelsmith."""

from diffusers.utils import logging as _diffusers_logging
from huggingface_hub.utils import are_progress_bars_disabled as _progress_bars_disabled
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

# diffusers' own bars ("Loading pipeline components...") have no environment switch and start
# on: they follow huggingface_hub's switch (HF_HUB_DISABLE_PROGRESS_BARS), which a command's
# quiet_libraries turns off before the command imports diffusers here, after its checks
if _progress_bars_disabled():
    _diffusers_logging.disable_progress_bar()

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
