"""Degradations, datasets and the Lightning data module.

Each name is imported on first access: importing Lightning (``RestorationDataModule``) takes
seconds, and inference (``semanir restore``) uses the degradations without it; the task records
(:mod:`semanir.tasks`) import the degradations while the datasets import the task records.
"""

from common_kernels.runtime.lazy import lazy_names

_MODULES = {  # each name -> the module that defines it
    "PairedFolderDataset": "semanir.data.datasets",
    "RestorationDataModule": "semanir.data.datamodule",
    "SyntheticDegradationDataset": "semanir.data.datasets",
    "add_gaussian_noise": "semanir.data.degradations",
    "bayer_mask": "semanir.data.degradations",
    "bayer_mosaic": "semanir.data.degradations",
    "bicubic_downscale": "semanir.data.degradations",
    "bicubic_resize": "semanir.data.degradations",
    "dihedral": "semanir.data.datasets",
    "downscale_crop": "semanir.data.degradations",
    "jpeg_compress": "semanir.data.degradations",
    "match_pairs": "semanir.data.datasets",
    "sample_quality": "semanir.data.degradations",
    "sample_sigma": "semanir.data.degradations",
}
__all__ = sorted(_MODULES)

__getattr__, __dir__ = lazy_names(__name__, _MODULES)
