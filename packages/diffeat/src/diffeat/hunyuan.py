"""HunyuanDiTFeatureExtractor: the activations of HunyuanDiT (``HunyuanDiT2DModel``) as
features.

The backbone (catalogue, shapes, loading, recording) is :mod:`diffeat.backbones.hunyuan`; the
steps every backbone shares (VAE latent, noise at timestep t, one pass with early exit,
``vae-out``, gradients) are :class:`diffeat.extraction.BaseFeatureExtractor`'s. HunyuanDiT is a
DDPM model (v-prediction), so a clean latent is noised as ``sqrt(abar_t) z + sqrt(1 - abar_t)
eps`` at the timestep t itself. Prompts go through its two text encoders as
``HunyuanDiTPipeline.encode_prompt`` does (no guidance): a bilingual CLIP text encoder (a
``BertModel``, 77 tokens) and mT5 (256 tokens), each padded with its attention mask (the
transformer replaces padded tokens by a learned padding embedding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffeat.backbones.hunyuan import (
    HUNYUAN,
    HunyuanRecorder,
    build_hunyuan_catalogue,
    hunyuan_conditioning,
)
from diffeat.extraction import BaseFeatureExtractor, check_text_stack
from diffeat.features import Features
from diffeat.plan import ExtractorConfig, resolve_layers
from diffeat.prompts import PromptCache, PromptEmbeddings, cached_rows


@dataclass
class HunyuanPromptEmbeddings(PromptEmbeddings):
    """HunyuanDiT's text conditioning: the CLIP-BERT tokens (``embeds``, ``mask``) and the mT5
    tokens (``embeds_2`` (B, L_t5, D_t5), ``mask_2`` (B, L_t5); 1 = a token, 0 = padding)."""

    embeds_2: Tensor | None = None
    mask_2: Tensor | None = None

    def expand(self, batch: int) -> HunyuanPromptEmbeddings:
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise ValueError(f"embeddings: batch {len(self)} does not match {batch} images")
        return HunyuanPromptEmbeddings(
            self.embeds.expand(batch, -1, -1), None, self.mask.expand(batch, -1),
            self.embeds_2.expand(batch, -1, -1), self.mask_2.expand(batch, -1),
        )  # fmt: skip

    def to(self, device: torch.device | str, dtype: torch.dtype) -> HunyuanPromptEmbeddings:
        return HunyuanPromptEmbeddings(
            self.embeds.to(device, dtype), None, self.mask.to(device),
            self.embeds_2.to(device, dtype), self.mask_2.to(device),
        )  # fmt: skip


class HunyuanPromptEncoder(PromptCache):
    """HunyuanDiT prompts, as ``HunyuanDiTPipeline.encode_prompt`` without guidance: each text
    encoder's last hidden state of the prompt padded to its length, with the attention mask.

    Args:
        tokenizers: the CLIP-BERT tokenizer and the mT5 tokenizer.
        text_encoders: the ``BertModel`` and the ``T5EncoderModel``.
        lengths: tokens per prompt of each (the transformer's ``text_len``, ``text_len_t5``).
        cache_size: prompts kept in the in-memory cache.
    """

    dual = False

    def __init__(self, tokenizers: Sequence, text_encoders: Sequence[nn.Module],
                 lengths: tuple[int, int], cache_size: int = 256):  # fmt: skip
        if len(tokenizers) != 2 or len(text_encoders) != 2:
            raise ValueError("tokenizers/text_encoders: HunyuanDiT takes two pairs (BERT, mT5)")
        self.tokenizers = list(tokenizers)
        self.text_encoders = list(text_encoders)
        self.lengths = lengths
        self.cache_size = cache_size
        self._cache: dict[str, tuple[Tensor, ...]] = {}

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> list[Tensor]:
        out = []
        for tokenizer, encoder, length in zip(self.tokenizers, self.text_encoders, self.lengths,
                                              strict=True):  # fmt: skip
            device = next(encoder.parameters()).device
            tokens = tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                               return_attention_mask=True, return_tensors="pt")  # fmt: skip
            mask = tokens.attention_mask.to(device)
            out += [encoder(tokens.input_ids.to(device), attention_mask=mask)[0], mask]
        return out  # (B, 77, D), (B, 77), (B, 256, D_t5), (B, 256)

    def __call__(self, prompts: Sequence[str]) -> HunyuanPromptEmbeddings:
        """The embeddings and masks of ``prompts`` (one row per prompt)."""
        embeds, mask, embeds_2, mask_2 = cached_rows(
            self._cache, list(prompts), self._encode, self.cache_size
        )
        return HunyuanPromptEmbeddings(embeds, None, mask, embeds_2, mask_2)


class HunyuanDiTFeatureExtractor(BaseFeatureExtractor):
    """Activations of a HunyuanDiT transformer (``HunyuanDiT2DModel``) as (B, C, h, w) features.

    Every token feature is a map on the (H/8/p, W/8/p) patch grid; ``hunyuan-in``/``-out`` on
    the latent grid. Prompts: the CLIP-BERT and mT5 encoders, or precomputed
    :class:`HunyuanPromptEmbeddings`. The transformer gets the pipeline's extra conditioning:
    ``image_meta_size`` (``original_size``, default 1024 x 1024 as the pipeline; ``target_size``,
    default the image size; crop (0, 0)), ``style`` 0 and the rotary embedding of the grid.

    Not supported here (each raises): ``faithful=True``, LoRA, ControlNet,
    ``max_sequence_length`` (HunyuanDiT's prompt lengths are fixed by its weights).

    Args:
        transformer: a diffusers ``HunyuanDiT2DModel``.
        vae: its ``AutoencoderKL``.
        scheduler: its scheduler (``alphas_cumprod`` is the noise schedule).
        tokenizers: the BERT and mT5 tokenizers, or None (precomputed embeddings only).
        text_encoders: the ``BertModel`` and ``T5EncoderModel``, or None.
        config: :class:`ExtractorConfig` (its ``layers``: HunyuanDiT has no preset).
    """

    backbone = HUNYUAN
    _text_time = True  # original_size / target_size go into image_meta_size

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        scheduler,
        tokenizers: Sequence | None = None,
        text_encoders: Sequence[nn.Module] | None = None,
        config: ExtractorConfig | None = None,
    ):
        self.catalogue = build_hunyuan_catalogue(transformer)
        self.unet = self.transformer = transformer.eval()
        self.vae = vae.eval()
        self.scheduler = scheduler
        check_text_stack(tokenizers, text_encoders, "tokenizers/text_encoders")
        if tokenizers is not None:
            lengths = (int(transformer.config.text_len), int(transformer.config.text_len_t5))
            encoders = [e.eval() for e in text_encoders]
            self.prompt_encoder = HunyuanPromptEncoder(tokenizers, encoders, lengths)
        self.control_catalogue: list = []
        self._check_parts(text_encoders or [])
        if config is None:
            raise ValueError(
                "config: HunyuanDiT has no preset (neither the paper nor the official code "
                "names one); pass ExtractorConfig(layers=[...])"
            )
        if config.faithful:
            raise ValueError(
                "faithful: the official code's path is restated for U-Nets only, not for "
                "HunyuanDiT models"
            )
        self._configure(config)

    def _check_parts(self, text_encoders: Sequence[nn.Module]) -> None:
        """Raise when the VAE or a text encoder does not fit the transformer."""
        config = self.transformer.config
        latent = self.vae.config.latent_channels
        if latent != config.in_channels:
            raise ValueError(
                f"vae: its {latent} latent channels do not match the transformer's in_channels "
                f"{config.in_channels}"
            )
        wanted = (config.cross_attention_dim, config.cross_attention_dim_t5)
        for index, (encoder, width) in enumerate(zip(text_encoders, wanted, strict=False)):
            got = getattr(encoder.config, "hidden_size", getattr(encoder.config, "d_model", None))
            if got != width:
                key = ("cross_attention_dim", "cross_attention_dim_t5")[index]
                raise ValueError(
                    f"text_encoders: encoder {index}'s width {got} does not match the "
                    f"transformer's {key} {width}"
                )

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_pipeline(
        cls, pipe, layers: Sequence[str] | str | None = None, preset: str | None = None, **options
    ) -> HunyuanDiTFeatureExtractor:
        """Wrap a loaded diffusers ``HunyuanDiTPipeline``.

        Args:
            pipe: the pipeline.
            layers: activation names or ``"all"``.
            preset: a preset name (none applies to HunyuanDiT: refused).
            **options: :class:`ExtractorConfig` fields.
        """
        names, preset = resolve_layers(pipe.transformer.config, layers, preset)
        config = ExtractorConfig(layers=names, preset=preset, **options)
        text = pipe.tokenizer is not None
        return cls(
            pipe.transformer, pipe.vae, pipe.scheduler,
            [pipe.tokenizer, pipe.tokenizer_2] if text else None,
            [pipe.text_encoder, pipe.text_encoder_2] if text else None, config,
        )  # fmt: skip

    # -- shapes ------------------------------------------------------------------------------
    @property
    def text_tokens(self) -> int:
        """Cross-attention keys: ``text_len + text_len_t5`` (77 + 256)."""
        config = self.transformer.config
        return int(config.text_len) + int(config.text_len_t5)

    def _text_width(self) -> tuple[int, str]:
        width = self.transformer.config.cross_attention_dim
        return width, "the transformer's cross_attention_dim, the CLIP-BERT width"

    def _check_embeddings(self, embeddings: PromptEmbeddings) -> None:
        """Also the mT5 tokens: (B, text_len_t5, cross_attention_dim_t5) with a (B, L) mask, and
        the lengths the transformer's weights fix."""
        if not isinstance(embeddings, HunyuanPromptEmbeddings):
            raise TypeError(
                f"embeddings: expected HunyuanPromptEmbeddings (CLIP-BERT and mT5 tokens); got "
                f"{type(embeddings).__name__}"
            )
        super()._check_embeddings(embeddings)
        config, batch = self.transformer.config, len(embeddings)
        wanted = {"embeds": (batch, config.text_len, config.cross_attention_dim),
                  "mask": (batch, config.text_len),
                  "embeds_2": (batch, config.text_len_t5, config.cross_attention_dim_t5),
                  "mask_2": (batch, config.text_len_t5)}  # fmt: skip
        for field, shape in wanted.items():
            value = getattr(embeddings, field)
            got = None if value is None else tuple(value.shape)
            if got != shape:
                raise ValueError(
                    f"embeddings: {field} must be {shape} (the transformer's text_len "
                    f"{config.text_len}, text_len_t5 {config.text_len_t5}); got {got}"
                )

    # -- the pass ----------------------------------------------------------------------------
    def _call(self, sample: Tensor, embeddings: HunyuanPromptEmbeddings, size, sizes) -> Tensor:
        batch, dtype = sample.shape[0], self.dtype
        extra = hunyuan_conditioning(self.transformer, batch, tuple(size), self.device, dtype,
                                     *sizes)  # fmt: skip
        timestep = torch.full((batch,), float(self.plan.timestep), device=self.device, dtype=dtype)
        return self.transformer(
            sample.to(dtype),
            timestep,
            encoder_hidden_states=embeddings.embeds,
            text_embedding_mask=embeddings.mask,
            encoder_hidden_states_t5=embeddings.embeds_2,
            text_embedding_mask_t5=embeddings.mask_2,
            return_dict=False,
            **extra,
        )[0]

    def _run_models(
        self, sample, embeddings, image_size, names, original_size, target_size, full_output,
        control,
    ) -> tuple[Features, Tensor | None]:  # fmt: skip
        sizes = self._size_conditioning(original_size, target_size)
        self._check_embeddings(embeddings)
        embeddings = embeddings.expand(sample.shape[0]).to(self.device, self.dtype)
        if not names:
            return Features(), self._call(sample, embeddings, image_size, sizes)
        recorder = HunyuanRecorder(
            self.transformer, names, self.catalogue,
            early_exit=self.config.early_exit and not full_output,
            output_device=self.config.output_device, detach=not self.config.requires_grad,
        )  # fmt: skip
        output = None
        with recorder:
            output = self._call(sample, embeddings, image_size, sizes)
        features = {name: recorder.features[name] for name in names}
        return Features(features, recorder.attention_heads()), output


__all__ = ["HunyuanDiTFeatureExtractor", "HunyuanPromptEmbeddings", "HunyuanPromptEncoder"]
