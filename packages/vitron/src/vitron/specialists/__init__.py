"""Specialist adapters behind a lazy registry (no specialist package is imported before use)."""

from vitron.specialists.base import (
    Artifact,
    CallInputs,
    Consumes,
    Specialist,
    SpecialistError,
    SpecialistOutput,
)
from vitron.specialists.editing import DiffusersInpainter, EditingOptions
from vitron.specialists.features import DiffeatFeatures, FeatureOptions
from vitron.specialists.generation import DiffusersImageGenerator, GenerationOptions
from vitron.specialists.registry import BUILTIN_SPECIALISTS, SpecialistRegistry
from vitron.specialists.restoration import RestorationOptions, SemanirRestorer
from vitron.specialists.segmentation import ItaclipSegmenter, SegmentationOptions
from vitron.specialists.video import DiffusersVideo, VideoOptions

__all__ = [
    "BUILTIN_SPECIALISTS",
    "Artifact",
    "CallInputs",
    "Consumes",
    "DiffeatFeatures",
    "DiffusersImageGenerator",
    "DiffusersInpainter",
    "DiffusersVideo",
    "EditingOptions",
    "FeatureOptions",
    "GenerationOptions",
    "ItaclipSegmenter",
    "RestorationOptions",
    "SegmentationOptions",
    "SemanirRestorer",
    "Specialist",
    "SpecialistError",
    "SpecialistOutput",
    "SpecialistRegistry",
    "VideoOptions",
]
