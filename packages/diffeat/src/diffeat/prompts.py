"""Prompt embeddings for SD-style (one CLIP text encoder) and SDXL-style (two) U-Nets, PixArt
(T5), FLUX (CLIP + T5) and SD3 (two CLIPs + T5).

Matches the diffusers pipelines' ``encode_prompt`` without classifier-free guidance: SD 1.x/2.x
use the last hidden state of the text encoder; SDXL-style models concatenate the penultimate
hidden states of both encoders and take the pooled (projected) embedding of the last one.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class PromptEmbeddings:
    """Text conditioning of a batch.

    Args:
        embeds: (B, L, D) token embeddings (``encoder_hidden_states``).
        pooled: (B, P) pooled embeddings (SDXL-style ``text_embeds``), else None.
        mask: (B, L) attention mask of the tokens (1 = a token, 0 = padding), for text
            encoders whose padding is masked (T5 in PixArt); None: every token is attended.
    """

    embeds: Tensor
    pooled: Tensor | None = None
    mask: Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def expand(self, batch: int) -> PromptEmbeddings:
        """Repeat a batch-1 embedding ``batch`` times (other sizes must already match)."""
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise ValueError(f"embeddings: batch {len(self)} does not match {batch} images")
        pooled = None if self.pooled is None else self.pooled.expand(batch, -1)
        mask = None if self.mask is None else self.mask.expand(batch, -1)
        return PromptEmbeddings(self.embeds.expand(batch, -1, -1), pooled, mask)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> PromptEmbeddings:
        pooled = None if self.pooled is None else self.pooled.to(device, dtype)
        mask = None if self.mask is None else self.mask.to(device)
        return PromptEmbeddings(self.embeds.to(device, dtype), pooled, mask)


class PromptCache:
    """The per-prompt in-memory cache of an encoder (``_cache``: prompt -> its rows)."""

    _cache: dict[str, tuple[Tensor | None, ...]]

    def clear_cache(self) -> None:
        """Forget every cached embedding (after the text encoders changed, e.g. a LoRA)."""
        self._cache.clear()

    def cached(self, prompts: Sequence[str]) -> bool:
        """Whether every prompt's embedding is cached (a call runs no text encoder)."""
        return all(p in self._cache for p in prompts)


