"""Diffusion transformers (DiT): PixArt's ``PixArtTransformer2DModel`` as a backbone.

The catalogue follows the U-Net's naming (execution order):

* ``dit-in`` (the noisy latent fed to the transformer), ``dit-after-patch-embed`` (the patch
  embedding plus positional embedding, as a (B, C, h/p, w/p) map);
* per transformer block ``k``: ``dit-block{k}-{self-q|self-k|self-v|self-map|cross-q|cross-map|
  ffn-inner|out}`` (q/k/v right after ``to_q``/``to_k``/``to_v``; maps ``(B, heads * keys, h,
  w)``; ``ffn-inner`` the GELU output, 4C wide; ``out`` the block output);
* ``dit-out``: the transformer output after unpatchifying, (B, out_channels, h, w) (PixArt:
  noise and variance, 8 channels).

Token grids are the patch grid (h / patch, w / patch) of the actual input, so non-square inputs
work. Cross-attention keys are the T5 tokens (``max_sequence_length``, 300 for PixArt-Sigma).
A model folder holds ``transformer/``, ``vae/``, ``scheduler/`` and ``text_encoder/`` (T5) +
``tokenizer/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diffeat.backbones.base import TransformerBackbone
from diffeat.capture import ActivationRecorder
from diffeat.catalogue import LayerInfo, LayerSpec, block_specs, require_attributes
from diffeat.shapes import check_image_size, recorded_infos

DIT_TOKENS = 300  # PixArt-Sigma's max_sequence_length (T5 tokens), used without a tokenizer


class DiTBackbone(TransformerBackbone):
    """diffusers ``PixArtTransformer2DModel`` transformers (PixArt-Sigma, PixArt-alpha; saved
    by older diffusers as ``Transformer2DModel``)."""

    name = "dit"
    title = "PixArt"
    class_names = ("PixArtTransformer2DModel", "Transformer2DModel")
    text_encoders = ("T5EncoderModel",)
    text_tokens = DIT_TOKENS
    prefix = "dit-"
    patch_size = 1

    def catalogue(self, network: nn.Module) -> list[LayerSpec]:
        return build_dit_catalogue(network)

    def layer_infos(
        self, config: Mapping[str, Any], size: tuple[int, int], text_tokens: int, vae_scale: int
    ) -> list[LayerInfo]:
        return dit_layer_infos(config, size, text_tokens, vae_scale)

    def load(
        self, model: str, dtype: torch.dtype, text_stack: bool = True, **load: Any
    ) -> dict[str, Any]:
        """``transformer``, ``vae``, ``scheduler`` and (``text_stack``) ``tokenizer`` and
        ``text_encoder`` (T5; the real PixArt tokenizer needs ``diffeat[t5]``): one of each, as
        the DiT extractor takes them."""
        parts = super().load(model, dtype, text_stack, **load)
        if text_stack:
            (parts["tokenizer"],) = parts.pop("tokenizers")
            (parts["text_encoder"],) = parts.pop("text_encoders")
        return parts


def _check_dit(transformer: nn.Module) -> None:
    from diffusers.models.attention import BasicTransformerBlock

    reads = "PixArtTransformer2DModel transformers (PixArt-Sigma / PixArt-alpha)"
    require_attributes(
        transformer, ("pos_embed", "transformer_blocks", "proj_out"), "transformer", reads
    )
    for k, block in enumerate(transformer.transformer_blocks):
        if not isinstance(block, BasicTransformerBlock):
            raise ValueError(
                f"transformer_blocks.{k}: {type(block).__name__} is not supported (PixArt "
                "BasicTransformerBlocks; SD3-style MMDiT joint blocks are not)"
            )


def build_dit_catalogue(transformer: nn.Module) -> list[LayerSpec]:
    """Every activation of a PixArt-style transformer, in execution order.

    Args:
        transformer: a diffusers ``PixArtTransformer2DModel`` (real, random or ``meta``).

    Returns:
        The catalogue entries (PixArt-Sigma, 28 blocks: ``3 + 8 * 28 = 227``).
    """
    _check_dit(transformer)
    specs = [
        LayerSpec("dit-in", "unet-in", "", "dit"),
        LayerSpec("dit-after-patch-embed", "patch-embed", "pos_embed", "dit"),
    ]
    for k, block in enumerate(transformer.transformer_blocks):
        path = f"transformer_blocks.{k}"
        kinds = [("self-q", "attn1"), ("self-k", "attn1"), ("self-v", "attn1")]
        kinds.append(("self-map", "attn1"))
        if block.attn2 is not None:
            kinds += [("cross-q", "attn2"), ("cross-map", "attn2")]
        kinds += [("ffn-inner", "ff.net.0"), ("block-out", "")]
        specs += block_specs("dit", k, path, kinds)
    specs.append(LayerSpec("dit-out", "dit-out", "", "dit"))
    return specs


def _meta_dit(config: Mapping[str, Any]) -> nn.Module:
    from diffusers import PixArtTransformer2DModel

    with torch.device("meta"):
        return PixArtTransformer2DModel.from_config(dict(config)).eval()


def dit_kwargs(transformer: nn.Module, batch: int, size: tuple[int, int], device) -> dict:
    """``added_cond_kwargs`` as the PixArt pipelines pass them (resolution and aspect ratio
    only where the model uses additional conditions: PixArt-alpha at 1024 px)."""
    if not getattr(transformer, "use_additional_conditions", False):
        return {"resolution": None, "aspect_ratio": None}
    height, width = size
    resolution = torch.tensor([[height, width]], dtype=torch.float32, device=device)
    aspect = torch.tensor([[height / width]], dtype=torch.float32, device=device)
    return {"resolution": resolution.repeat(batch, 1), "aspect_ratio": aspect.repeat(batch, 1)}


def dit_layer_infos(
    transformer_or_config: nn.Module | Mapping[str, Any],
    image_size: int | tuple[int, int] | None = None,
    text_tokens: int = DIT_TOKENS,
    vae_scale: int = 8,
) -> list[LayerInfo]:
    """The DiT catalogue with feature shapes, from a shape-only pass on the ``meta`` device.

    Args:
        transformer_or_config: a ``PixArtTransformer2DModel`` (its config is used) or config.
        image_size: input size in pixels (default: ``sample_size * vae_scale``).
        text_tokens: T5 tokens per prompt.
        vae_scale: pixels per latent cell.
    """
    config = dict(getattr(transformer_or_config, "config", transformer_or_config))
    if image_size is None:
        image_size = config["sample_size"] * vae_scale
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    check_image_size(config, height, width, vae_scale * config.get("patch_size", 1), vae_scale)
    model = _meta_dit(config)
    catalogue = build_dit_catalogue(model)
    latent = torch.empty(
        1, config["in_channels"], height // vae_scale, width // vae_scale, device="meta"
    )
    context = torch.empty(1, text_tokens, config["caption_channels"], device="meta")
    return recorded_infos(
        ActivationRecorder,
        model,
        catalogue,
        latent,
        encoder_hidden_states=context,
        timestep=torch.zeros(1, device="meta"),
        added_cond_kwargs=dit_kwargs(model, 1, (height, width), "meta"),
        return_dict=False,
    )


DIT = DiTBackbone()
