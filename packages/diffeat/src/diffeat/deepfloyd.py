"""IFFeatureExtractor: the activations of DeepFloyd IF stage I (``DeepFloyd/IF-I-L-v1.0``) as
features.

IF's U-Net is a diffusers ``UNet2DConditionModel`` working on pixels: no VAE. The image is
resized to the U-Net's size, mapped to [-1, 1] (what IF's pipelines feed it) and noised by
its DDPM scheduler at timestep t, ``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``; prompts go
through T5 as in ``IFPipeline.encode_prompt`` (77 tokens, lower-cased and stripped, without
its optional caption cleaning). The catalogue is the U-Net's naming (:mod:`diffeat.catalogue`);
``vae-out`` is the clean sample x0 (B, 3, H, W) in [-1, 1], what is then noised.

Not supported here (each raises): ``latent="mean"`` (no VAE posterior), ``faithful=True``,
``noising="ddim-inversion"`` (IF's U-Net also predicts a variance), LoRA, ControlNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffeat.backbones.deepfloyd import IF, IF_TOKENS, check_pixel_options, is_if_unet
from diffeat.catalogue import LayerSpec, build_catalogue
from diffeat.extraction import check_text_stack
from diffeat.extractor import FeatureExtractor
from diffeat.io import check_pixel_tensor
from diffeat.plan import ExtractorConfig, LoadPlan, adapterless_config, resolve_layers
from diffeat.presets import ALL
from diffeat.prompts import T5PromptEncoder

__all__ = ["IFFeatureExtractor"]


class IFFeatureExtractor(FeatureExtractor):
    """Activations of DeepFloyd IF stage I's pixel-space U-Net as (B, C, h, w) features.

    The U-Net extractor's steps with pixels in place of VAE latents (see the module). Image
    sides must be multiples of the U-Net's downsampling (x8 on IF-I); ``latents=`` takes clean
    samples (B, 3, H, W) in [-1, 1].

    Args:
        unet: an IF-style diffusers ``UNet2DConditionModel`` (``addition_embed_type="text"``,
            ``encoder_hid_dim``).
        scheduler: its DDPM scheduler (its ``alphas_cumprod`` is the noise schedule).
        tokenizer: the T5 tokenizer; None (with ``text_encoder=None``) for an extractor fed
            precomputed ``embeddings=`` only.
        text_encoder: the ``T5EncoderModel``, or None.
        config: :class:`ExtractorConfig`; None: every activation (the paper has no IF preset).
    """

    backbone = IF
    picks_backbone = False

    def __init__(
        self,
        unet: nn.Module,
        scheduler,
        tokenizer=None,
        text_encoder: nn.Module | None = None,
        config: ExtractorConfig | None = None,
    ):
        if not is_if_unet(unet.config):
            raise ValueError(
                "unet: not a DeepFloyd IF U-Net (IF's has addition_embed_type='text' and an "
                "encoder_hid_dim); use FeatureExtractor for SD-style U-Nets"
            )
        check_text_stack(tokenizer, text_encoder, "tokenizer/text_encoder")
        width = getattr(getattr(text_encoder, "config", None), "d_model", None)
        if text_encoder is not None and width != unet.config.encoder_hid_dim:
            raise ValueError(
                f"text_encoder: its width {width} does not match the U-Net's encoder_hid_dim "
                f"{unet.config.encoder_hid_dim} (IF-I: T5-XXL, 4096)"
            )
        self.unet = unet.eval()
        self.control_catalogue: list[LayerSpec] = []
        self.loras: dict[str, float] = {}
        self.fused_loras: list[str] = []
        self.vae = None
        self.scheduler = scheduler
        self.prompt_encoder = None
        if tokenizer is not None:
            self.prompt_encoder = T5PromptEncoder(tokenizer, text_encoder.eval(), IF_TOKENS)
        self.catalogue = build_catalogue(unet)
        self._text_time = False
        config = config or ExtractorConfig(layers=(ALL,))
        check_pixel_options(config.latent, config.noising)
        if config.faithful:
            raise ValueError(
                "faithful: the official code's path is restated for U-Nets only, not for "
                "DeepFloyd IF models"
            )
        self._configure(config)

    @classmethod
    def _from_components(
        cls, plan: LoadPlan, components: dict[str, Any], options: dict[str, Any]
    ) -> IFFeatureExtractor:
        """The extractor of loaded components, without FeatureExtractor's adapters."""
        return cls(config=adapterless_config(plan, options), **components)

    @classmethod
    def from_pipeline(
        cls, pipe, layers: Sequence[str] | str | None = None, preset: str | None = None, **options
    ) -> IFFeatureExtractor:
        """Wrap the components of a loaded diffusers ``IFPipeline`` (no copies); a pipeline
        without ``tokenizer``/``text_encoder`` gives an extractor fed ``embeddings=`` only."""
        if layers is None and preset is None:  # no IF preset: every activation
            layers = ALL
        names, preset = resolve_layers(pipe.unet.config, layers, preset)
        config = ExtractorConfig(layers=names, preset=preset, **options)
        return cls(pipe.unet, pipe.scheduler, pipe.tokenizer, pipe.text_encoder, config)

    # -- pixel space -------------------------------------------------------------------------
    @property
    def vae_scale(self) -> int:
        """1: the U-Net's input is the image itself."""
        return 1

    def vae_out_shape(self, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """(3, H, W): ``vae-out`` is the clean pixel sample."""
        return (int(self.unet.config.in_channels), *image_size)

    @torch.no_grad()
    def encode_images(self, pixels: Tensor, generator: torch.Generator) -> Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> the clean fp32 sample ``2 x - 1`` in [-1, 1] (IF's
        pipelines' input range); draws nothing from ``generator``."""
        check_pixel_tensor(pixels, "pixels")
        return pixels.float() * 2 - 1

    def _text_width(self) -> tuple[int, str]:
        return self.unet.config.encoder_hid_dim, "the U-Net's encoder_hid_dim (T5's width)"
