"""Degradations, datasets and the Lightning data module.

``RestorationDataModule`` is imported on first access: importing Lightning takes seconds, and
inference (``semanir restore``) uses the datasets without it.
"""

from typing import Any

from semanir.data.datasets import (
    PairedFolderDataset,
    SyntheticDegradationDataset,
    dihedral,
    downscale_crop,
    match_pairs,
)
from semanir.data.degradations import (
    add_gaussian_noise,
    bayer_mask,
    bayer_mosaic,
    bicubic_downscale,
    bicubic_resize,
    jpeg_compress,
    sample_quality,
    sample_sigma,
)

__all__ = [
    "PairedFolderDataset",
    "RestorationDataModule",
    "SyntheticDegradationDataset",
    "add_gaussian_noise",
    "bayer_mask",
    "bayer_mosaic",
    "bicubic_downscale",
    "bicubic_resize",
    "dihedral",
    "downscale_crop",
    "jpeg_compress",
    "match_pairs",
    "sample_quality",
    "sample_sigma",
]


def __getattr__(name: str) -> Any:
    if name == "RestorationDataModule":
        from semanir.data.datamodule import RestorationDataModule

        return RestorationDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
