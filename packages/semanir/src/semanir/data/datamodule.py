"""``RestorationDataModule``: training and validation loaders over image folders."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from common_kernels.runtime.cli import leave_signals_to_the_main_process
from common_kernels.runtime.errors import InvalidArgument, InvalidValue, literal
from semanir.data.datasets import PairedFolderDataset, SyntheticDegradationDataset, image_size
from semanir.data.degradations import BAYER_PATTERNS
from semanir.data.device_cache import (
    DeviceDraw,
    DeviceImageStore,
    DrawTickets,
    check_device_cache_options,
    check_store_fits,
    draw_seed,
    read_uint8_images,
)
from semanir.data.sampling import ResumableDataLoader, ResumableSampler
from semanir.io import Channels
from semanir.memory import available_bytes
from semanir.tasks import (
    TaskName,
    check_channels,
    check_choice,
    check_integer,
    check_levels,
    check_scale,
    get_task,
)

DATA_ROOT_VARIABLE = "SEMANIR_DATA"


class DataFolderError(ValueError):
    """A data folder of a training config does not exist (raised before the trainer is built)."""


def resolve_data_dirs(dirs: list[str] | None, data_root: str | None) -> list[str] | None:
    """``dirs`` with relative entries under ``data_root`` (default: ``$SEMANIR_DATA``; without
    either, relative to the working folder)."""
    root = data_root or os.environ.get(DATA_ROOT_VARIABLE)
    if dirs is None or root is None:
        return dirs
    return [d if Path(d).is_absolute() else str(Path(root) / d) for d in dirs]


def check_data_dirs(option: str, dirs: list[str] | None, data_root: str | None) -> None:
    """Fail, naming ``option`` and how to point at the data, when a folder of ``dirs`` is missing.

    Args:
        option: the config key, e.g. ``"data.train_dirs"``.
        dirs: the folders as the config gives them.
        data_root: ``data.data_root``.
    """
    resolved = resolve_data_dirs(dirs, data_root) or []
    missing = [
        given for given, path in zip(dirs or [], resolved, strict=True) if not Path(path).exists()
    ]
    if missing:
        where = data_root or os.environ.get(DATA_ROOT_VARIABLE)
        looked = (
            f"under {where}"
            if where
            else f"in {Path.cwd()} (no data.data_root, no ${DATA_ROOT_VARIABLE})"
        )
        raise DataFolderError(
            f"{option}: {', '.join(missing)} not found {looked}; set --data.data_root DIR or "
            f"${DATA_ROOT_VARIABLE} to the folder that holds them"
        )


def check_data_options(
    *,
    task: str,
    channels: str,
    patch_size: int,
    val_patch_size: int | None,
    batch_size: int,
    val_batch_size: int,
    num_workers: int,
    repeat: int,
    sigma: float | None = None,
    sigma_range: Sequence[float] | None = None,
    val_sigma: float | None = None,
    quality: int | None = None,
    quality_range: Sequence[int] | None = None,
    val_quality: int | None = None,
    scale: int | None = None,
    bayer_pattern: str = "RGGB",
    train_dirs: list[str] | None = None,
    val_dirs: list[str] | None = None,
    train_lq_dir: str | None = None,
    val_lq_dir: str | None = None,
    device_cache: bool = False,
    **_: Any,
) -> None:
    """Refuse a :class:`RestorationDataModule` option out of range or that does not fit the
    task, naming the argument (:class:`~common_kernels.runtime.errors.InvalidArgument`), before any
    image is read. Arguments as in :class:`RestorationDataModule`."""
    record = get_task(task)
    check_channels(record, channels)
    check_choice("bayer_pattern", bayer_pattern, BAYER_PATTERNS)
    for name, value, low in (
        ("batch_size", batch_size, 1), ("val_batch_size", val_batch_size, 1),
        ("num_workers", num_workers, 0), ("repeat", repeat, 1), ("patch_size", patch_size, 1),
    ):  # fmt: skip
        check_integer(name, value, low)
    cpus = os.cpu_count() or 1
    if num_workers > cpus:  # more loader processes than CPUs only compete with the training
        raise InvalidArgument(
            "num_workers",
            f"must be an integer in [0, {cpus}] (this machine's CPUs, os.cpu_count()), "
            f"got {num_workers}",
        )
    if val_patch_size is not None:
        check_integer("val_patch_size", val_patch_size, 1)
    check_scale(record, scale)
    for name, size in (("patch_size", patch_size), ("val_patch_size", val_patch_size)):
        if size is not None and scale and size % scale:
            raise InvalidArgument(name, f"must be a multiple of the scale {scale}, got {size}")
    levels = {
        "sigma": sigma, "sigma_range": sigma_range, "val_sigma": val_sigma, "quality": quality,
        "quality_range": quality_range, "val_quality": val_quality,
    }  # fmt: skip
    check_levels(record, levels, training=bool(train_dirs), validating=bool(val_dirs))
    check_device_cache_options(
        device_cache=device_cache, task=task, train_lq_dir=train_lq_dir, sigma=sigma,
        sigma_range=sigma_range,
    )  # fmt: skip
    for split, clean, degraded in (
        ("train", train_dirs, train_lq_dir),
        ("val", val_dirs, val_lq_dir),
    ):
        if record.degrade is None and clean and not degraded:
            raise InvalidArgument(
                f"{split}_lq_dir",
                f"task {task!r} needs {{{split}_lq_dir}} (degraded images) and {{{split}_dirs}}",
            )


class RestorationDataModule(L.LightningDataModule):
    """Loaders of (degraded, clean) pairs for one restoration task.

    Synthetic tasks ("denoise", "jpeg", "sr", "demosaic") degrade the clean images in
    ``train_dirs`` / ``val_dirs`` on the fly; "paired" reads degraded images from
    ``train_lq_dir`` / ``val_lq_dir`` and their clean partners from ``train_dirs`` / ``val_dirs``.
    Validation is deterministic (fixed per-image seeds) and uses whole images unless
    ``val_patch_size`` asks for center crops. Training visits the images in a per-epoch order
    and degrades each with its own seed, both functions of (``seed``, epoch, position): a
    checkpoint holds the position reached, and a resumed run continues with exactly the batches
    the uninterrupted run would have drawn (:mod:`semanir.data.sampling`).

    Args:
        train_dirs: folders or files of clean training images.
        val_dirs: folders or files of clean validation images (None = no validation).
        task: "denoise", "jpeg", "sr", "demosaic" or "paired".
        channels: "gray" or "rgb".
        patch_size: side of the clean training crops.
        val_patch_size: side of the center crops used for validation (None = whole images).
        batch_size: training batch size per process.
        val_batch_size: validation batch size (whole images of different sizes need 1).
        num_workers: loader worker processes.
        sigma: fixed training noise level (0-255 scale) for "denoise".
        sigma_range: (low, high) noise levels for blind denoising.
        val_sigma: validation noise level (None = ``sigma``, or per-image draws from the range).
        quality: fixed JPEG quality for "jpeg".
        quality_range: (low, high) JPEG qualities for blind JPEG training.
        val_quality: validation JPEG quality (None = ``quality``, or draws from the range).
        scale: super-resolution factor (2, 3 or 4) for "sr" and low-resolution "paired" data.
        bayer_pattern: colour-filter layout for "demosaic".
        data_root: folder that relative ``train_dirs``/``val_dirs`` are in (default:
            ``$SEMANIR_DATA``; without either, the working folder). The shipped configs name
            folders of this repository's shared data (``train400``, ``set12``, ...): point
            ``data_root`` at it (``../shared/data`` from the repository root).
        train_lq_dir: degraded training images for "paired".
        val_lq_dir: degraded validation images for "paired".
        repeat: how many times each training image appears per epoch.
        seed: seed of the validation degradations and of the training order and draws.
        device_cache: "denoise" only: decode the training images once into a uint8 store on
            the training device and draw every training batch there (crop, flip/rotation,
            sigma, noise) from a generator seeded by (``seed``, rank, global step), without
            loader workers or host synchronisation (:mod:`semanir.data.device_cache`; images
            drawn with replacement). Validation is unchanged.
    """

    def __init__(
        self,
        train_dirs: list[str] | None = None,
        val_dirs: list[str] | None = None,
        task: TaskName = "denoise",
        channels: Channels = "gray",
        patch_size: int = 64,
        val_patch_size: int | None = None,
        batch_size: int = 16,
        val_batch_size: int = 1,
        num_workers: int = 2,
        sigma: float | None = None,
        sigma_range: tuple[float, float] | None = None,
        val_sigma: float | None = None,
        quality: int | None = None,
        quality_range: tuple[int, int] | None = None,
        val_quality: int | None = None,
        scale: int | None = None,
        bayer_pattern: str = "RGGB",
        train_lq_dir: str | None = None,
        val_lq_dir: str | None = None,
        repeat: int = 1,
        seed: int = 0,
        data_root: str | None = None,
        device_cache: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_data_options(**self.hparams)
        self.train_set: Dataset | None = None
        self.store: DeviceImageStore | None = None  # device_cache: the images on the device
        self._draws = (-1, 0)  # (global step, micro-batches drawn at it)
        self.val_set: Dataset | None = None
        self.val_input_size: tuple[int, int] | None = None  # (height, width), model input px
        self._resume: tuple[int, int] | None = None  # (epoch, position) from a checkpoint

    def setup(self, stage: str) -> None:
        """Build the datasets the stage needs ("fit" builds both, "validate" only validation),
        unless :meth:`prepare_datasets` built them already; with ``device_cache``, decode the
        training images into the store on the trainer's device."""
        self.prepare_datasets(stage)
        if stage == "fit" and self.hparams.device_cache and self.store is None:
            self.store = self._build_store()

    def _build_store(self) -> DeviceImageStore:
        """The training images in a uint8 store on the trainer's device (refused, naming
        ``device_cache``, when it would take more than its share of that device's memory)."""
        hp = self.hparams
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        images = read_uint8_images(self.train_set.paths, hp.channels)
        check_store_fits(images, device, available_bytes(device))
        return DeviceImageStore(
            images, hp.patch_size, sigma=hp.sigma, sigma_range=hp.sigma_range, device=device
        )

    def prepare_datasets(self, stage: str) -> None:
        """Build the datasets of ``stage`` that are not built yet: list the images and read
        their headers (no image is decoded), refusing a folder without images or a
        ``patch_size`` larger than a training image. ``semanir fit``/``validate`` call it
        before the trainer is made, so these are refused before any work."""
        hp = self.hparams
        if stage == "fit" and self.train_set is None:
            if not hp.train_dirs:
                raise InvalidArgument(
                    "train_dirs", "fitting needs {train_dirs} (folders of clean images)",
                    mentions={"train_dirs": "data.train_dirs"},
                )  # fmt: skip
            train_dirs = resolve_data_dirs(hp.train_dirs, hp.data_root)
            with _folders_named("train_dirs"):
                self.train_set = self._dataset(train_dirs, hp.train_lq_dir, train=True)
        if stage in ("fit", "validate") and hp.val_dirs and self.val_set is None:
            val_dirs = resolve_data_dirs(hp.val_dirs, hp.data_root)
            with _folders_named("val_dirs"):
                self.val_set = self._dataset(val_dirs, hp.val_lq_dir, train=False)
            self.val_input_size = self._check_val_batches()

    def _check_val_batches(self) -> tuple[int, int]:
        """The largest validation input (height, width) in model-input pixels, read from the
        images' headers; a ``val_batch_size`` above 1 over whole images of different sizes is
        refused (a batch stacks its images), naming the sizes found."""
        hp = self.hparams
        if isinstance(self.val_set, PairedFolderDataset):
            factor = 1
            sizes = {path: image_size(path) for path, _ in self.val_set.pairs}
        else:
            factor = self.val_set.scale
            sizes = {
                path: (h // factor * factor, w // factor * factor)
                for path, (h, w) in ((p, image_size(p)) for p in self.val_set.paths)
            }
        if hp.val_patch_size is not None:
            side = hp.val_patch_size // factor
            return side, side
        distinct = sorted(set(sizes.values()))
        if hp.val_batch_size > 1 and len(distinct) > 1:
            shown = ", ".join(f"{h}x{w}" for h, w in distinct[:6])
            raise InvalidValue(
                "val_batch_size",
                f"{{val_batch_size}} {hp.val_batch_size} stacks whole validation images, which "
                f"come in {len(distinct)} sizes ({literal(shown)}"
                f"{', ...' if len(distinct) > 6 else ''}); use a {{val_batch_size}} of 1 or set "
                "{val_patch_size} (center crops of one size)",
            )
        height, width = max(distinct, key=lambda size: size[0] * size[1])
        return height // factor, width // factor

    def _dataset(self, clean: list[str], degraded: str | None, *, train: bool) -> Dataset:
        hp = self.hparams
        patch_size = hp.patch_size if train else hp.val_patch_size
        common = dict(
            patch_size=patch_size,
            channels=hp.channels,
            train=train,
            repeat=hp.repeat if train else 1,
            seed=hp.seed,
        )
        if get_task(hp.task).degrade is None:  # degraded images from folders
            return PairedFolderDataset(degraded, clean, scale=hp.scale or 1, **common)
        sigma, quality = hp.sigma, hp.quality
        if not train:
            sigma = hp.val_sigma if hp.val_sigma is not None else sigma
            quality = hp.val_quality if hp.val_quality is not None else quality
        return SyntheticDegradationDataset(
            clean,
            hp.task,
            sigma=sigma,
            sigma_range=None if sigma is not None else hp.sigma_range,
            quality=quality,
            quality_range=None if quality is not None else hp.quality_range,
            scale=hp.scale,
            bayer_pattern=hp.bayer_pattern,
            **common,
        )

    def train_dataloader(self) -> ResumableDataLoader | DrawTickets:
        """The training loader: torchdata's ``StatefulDataLoader`` over a
        :class:`~semanir.data.sampling.ResumableSampler` (sharded over DDP's processes).
        Lightning saves its state, the epoch and the items trained on, in every checkpoint and
        restores it on a resume. With ``device_cache``: tickets of the batches that
        :meth:`on_after_batch_transfer` draws on the device, as many per epoch as the loader
        would hand out (at least one)."""
        hp, trainer = self.hparams, self.trainer
        if hp.device_cache:
            per_step = hp.batch_size * (trainer.world_size if trainer else 1)
            return DrawTickets(max(1, len(self.train_set) // per_step))
        sampler = ResumableSampler(
            len(self.train_set), hp.seed, batch_size=hp.batch_size,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
        )  # fmt: skip
        if self._resume is not None:  # a checkpoint of semanir <= 0.3.0
            sampler.resume_at(*self._resume)
        return ResumableDataLoader(
            self.train_set,
            sampler,
            batch_size=hp.batch_size,
            drop_last=True,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            worker_init_fn=leave_signals_to_the_main_process,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A :class:`~semanir.data.device_cache.DeviceDraw` ticket becomes its batch, drawn on
        the device from the seed of (``seed``, rank, global step, micro-batch of the step);
        other batches pass unchanged."""
        if not isinstance(batch, DeviceDraw):
            return batch
        trainer = self.trainer
        step = trainer.global_step if trainer else self._draws[0] + 1
        micro = self._draws[1] + 1 if step == self._draws[0] else 0  # accumulated batches
        self._draws = (step, micro)
        seed = draw_seed(self.hparams.seed, trainer.global_rank if trainer else 0, step, micro)
        batch, _ = self.store.draw(self.hparams.batch_size, seed)
        return batch

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Read the data position of a checkpoint written by semanir <= 0.3.0 (later ones
        keep it in the loader's state)."""
        if state_dict:
            self._resume = (state_dict["epoch"], state_dict["position"])

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(
            self.val_set,
            batch_size=self.hparams.val_batch_size,
            shuffle=False,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            worker_init_fn=leave_signals_to_the_main_process,
        )


@contextmanager
def _folders_named(argument: str) -> Iterator[None]:
    """Image listing errors (about ``paths``) said of the data module's ``argument``."""
    try:
        yield
    except InvalidArgument as error:
        if error.argument != "paths":
            raise
        raise InvalidArgument(argument, literal(error.message)) from None
