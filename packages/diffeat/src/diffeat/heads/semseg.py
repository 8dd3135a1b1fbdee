"""Semantic segmentation on frozen diffusion features: residual adapters + decoder, Lightning."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from common_kernels.runtime.files import AtomicSavePretrained


class ResidualAdapter(nn.Module):
    """1x1 projection to ``dim`` followed by a residual 3x3-GN-ReLU-3x3 block.

    Args:
        in_channels: the activation's channels.
        dim: adapter width.
        groups: GroupNorm groups (must divide ``dim``).
    """

    def __init__(self, in_channels: int, dim: int, groups: int = 8):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 1)
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.GroupNorm(groups, dim),
            nn.ReLU(),
            nn.Conv2d(dim, dim, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        return x + self.block(x)


class SegmentationHead(nn.Module, AtomicSavePretrained, PyTorchModelHubMixin):
    """Per-activation residual adapters, resized to the finest one, concatenated, decoded.

    Args:
        in_channels: ``{activation name: channels}`` (the extractor's layers, in order).
        num_classes: output classes.
        dim: adapter and decoder width.
        groups: GroupNorm groups.
    """

    def __init__(
        self, in_channels: Mapping[str, int], num_classes: int, dim: int = 128, groups: int = 8
    ):
        super().__init__()
        if dim % groups:
            raise ValueError(f"groups: {groups} must divide dim {dim}")
        self.names = list(in_channels)
        self.adapters = nn.ModuleList(ResidualAdapter(c, dim, groups) for c in in_channels.values())
        self.decoder = nn.Sequential(
            nn.Conv2d(dim * len(self.names), dim, 3, padding=1),
            nn.GroupNorm(groups, dim),
            nn.ReLU(),
            nn.Conv2d(dim, num_classes, 1),
        )

    def forward(
        self, features: Mapping[str, Tensor], size: tuple[int, int] | None = None
    ) -> Tensor:
        """``{name: (B, C, h, w)}`` -> logits (B, classes, H, W) at ``size`` (default: finest)."""
        missing = [n for n in self.names if n not in features]
        if missing:
            raise ValueError(f"features: missing activations {missing}")
        dtype = self.decoder[0].weight.dtype
        maps = [a(features[n].to(dtype)) for n, a in zip(self.names, self.adapters, strict=True)]
        finest = max((tuple(m.shape[-2:]) for m in maps), key=lambda hw: hw[0] * hw[1])
        maps = [
            m if tuple(m.shape[-2:]) == finest else F.interpolate(m, finest, mode="bilinear")
            for m in maps
        ]
        logits = self.decoder(torch.cat(maps, dim=1))  # (B, classes, h, w)
        if size is not None and tuple(size) != finest:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


class SegmentationModule(L.LightningModule):
    """Train :class:`SegmentationHead` with Lightning on frozen diffusion features.

    Batches are dicts with ``labels`` (B, H, W) and either ``features`` (``{name: tensor}``,
    precomputed) or ``images`` (B, 3, H, W in [0, 1]) plus optional ``prompts``, in which case
    the (frozen, never trained) ``extractor`` computes the features on the fly.

    Validation logs ``val/miou`` (torchmetrics ``MulticlassJaccardIndex``, macro average over
    the classes present in the labels or the predictions of the whole validation set, as
    mmsegmentation reports it; NaN if every pixel is ignored) and ``val/accuracy`` (pixel
    accuracy), both without ``ignore_index`` pixels.

    Args:
        in_channels: ``{activation name: channels}``.
        num_classes: classes.
        dim: head width.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        ignore_index: label value excluded from loss and metrics.
        extractor: optional :class:`~diffeat.FeatureExtractor` for image batches.
    """

    def __init__(
        self,
        in_channels: Mapping[str, int],
        num_classes: int,
        dim: int = 128,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        ignore_index: int = 255,
        extractor=None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["extractor"])
        self.head = SegmentationHead(dict(in_channels), num_classes, dim)
        self.extractor = extractor
        self.val_miou = MulticlassJaccardIndex(
            num_classes, average="macro", ignore_index=ignore_index
        )
        self.val_accuracy = MulticlassAccuracy(
            num_classes, average="micro", ignore_index=ignore_index
        )

    def features_of(self, batch: Mapping) -> Mapping[str, Tensor]:
        if "features" in batch:
            return batch["features"]
        if self.extractor is None:
            raise ValueError("batch: has no 'features' and the module has no extractor")
        with torch.no_grad():
            return self.extractor(batch["images"], batch.get("prompts", ""))

    def forward(self, batch: Mapping) -> Tensor:
        return self.head(self.features_of(batch), size=tuple(batch["labels"].shape[-2:]))

    def training_step(self, batch: Mapping, batch_idx: int) -> Tensor:
        logits = self(batch)
        loss = F.cross_entropy(
            logits, batch["labels"].long(), ignore_index=self.hparams.ignore_index
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def validation_step(self, batch: Mapping, batch_idx: int) -> None:
        pred = self(batch).argmax(1)  # (B, H, W)
        self.val_miou.update(pred, batch["labels"])
        self.val_accuracy.update(pred, batch["labels"])
        self.log("val/miou", self.val_miou, prog_bar=True)
        self.log("val/accuracy", self.val_accuracy)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Drop the ``confusion`` buffer that checkpoints of diffeat <= 0.2.0 hold."""
        checkpoint["state_dict"].pop("confusion", None)

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.head.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class SegmentationFolder(Dataset):
    """Images and label masks with matching file stems in two folders.

    Args:
        images: folder of RGB images.
        masks: folder of single-channel label PNGs (same stems).
        size: (H, W) to resize to (images bicubic, masks nearest).
    """

    def __init__(self, images: str | Path, masks: str | Path, size: tuple[int, int]):
        images, masks = Path(images), Path(masks)
        for folder in (images, masks):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} is not a folder")
        mask_by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() == ".png"}
        self.items = [
            (p, mask_by_stem[p.stem])
            for p in sorted(images.iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in mask_by_stem
        ]
        if not self.items:
            raise ValueError(f"no image/mask pairs with matching names in {images} and {masks}")
        self.size = tuple(size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image_path, mask_path = self.items[index]
        height, width = self.size
        with Image.open(image_path) as image:
            rgb = image.convert("RGB").resize((width, height), Image.BICUBIC)
        with Image.open(mask_path) as mask:
            labels = mask.resize((width, height), Image.NEAREST)
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return {"images": pixels, "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64))}


class SegmentationFolderDataModule(L.LightningDataModule):
    """Train/val :class:`SegmentationFolder` loaders.

    Args:
        train_images: training image folder; train_masks: its masks.
        val_images: validation image folder; val_masks: its masks.
        size: (H, W) inputs are resized to (e.g. the preset's resolution).
        batch_size: images per batch.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        train_images: str,
        train_masks: str,
        val_images: str,
        val_masks: str,
        size: tuple[int, int] = (512, 512),
        batch_size: int = 2,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self.train_set = SegmentationFolder(hp.train_images, hp.train_masks, hp.size)
        self.val_set = SegmentationFolder(hp.val_images, hp.val_masks, hp.size)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            self.hparams.batch_size,
            shuffle=True,
            num_workers=self.hparams.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set, self.hparams.batch_size, num_workers=self.hparams.num_workers
        )
