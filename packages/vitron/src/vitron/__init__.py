"""vitron: a unified pixel-level vision LLM that routes typed calls to specialist packages.

Importing vitron loads no specialist package and no weights: itaclip, semanir, diffusers,
pixelsmith and diffeat are imported by their adapters on first use. Training pieces (Lightning)
live in ``vitron.training``.
"""

from vitron.assistant import Assistant, Reply, Turn
from vitron.invocations import (
    SCHEMA_VERSION,
    TASKS,
    Call,
    InputCounts,
    Invocation,
    InvocationError,
    ParsedReply,
    Ref,
    parse_invocation,
    parse_reply,
    parse_tags,
)
from vitron.models import (
    RegionConfig,
    SignalConfig,
    VisionConfig,
    VisionTower,
    VitronConfig,
    VitronModel,
    add_vitron_tokens,
)
from vitron.processing import Message, Sample, VitronProcessor
from vitron.regions import Box, Mask, Region, RegionError, Stroke
from vitron.router import CallOutcome, Router, TurnInputs
from vitron.specialists import Consumes, Specialist, SpecialistError, SpecialistRegistry
from vitron.version import __version__

__all__ = [
    "SCHEMA_VERSION",
    "TASKS",
    "Assistant",
    "Box",
    "Call",
    "CallOutcome",
    "Consumes",
    "InputCounts",
    "Invocation",
    "InvocationError",
    "Mask",
    "Message",
    "ParsedReply",
    "Ref",
    "Region",
    "RegionConfig",
    "RegionError",
    "Reply",
    "Router",
    "Sample",
    "SignalConfig",
    "Specialist",
    "SpecialistError",
    "SpecialistRegistry",
    "Stroke",
    "Turn",
    "TurnInputs",
    "VisionConfig",
    "VisionTower",
    "VitronConfig",
    "VitronModel",
    "VitronProcessor",
    "__version__",
    "add_vitron_tokens",
    "parse_invocation",
    "parse_reply",
    "parse_tags",
]
