"""Degradations, datasets and the Lightning data module.

Each name is imported on first access: importing Lightning (``RestorationDataModule``) takes
seconds, and inference (``semanir restore``) uses the degradations without it; the task records
(:mod:`semanir.tasks`) import the degradations while the datasets import the task records.
"""

from importlib import import_module
from typing import Any

_MODULES = {
    "PairedFolderDataset": "datasets",
    "RestorationDataModule": "datamodule",
    "SyntheticDegradationDataset": "datasets",
    "add_gaussian_noise": "degradations",
    "bayer_mask": "degradations",
    "bayer_mosaic": "degradations",
    "bicubic_downscale": "degradations",
    "bicubic_resize": "degradations",
    "dihedral": "datasets",
    "downscale_crop": "degradations",
    "jpeg_compress": "degradations",
    "match_pairs": "datasets",
    "sample_quality": "degradations",
    "sample_sigma": "degradations",
}
__all__ = sorted(_MODULES)


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_MODULES[name]}"), name)
