"""Inference settings (``SegmenterConfig``) and their checks.

Every check raises ``InvalidArgument`` naming the argument it refuses and the accepted range; the
command line prints it with its flag (``itaclip.cli.FLAGS``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from common_kernels.runtime.errors import InvalidValue, literal
from itaclip.models import ITACLIPEncoderConfig
from itaclip.presets import check_preset

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
AUX_KINDS = ("definition", "synonym")


def check_settings(settings: Mapping[str, Any]) -> None:
    """Each inference setting in its range (``SegmenterConfig`` fields, all of them given).

    Args:
        settings: field -> value, every field of ``SegmenterConfig``.

    Raises:
        InvalidArgument: the first setting out of range, named, and the range.
    """
    for name in ("crop", "batch_size", "pamr_chunk", "max_long_side"):
        value = settings[name]
        if value is not None and int(value) < 1:
            raise InvalidValue(name, f"{{{name}}} must be >= 1, got {value}")
    crop, stride = settings["crop"], settings["stride"]
    if not 1 <= stride <= crop:
        raise InvalidValue(
            "stride",
            f"{{stride}} must be in [1, crop] = [1, {crop}] px (a larger stride "
            f"leaves pixels that no window covers), got {stride}",
        )
    short_side, max_long = settings["short_side"], settings["max_long_side"]
    if short_side is not None and not short_side >= 1:
        raise InvalidValue(
            "short_side", f"{{short_side}} must be >= 1 px or None (no resize), got {short_side}"
        )
    if short_side is not None and short_side > max_long:
        # the long side is capped first: a larger short side resizes no image further
        raise InvalidValue(
            "short_side",
            f"{{short_side}} must be <= max_long_side = {max_long} px (the resized long side is "
            f"capped there, so a larger short side changes nothing), got {short_side}",
        )
    for name in ("lam", "alpha", "prob_thd"):
        if not 0.0 <= settings[name] <= 1.0:  # also rejects NaN
            raise InvalidValue(name, f"{{{name}}} must be in [0, 1], got {settings[name]}")
    if not settings["logit_scale"] > 0:
        raise InvalidValue(
            "logit_scale", f"{{logit_scale}} must be > 0, got {settings['logit_scale']}"
        )
    area_thd = settings["area_thd"]
    if area_thd is not None and not 0.0 <= area_thd <= 1.0:
        raise InvalidValue("area_thd", f"{{area_thd}} must be in [0, 1] or None, got {area_thd}")
    iterations = settings["pamr_iterations"]
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise InvalidValue(
            "pamr_iterations",
            f"{{pamr_iterations}} must be an integer >= 0, got {literal(repr(iterations))}",
        )
    if settings["aux"] not in AUX_KINDS:
        raise InvalidValue(
            "aux",
            f"{{aux}} must be 'definition' or 'synonym', got {literal(repr(settings['aux']))}",
        )
    if settings["precision"] not in ("auto", *PRECISIONS):
        raise InvalidValue(
            "precision",
            "{precision} must be 'auto', 'fp32', 'fp16' or 'bf16', got "
            + literal(repr(settings["precision"])),
        )


@dataclass
class SegmenterConfig:
    """Inference settings; ``SegmenterConfig.from_preset("voc21")`` gives the official ones.

    Args:
        short_side: resize target of the image's short side in px, in [1, max_long_side]
            (``None`` = no resize).
        max_long_side: upper bound of the resized long side in px.
        crop: sliding-window size in px.
        stride: sliding-window step in px, in ``[1, crop]``.
        lam: weight of the first image-engineering category.
        img_engineering: encode the five crop variants (original, gray, blur and two flips);
            ``False`` (the official switch off) encodes the original crop only, and ``lam``
            plays no part.
        alpha: weight of the auxiliary text in the query features.
        aux: auxiliary text kind of the preset's dataset, ``"definition"`` or ``"synonym"``.
        logit_scale: softmax temperature over the queries, > 0.
        prob_thd: pixels with a lower max class probability become background; in [0, 1].
        area_thd: area threshold (share of the non-background area) in [0, 1], ``None`` = off.
        pamr: run PAMR on the query logits.
        pamr_iterations: PAMR steps, an integer >= 0.
        pamr_dilations: PAMR neighbourhood dilations in px.
        pamr_chunk: query channels refined at a time.
        batch_size: images per ViT forward pass; ``batch_size // 5`` crops (x 5 variants) go
            through together, so multiples of 5 fill every pass. ``None``: 20 on a GPU, 5 on
            the CPU (one crop per pass: larger CPU batches spill the caches and ran 15% slower
            on ViT-B/16 here).
        faithful: reproduce the official quirks (gray/blur on normalised crops, 3x3 closing).
        precision: ``"auto"`` (fp16 on CUDA, fp32 on CPU), ``"fp32"``, ``"fp16"``, ``"bf16"``.
        encoder: image-encoder settings (intermediate layers, attention backend).
        allow_large: segment even when an image's memory estimate (``itaclip.memory``: the
            ViT pass, the windows, the output maps) exceeds the memory available.
    """

    short_side: int | None = 336
    max_long_side: int = 2048
    crop: int = 224
    stride: int = 28
    lam: float = 0.75
    img_engineering: bool = True
    alpha: float = 0.15
    aux: str = "definition"
    logit_scale: float = 50.0
    prob_thd: float = 0.0
    area_thd: float | None = None
    pamr: bool = True
    pamr_iterations: int = 10
    pamr_dilations: tuple[int, ...] = (8, 16)
    pamr_chunk: int = 8
    batch_size: int | None = None
    faithful: bool = False
    precision: str = "auto"
    encoder: ITACLIPEncoderConfig | None = None
    allow_large: bool = False

    def __post_init__(self) -> None:
        check_settings(vars(self))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SegmenterConfig:
        """The official settings of dataset ``name`` (see ``itaclip.PRESETS``), then overrides."""
        check_preset(name)
        return make_config(name, **overrides)


def make_config(preset: str | None = None, **overrides: Any) -> SegmenterConfig:
    """The settings of ``preset`` (or the defaults) with ``overrides``, checked before use.

    Args:
        preset: a dataset preset (``itaclip.PRESETS``), or ``None`` for the defaults.
        **overrides: ``SegmenterConfig`` fields replacing the preset's.

    Raises:
        KeyError: an unknown preset.
        TypeError: an override that is no ``SegmenterConfig`` field.
        InvalidArgument: a setting out of range, named.
    """
    settings = {field.name: field.default for field in dataclasses.fields(SegmenterConfig)}
    if preset is not None:
        official = check_preset(preset)
        settings.update({key: getattr(official, key) for key in vars(official)})
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise TypeError(f"unknown SegmenterConfig settings: {', '.join(unknown)}")
    settings.update(overrides)
    check_settings(settings)
    return SegmenterConfig(**settings)
