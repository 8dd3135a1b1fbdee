"""Readers for the standard segmentation benchmarks in their usual folder layouts.

* ``voc21``: ``JPEGImages/ID.jpg``, ``SegmentationClass/ID.png`` (palette PNG),
  ``ImageSets/Segmentation/val.txt``; 21 classes (0 = background).
* ``voc20``: the ``voc21`` folder; 20 classes, the background (0) ignored.
* ``context60``: ``JPEGImages/ID.jpg``, ``SegmentationClassContext/ID.png``,
  ``ImageSets/SegmentationContext/val.txt``; 60 classes (0 = background).
* ``context59``: the ``context60`` folder; 59 classes, the background (0) ignored.
* ``coco_stuff``: ``images/val2017/X.jpg``, ``annotations/val2017/X_labelTrainIds.png``; 171.
* ``coco_object``: ``images/val2017/X.jpg``, ``annotations/val2017/X_instanceTrainIds.png``; 81.
* ``cityscapes``: ``leftImg8bit/val/CITY/X_leftImg8bit.png``,
  ``gtFine/val/CITY/X_gtFine_labelTrainIds.png``; 19 classes.
* ``ade20k``: ``ADEChallengeData2016`` with ``images/validation/X.jpg``,
  ``annotations/validation/X.png``; 150 classes, 0 (unlabelled) ignored.

Labels are class indices with 255 = ignore (VOC's palette PNGs read as indices). ``voc20``,
``context59`` and ``ade20k`` hold 0 = ignored and the classes from 1 in their files; they are
read with mmseg's ``reduce_zero_label`` (0 -> 255, k -> k - 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from common_kernels.runtime.errors import InvalidValue, literal
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


VOC_SPLIT_LIST = "ImageSets/Segmentation/{split}.txt"
CONTEXT_SPLIT_LIST = "ImageSets/SegmentationContext/{split}.txt"


def voc_samples(root: Path, split: str = "val") -> list[Sample]:
    """Pascal VOC 2012 (``VOCdevkit/VOC2012``)."""
    ids = _split_ids(root, VOC_SPLIT_LIST.format(split=split))
    return [
        Sample(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png")
        for i in ids
    ]


def context_samples(root: Path, split: str = "val") -> list[Sample]:
    """Pascal Context (``VOCdevkit/VOC2010`` with the 59+background label PNGs)."""
    ids = _split_ids(root, CONTEXT_SPLIT_LIST.format(split=split))
    return [
        Sample(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClassContext" / f"{i}.png")
        for i in ids
    ]


def _images_annotations_samples(root: Path, split: str, suffix: str) -> list[Sample]:
    """``images/SPLIT/X.jpg`` with ``annotations/SPLIT/X<suffix>`` (COCO, ADE20K)."""
    images = sorted(_require(root / "images" / split, "image folder").glob("*.jpg"))
    labels = root / "annotations" / split
    return [Sample(p.stem, p, labels / f"{p.stem}{suffix}") for p in images]


def coco_stuff_samples(root: Path, split: str = "val2017") -> list[Sample]:
    """COCO-Stuff 164k, 171 classes (``*_labelTrainIds.png``)."""
    return _images_annotations_samples(root, split, "_labelTrainIds.png")


def coco_object_samples(root: Path, split: str = "val2017") -> list[Sample]:
    """COCO-Object, background + 80 things (``*_instanceTrainIds.png``)."""
    return _images_annotations_samples(root, split, "_instanceTrainIds.png")


def ade20k_samples(root: Path, split: str = "validation") -> list[Sample]:
    """ADE20K (``ADEChallengeData2016``), 150 classes + 0 = unlabelled (``X.png``)."""
    return _images_annotations_samples(root, split, ".png")


def cityscapes_samples(root: Path, split: str = "val") -> list[Sample]:
    """Cityscapes fine annotations, 19 train ids."""
    images = sorted(_require(root / "leftImg8bit" / split, "image folder").glob("*/*.png"))
    samples = []
    for path in images:
        stem = path.name.removesuffix("_leftImg8bit.png")
        label = root / "gtFine" / split / path.parent.name / f"{stem}_gtFine_labelTrainIds.png"
        samples.append(Sample(stem, path, label))
    return samples


@dataclass(frozen=True)
class DatasetSpec:
    """How one benchmark is read.

    Args:
        reader: ``(root, split) -> samples``.
        num_classes: classes of the benchmark (labels after ``reduce_zero_label``).
        split: the default split.
        layout: what the root folder holds, ``{split}`` standing for the split (for messages).
        reduce_zero_label: the files hold 0 = ignored and the classes from 1 (mmseg's
            ``reduce_zero_label``; see ``reduce_zero_label``).
        split_list: the file listing a split's IDs, ``{split}`` standing for the split (None:
            the split is a folder).
    """

    reader: Callable[[Path, str], list[Sample]]
    num_classes: int
    split: str
    layout: str
    reduce_zero_label: bool = False
    split_list: str | None = None


VOC_LAYOUT = (
    "JPEGImages/ID.jpg, SegmentationClass/ID.png and ImageSets/Segmentation/{split}.txt "
    "listing the IDs"
)
CONTEXT_LAYOUT = (
    "JPEGImages/ID.jpg, SegmentationClassContext/ID.png and "
    "ImageSets/SegmentationContext/{split}.txt listing the IDs"
)
COCO_STUFF_LAYOUT = "images/{split}/X.jpg and annotations/{split}/X_labelTrainIds.png"
COCO_OBJECT_LAYOUT = "images/{split}/X.jpg and annotations/{split}/X_instanceTrainIds.png"
CITYSCAPES_LAYOUT = (
    "leftImg8bit/{split}/CITY/X_leftImg8bit.png and gtFine/{split}/CITY/X_gtFine_labelTrainIds.png"
)
ADE20K_LAYOUT = "images/{split}/X.jpg and annotations/{split}/X.png"

DATASETS: dict[str, DatasetSpec] = {
    "voc21": DatasetSpec(voc_samples, 21, "val", VOC_LAYOUT, False, VOC_SPLIT_LIST),
    "voc20": DatasetSpec(voc_samples, 20, "val", VOC_LAYOUT, True, VOC_SPLIT_LIST),
    "context60": DatasetSpec(context_samples, 60, "val", CONTEXT_LAYOUT, False, CONTEXT_SPLIT_LIST),
    "context59": DatasetSpec(context_samples, 59, "val", CONTEXT_LAYOUT, True, CONTEXT_SPLIT_LIST),
    "coco_stuff": DatasetSpec(coco_stuff_samples, 171, "val2017", COCO_STUFF_LAYOUT),
    "coco_object": DatasetSpec(coco_object_samples, 81, "val2017", COCO_OBJECT_LAYOUT),
    "cityscapes": DatasetSpec(cityscapes_samples, 19, "val", CITYSCAPES_LAYOUT),
    "ade20k": DatasetSpec(ade20k_samples, 150, "validation", ADE20K_LAYOUT, reduce_zero_label=True),
}


def read_label(path: Path) -> Tensor:
    """(H, W) int64 label map from a single-channel index PNG (mode L or P: palette indices).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: an image with several channels (an RGB-coloured label map).
    """
    with Image.open(_require(path, "label map")) as label:
        array = np.asarray(label)
        if array.ndim != 2:
            raise ValueError(
                f"label map {path}: expected class indices in one channel (a mode L or P PNG), "
                f"got a mode {label.mode} image"
            )
    return torch.from_numpy(array.astype(np.int64))


def reduce_zero_label(label: Tensor) -> Tensor:
    """mmseg's ``reduce_zero_label``: 0 (unlabelled) -> 255 (ignored), k -> k - 1, 255 stays.

    Args:
        label: integer labels as read from a ``voc20``, ``context59`` or ``ade20k`` file.
    """
    ignored = (label == 0) | (label == IGNORE_INDEX)
    return torch.where(ignored, torch.full_like(label, IGNORE_INDEX), label - 1)


class SegmentationDataset:
    """A benchmark's images and labels.

    Args:
        name: one of ``DATASETS``.
        root: dataset folder.
        split: split name (``val`` / ``val2017`` / ``validation``); default the dataset's
            validation split.
    """

    def __init__(self, name: str, root: str | os.PathLike, split: str | None = None) -> None:
        if name not in DATASETS:
            raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
        spec = DATASETS[name]
        root = _require(Path(root), "dataset root")
        self.name = name
        self.split = spec.split if split is None else split
        self.num_classes = spec.num_classes
        self.reduce_zero_label = spec.reduce_zero_label
        self.layout = spec.layout.format(split=self.split)
        self.root = root
        self.split_list = (
            None if spec.split_list is None else root / spec.split_list.format(split=self.split)
        )
        try:
            self.samples = spec.reader(root, self.split)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error} (expected {self.layout})") from None

    def __len__(self) -> int:
        return len(self.samples)

    def input_files(self) -> Iterator[tuple[Path, str]]:
        """Every file the evaluation reads, with what it is: the split list, the images and the
        label maps (for ``itaclip.protect.check_not_replacing``)."""
        if self.split_list is not None:
            yield self.split_list, f"the split list of {self.name}"
        for sample in self.samples:
            yield sample.image, f"an image of {self.name}"
            yield sample.label, f"a label map of {self.name}"

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        """(3, H, W) RGB image in [0, 1], (H, W) int64 labels, sample name."""
        sample = self.samples[index]
        image = load_image(_require(sample.image, "image"))
        label = read_label(sample.label)
        if self.reduce_zero_label:
            label = reduce_zero_label(label)
        if tuple(label.shape) != tuple(image.shape[-2:]):
            raise ValueError(
                f"{sample.name}: label {tuple(label.shape)} and image "
                f"{tuple(image.shape[-2:])} sizes differ"
            )
        return image, label, sample.name


def check_dataset(
    name: str,
    root: str | os.PathLike,
    split: str | None = None,
    limit: int | None = None,
) -> SegmentationDataset:
    """The dataset, checked before any model work: the root holds the layout, and the images
    and label maps of the first ``limit`` samples exist.

    Args:
        name: one of ``DATASETS``.
        root: dataset folder.
        split: split name (default the dataset's validation split).
        limit: check only the first ``limit`` samples (``None``: all).

    Raises:
        InvalidArgument: (``root``) a file, a missing root, split list, image folder, image or
            label map (the message names the expected layout), or no samples.
    """
    root = Path(root)
    if not root.is_dir():
        if root.exists():
            raise InvalidValue("root", "{root} " + literal(f"{root} is a file, not a folder"))
        raise InvalidValue("root", "{root} " + literal(f"{root} does not exist"))
    try:
        dataset = SegmentationDataset(name, root, split)
    except FileNotFoundError as error:
        raise InvalidValue(
            "root", "{root} " + literal(f"{root} is not a folder of {name}: {error}")
        ) from None
    if len(dataset) == 0:
        raise InvalidValue(
            "root", "{root} " + literal(f"{root}: no images found (expected {dataset.layout})")
        )
    for sample in dataset.samples[:limit]:
        for path, what in ((sample.image, "image"), (sample.label, "label map")):
            if not path.is_file():
                message = f"{root}: {what} of {sample.name} not found: {path}"
                raise InvalidValue("root", "{root} " + literal(message))
    return dataset
