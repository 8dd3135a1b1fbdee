"""DiTFeatureExtractor: the activations of a PixArt-style diffusion transformer as features.

The backbone (catalogue, shapes, loading) is :mod:`diffeat.backbones.dit`; the steps every
backbone shares are :class:`diffeat.extraction.BaseFeatureExtractor`'s. Prompts go through one
T5 encoder padded to ``max_sequence_length`` tokens, the padding masked in cross-attention as
in diffusers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffeat.backbones.dit import DIT, DIT_TOKENS, build_dit_catalogue, dit_kwargs, dit_layer_infos
from diffeat.capture import ActivationRecorder
from diffeat.configs import ALPHA_TOKENS
from diffeat.extraction import BaseFeatureExtractor, check_text_stack
from diffeat.features import Features
from diffeat.plan import ExtractorConfig, LoadPlan, adapterless_config, resolve_layers
from diffeat.prompts import T5PromptEncoder

__all__ = [  # the backbone's functions, importable from here as before
    "DIT_TOKENS", "DiTFeatureExtractor", "build_dit_catalogue", "dit_layer_infos",
]  # fmt: skip


def _check_parts(transformer: nn.Module, vae: nn.Module, text_encoder: nn.Module | None) -> None:
    """Raise when the VAE or the T5 encoder does not fit the transformer."""
    config = transformer.config
    latent = vae.config.latent_channels
    if latent != config.in_channels:
        raise ValueError(
            f"vae: its {latent} latent channels do not match the transformer's in_channels "
            f"{config.in_channels}"
        )
    width = getattr(getattr(text_encoder, "config", None), "d_model", None)
    if text_encoder is not None and width != config.caption_channels:
        raise ValueError(
            f"text_encoder: its width {width} does not match the transformer's "
            f"caption_channels {config.caption_channels} (PixArt-Sigma: T5-XXL, 4096)"
        )


class DiTFeatureExtractor(BaseFeatureExtractor):
    """Activations of a PixArt-style diffusion transformer as (B, C, h, w) features.

    The steps of every extractor (VAE latent, exact noise at timestep t from a generator, one
    pass with early exit, ``vae-out``, ``requires_grad``), with the T5 text path: prompts are
    encoded by one T5 encoder padded to ``max_sequence_length`` tokens and the padding is
    masked in cross-attention; precomputed ``PromptEmbeddings(embeds, mask=...)`` work without
    a text stack. ``extractor.unet`` is the transformer (also ``extractor.transformer``).

    Not supported here (each raises): ``faithful=True`` (the official code's PixArt path is not
    restated), LoRA, ControlNet, SDXL-style size conditioning.

    Args:
        transformer: a diffusers ``PixArtTransformer2DModel``.
        vae: its ``AutoencoderKL`` (PixArt-Sigma: the SDXL VAE).
        scheduler: its scheduler (``alphas_cumprod`` is the noise schedule).
        tokenizer: the T5 tokenizer, or None (with ``text_encoder=None``).
        text_encoder: the ``T5EncoderModel``, or None.
        config: :class:`ExtractorConfig`; None: the ``diffeat-pixart-sigma`` preset.
        max_sequence_length: T5 tokens per prompt (PixArt-Sigma 300, PixArt-alpha 120).
    """

    backbone = DIT

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        scheduler,
        tokenizer=None,
        text_encoder: nn.Module | None = None,
        config: ExtractorConfig | None = None,
        *,
        max_sequence_length: int = DIT_TOKENS,
    ):
        self.unet = self.transformer = transformer.eval()
        self.vae = vae.eval()
        self.scheduler = scheduler
        check_text_stack(tokenizer, text_encoder, "tokenizer/text_encoder")
        if tokenizer is not None:
            self.prompt_encoder = T5PromptEncoder(
                tokenizer, text_encoder.eval(), max_sequence_length
            )
        self.max_sequence_length = max_sequence_length
        self.catalogue = build_dit_catalogue(transformer)
        self.control_catalogue: list = []
        _check_parts(transformer, vae, text_encoder)
        if config is not None and config.faithful:
            raise ValueError(
                "faithful: the official code's PixArt path is not restated by diffeat; use "
                "faithful=False for DiTs"
            )
        self._configure(config)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def _from_components(
        cls, plan: LoadPlan, components: dict[str, Any], options: dict[str, Any]
    ) -> DiTFeatureExtractor:
        """The DiT extractor of loaded components (``max_sequence_length`` from the options;
        the adapter options, checked to be unset or at their defaults, left out)."""
        length = options.pop("max_sequence_length", DIT_TOKENS)
        config = adapterless_config(plan, options)
        return cls(config=config, max_sequence_length=length, **components)

    @classmethod
    def from_pipeline(
        cls, pipe, layers: Sequence[str] | str | None = None, preset: str | None = None, **options
    ) -> DiTFeatureExtractor:
        """Wrap a loaded diffusers ``PixArtSigmaPipeline`` / ``PixArtAlphaPipeline`` (default
        ``max_sequence_length``: 300 / 120 T5 tokens, as the pipelines)."""
        names, preset = resolve_layers(pipe.transformer.config, layers, preset)
        alpha = type(pipe).__name__.startswith("PixArtAlpha")  # its prompts are 120 tokens
        length = options.pop("max_sequence_length", ALPHA_TOKENS if alpha else DIT_TOKENS)
        config = ExtractorConfig(layers=names, preset=preset, **options)
        return cls(
            pipe.transformer,
            pipe.vae,
            pipe.scheduler,
            pipe.tokenizer,
            pipe.text_encoder,
            config,
            max_sequence_length=length,
        )

    def load_lora(self, source, *args, **kwargs) -> str:
        raise ValueError("lora: LoRA loading is supported for U-Nets only, not for DiTs")

    def set_controlnet(self, controlnet, scale: float = 1.0, image=None) -> None:
        if controlnet is not None:
            raise ValueError("controlnet: ControlNets are supported for U-Nets only, not DiTs")

    # -- shapes ------------------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size)

    @property
    def text_tokens(self) -> int:
        """T5 tokens per prompt (``max_sequence_length``)."""
        return self.max_sequence_length

    # -- the pass ----------------------------------------------------------------------------
    def _text_width(self) -> tuple[int, str]:
        width = self.transformer.config.caption_channels
        return width, "the transformer's caption_channels, T5's width"

    def _run_models(
        self, sample, embeddings, image_size, names, original_size, target_size, full_output,
        control,
    ) -> tuple[Features, Tensor | None]:  # fmt: skip
        self._size_conditioning(original_size, target_size)  # DiTs take none: raises
        batch = sample.shape[0]
        self._check_embeddings(embeddings)
        embeddings = embeddings.expand(batch).to(self.device, self.dtype)
        timestep = torch.tensor(self.plan.timestep, device=self.device).expand(batch)
        kwargs = dit_kwargs(self.transformer, batch, tuple(image_size), self.device)

        def run():
            return self.transformer(
                sample.to(self.dtype),
                encoder_hidden_states=embeddings.embeds,
                encoder_attention_mask=embeddings.mask,
                timestep=timestep,
                added_cond_kwargs=kwargs,
                return_dict=False,
            )[0]

        if not names:
            return Features(), run()
        recorder = ActivationRecorder(
            self.transformer,
            names,
            self.catalogue,
            early_exit=self.config.early_exit and not full_output,
            output_device=self.config.output_device,
            detach=not self.config.requires_grad,
        )
        output = None
        with recorder:
            output = run()
        features = {name: recorder.features[name] for name in names}
        return Features(features, recorder.attention_heads()), output
