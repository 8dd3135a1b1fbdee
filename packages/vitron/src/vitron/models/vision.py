"""The CLIP vision tower (transformers or open_clip) and its patch features at a chosen layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vitron.models.config import OPENAI_MEAN, OPENAI_STD, VisionConfig
from vitron.models.sources import check_open_clip_source, pretrained_source


class VisionTower(nn.Module):
    """Patch features of a CLIP ViT at ``config.select_layer`` (class token dropped).

    Args:
        config: the tower's architecture and feature choice.
        model: the loaded backend model (a ``CLIPVisionModel`` or an open_clip ``visual``);
            ``None`` builds one from ``config`` with random weights.
    """

    def __init__(self, config: VisionConfig, model: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        if config.backend == "transformers":
            from transformers import CLIPVisionConfig, CLIPVisionModel

            self.model = (
                CLIPVisionModel(CLIPVisionConfig(**config.model_config)) if model is None else model
            )
            self.hidden_size = self.model.config.hidden_size
            self.num_layers = self.model.config.num_hidden_layers
        else:
            self.model = _open_clip_visual(config.model_config) if model is None else model
            self.hidden_size = int(config.model_config["vision_cfg"]["width"])
            self.num_layers = len(self.model.transformer.resblocks)
        if not -self.num_layers <= config.select_layer <= self.num_layers:
            raise ValueError(
                f"select_layer must be in [-{self.num_layers}, {self.num_layers}] for this "
                f"{self.num_layers}-block tower, got {config.select_layer}"
            )

    @property
    def block_index(self) -> int:
        """0-based index of the block whose output is used."""
        layer = self.config.select_layer
        return self.num_layers + layer if layer < 0 else layer - 1

    def forward(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) normalised pixels -> (B, grid * grid, C) patch features."""
        if self.config.backend == "transformers":
            out = self.model(pixel_values=pixels, output_hidden_states=True)
            # hidden_states[0] is the embedding output, [k + 1] the output of block k
            return out.hidden_states[self.block_index + 1][:, 1:]
        out = self.model.forward_intermediates(
            pixels, indices=[self.block_index], intermediates_only=True, output_fmt="NLC"
        )
        return out["image_intermediates"][0]  # (B, grid * grid, C)

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        select_layer: int = -2,
        preprocess: str = "pad",
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> VisionTower:
        """Load pretrained CLIP vision weights (the loaded model is wrapped, not copied).

        The repository's loader rule comes first (:mod:`vitron.models.sources`): a missing
        folder is a ``FileNotFoundError`` naming it, an unreachable hub a ``HubUnreachableError``
        within 5 s.

        Args:
            name: a transformers CLIP id or folder (``"openai/clip-vit-large-patch14"``), or
                ``"open_clip:<name>/<pretrained tag>"`` / ``"open_clip:hf-hub:org/repo"`` /
                ``"open_clip:local-dir:/path"``.
            select_layer: see :class:`VisionConfig`.
            preprocess: see :class:`VisionConfig`.
            dtype: weights dtype (default: torch's default, float32). transformers loads
                straight into it; open_clip builds its model in float32 first.
            **kwargs: passed to ``CLIPVisionModel.from_pretrained`` (e.g. ``device_map``).
        """
        dtype = dtype or torch.get_default_dtype()
        if name.startswith("open_clip:"):
            spec = name.removeprefix("open_clip:")
            check_open_clip_source(spec)
            return cls._from_open_clip(spec, select_layer, preprocess).to(dtype)
        from transformers import CLIPVisionModel

        name = pretrained_source(name, "vision", "CLIP vision folder")
        model = CLIPVisionModel.from_pretrained(name, dtype=dtype, **kwargs)
        mean, std = _transformers_norm(name)
        config = VisionConfig(
            "transformers", model.config.to_dict(), select_layer, preprocess, mean, std
        )
        return cls(config, model)

    @classmethod
    def _from_open_clip(cls, spec: str, select_layer: int, preprocess: str) -> VisionTower:
        import open_clip

        if spec.startswith(("hf-hub:", "local-dir:")):
            model_name, pretrained = spec, None
        else:
            model_name, _, pretrained = spec.partition("/")
        model = open_clip.create_model(model_name, pretrained=pretrained or None)
        model_cfg = _open_clip_config(model_name)
        pre = getattr(model.visual, "preprocess_cfg", {}) or {}
        config = VisionConfig(
            "open_clip", model_cfg, select_layer, preprocess,
            tuple(pre.get("mean", OPENAI_MEAN)), tuple(pre.get("std", OPENAI_STD)),
        )  # fmt: skip
        tower = cls(config)
        tower.model.load_state_dict(model.visual.state_dict())
        return tower


def _open_clip_visual(model_cfg: dict[str, Any]) -> nn.Module:
    """The ViT image tower of an open_clip model config (text tower discarded)."""
    import open_clip

    vision_cfg = model_cfg.get("vision_cfg", {})
    if "timm_model_name" in vision_cfg or isinstance(vision_cfg.get("layers"), (list, tuple)):
        raise ValueError("only open_clip ViT towers are supported (not timm or ResNet towers)")
    clip = open_clip.CLIP(
        embed_dim=model_cfg["embed_dim"],
        vision_cfg=vision_cfg,
        text_cfg=model_cfg["text_cfg"],
        quick_gelu=model_cfg.get("quick_gelu", False),
    )
    return clip.visual


def _open_clip_config(model_name: str) -> dict[str, Any]:
    """The model config dict of an open_clip name, ``hf-hub:`` repo or ``local-dir:`` folder."""
    import open_clip

    if model_name.startswith("local-dir:"):
        data = json.loads((Path(model_name[10:]) / "open_clip_config.json").read_text())
        return data["model_cfg"]
    if model_name.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(model_name[7:], "open_clip_config.json")
        return json.loads(Path(path).read_text())["model_cfg"]
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise ValueError(f"unknown open_clip model {model_name!r}")
    return config


def _transformers_norm(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Image mean/std from the checkpoint's preprocessor config, else OpenAI CLIP's."""
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(name)
        return tuple(processor.image_mean), tuple(processor.image_std)
    except (OSError, ValueError, AttributeError):
        return OPENAI_MEAN, OPENAI_STD


def patch_grid_pool(features: Tensor, grid: int, factor: int) -> Tensor:
    """(N, grid * grid, C) -> (N, (grid / factor)^2, C) by average pooling of the patch grid."""
    if factor == 1:
        return features
    n, _, c = features.shape
    maps = features.transpose(1, 2).reshape(n, c, grid, grid)  # (N, C, g, g)
    pooled = nn.functional.avg_pool2d(maps, factor)  # (N, C, g / f, g / f)
    return pooled.flatten(2).transpose(1, 2)  # (N, (g / f)^2, C)
