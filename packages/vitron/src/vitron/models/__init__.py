"""Model parts: config, vision tower, projector / region encoder / signal heads, the full model."""

from vitron.models.config import RegionConfig, SignalConfig, VisionConfig, VitronConfig
from vitron.models.modules import (
    GradientReversal,
    Projector,
    RegionEncoder,
    SignalFeatures,
    SignalHeads,
    SynergyModule,
    TaskDiscriminator,
    reverse_gradient,
)
from vitron.models.vision import VisionTower
from vitron.models.vitron import VitronModel, VitronOutput, add_vitron_tokens, build_llm

__all__ = [
    "GradientReversal",
    "Projector",
    "RegionConfig",
    "RegionEncoder",
    "SignalConfig",
    "SignalFeatures",
    "SignalHeads",
    "SynergyModule",
    "TaskDiscriminator",
    "VisionConfig",
    "VisionTower",
    "VitronConfig",
    "VitronModel",
    "VitronOutput",
    "add_vitron_tokens",
    "build_llm",
    "reverse_gradient",
]
