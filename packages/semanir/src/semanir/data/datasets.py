"""Datasets yielding ``{"lq": degraded, "gt": clean, "name": stem}`` pairs of (C, H, W) tensors.

- ``SyntheticDegradationDataset`` degrades clean images on the fly (noise, JPEG, bicubic, Bayer).
- ``PairedFolderDataset`` reads degraded/clean pairs from two folders (deblurring, demosaicking,
  adverse weather, real low/high-resolution pairs).

Randomness: the training loader of ``RestorationDataModule`` asks for ``(index, item_seed)``
keys (``semanir.data.sampling``): each item's crop, degradation and flip follow its seed, a
function of (seed, epoch, position), so runs are reproducible and resume mid-epoch exactly. An
int key in training mode draws a fresh seed from torch's global generator instead. In validation
mode every item uses a generator seeded by ``(seed, index)``, so the degraded images are
identical in every run, worker and process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from common_kernels.runtime.errors import InvalidValue, literal
from semanir.data.degradations import Box, crop
from semanir.io import Channels, list_images, read_image
from semanir.tasks import (
    SYNTHETIC_TASKS,
    TaskName,
    check_channels,
    check_levels,
    check_scale,
    get_task,
)

Sample = dict[str, torch.Tensor | str]
Key = int | tuple[int, int]  # an index, or (index, item seed) from a ResumableSampler


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations of the square: rotate k % 4 quarter turns, then
    mirror left-right when k >= 4.

    Args:
        x: tensor of shape (..., H, W).
        k: variant index in 0..7 (0 is the identity).
    """
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def mod_crop(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Crop the bottom/right edges of ``x`` (..., H, W) so H and W are multiples of ``multiple``."""
    height, width = x.shape[-2] - x.shape[-2] % multiple, x.shape[-1] - x.shape[-1] % multiple
    return x[..., :height, :width]


def index_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator whose state depends only on ``(seed, index)``."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from error


class _PatchDataset(Dataset):
    """Shared crop / augmentation / seeding logic of the restoration datasets.

    Args:
        patch_size: side of the clean (ground-truth) crop; None = whole images (validation only).
        scale: ground-truth / degraded size ratio; crops are aligned to multiples of it.
        train: random crops and per-item random seeds; otherwise center crops and fixed seeds.
        augment: apply a random one of the 8 flips/rotations (defaults to ``train``).
        repeat: how many times each image appears per epoch.
        seed: seed of the validation-mode generators.
    """

    def __init__(
        self,
        *,
        patch_size: int | None,
        scale: int,
        train: bool,
        augment: bool | None,
        repeat: int,
        seed: int,
    ) -> None:
        if train and patch_size is None:
            raise ValueError("patch_size is required for training (train=True)")
        if patch_size is not None and (patch_size <= 0 or patch_size % scale):
            raise ValueError(
                f"patch_size must be a positive multiple of the scale {scale}, got {patch_size}"
            )
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.patch_size = patch_size
        self.scale = scale
        self.train = train
        self.augment = train if augment is None else augment
        self.repeat = repeat
        self.seed = seed

    def _generator(self, key: Key) -> tuple[int, torch.Generator]:
        """The item's index and its generator.

        ``(index, item_seed)`` keys (a :class:`~semanir.data.sampling.ResumableSampler`'s)
        fix the randomness by the item seed. An int key: validation fixes it by
        ``(seed, index)``; training draws from torch's global generator, mixed with the index so
        that processes sharing a global seed (DDP ranks) degrade their items differently.
        """
        if isinstance(key, tuple):
            index, seed = key
            return index, index_generator(seed, index)
        if self.train:
            return key, index_generator(int(torch.randint(2**62, ()).item()), key)
        return key, index_generator(self.seed, key)

    def _choose_box(self, height: int, width: int, generator: torch.Generator) -> Box:
        """A ``patch_size`` crop (random in training, centered otherwise), aligned to ``scale``."""
        if self.patch_size is None:
            return Box(0, 0, height, width)
        size_h, size_w = min(self.patch_size, height), min(self.patch_size, width)
        steps_h = (height - size_h) // self.scale
        steps_w = (width - size_w) // self.scale
        if self.train:
            top = int(torch.randint(steps_h + 1, (), generator=generator))
            left = int(torch.randint(steps_w + 1, (), generator=generator))
        else:
            top, left = steps_h // 2, steps_w // 2
        return Box(top * self.scale, left * self.scale, size_h, size_w)

    def _augment(self, sample: Sample, generator: torch.Generator) -> Sample:
        if not self.augment:
            return sample
        k = int(torch.randint(8, (), generator=generator))
        return {**sample, "lq": dihedral(sample["lq"], k), "gt": dihedral(sample["gt"], k)}

    def _check_sizes(self, paths: Sequence[Path], factor: int) -> None:
        """In training, every image (scaled by ``factor``) must hold a full patch: from the
        images' headers, before any is decoded, a ``patch_size`` above the smallest side is
        refused with that side as the limit (a random crop cannot be larger than its image)."""
        if not self.train:
            return
        sizes = {path: image_size(path) for path in paths}
        too_small = [
            f"{path} ({height}x{width})"
            for path, (height, width) in sizes.items()
            if min(height, width) * factor < self.patch_size
        ]
        if too_small:
            side = min(min(size) for size in sizes.values()) * factor
            limit = side // self.scale * self.scale
            raise InvalidValue(
                "patch_size",
                f"{{patch_size}} {self.patch_size} is larger than the smallest training image "
                f"({side} px a side): "
                f"{len(too_small)} image(s) smaller, "
                + literal(", ".join(too_small[:10]))
                + f"; use a {{patch_size}} of at most {limit}",
            )


class SyntheticDegradationDataset(_PatchDataset):
    """Clean images degraded on the fly for denoising, JPEG, super-resolution or demosaicking.

    Args:
        roots: image files and/or folders of clean images.
        task: "denoise" (Gaussian noise), "jpeg" (Pillow JPEG), "sr" (MATLAB bicubic
            downscaling; ``lq`` is ``scale`` times smaller) or "demosaic" (Bayer mosaic, RGB).
        patch_size: side of the clean crop; None = whole images (validation only).
        sigma: fixed noise level (0-255 scale) for "denoise".
        sigma_range: (low, high) noise levels for blind denoising, drawn per item.
        quality: fixed JPEG quality for "jpeg".
        quality_range: (low, high) JPEG qualities, drawn per item.
        scale: 2, 3 or 4 for "sr".
        bayer_pattern: colour-filter layout for "demosaic".
        channels: "gray" or "rgb".
        train: random crops and randomness from torch's global generator; otherwise center crops
            (or whole images) and degradations fixed by ``(seed, index)``.
        augment: random flips/rotations (defaults to ``train``).
        repeat: how many times each image appears per epoch.
        seed: seed of the validation-mode degradations.
    """

    def __init__(
        self,
        roots: str | os.PathLike | Sequence[str | os.PathLike],
        task: TaskName = "denoise",
        *,
        patch_size: int | None = None,
        sigma: float | None = None,
        sigma_range: tuple[float, float] | None = None,
        quality: int | None = None,
        quality_range: tuple[int, int] | None = None,
        scale: int | None = None,
        bayer_pattern: str = "RGGB",
        channels: Channels = "gray",
        train: bool = True,
        augment: bool | None = None,
        repeat: int = 1,
        seed: int = 0,
    ) -> None:
        record = get_task(task, among=SYNTHETIC_TASKS)
        check_channels(record, channels)
        check_levels(
            record, {"sigma": sigma, "sigma_range": sigma_range, "quality": quality,
                     "quality_range": quality_range}, training=True, validating=False,
        )  # fmt: skip
        check_scale(record, scale)
        super().__init__(patch_size=patch_size, scale=scale or 1, train=train, augment=augment,
                         repeat=repeat, seed=seed)  # fmt: skip
        self.paths = list_images(roots)
        self.task = task
        self.record = record
        self.sigma = None if sigma is None else float(sigma)
        self.sigma_range = None if sigma_range is None else tuple(map(float, sigma_range))
        self.quality = None if quality is None else int(quality)
        self.quality_range = None if quality_range is None else tuple(map(int, quality_range))
        self.bayer_pattern = bayer_pattern
        self.channels = channels
        self._check_sizes(self.paths, factor=1)

    def __len__(self) -> int:
        return len(self.paths) * self.repeat

    def __getitem__(self, key: Key) -> Sample:
        index, generator = self._generator(key)
        path = self.paths[index % len(self.paths)]
        image = mod_crop(read_image(path, channels=self.channels), self.scale)
        box = self._choose_box(image.shape[-2], image.shape[-1], generator)
        gt = crop(image, box)
        lq = self._degrade(image, box, generator)
        return self._augment({"lq": lq, "gt": gt, "name": path.stem}, generator)

    def _degrade(self, image: torch.Tensor, box: Box, generator: torch.Generator) -> torch.Tensor:
        """The task's degradation of the crop ``box``, at the fixed level or one drawn."""
        settings = {"scale": self.scale, "bayer_pattern": self.bayer_pattern}
        level = self.record.level
        if level is not None:
            fixed = getattr(self, level.name)
            drawn = getattr(self, level.range_name)
            settings[level.name] = fixed if fixed is not None else level.sample(drawn, generator)
        return self.record.degrade(image, box, settings, generator)


class PairedFolderDataset(_PatchDataset):
    """Degraded/clean pairs matched by file stem across two folders.

    Args:
        lq_dir: folder (or files) of degraded images.
        gt_dir: folder (or files) of clean images with the same stems (extensions may differ).
        patch_size: side of the clean crop; None = whole images (validation only).
        scale: clean / degraded size ratio (1 for same-size tasks).
        channels: "gray" or "rgb".
        train, augment, repeat, seed: as in :class:`SyntheticDegradationDataset` (``train``
            off: center crops or whole images).
    """

    def __init__(
        self,
        lq_dir: str | os.PathLike | Sequence[str | os.PathLike],
        gt_dir: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        patch_size: int | None = None,
        scale: int = 1,
        channels: Channels = "rgb",
        train: bool = True,
        augment: bool | None = None,
        repeat: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(patch_size=patch_size, scale=scale, train=train, augment=augment,
                         repeat=repeat, seed=seed)  # fmt: skip
        self.pairs = match_pairs(list_images(lq_dir), list_images(gt_dir))
        self.channels = channels
        self._check_sizes([lq for lq, _ in self.pairs], factor=scale)

    def __len__(self) -> int:
        return len(self.pairs) * self.repeat

    def __getitem__(self, key: Key) -> Sample:
        index, generator = self._generator(key)
        lq_path, gt_path = self.pairs[index % len(self.pairs)]
        lq = read_image(lq_path, channels=self.channels)
        gt = read_image(gt_path, channels=self.channels)
        expected = (lq.shape[-2] * self.scale, lq.shape[-1] * self.scale)
        if tuple(gt.shape[-2:]) != expected:
            raise ValueError(
                f"size mismatch for {lq_path.stem!r}: {lq_path} is {lq.shape[-2]}x{lq.shape[-1]}, "
                f"so {gt_path} should be {expected[0]}x{expected[1]} (scale {self.scale}), "
                f"got {gt.shape[-2]}x{gt.shape[-1]}"
            )
        box = self._choose_box(gt.shape[-2], gt.shape[-1], generator)
        low_box = Box(*(v // self.scale for v in box))
        sample = {"lq": crop(lq, low_box), "gt": crop(gt, box), "name": gt_path.stem}
        return self._augment(sample, generator)


def match_pairs(lq_paths: Sequence[Path], gt_paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Pair degraded and clean files by stem; raise listing every file without a partner."""
    lq_by_stem = {path.stem: path for path in lq_paths}
    gt_by_stem = {path.stem: path for path in gt_paths}
    lq_only = sorted(set(lq_by_stem) - set(gt_by_stem))
    gt_only = sorted(set(gt_by_stem) - set(lq_by_stem))
    if lq_only or gt_only:
        raise ValueError(
            "degraded and clean images must have matching names; "
            f"without a clean partner: {lq_only or 'none'}; "
            f"without a degraded partner: {gt_only or 'none'}"
        )
    return [(lq_by_stem[stem], gt_by_stem[stem]) for stem in sorted(gt_by_stem)]
