"""itaclip: training-free open-vocabulary semantic segmentation (ITACLIP) on open_clip."""

from itaclip.auxfile import AuxEntry, load_aux_texts, read_aux_file, write_aux_file
from itaclip.models import ITACLIPEncoderConfig, ITACLIPVisionEncoder, default_mid_layers
from itaclip.pamr import pamr
from itaclip.presets import PRESETS, Preset, dataset_classes
from itaclip.segmenter import (
    LoadPlan,
    Segmentation,
    Segmenter,
    SegmenterConfig,
    check_from_pretrained,
)
from itaclip.text import TextEmbeddingCache, imagenet_templates, parse_classes

__version__ = "0.4.1"

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
