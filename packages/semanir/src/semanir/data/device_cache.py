"""Training batches drawn on the training device (``RestorationDataModule(device_cache=True)``).

The clean training images are decoded once into one uint8 store on the device; every training
step then draws its batch there, in a few batched kernels and without a host synchronisation or
a per-sample Python loop: an image per sample, a random ``patch_size`` crop of it, one of the 8
flips/rotations of the square (:func:`semanir.data.datasets.dihedral`), a noise level uniform in
``sigma_range`` (or the fixed ``sigma``) and white Gaussian noise of that standard deviation /
255, unclipped: the per-sample distribution of the CPU path
(:class:`~semanir.data.datasets.SyntheticDegradationDataset`), except that the images are drawn
with replacement instead of once per epoch in a permuted order.

The draws of a step come from a generator on the device seeded by ``(seed, rank, global step,
micro-batch)``: a run repeats exactly with the same seed, and a resumed run continues with the
batches the uninterrupted run drew. The training loader only hands out :class:`DeviceDraw`
tickets (no tensors, nothing to copy); the data module's ``on_after_batch_transfer`` turns each
into the batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common_kernels.runtime.errors import InvalidArgument, InvalidValue, literal
from semanir.data.datasets import dihedral
from semanir.io import Channels, read_image

DEVICE_CACHE_TASKS = ("denoise",)
# The share of the device's available memory the store may take: the rest is the training's.
DEVICE_CACHE_SHARE = 0.25


def check_device_cache_options(
    *, device_cache: bool, task: str, train_lq_dir: str | None, sigma: float | None,
    sigma_range: Sequence[float] | None,
) -> None:  # fmt: skip
    """Refuse ``device_cache`` for what it does not draw, naming it, before any image is read.

    Args:
        device_cache: the data module's option.
        task: the data module's task; only "denoise" (Gaussian noise) is drawn on the device.
        train_lq_dir: degraded training images (paired folders are never cached).
        sigma, sigma_range: the training noise level, fixed or drawn (one of them is needed).
    """
    if not device_cache:
        return
    if not isinstance(device_cache, bool):
        raise InvalidArgument("device_cache", f"must be true or false, got {device_cache!r}")
    if task not in DEVICE_CACHE_TASKS or train_lq_dir is not None:
        given = f"task {task!r}" + (" with {train_lq_dir}" if train_lq_dir is not None else "")
        raise InvalidArgument(
            "device_cache",
            f"draws synthetic Gaussian-noise batches on the training device, so it needs task "
            f"'denoise' without {{train_lq_dir}}; got {given}: set {{device_cache}} to false "
            f"for other tasks and paired folders",
        )
    if sigma is None and sigma_range is None:
        raise InvalidArgument(
            "device_cache", "needs {sigma} or {sigma_range} (the training noise levels)"
        )


class DeviceDraw:
    """A training-loader item standing for the batch that is drawn on the device (a plain
    object: Lightning moves nothing of it)."""

    __slots__ = ()


class DrawTickets:
    """The training loader of a device-cached run: ``steps`` :class:`DeviceDraw` tickets per
    epoch.

    The tickets carry nothing: the batches are keyed by the global step. On a resume in the
    middle of an epoch Lightning ends the epoch once its restored batch count reaches ``steps``,
    so epochs (and per-epoch validation) fall where they fall in an uninterrupted run; the empty
    :meth:`state_dict` only tells Lightning that resuming here is exact.

    Args:
        steps: batches per epoch (as many as the CPU path's loader hands out), >= 1.
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[DeviceDraw]:
        return (DeviceDraw() for _ in range(self.steps))

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Nothing to restore (the draws follow the restored global step)."""


def draw_seed(seed: int, rank: int, step: int, micro: int) -> int:
    """The seed of one training batch's draws: a function of the run's data ``seed``, the
    process ``rank``, the optimizer ``step`` and the ``micro``-batch within it."""
    state = np.random.SeedSequence([seed, rank, step, micro]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> 1)  # a non-negative int64


def dihedral_source(size: int, device: torch.device) -> torch.Tensor:
    """(8, size, size) flat positions: entry ``[k, i, j]`` is the position in a ``size`` x
    ``size`` crop of the pixel that :func:`~semanir.data.datasets.dihedral` with ``k`` puts at
    (i, j), so gathering through it crops and transforms in one step."""
    positions = torch.arange(size * size, device=device).view(size, size)  # (size, size)
    return torch.stack([dihedral(positions, k) for k in range(8)])


@dataclass(frozen=True)
class Draws:
    """What one batch drew, per sample: image index, crop corner, dihedral variant, sigma."""

    index: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    variant: torch.Tensor
    sigma: torch.Tensor


class DeviceImageStore:
    """The training images as one (N, C, H_max, W_max) uint8 tensor on a device (smaller images
    padded at the bottom/right; crops stay inside each image's own size), and the batch draws.

    Args:
        images: (C, H, W) uint8 tensors, every side >= ``patch_size``.
        patch_size: side of the clean crops.
        sigma: fixed noise level (0-255 scale), or None to draw from ``sigma_range``.
        sigma_range: (low, high) noise levels, drawn uniformly per sample.
        device: where the store lives and the batches are drawn.
    """

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        patch_size: int,
        *,
        sigma: float | None,
        sigma_range: Sequence[float] | None,
        device: torch.device | str = "cpu",
    ) -> None:
        device = torch.device(device)
        heights = [image.shape[-2] for image in images]
        widths = [image.shape[-1] for image in images]
        if min(min(heights), min(widths)) < patch_size:
            raise ValueError(f"every image must hold a {patch_size}-pixel crop")
        channels = images[0].shape[0]
        store = torch.zeros(len(images), channels, max(heights), max(widths), dtype=torch.uint8)
        for slot, image in zip(store, images, strict=True):
            slot[:, : image.shape[-2], : image.shape[-1]] = image
        self.store = store.to(device)
        self.patch_size = patch_size
        # Crop corners per image: uniform over [0, side - patch_size], as the CPU path's.
        self.top_choices = torch.tensor(heights, device=device) - patch_size + 1
        self.left_choices = torch.tensor(widths, device=device) - patch_size + 1
        low, high = (sigma, sigma) if sigma is not None else tuple(map(float, sigma_range))
        self.sigma_low, self.sigma_span = float(low), float(high) - float(low)
        self.source = dihedral_source(patch_size, device)
        self.generator = torch.Generator(device=device)

    @property
    def device(self) -> torch.device:
        return self.store.device

    def draw(self, batch_size: int, seed: int) -> tuple[dict[str, torch.Tensor], Draws]:
        """One batch ``{"lq", "gt"}`` of (B, C, P, P) float32 images and its draws, from a
        generator seeded by ``seed`` (:func:`draw_seed`)."""
        generator = self.generator.manual_seed(seed)  # host-side: no device synchronisation
        device, size, count = self.device, self.patch_size, self.store.shape[0]
        options = {"generator": generator, "device": device}
        index = torch.randint(count, (batch_size,), **options)
        # floor(u * n) for u uniform in [0, 1) is uniform over 0..n-1; the clamp keeps float
        # rounding of u * n up to n from leaving the image.
        top = (torch.rand(batch_size, **options) * self.top_choices[index]).long()
        top = torch.minimum(top, self.top_choices[index] - 1)
        left = (torch.rand(batch_size, **options) * self.left_choices[index]).long()
        left = torch.minimum(left, self.left_choices[index] - 1)
        variant = torch.randint(8, (batch_size,), **options)
        sigma = self.sigma_low + self.sigma_span * torch.rand(batch_size, **options)
        source = self.source[variant]  # (B, P, P) positions inside each crop
        rows = top[:, None, None] + torch.div(source, size, rounding_mode="floor")  # (B, P, P)
        cols = left[:, None, None] + source % size  # (B, P, P)
        # Advanced indexing with the channel slice in between puts it last: (B, P, P, C).
        pixels = self.store[index[:, None, None], :, rows, cols]
        gt = pixels.permute(0, 3, 1, 2).float().div_(255.0)  # (B, C, P, P)
        noise = torch.randn(gt.shape, **options)
        lq = gt + noise * (sigma / 255.0)[:, None, None, None]
        return {"lq": lq, "gt": gt}, Draws(index, top, left, variant, sigma)


def read_uint8_images(paths: Sequence[Path], channels: Channels) -> list[torch.Tensor]:
    """The images at ``paths`` as (C, H, W) uint8 tensors.

    Raises:
        InvalidValue: naming ``device_cache``, for an image with more than 8 bits (its values
            are not multiples of 1/255 and the uint8 store would round them).
    """
    images = []
    for path in paths:
        image = read_image(path, channels=channels)
        levels = image * 255.0
        rounded = levels.round()
        if not torch.allclose(levels, rounded, rtol=0, atol=1e-3):
            raise InvalidValue(
                "device_cache",
                f"{{device_cache}} stores 8-bit images, and {literal(path)} has finer levels; "
                "set {device_cache} to false for images of more than 8 bits",
            )
        images.append(rounded.to(torch.uint8))
    return images


def check_store_fits(images: Sequence[torch.Tensor], device: torch.device, budget: int) -> None:
    """Refuse a store larger than :data:`DEVICE_CACHE_SHARE` of ``budget`` (the device's
    available bytes), naming ``device_cache``, before it is allocated."""
    heights = max(image.shape[-2] for image in images)
    widths = max(image.shape[-1] for image in images)
    need = len(images) * images[0].shape[0] * heights * widths
    if need > DEVICE_CACHE_SHARE * budget:
        raise InvalidValue(
            "device_cache",
            f"{{device_cache}}: the {len(images)} training images need {need / 2**20:.0f} MiB "
            f"on {device}, more than {DEVICE_CACHE_SHARE:.0%} of its "
            f"{budget / 2**20:.0f} MiB available; set {{device_cache}} to false",
        )
