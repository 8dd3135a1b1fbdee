"""FluxFeatureExtractor and SD3FeatureExtractor: the activations of joint text-image diffusion
transformers (FLUX.1, SD3 / SD3.5) as features.

The backbones (catalogue, shapes, loading, recording) are :mod:`diffeat.backbones.mmdit`; the
steps every extractor shares (VAE latent, noise, one pass with early exit, ``vae-out``,
gradients) are :class:`diffeat.extraction.BaseFeatureExtractor`'s. These models are trained by
flow matching: a clean latent ``z`` is noised at an exact ``sigma`` as
``x_t = (1 - sigma) z + sigma eps`` (``eps`` from the caller's generator; ``sigma`` default
``timestep / 1000``), and the transformer gets the timestep ``1000 sigma`` (FLUX: ``sigma``,
which it multiplies by 1000 itself).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from diffeat.backbones.mmdit import (
    FLUX,
    FLUX_TOKENS,
    SD3,
    SD3_CLIP_TOKENS,
    SD3_T5_TOKENS,
    JointBackbone,
    JointRecorder,
    flux_image_ids,
    pack_latents,
    unpack_latents,
)
from diffeat.extraction import BaseFeatureExtractor, check_text_stack
from diffeat.features import Features
from diffeat.plan import ExtractorConfig, LoadPlan, adapterless_config, resolve_layers
from diffeat.prompts import FluxPromptEncoder, PromptEmbeddings, SD3PromptEncoder
from diffeat.schedule import is_flow_matching

OFFICIAL_GUIDANCE = 1.0  # the guidance the official code passes to FLUX (guidance_scale=1)


def _width(encoder: nn.Module | None, *keys: str) -> int | None:
    config = getattr(encoder, "config", None)
    for key in keys:
        if getattr(config, key, None) is not None:
            return int(getattr(config, key))
    return None


class _JointFeatureExtractor(BaseFeatureExtractor):
    """What the FLUX and SD3 extractors share (see the module)."""

    backbone: ClassVar[JointBackbone]
    default_length: ClassVar[int]

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        scheduler,
        tokenizers: Sequence | None = None,
        text_encoders: Sequence[nn.Module | None] | None = None,
        config: ExtractorConfig | None = None,
        *,
        max_sequence_length: int | None = None,
    ):
        self.backbone.catalogue(transformer)  # raises unless the class fits
        self.unet = self.transformer = transformer.eval()
        self.vae = vae.eval()
        self.scheduler = scheduler
        check_text_stack(tokenizers, text_encoders, "tokenizers/text_encoders")
        self.max_sequence_length = max_sequence_length or self.default_length
        if tokenizers is not None:
            encoders = [None if e is None else e.eval() for e in text_encoders]
            self.prompt_encoder = self._prompt_encoder(list(tokenizers), encoders)
        self.catalogue = self.backbone.catalogue(transformer)
        self.control_catalogue: list = []
        if not is_flow_matching(scheduler):
            raise ValueError(
                f"scheduler: {type(scheduler).__name__} is not a flow-matching scheduler; "
                f"{self.backbone.title} models are noised by flow matching "
                "(FlowMatchEulerDiscreteScheduler)"
            )
        self._check_parts(text_encoders or [])
        guided = self.transformer.config.get("guidance_embeds", False)
        if config is not None and config.guidance_scale is not None and not guided:
            raise ValueError(
                "guidance_scale: applies to FLUX transformers with a guidance embedding "
                f"(FLUX.1-dev) only; this {self.backbone.title} transformer has none"
            )
        if config is not None and config.faithful:
            raise ValueError(
                f"faithful: the official code's path is restated for U-Nets only, not for "
                f"{self.backbone.title} models"
            )
        self._configure(config)

    @abc.abstractmethod
    def _prompt_encoder(self, tokenizers: list, encoders: list):
        """The family's prompt encoder over its tokenizers and text encoders."""

    def _check_parts(self, text_encoders: Sequence[nn.Module | None]) -> None:
        """Raise when the VAE or a text encoder does not fit the transformer."""
        config = self.transformer.config
        latent = self.vae.config.latent_channels
        if latent != self.latent_channels:
            raise ValueError(
                f"vae: its {latent} latent channels do not fit the transformer (it takes "
                f"{self.latent_channels}-channel latents; in_channels {config.in_channels})"
            )
        t5 = _width(text_encoders[-1] if text_encoders else None, "d_model")
        if t5 is not None and t5 != config.joint_attention_dim:
            raise ValueError(
                f"text_encoders: T5's width {t5} does not match the transformer's "
                f"joint_attention_dim {config.joint_attention_dim} (T5-XXL: 4096)"
            )

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def _from_components(
        cls, plan: LoadPlan, components: dict[str, Any], options: dict[str, Any]
    ) -> _JointFeatureExtractor:
        """The extractor of loaded components (``max_sequence_length`` from the options; the
        adapter options, checked to be unset, left out)."""
        length = options.pop("max_sequence_length", None)
        config = adapterless_config(plan, options)
        return cls(config=config, max_sequence_length=length, **components)

    @classmethod
    @abc.abstractmethod
    def _pipeline_text(cls, pipe) -> tuple[list, list]:
        """The tokenizers and text encoders of a pipeline of the family, in encoder order."""

    @classmethod
    def from_pipeline(
        cls, pipe, layers: Sequence[str] | str | None = None, preset: str | None = None, **options
    ) -> _JointFeatureExtractor:
        """Wrap a loaded diffusers pipeline (``FluxPipeline`` / ``FluxImg2ImgPipeline``;
        ``StableDiffusion3Pipeline`` / ``...Img2ImgPipeline``).

        Args:
            pipe: the pipeline.
            layers: activation names, ``"all"`` or a preset name.
            preset: a preset name.
            **options: :class:`ExtractorConfig` fields and ``max_sequence_length``.
        """
        names, preset = resolve_layers(pipe.transformer.config, layers, preset)
        length = options.pop("max_sequence_length", None)
        config = ExtractorConfig(layers=names, preset=preset, **options)
        tokenizers, encoders = cls._pipeline_text(pipe)
        text = tokenizers[0] is not None
        return cls(
            pipe.transformer, pipe.vae, pipe.scheduler, tokenizers if text else None,
            encoders if text else None, config, max_sequence_length=length,
        )  # fmt: skip

    # -- shapes ------------------------------------------------------------------------------
    @property
    def text_tokens(self) -> int:
        """Text tokens of the joint attention."""
        return self.backbone.prompt_tokens(self.max_sequence_length)

    def _text_width(self) -> tuple[int, str]:
        width = self.transformer.config.joint_attention_dim
        return width, "the transformer's joint_attention_dim, T5's width"

    def _check_embeddings(self, embeddings: PromptEmbeddings) -> None:
        """Also a pooled (B, pooled_projection_dim) embedding (CLIP's)."""
        super()._check_embeddings(embeddings)
        width = self.transformer.config.pooled_projection_dim
        pooled = embeddings.pooled
        if pooled is None or pooled.ndim != 2 or pooled.shape != (len(embeddings), width):
            got = None if pooled is None else tuple(pooled.shape)
            raise ValueError(
                f"embeddings: pooled must be (B, {width}) (the transformer's "
                f"pooled_projection_dim, CLIP's pooled text); got {got}"
            )

    # -- the pass ----------------------------------------------------------------------------
    @abc.abstractmethod
    def _call(self, sample: Tensor, embeddings: PromptEmbeddings, batch: int) -> Tensor:
        """The transformer on ``sample`` (B, C, h, w); its output as (B, C, h, w)."""

    def _run_models(
        self, sample, embeddings, image_size, names, original_size, target_size, full_output,
        control,
    ) -> tuple[Features, Tensor | None]:  # fmt: skip
        self._size_conditioning(original_size, target_size)  # none here: raises when given
        batch = sample.shape[0]
        self._check_embeddings(embeddings)
        embeddings = embeddings.expand(batch).to(self.device, self.dtype)
        if not names:
            return Features(), self._call(sample, embeddings, batch)
        down = self.backbone.downsampling(self.transformer.config)
        grid = (sample.shape[-2] // down, sample.shape[-1] // down)
        recorder = JointRecorder(
            self.transformer, names, self.catalogue, grid,
            early_exit=self.config.early_exit and not full_output,
            output_device=self.config.output_device, detach=not self.config.requires_grad,
        )  # fmt: skip
        output = None
        with recorder:
            output = self._call(sample, embeddings, batch)
        features = {name: recorder.features[name] for name in names}
        return Features(features, recorder.attention_heads()), output


class FluxFeatureExtractor(_JointFeatureExtractor):
    """Activations of a FLUX.1 transformer (``FluxTransformer2DModel``) as (B, C, h, w) features.

    Latents are packed 2x2 into tokens as ``FluxPipeline`` packs them; every image-token
    feature is a map on the (h/2, w/2) token grid, ``flux-in``/``flux-out`` on the latent grid.
    Prompts: CLIP's pooled output and T5's tokens (``max_sequence_length``, 512), or
    precomputed ``PromptEmbeddings(t5_embeds, pooled=clip_pooled)``. FLUX.1-dev's guidance
    embedding gets ``config.guidance_scale`` (default 1.0, the official code's value).

    Args:
        transformer: a diffusers ``FluxTransformer2DModel``.
        vae: its ``AutoencoderKL`` (16 latent channels, with a shift factor).
        scheduler: its ``FlowMatchEulerDiscreteScheduler``.
        tokenizers: CLIP's and T5's tokenizers, or None (precomputed embeddings only).
        text_encoders: the ``CLIPTextModel`` and ``T5EncoderModel``, or None.
        config: :class:`ExtractorConfig`; None: the ``diffeat-flux`` preset.
        max_sequence_length: T5 tokens per prompt (default 512; FLUX.1-schnell: 256).
    """

    backbone = FLUX
    default_length = FLUX_TOKENS

    def _prompt_encoder(self, tokenizers: list, encoders: list) -> FluxPromptEncoder:
        return FluxPromptEncoder(tokenizers, encoders, self.max_sequence_length)

    def _check_parts(self, text_encoders) -> None:
        super()._check_parts(text_encoders)
        config = self.transformer.config
        clip = _width(text_encoders[0] if text_encoders else None, "hidden_size")
        if clip is not None and clip != config.pooled_projection_dim:
            raise ValueError(
                f"text_encoders: CLIP's width {clip} does not match the transformer's "
                f"pooled_projection_dim {config.pooled_projection_dim} (CLIP-L: 768)"
            )

    @property
    def latent_channels(self) -> int:
        """The packed token width / 4 (each token holds a 2x2 latent patch)."""
        return int(self.transformer.config.in_channels) // 4

    @classmethod
    def _pipeline_text(cls, pipe) -> tuple[list, list]:
        return [pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2]

    def _call(self, sample: Tensor, embeddings: PromptEmbeddings, batch: int) -> Tensor:
        height, width = sample.shape[-2:]
        dtype, device = self.dtype, self.device
        guidance = None
        if self.transformer.config.guidance_embeds:
            value = self.config.guidance_scale
            value = OFFICIAL_GUIDANCE if value is None else value
            guidance = torch.full((batch,), float(value), device=device, dtype=torch.float32)
        output = self.transformer(
            hidden_states=pack_latents(sample.to(dtype)),  # (B, h/2 * w/2, 4C)
            encoder_hidden_states=embeddings.embeds,
            pooled_projections=embeddings.pooled,
            # FluxPipeline passes timestep / 1000 = sigma; the transformer multiplies by 1000
            timestep=torch.full((batch,), self.plan.noise, device=device, dtype=dtype),
            img_ids=flux_image_ids(height // 2, width // 2, device).to(dtype),
            txt_ids=torch.zeros(embeddings.embeds.shape[1], 3, device=device, dtype=dtype),
            guidance=guidance,
            return_dict=False,
        )[0]
        return unpack_latents(output, height, width)  # (B, C, h, w)


class SD3FeatureExtractor(_JointFeatureExtractor):
    """Activations of an SD3 / SD3.5 transformer (``SD3Transformer2DModel``) as (B, C, h, w)
    features.

    Every image-token feature is a map on the (h/p, w/p) patch grid; ``sd3-in``/``sd3-out`` on
    the latent grid. Prompts: CLIP-L + CLIP-G (penultimate hidden states, padded to T5's width)
    followed by T5's tokens (``max_sequence_length``, 256), pooled = the two CLIPs' projections,
    as ``StableDiffusion3Pipeline.encode_prompt``; T5 may be None (zeros, as diffusers);
    or precomputed ``PromptEmbeddings(embeds, pooled=...)``.

    Args:
        transformer: a diffusers ``SD3Transformer2DModel``.
        vae: its ``AutoencoderKL`` (16 latent channels, with a shift factor).
        scheduler: its ``FlowMatchEulerDiscreteScheduler``.
        tokenizers: CLIP-L's, CLIP-G's and T5's tokenizers, or None.
        text_encoders: two ``CLIPTextModelWithProjection`` and a ``T5EncoderModel`` (or None
            in its place), or None.
        config: :class:`ExtractorConfig`; None: the ``diffeat-sd3`` preset.
        max_sequence_length: T5 tokens per prompt (default 256).
    """

    backbone = SD3
    default_length = SD3_T5_TOKENS

    def _prompt_encoder(self, tokenizers: list, encoders: list) -> SD3PromptEncoder:
        width = self.transformer.config.joint_attention_dim
        return SD3PromptEncoder(tokenizers, encoders, self.max_sequence_length, width)

    def _check_parts(self, text_encoders) -> None:
        super()._check_parts(text_encoders)
        config = self.transformer.config
        if not text_encoders:
            return
        clips = [_width(e, "projection_dim") for e in text_encoders[:2]]
        hidden = [_width(e, "hidden_size") for e in text_encoders[:2]]
        if None not in clips and sum(clips) != config.pooled_projection_dim:
            raise ValueError(
                f"text_encoders: the CLIPs' projections {clips[0]} + {clips[1]} do not make "
                f"the transformer's pooled_projection_dim {config.pooled_projection_dim}"
            )
        if None not in hidden and sum(hidden) > config.joint_attention_dim:
            raise ValueError(
                f"text_encoders: the CLIPs' widths {hidden[0]} + {hidden[1]} exceed the "
                f"transformer's joint_attention_dim {config.joint_attention_dim}"
            )

    @property
    def text_tokens(self) -> int:
        """CLIP's tokens (its tokenizer's length; 77) and then T5's."""
        if self.prompt_encoder is None:
            return super().text_tokens
        return self.prompt_encoder.tokenizers[0].model_max_length + self.max_sequence_length

    @classmethod
    def _pipeline_text(cls, pipe) -> tuple[list, list]:
        return (
            [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3],
            [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3],
        )

    def _call(self, sample: Tensor, embeddings: PromptEmbeddings, batch: int) -> Tensor:
        return self.transformer(
            hidden_states=sample.to(self.dtype),
            encoder_hidden_states=embeddings.embeds,
            pooled_projections=embeddings.pooled,
            timestep=torch.full((batch,), self.plan.timestep, device=self.device),
            return_dict=False,
        )[0]


__all__ = ["SD3_CLIP_TOKENS", "FluxFeatureExtractor", "SD3FeatureExtractor"]
