"""Segmentation of images and video frames with itaclip (training-free, open vocabulary).

A referred object ("the brown dog") becomes class 0 against background classes; its mask is
``labels == 0``, restricted to the call's region when one is given. A signal embedding (CLIP
text space) is mixed into the target's query features: ``normalize(q + w * normalize(s))``.
Video segmentation with a region tracks the object: the first frame's mask is restricted to the
region, and each later frame's to the previous mask's bounding box grown by ``track_margin``.
An image smaller than itaclip's ViT patch (or its blur kernel) is enlarged bilinearly first, as
itaclip's own resize enlarges small images, and its mask is computed at its own size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vitron.io import mask_to_pil, overlay_mask, save_gif, save_image
from vitron.regions import region_mask_at
from vitron.specialists.base import (
    Artifact,
    CallInputs,
    Consumes,
    Specialist,
    SpecialistError,
    SpecialistOutput,
)

BACKGROUND_CLASSES = (
    "background", "sky", "wall", "floor", "ground", "grass", "tree", "building", "road", "water",
)  # fmt: skip


@dataclass
class SegmentationOptions:
    """Options of the ``itaclip`` adapter.

    Args:
        model: open_clip model name, ``hf-hub:org/repo`` or ``local-dir:PATH``.
        pretrained: open_clip weights tag (``None`` with a schema or for random weights).
        preset: itaclip dataset preset for its settings (``None`` = defaults + ``settings``).
        settings: ``itaclip.SegmenterConfig`` fields (e.g. ``{"stride": 112}``).
        background_classes: classes competing with the target when a call gives none.
        signal_weight: weight of the signal embedding in the target's queries (0 = ignore).
        cache_dir: itaclip text-embedding cache folder (``None`` = itaclip's default).
        track_margin: video tracking from a region: how far (a fraction of the frame's width /
            height) the object may move between frames.
    """

    model: str = "ViT-B-16-quickgelu"
    pretrained: str | None = "openai"
    preset: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    background_classes: tuple[str, ...] = BACKGROUND_CLASSES
    signal_weight: float = 0.3
    cache_dir: str | None = None
    track_margin: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.track_margin <= 1:
            raise ValueError(f"track_margin must be in [0, 1], got {self.track_margin}")


def grown_box(mask: Tensor, margin: float) -> Tensor | None:
    """(H, W) bool: the bounding box of ``mask`` grown by ``margin`` x (W, H) pixels on every
    side (clipped to the frame); ``None`` for an empty mask."""
    if not bool(mask.any()):
        return None
    height, width = mask.shape
    rows = torch.nonzero(mask.any(1))[:, 0]
    cols = torch.nonzero(mask.any(0))[:, 0]
    dx, dy = round(margin * width), round(margin * height)
    box = torch.zeros_like(mask, dtype=torch.bool)
    y1, y2 = max(0, int(rows.min()) - dy), int(rows.max()) + 1 + dy
    x1, x2 = max(0, int(cols.min()) - dx), int(cols.max()) + 1 + dx
    box[y1:y2, x1:x2] = True
    return box


def minimum_side(segmenter: Any) -> int:
    """The smallest image side itaclip's windows work on: one ViT patch, and more than half of
    the Gaussian blur of its image-engineering variants (reflect padding)."""
    from itaclip.engineering import BLUR_KERNEL

    return max(*segmenter.encoder.patch_size, BLUR_KERNEL // 2 + 1)


def enlarged(image: Tensor, minimum: int) -> Tensor:
    """(3, H, W) ``image`` enlarged bilinearly (aspect kept) so that its short side is at least
    ``minimum`` pixels; unchanged when it already is.

    Args:
        image: (3, H, W) RGB in [0, 1].
        minimum: the smallest side, in pixels.
    """
    height, width = image.shape[-2:]
    if min(height, width) >= minimum:
        return image
    scale = minimum / min(height, width)
    size = (max(minimum, math.ceil(height * scale)), max(minimum, math.ceil(width * scale)))
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def competing_classes(target: str, others: Sequence[str]) -> list[list[str]]:
    """``[[target], [other], ...]`` without repeats of the target (case-insensitive)."""
    seen = {target.strip().lower()}
    classes = [[target.strip()]]
    for name in others:
        key = name.strip().lower()
        if key and key not in seen:
            seen.add(key)
            classes.append([name.strip()])
    return classes


class ItaclipSegmenter(Specialist):
    """Referring segmentation of images (``segment_image``) and of every video frame."""

    name = "itaclip"
    tasks = ("segment_image", "segment_video")
    consumes = Consumes.TEXT | Consumes.IMAGE | Consumes.VIDEO | Consumes.REGION | Consumes.SIGNAL
    packages = ("itaclip",)
    extra = "specialists"
    hub_weights = "open_clip ViT-B-16-quickgelu / openai (OpenAI CLIP ViT-B/16)"
    Options = SegmentationOptions

    def load(self) -> None:
        from itaclip import Segmenter

        opts = self.options
        self.segmenter = Segmenter.from_pretrained(
            opts.model, opts.pretrained, preset=opts.preset, device=self.device,
            cache_dir=opts.cache_dir, **opts.settings,
        )  # fmt: skip

    def offloadable(self) -> list[Any]:
        return [self.segmenter]

    def segment(
        self, image: Image.Image, text: str, classes: Sequence[str] | None, signal: Tensor | None
    ):
        """(H, W) bool mask of ``text``, (H, W) labels, class names."""
        from itaclip.io import to_rgb_tensor
        from itaclip.postprocess import query_logits_to_classes

        seg = self.segmenter
        names = competing_classes(
            text, classes if classes is not None else self.options.background_classes
        )
        parsed, features = seg.text_features(names)
        if signal is not None and self.options.signal_weight > 0:
            if signal.shape != features.shape[1:]:
                raise SpecialistError(
                    f"the signal embedding has shape {tuple(signal.shape)} but itaclip's text "
                    f"features are {features.shape[1]} wide; set the model's signal output_dims"
                )
            target = parsed.query_class.to(features.device) == 0
            mixed = features[target] + self.options.signal_weight * F.normalize(
                signal.to(features), dim=-1
            )
            features = features.clone()
            features[target] = F.normalize(mixed, dim=-1)
        pixels = to_rgb_tensor(image)  # (3, H, W)
        work = enlarged(pixels, minimum_side(seg))  # a tiny image: bigger, its mask at (H, W)
        seg.check_image_size(work)
        size = None if work is pixels else (image.height, image.width)
        logits = seg.query_logits(work, features, output_size=size)  # (Q, H, W)
        cfg = seg.config
        labels, _ = query_logits_to_classes(
            logits,
            parsed.segments(),
            cfg.logit_scale,
            cfg.prob_thd,
            cfg.area_thd,
            None,
            closing=cfg.faithful,
        )
        return labels == 0, labels, parsed.names

    def execute(self, inputs: CallInputs) -> SpecialistOutput:
        args = inputs.args
        classes = args.get("classes")
        if inputs.task == "segment_video":
            return self._video(inputs, args["video"], args["text"], args.get("region"))
        image: Image.Image = args["image"]
        mask, labels, names = self.segment(image, args["text"], classes, inputs.signal)
        if "region" in args:
            mask &= region_mask_at(args["region"], image.height, image.width)
        overlay = overlay_mask(image, mask)
        mask_path = save_image(mask_to_pil(mask), inputs.file("mask", ".png"))
        overlay_path = save_image(overlay, inputs.file("overlay", ".png"))
        share = 100.0 * float(mask.float().mean())
        where = _bbox_text(mask)
        return SpecialistOutput(
            {
                "mask": Artifact("mask", mask, mask_path),
                "overlay": Artifact("image", overlay, overlay_path),
                "labels": Artifact("labels", labels),
            },
            f"mask of {args['text']!r} covers {share:.1f}% of the image{where} "
            f"(classes: {', '.join(names)})",
        )

    def _video(
        self, inputs: CallInputs, frames: Sequence[Image.Image], text: str, region=None
    ) -> SpecialistOutput:
        masks = [self.segment(frame, text, None, inputs.signal)[0] for frame in frames]
        if region is not None:  # track: the region on frame 0, then the previous mask's box
            first = frames[0]
            allowed = region_mask_at(region, first.height, first.width)
            for t, mask in enumerate(masks):
                if tuple(mask.shape) != tuple(allowed.shape):
                    raise SpecialistError(
                        f"frame {t} is {mask.shape[1]}x{mask.shape[0]}, but the region's frame "
                        f"is {allowed.shape[1]}x{allowed.shape[0]}"
                    )
                masks[t] = mask & allowed
                grown = grown_box(masks[t], self.options.track_margin)
                allowed = allowed if grown is None else grown  # lost: keep the last area
        overlays = [overlay_mask(f, m) for f, m in zip(frames, masks, strict=True)]
        overlay_path = save_gif(overlays, inputs.file("overlay", ".gif"))
        masks_path = save_gif(
            [mask_to_pil(m).convert("RGB") for m in masks], inputs.file("masks", ".gif")
        )
        share = 100.0 * float(torch.stack(masks).float().mean())
        return SpecialistOutput(
            {
                "masks": Artifact("video", masks, masks_path),
                "overlay": Artifact("video", overlays, overlay_path),
            },
            f"masks of {text!r} in {len(frames)} frames cover {share:.1f}% "
            f"of the pixels on average{' (tracked from the region)' if region is not None else ''}",
        )

    def conditioning_target(self, task: str, text: str) -> Tensor:
        with self.active():
            return self.segmenter.embed([text])[0].float().cpu()


def _bbox_text(mask: Tensor) -> str:
    if not bool(mask.any()):
        return " (empty)"
    rows = torch.nonzero(mask.any(1))[:, 0]
    cols = torch.nonzero(mask.any(0))[:, 0]
    x1, x2 = int(cols.min()), int(cols.max()) + 1
    y1, y2 = int(rows.min()), int(rows.max()) + 1
    return f", box x {x1}-{x2}, y {y1}-{y2}"