class PromptEncoder(PromptCache):
    """Tokenise and encode prompts; results are cached per prompt string.

    Args:
        tokenizers: one (SD) or two (SDXL) CLIP tokenizers.
        text_encoders: the matching CLIP text encoders (for SDXL the second one has a projection).
        cache_size: prompts kept in the in-memory cache.
    """

    def __init__(
        self, tokenizers: Sequence, text_encoders: Sequence[nn.Module], cache_size: int = 256
    ):
        if len(tokenizers) != len(text_encoders) or len(tokenizers) not in (1, 2):
            raise ValueError("tokenizers/text_encoders: give one or two matching pairs")
        self.tokenizers = list(tokenizers)
        self.text_encoders = list(text_encoders)
        self.cache_size = cache_size
        self._cache: dict[str, tuple[Tensor, Tensor | None]] = {}

    @property
    def dual(self) -> bool:
        return len(self.text_encoders) == 2

    @property
    def length(self) -> int:
        """Tokens per prompt (the first tokenizer's ``model_max_length``)."""
        return int(self.tokenizers[0].model_max_length)

    def _ids(self, tokenizer, prompts: list[str], device) -> Tensor:
        return tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
            device = next(encoder.parameters()).device
            ids = self._ids(tokenizer, prompts, device)
            if not self.dual:
                mask = None
                if getattr(encoder.config, "use_attention_mask", False):
                    mask = (ids != tokenizer.pad_token_id).long()
                return encoder(ids, attention_mask=mask)[0], None
            out = encoder(ids, output_hidden_states=True)
            if out[0].ndim == 2:  # CLIPTextModelWithProjection: pooled, projected
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        if pooled is None:
            raise ValueError("text_encoders: no encoder returned pooled embeddings (SDXL-style)")
        return torch.cat(hidden, dim=-1), pooled  # (B, L, D1 + D2), (B, P)

    def __call__(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """Embeddings of ``prompts`` (one row per prompt)."""
        prompts = list(prompts)
        rows = {p: self._cache[p] for p in prompts if p in self._cache}
        todo = sorted(set(prompts) - set(rows))
        if todo:
            embeds, pooled = self._encode(todo)
            for i, prompt in enumerate(todo):
                rows[prompt] = (embeds[i], None if pooled is None else pooled[i])
                self._cache[prompt] = rows[prompt]
            while len(self._cache) > self.cache_size:
                self._cache.pop(next(iter(self._cache)))
        embeds = torch.stack([rows[p][0] for p in prompts])  # (B, L, D)
        first = rows[prompts[0]][1]
        pooled = None if first is None else torch.stack([rows[p][1] for p in prompts])  # (B, P)
        return PromptEmbeddings(embeds, pooled)


def cached_rows(
    cache: dict[str, tuple[Tensor, ...]], prompts: list[str],
    encode: Callable[[list[str]], Sequence[Tensor]], size: int,
) -> tuple[Tensor, ...]:  # fmt: skip
    """Each prompt's cached rows stacked, one ``(B, ...)`` tensor per column of ``encode``'s
    output: the prompts not in ``cache`` encoded first in one batch, then the oldest entries
    dropped beyond ``size``."""
    todo = sorted(set(prompts) - set(cache))
    if todo:
        columns = encode(todo)
        for i, prompt in enumerate(todo):
            cache[prompt] = tuple(column[i] for column in columns)
    rows = [cache[p] for p in prompts]
    while len(cache) > size:
        cache.pop(next(iter(cache)))
    return tuple(torch.stack(column) for column in zip(*rows, strict=True))


class _CachedEncoder(PromptCache, abc.ABC):
    """Per-prompt caching of two rows around ``_encode``: ``(embeds (L, D), pooled (P,))``
    (T5 alone: ``(embeds, mask (L,))``)."""

    dual = False

    def __init__(self, tokenizers: Sequence, text_encoders: Sequence, max_length: int, cache_size):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_sequence_length: must be an integer >= 1; got {max_length!r}")
        self.tokenizers = list(tokenizers)
        self.text_encoders = [e for e in text_encoders if e is not None]
        self.length = max_length
        self.cache_size = cache_size
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    @abc.abstractmethod
    def _encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Embeddings (B, L, D) and pooled embeddings (B, P) by the family's text encoders."""

    def __call__(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """Embeddings (B, L, D) and pooled embeddings (B, P) of ``prompts``."""
        embeds, pooled = cached_rows(self._cache, list(prompts), self._encode, self.cache_size)
        return PromptEmbeddings(embeds, pooled)  # (B, L, D), (B, P)


class T5PromptEncoder(_CachedEncoder):
    """PixArt-style prompts: one T5 encoder, padded to ``max_length`` tokens with a mask.

    Matches diffusers' ``PixArtSigmaPipeline.encode_prompt`` without classifier-free guidance
    and with ``clean_caption=False`` (prompts lower-cased and stripped; the pipeline's
    caption cleaning, which needs bs4 and ftfy, is not applied).

    Args:
        tokenizer: the T5 tokenizer.
        text_encoder: the ``T5EncoderModel``.
        max_length: tokens per prompt (PixArt-Sigma: 300, PixArt-alpha: 120).
        cache_size: prompts kept in the in-memory cache.
    """

    def __init__(self, tokenizer, text_encoder: nn.Module, max_length: int = 300, cache_size=256):
        super().__init__([tokenizer], [text_encoder], max_length, cache_size)

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        tokenizer, encoder = self.tokenizers[0], self.text_encoders[0]
        device = next(encoder.parameters()).device
        tokens = tokenizer(
            [p.lower().strip() for p in prompts],
            padding="max_length",
            max_length=self.length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(device)
        return encoder(tokens.input_ids.to(device), attention_mask=mask)[0], mask

    def __call__(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """Embeddings (B, L, D) and masks (B, L) of ``prompts``."""
        embeds, mask = cached_rows(self._cache, list(prompts), self._encode, self.cache_size)
        return PromptEmbeddings(embeds, None, mask)


def _ids(tokenizer, prompts: list[str], length: int, device) -> Tensor:
    """Token ids (B, length): padded to ``length``, truncated, as the diffusers pipelines do."""
    return tokenizer(
        prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)


class FluxPromptEncoder(_CachedEncoder):
    """FLUX prompts: the pooled output of CLIP and the last hidden state of T5 (padded to
    ``max_length`` tokens, not masked), as diffusers' ``FluxPipeline.encode_prompt``.

    Args:
        tokenizers: the CLIP and the T5 tokenizer.
        text_encoders: the ``CLIPTextModel`` and the ``T5EncoderModel``.
        max_length: T5 tokens per prompt (FLUX.1-dev 512, schnell 256).
        cache_size: prompts kept in the in-memory cache.
    """

    def __init__(self, tokenizers, text_encoders, max_length: int = 512, cache_size: int = 256):
        if len(tokenizers) != 2 or len(text_encoders) != 2:
            raise ValueError("tokenizers/text_encoders: FLUX takes two pairs (CLIP, T5)")
        super().__init__(tokenizers, text_encoders, max_length, cache_size)

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        (clip_tok, t5_tok), (clip, t5) = self.tokenizers, self.text_encoders
        device = next(clip.parameters()).device
        ids = _ids(clip_tok, prompts, clip_tok.model_max_length, device)
        pooled = clip(ids, output_hidden_states=False).pooler_output  # (B, P)
        device = next(t5.parameters()).device
        embeds = t5(_ids(t5_tok, prompts, self.length, device), output_hidden_states=False)[0]
        return embeds, pooled.to(embeds.device)  # (B, L, D), (B, P)


class SD3PromptEncoder(_CachedEncoder):
    """SD3 prompts, as diffusers' ``StableDiffusion3Pipeline.encode_prompt`` (no guidance,
    no clip skip): the penultimate hidden states of CLIP-L and CLIP-G concatenated (77 tokens),
    zero-padded to T5's width, then T5's last hidden state (``max_length`` tokens; zeros
    without T5); pooled: the two CLIPs' projected embeddings concatenated.

    Args:
        tokenizers: CLIP-L's, CLIP-G's and T5's tokenizers (T5's may be None).
        text_encoders: two ``CLIPTextModelWithProjection`` and a ``T5EncoderModel`` (or None).
        max_length: T5 tokens per prompt (256).
        t5_width: the width of the joint text tokens (the transformer's
            ``joint_attention_dim``; T5-XXL: 4096), used without T5.
        cache_size: prompts kept in the in-memory cache.
    """

    def __init__(self, tokenizers, text_encoders, max_length: int = 256, t5_width: int = 4096,
                 cache_size: int = 256):  # fmt: skip
        if len(tokenizers) != 3 or len(text_encoders) != 3:
            raise ValueError("tokenizers/text_encoders: SD3 takes three (CLIP-L, CLIP-G, T5)")
        super().__init__(tokenizers, text_encoders, max_length, cache_size)
        self.t5 = text_encoders[2]
        self.t5_width = t5_width

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        hidden, pooled = [], []
        for tokenizer, encoder in zip(self.tokenizers[:2], self.text_encoders[:2], strict=True):
            device = next(encoder.parameters()).device
            out = encoder(_ids(tokenizer, prompts, tokenizer.model_max_length, device),
                          output_hidden_states=True)  # fmt: skip
            pooled.append(out[0])  # (B, P_i): the projected embedding
            hidden.append(out.hidden_states[-2])  # (B, 77, D_i)
        clip = torch.cat(hidden, dim=-1)  # (B, 77, D_l + D_g)
        if self.t5 is None:
            t5 = clip.new_zeros(len(prompts), self.length, self.t5_width)
        else:
            device = next(self.t5.parameters()).device
            t5 = self.t5(_ids(self.tokenizers[2], prompts, self.length, device))[0]
        clip = torch.nn.functional.pad(clip.to(t5.device), (0, t5.shape[-1] - clip.shape[-1]))
        embeds = torch.cat([clip.to(t5.dtype), t5], dim=-2)  # (B, 77 + L, D_t5)
        return embeds, torch.cat(pooled, dim=-1).to(t5.device)  # (B, P_l + P_g)
