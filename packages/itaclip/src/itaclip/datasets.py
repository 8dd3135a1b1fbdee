"""Readers for the standard segmentation benchmarks in their usual folder layouts.

* ``voc21``: ``JPEGImages/ID.jpg``, ``SegmentationClass/ID.png`` (palette PNG),
  ``ImageSets/Segmentation/val.txt``; 21 classes.
* ``context60``: ``JPEGImages/ID.jpg``, ``SegmentationClassContext/ID.png``,
  ``ImageSets/SegmentationContext/val.txt``; 60 classes (0 = background).
* ``coco_stuff``: ``images/val2017/X.jpg``, ``annotations/val2017/X_labelTrainIds.png``; 171.
* ``coco_object``: ``images/val2017/X.jpg``, ``annotations/val2017/X_instanceTrainIds.png``; 81.
* ``cityscapes``: ``leftImg8bit/val/CITY/X_leftImg8bit.png``,
  ``gtFine/val/CITY/X_gtFine_labelTrainIds.png``; 19 classes.

Labels are class indices with 255 = ignore (VOC's palette PNGs read as indices).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from itaclip.io import load_image

IGNORE_INDEX = 255


@dataclass(frozen=True)
class Sample:
    """One image and its label map."""

    name: str
    image: Path
    label: Path


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _split_ids(root: Path, split_file: str) -> list[str]:
    text = _require(root / split_file, "split list").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def voc_samples(root: Path, split: str = "val") -> list[Sample]:
    """Pascal VOC 2012 (``VOCdevkit/VOC2012``)."""
    ids = _split_ids(root, f"ImageSets/Segmentation/{split}.txt")
    return [
        Sample(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png")
        for i in ids
    ]


def context_samples(root: Path, split: str = "val") -> list[Sample]:
    """Pascal Context (``VOCdevkit/VOC2010`` with the 59+background label PNGs)."""
    ids = _split_ids(root, f"ImageSets/SegmentationContext/{split}.txt")
    return [
        Sample(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClassContext" / f"{i}.png")
        for i in ids
    ]


def _coco_samples(root: Path, split: str, suffix: str) -> list[Sample]:
    images = sorted(_require(root / "images" / split, "image folder").glob("*.jpg"))
    labels = root / "annotations" / split
    return [Sample(p.stem, p, labels / f"{p.stem}{suffix}") for p in images]


def coco_stuff_samples(root: Path, split: str = "val2017") -> list[Sample]:
    """COCO-Stuff 164k, 171 classes (``*_labelTrainIds.png``)."""
    return _coco_samples(root, split, "_labelTrainIds.png")


def coco_object_samples(root: Path, split: str = "val2017") -> list[Sample]:
    """COCO-Object, background + 80 things (``*_instanceTrainIds.png``)."""
    return _coco_samples(root, split, "_instanceTrainIds.png")


def cityscapes_samples(root: Path, split: str = "val") -> list[Sample]:
    """Cityscapes fine annotations, 19 train ids."""
    images = sorted(_require(root / "leftImg8bit" / split, "image folder").glob("*/*.png"))
    samples = []
    for path in images:
        stem = path.name.removesuffix("_leftImg8bit.png")
        label = root / "gtFine" / split / path.parent.name / f"{stem}_gtFine_labelTrainIds.png"
        samples.append(Sample(stem, path, label))
    return samples


DATASETS: dict[str, tuple[Callable[..., list[Sample]], int]] = {
    "voc21": (voc_samples, 21),
    "context60": (context_samples, 60),
    "coco_stuff": (coco_stuff_samples, 171),
    "coco_object": (coco_object_samples, 81),
    "cityscapes": (cityscapes_samples, 19),
}


def read_label(path: Path) -> Tensor:
    """(H, W) int64 label map from an index PNG."""
    with Image.open(_require(path, "label map")) as label:
        return torch.from_numpy(np.asarray(label).astype(np.int64))


class SegmentationDataset:
    """A benchmark's images and labels.

    Args:
        name: one of ``DATASETS``.
        root: dataset folder.
        split: split name (``val`` / ``val2017``); default the dataset's validation split.
    """

    def __init__(self, name: str, root: str | os.PathLike, split: str | None = None) -> None:
        if name not in DATASETS:
            raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
        reader, self.num_classes = DATASETS[name]
        root = _require(Path(root), "dataset root")
        self.name = name
        self.samples = reader(root) if split is None else reader(root, split)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        """(3, H, W) RGB image in [0, 1], (H, W) int64 labels, sample name."""
        sample = self.samples[index]
        image = load_image(_require(sample.image, "image"))
        label = read_label(sample.label)
        if tuple(label.shape) != tuple(image.shape[-2:]):
            raise ValueError(
                f"{sample.name}: label {tuple(label.shape)} and image "
                f"{tuple(image.shape[-2:])} sizes differ"
            )
        return image, label, sample.name
