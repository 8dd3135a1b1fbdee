"""The diffusion backbones diffeat reads, and which one a model is.

:data:`BACKBONES` lists them (:class:`~diffeat.backbones.unet.UNetBackbone`,
:class:`~diffeat.backbones.dit.DiTBackbone`, and the joint text-image transformers of
:mod:`~diffeat.backbones.mmdit`: FLUX and SD3); :func:`backbone_of` picks one from a network's
config (its diffusers ``_class_name``, else its shape) and :func:`backbone_of_model` from a
model folder or hub id (the classes its ``model_index.json`` names). A new backbone is one
module here with a :class:`~diffeat.backbones.base.Backbone` subclass, added to
:data:`BACKBONES`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffeat.backbones.base import Backbone
from diffeat.backbones.deepfloyd import IF, IFBackbone, is_if_index, is_if_unet
from diffeat.backbones.dit import DIT, DiTBackbone
from diffeat.backbones.hunyuan import HUNYUAN, HunyuanDiTBackbone
from diffeat.backbones.mmdit import FLUX, SD3, FluxBackbone, SD3Backbone
from diffeat.backbones.unet import UNET, UNetBackbone
from diffeat.catalogue import NAME_OWNERS

BACKBONES: tuple[Backbone, ...] = (UNET, DIT, FLUX, SD3, HUNYUAN, IF)
NAME_OWNERS[:] = BACKBONES  # catalogue.check_names names the backbone an unknown name is of


def backbone_of(config: Mapping[str, Any]) -> Backbone:
    """The backbone of a network's config: by its ``_class_name``, else by its keys (a U-Net
    has ``down_block_types``, FLUX ``num_single_layers``, HunyuanDiT ``text_len_t5``, SD3
    ``pos_embed_max_size`` and ``joint_attention_dim``; anything else is read as a PixArt DiT).

    Args:
        config: a network's config (``unet/config.json``, ``transformer/config.json``) or a
            network's ``.config``.
    """
    if is_if_unet(config):  # DeepFloyd IF: a UNet2DConditionModel on pixels, T5 text
        return IF
    name = config.get("_class_name")
    for backbone in BACKBONES:
        if name in backbone.class_names:
            return backbone
    if "down_block_types" in config:
        return UNET
    if "num_single_layers" in config:
        return FLUX
    if "text_len_t5" in config:  # HunyuanDiT's second (mT5) prompt length
        return HUNYUAN
    return SD3 if "pos_embed_max_size" in config and "joint_attention_dim" in config else DIT


def backbone_of_model(source: Path | str) -> Backbone:
    """The backbone of a checked model: the network its ``model_index.json`` names
    (``"unet": ["diffusers", "UNet2DConditionModel"]`` or ``"transformer": [...,
    "PixArtTransformer2DModel"]``). A U-Net when that cannot be told here (no such file, or a
    hub id whose file cannot be read: reading the U-Net's config then says what is wrong).

    Args:
        source: a model folder (a ``Path``) or hub id.
    """
    index = _model_index(source)
    if is_if_index(index):  # an IF pipeline's U-Net is a UNet2DConditionModel too
        return IF
    for backbone in BACKBONES:
        entry = index.get(backbone.subfolder)
        if isinstance(entry, list | tuple) and entry and entry[-1] in backbone.class_names:
            return backbone
    return UNET


def _model_index(source: Path | str) -> dict[str, Any]:
    """The ``model_index.json`` of a model ({} when it cannot be read)."""
    try:
        if isinstance(source, Path):
            return json.loads((source / "model_index.json").read_text(encoding="utf-8"))
        import diffusers

        return dict(diffusers.DiffusionPipeline.load_config(source))
    except (OSError, ValueError):
        return {}


__all__ = ["BACKBONES", "DIT", "FLUX", "HUNYUAN", "IF", "SD3", "UNET", "Backbone", "DiTBackbone",
           "FluxBackbone", "HunyuanDiTBackbone", "IFBackbone", "SD3Backbone", "UNetBackbone",
           "backbone_of", "backbone_of_model"]  # fmt: skip
