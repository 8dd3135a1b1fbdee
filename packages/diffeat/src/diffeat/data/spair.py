"""Reader for the SPair-71k semantic-correspondence benchmark.

Layout (as distributed)::

    SPair-71k/
        JPEGImages/<category>/<image>.jpg
        PairAnnotation/{trn,val,test}/<pair id>:<category>.json
        Layout/{large,small}/{trn,val,test}.txt      (pair ids; optional)

Each pair JSON holds ``src_imname``, ``trg_imname``, ``category``, ``src_kps`` / ``trg_kps``
(lists of matched ``[x, y]`` keypoints), ``src_bndbox`` / ``trg_bndbox`` (``[x1, y1, x2, y2]``)
and ``kps_ids``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from diffeat.io import load_image

SPLITS = ("trn", "val", "test")


class SPairDataset(Dataset):
    """SPair-71k pairs as dicts (images loaded lazily).

    Args:
        root: the ``SPair-71k`` folder.
        split: ``trn``, ``val`` or ``test``.
        category: keep only this category (e.g. ``"cat"``).
        layout: ``"large"`` or ``"small"`` to restrict to a ``Layout/<layout>/<split>.txt`` list.
        limit: keep the first ``limit`` pairs (sorted by file name).

    Items: ``pair_id``, ``category``, ``src_image`` / ``tgt_image`` (RGB PIL), ``src_kps`` /
    ``tgt_kps`` ((N, 2) float32 ``(x, y)``), ``src_bbox`` / ``tgt_bbox`` ((4,) float32),
    ``src_size`` / ``tgt_size`` ((H, W) of the images), ``kps_ids``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        category: str | None = None,
        layout: str | None = None,
        limit: int | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"split: must be one of {SPLITS}; got {split!r}")
        self.root = Path(root)
        folder = self.root / "PairAnnotation" / split
        if not folder.is_dir():
            raise FileNotFoundError(f"root: {folder} does not exist (is {root} SPair-71k?)")
        files = sorted(folder.glob("*.json"))
        if layout is not None:
            listing = self.root / "Layout" / layout / f"{split}.txt"
            if not listing.is_file():
                raise FileNotFoundError(f"layout: {listing} does not exist")
            wanted = {line.strip() for line in listing.read_text().splitlines() if line.strip()}
            files = [f for f in files if f.stem in wanted]
        if category is not None:
            files = [f for f in files if f.stem.rsplit(":", 1)[-1] == category]
        if limit is not None:
            files = files[:limit]
        if not files:
            raise ValueError(f"no {split} pairs found under {folder} (category={category!r})")
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def annotation(self, index: int) -> dict:
        """The raw JSON annotation of pair ``index``."""
        return json.loads(self.files[index].read_text())

    def __getitem__(self, index: int) -> dict:
        ann = self.annotation(index)
        category = ann["category"]
        images = self.root / "JPEGImages" / category
        src, tgt = load_image(images / ann["src_imname"]), load_image(images / ann["trg_imname"])
        src_kps = torch.tensor(ann["src_kps"], dtype=torch.float32).reshape(-1, 2)
        tgt_kps = torch.tensor(ann["trg_kps"], dtype=torch.float32).reshape(-1, 2)
        if len(src_kps) != len(tgt_kps):
            raise ValueError(
                f"{self.files[index].name}: {len(src_kps)} vs {len(tgt_kps)} keypoints"
            )
        return {
            "pair_id": self.files[index].stem,
            "category": category,
            "src_image": src,
            "tgt_image": tgt,
            "src_kps": src_kps,
            "tgt_kps": tgt_kps,
            "src_bbox": torch.tensor(ann["src_bndbox"], dtype=torch.float32),
            "tgt_bbox": torch.tensor(ann["trg_bndbox"], dtype=torch.float32),
            "src_size": (src.height, src.width),
            "tgt_size": (tgt.height, tgt.width),
            "kps_ids": [int(k) for k in ann.get("kps_ids", range(len(src_kps)))],
        }
