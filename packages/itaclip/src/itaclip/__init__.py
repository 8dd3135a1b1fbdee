"""itaclip: training-free open-vocabulary semantic segmentation (ITACLIP) on open_clip.

The names load on first use (PEP 562): ``import itaclip`` (and the ``itaclip`` command's
parsing) do not import open_clip, which imports torchvision and transformers and takes seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common_kernels.runtime.lazy import lazy_names

if TYPE_CHECKING:
    from itaclip.auxfile import AuxEntry, load_aux_texts, read_aux_file, write_aux_file
    from itaclip.models import ITACLIPEncoderConfig, ITACLIPVisionEncoder, default_mid_layers
    from itaclip.presets import PRESETS, Preset, dataset_classes
    from itaclip.refinement import pamr
    from itaclip.segmenter import (
        LoadPlan,
        Segmentation,
        Segmenter,
        SegmenterConfig,
        check_from_pretrained,
    )
    from itaclip.text import TextEmbeddingCache, imagenet_templates, parse_classes

__version__ = "0.4.6"

# each public name -> the module that defines it
_MODULES = {
    **dict.fromkeys(("AuxEntry", "load_aux_texts", "read_aux_file", "write_aux_file"),
                    "itaclip.auxfile"),
    **dict.fromkeys(("ITACLIPEncoderConfig", "ITACLIPVisionEncoder", "default_mid_layers"),
                    "itaclip.models"),
    "pamr": "itaclip.refinement",
    **dict.fromkeys(("PRESETS", "Preset", "dataset_classes"), "itaclip.presets"),
    **dict.fromkeys(("LoadPlan", "Segmentation", "Segmenter", "SegmenterConfig",
                     "check_from_pretrained"), "itaclip.segmenter"),
    **dict.fromkeys(("TextEmbeddingCache", "imagenet_templates", "parse_classes"),
                    "itaclip.text"),
}  # fmt: skip


__getattr__, __dir__ = lazy_names(__name__, _MODULES)

__all__ = [
    "PRESETS",
    "AuxEntry",
    "ITACLIPEncoderConfig",
    "ITACLIPVisionEncoder",
    "LoadPlan",
    "Preset",
    "Segmentation",
    "Segmenter",
    "SegmenterConfig",
    "TextEmbeddingCache",
    "__version__",
    "check_from_pretrained",
    "dataset_classes",
    "default_mid_layers",
    "imagenet_templates",
    "load_aux_texts",
    "pamr",
    "parse_classes",
    "read_aux_file",
    "write_aux_file",
]
