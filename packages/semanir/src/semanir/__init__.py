"""SemanIR: image restoration that shares one key-semantic KNN dictionary per stage.

Lightning pieces (``RestorationModule``, ``RestorationDataModule``) live in
``semanir.lightning_module`` and ``semanir.data`` and are not imported here: inference does not
pay for importing Lightning. ``register_spandrel`` (``semanir.spandrel_arch``, the ``spandrel``
extra) is imported on first access, and left out of ``__all__``: importing semanir imports nothing
of spandrel.
"""

from importlib import import_module
from typing import Any

from semanir.export import export_onnx
from semanir.inference import load_model, restore
from semanir.io import list_images, read_image, write_image
from semanir.metrics import psnr, ssim
from semanir.models import (
    CONFIGS,
    DnCNN,
    DnCNNConfig,
    SemanIR,
    SemanIRConfig,
    build_model,
    get_config,
)

__version__ = "0.4.12"

__all__ = [
    "CONFIGS",
    "DnCNN",
    "DnCNNConfig",
    "SemanIR",
    "SemanIRConfig",
    "__version__",
    "build_model",
    "export_onnx",
    "get_config",
    "list_images",
    "load_model",
    "psnr",
    "read_image",
    "restore",
    "ssim",
    "write_image",
]


def __getattr__(name: str) -> Any:
    if name != "register_spandrel":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return import_module("semanir.spandrel_arch").register_spandrel
