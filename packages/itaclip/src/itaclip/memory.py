"""Memory estimates of a segmentation, checked before any work.

Three parts of one image's segmentation grow with the settings, and each is refused, naming the
setting, the estimate and the memory available, when the image's total does not fit:

- the ViT pass (``batch_size``): ``min(batch_size // V, windows) * V`` crop images at once
  (``V`` = 5 variants, or 1 without image engineering), with their tokens' activations and the
  self-self attention maps of the fused blocks;
- the sliding windows (``short_side``, ``stride``): the token-grid logits of every window of
  every query, kept until they are stitched, and the stitching's matrices and product;
- the output maps (``output_size``, else the image's size): the query logits, PAMR's affinities
  and working copies, the class probabilities, the labels and the overlay at the output size.

Time is bounded by the sliding windows of one image (``check_windows``: at most
``MAX_WINDOWS``); the progress shows the windows of an image that takes longer than 10 s.

``Segmenter.check_inputs`` checks each image of a call with the loaded tower's shape;
``itaclip.segmenter.check_plan_memory`` checks the images of a run before the model loads, with
the tower's shape read from its open_clip config. ``allow_large`` (a ``SegmenterConfig`` field)
skips the check. The estimates count fp32 tensors (autocast halves part of the ViT pass) and
were checked against the peak RSS of ``itaclip segment`` (README, Checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from common_kernels.runtime.errors import InvalidValue, literal
from common_kernels.runtime.memory import available_bytes
from itaclip.models import default_mid_layers

FLOAT = 4  # bytes of an fp32 value
# per token of one crop image in one block: the residual, ln, qkv (3), attention output and MLP
# hidden and activation (4 + 4) widths, plus q and k kept for each fused block
BLOCK_WIDTHS = 14
# per output px: PAMR's affinity (18 shifted samples of the 3-channel guide stacked, 16
# differences stacked, their mean and softmax), the guide's copies, the labels (int64, twice)
# and the overlay (uint8 and fp32 RGB)
PIXEL_BYTES = 512
# fp32 maps per query at the output size: the stitched logits, PAMR's float copy, its
# chunks' results and their concatenation, the scaled logits and their softmax
QUERY_MAPS = 6
CLASS_MAPS = 2  # fp32 maps per class: the probabilities and the thresholds' copy
# windows of one image: the time bound. The largest resize at the presets' stride (2048x2048 px,
# stride 28) makes 4,489 (2.8 h of ViT-B/16 on a 2-core CPU at 0.44 s per crop image, README);
# 16x that would take 40 h there
MAX_WINDOWS = 65_536


@dataclass(frozen=True)
class VisionShape:
    """What the memory of a ViT pass depends on.

    Args:
        patch: patch size in px (square patches).
        width: token width.
        heads: attention heads.
        fused: intermediate blocks whose self-self maps are fused into the last one.
    """

    patch: int
    width: int
    heads: int
    fused: int

    @classmethod
    def from_config(cls, vision_cfg: Mapping[str, Any], mid_layers: Any = None) -> VisionShape:
        """The shape of an open_clip ``vision_cfg`` (``patch_size``, ``width``, ``head_width``,
        ``layers``); ``mid_layers`` as in ``ITACLIPEncoderConfig`` (None: the default)."""
        patch = vision_cfg.get("patch_size", 16)
        patch = patch if isinstance(patch, int) else max(patch)
        width = int(vision_cfg.get("width", 768))
        heads = max(1, width // int(vision_cfg.get("head_width", 64)))
        layers = vision_cfg.get("layers", 12)
        fused = default_mid_layers(layers) if mid_layers is None else mid_layers
        return cls(patch, width, heads, len(fused))

    @classmethod
    def from_encoder(cls, encoder: Any) -> VisionShape:
        """The shape of a loaded ``ITACLIPVisionEncoder``."""
        first = encoder.visual.transformer.resblocks[0]
        return cls(
            max(encoder.patch_size),
            first.attn.embed_dim,
            first.attn.num_heads,
            len(encoder.mid_layers),
        )


@dataclass(frozen=True)
class MemoryPart:
    """One part of an image's estimate.

    Args:
        what: the settings that set it and what they make (``{name}`` for arguments).
        nbytes: the estimated bytes.
        remedy: what lowers it.
    """

    what: str
    nbytes: int
    remedy: str


def windows_per_axis(size: int, crop: int, stride: int) -> int:
    """Windows along one axis (``common_kernels.tile_grid``'s count)."""
    return max(size - crop + stride - 1, 0) // stride + 1


def image_parts(
    resized: tuple[int, int],
    output: tuple[int, int] | None,
    config: Any,
    batch_size: int,
    vision: VisionShape,
    queries: int,
    classes: int,
    output_what: str,
) -> list[MemoryPart]:
    """The three parts of one image's estimate.

    Args:
        resized: (H', W') of the resized image the windows slide over.
        output: (H_out, W_out) of the output maps; None leaves that part out.
        config: the ``SegmenterConfig``.
        batch_size: images per ViT pass (the device's default resolved).
        vision: the tower's shape.
        queries: queries (every name of every class).
        classes: classes.
        output_what: the output size in words (``{output_size} 480x640``).
    """
    (height, width), crop, stride = resized, config.crop, config.stride
    rows, cols = windows_per_axis(height, crop, stride), windows_per_axis(width, crop, stride)
    windows = rows * cols
    tokens_h, tokens_w = min(crop, height) // vision.patch, min(crop, width) // vision.patch
    tokens = tokens_h * tokens_w + 1
    variants = 5 if config.img_engineering else 1
    per_image = FLOAT * tokens * (
        BLOCK_WIDTHS * vision.width + 2 * vision.fused * vision.width
    ) + FLOAT * vision.heads * tokens**2 * (vision.fused + 3)  # the fused maps, A_last's two
    images = min(max(1, batch_size // variants), windows) * variants
    grid_h, grid_w = rows * tokens_h, cols * tokens_w
    out_h, out_w = output if output is not None else resized
    stitch = queries * min(grid_h * out_w, out_h * grid_w) + 2 * (out_h * grid_h + out_w * grid_w)
    parts = [
        MemoryPart(
            f"{{batch_size}} {batch_size}: {images:,} crop images per ViT pass",
            images * per_image,
            "a smaller {batch_size}",
        ),
        MemoryPart(
            f"{{short_side}} {config.short_side} and {{stride}} {stride}: {windows:,} windows "
            f"({rows}x{cols} on the {height}x{width} px resized image) of {queries} queries",
            FLOAT * (queries * grid_h * grid_w + stitch),
            "a smaller {short_side} or a larger {stride}",
        ),
    ]
    if output is not None:
        pixels = output[0] * output[1]
        maps = QUERY_MAPS * queries + CLASS_MAPS * classes + 2 * config.pamr_chunk
        parts.append(
            MemoryPart(
                f"{output_what}: {queries} query and {classes} class maps of "
                f"{output[0]}x{output[1]} px",
                pixels * (PIXEL_BYTES + FLOAT * maps),
                f"a smaller {output_what.split()[0]}",
            )
        )
    return parts


def check_windows(resized: tuple[int, int], config: Any, image: str) -> None:
    """Fail when one image makes more than ``MAX_WINDOWS`` sliding windows (the time bound).

    Args:
        resized: (H', W') of the resized image.
        config: the ``SegmenterConfig``.
        image: the image in words (``photo.jpg (321x481 px)``).

    Raises:
        InvalidValue: naming ``short_side`` and ``stride``, the windows and the limit.
    """
    rows = windows_per_axis(resized[0], config.crop, config.stride)
    cols = windows_per_axis(resized[1], config.crop, config.stride)
    if config.allow_large or rows * cols <= MAX_WINDOWS:
        return
    variants = 5 if config.img_engineering else 1
    raise InvalidValue(
        "short_side",
        f"{{short_side}} {config.short_side} and {{stride}} {config.stride}: {literal(image)} "
        f"makes {rows * cols:,} windows ({rows}x{cols} on the {resized[0]}x{resized[1]} px "
        f"resized image, {variants * rows * cols:,} ViT crop images), more than the "
        f"{MAX_WINDOWS:,} allowed per image (16x the 4,489 of a 2048x2048 px resize at stride "
        "28); give a smaller {short_side} or a larger {stride}, or {allow_large=True} to run "
        "anyway",
    )


def gib(count: int) -> str:
    """Bytes as GiB with two decimals."""
    return f"{count / 2**30:,.2f} GiB"


def check_parts(
    parts: list[MemoryPart], device: torch.device, image: str, available: int | None = None
) -> None:
    """Fail when the parts' total exceeds the memory available on ``device``, naming the
    largest part's settings, the estimate and the limit.

    Args:
        parts: one image's estimate (``image_parts``).
        device: where the segmentation runs.
        image: the image in words (``photo.jpg (321x481 px)``).
        available: the bytes available (None: ``available_bytes(device)``).

    Raises:
        InvalidValue: naming the largest part's settings (its first argument is the error's).
    """
    available = available_bytes(device) if available is None else available
    total = sum(part.nbytes for part in parts)
    if available is None or total <= available:
        return
    largest = max(parts, key=lambda part: part.nbytes)
    argument = largest.what[1 : largest.what.index("}")]
    raise InvalidValue(
        argument,
        f"{largest.what}: segmenting {literal(image)} needs an estimated {gib(total)} "
        f"({total:,} bytes; this part {gib(largest.nbytes)}), more than the {gib(available)} "
        f"available on {device}; give {largest.remedy}, or {{allow_large=True}} to run anyway",
    )
