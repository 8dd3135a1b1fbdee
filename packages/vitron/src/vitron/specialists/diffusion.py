"""Shared diffusers plumbing: loading pipelines and conditioning them on a signal embedding.

A signal embedding enters a Stable Diffusion / SDXL pipeline as one extra cross-attention token
appended to the prompt embeddings (the negative branch gets a copy of its last token so both
branches keep the same length). Its stage-3 target is the text encoder's state at the prompt's
end-of-text token, which lives in the same space as every other conditioning token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor

from vitron.models.sources import pretrained_source
from vitron.specialists.base import Specialist, SpecialistError, torch_dtype


@contextlib.contextmanager
def diffusers_bars_like_the_hub() -> Iterator[None]:
    """diffusers' own progress bars ("Loading pipeline components") off in the block while
    huggingface_hub's are (``HF_HUB_DISABLE_PROGRESS_BARS``, set by the commands unless
    ``--verbose``: ``common_kernels.runtime.quiet``); transformers follows that switch, diffusers
    does
    not."""
    from diffusers.utils import logging
    from huggingface_hub.utils import are_progress_bars_disabled

    if not (are_progress_bars_disabled() and logging.is_progress_bar_enabled()):
        yield
        return
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.enable_progress_bar()


def load_pipeline(kind: str, model: str, dtype: torch.dtype, device: torch.device):
    """A diffusers pipeline: ``kind`` is ``"text2image"``, ``"inpaint"`` or ``"any"``.

    ``model`` follows the loader rule (:func:`vitron.models.sources.pretrained_source`): a
    missing folder is a ``FileNotFoundError``, an unreachable hub a ``HubUnreachableError``
    within 5 s, before diffusers is asked.
    """
    import diffusers

    model = pretrained_source(model, "model", "diffusers pipeline folder")
    loaders = {
        "text2image": diffusers.AutoPipelineForText2Image,
        "inpaint": diffusers.AutoPipelineForInpainting,
        "any": diffusers.DiffusionPipeline,
    }
    with diffusers_bars_like_the_hub():
        pipe = loaders[kind].from_pretrained(model, dtype=dtype)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def processing_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with the long side ``long_side``, aspect kept, both multiples of 8 (>= 8)."""
    scale = long_side / max(height, width)
    return max(8, round(height * scale / 8) * 8), max(8, round(width * scale / 8) * 8)


def conditioning_width(pipe) -> int:
    """Width of the pipeline's cross-attention conditioning."""
    return int(pipe.unet.config.cross_attention_dim)


def encode_with_signal(
    pipe,
    prompt: str,
    negative: str | None,
    signal: Tensor | None,
    weight: float,
    guidance_scale: float,
) -> dict[str, Any]:
    """Prompt-embedding keyword arguments for ``pipe(...)`` with the signal token appended.

    Args:
        pipe: a Stable Diffusion or SDXL (text-to-image or inpainting) pipeline.
        prompt: the prompt.
        negative: the negative prompt.
        signal: (D,) signal embedding (``None`` = plain text conditioning).
        weight: scale of the signal token.
        guidance_scale: classifier-free guidance scale (> 1 enables the negative branch).
    """
    cfg = guidance_scale > 1.0
    if signal is None:
        return {"prompt": prompt, "negative_prompt": negative if cfg else None}
    width = conditioning_width(pipe)
    if signal.shape != (width,):
        raise SpecialistError(
            f"the signal embedding has shape {tuple(signal.shape)} but this pipeline's text "
            f"conditioning is {width} wide; set the model's signal output_dims to {width}"
        )
    encoded = pipe.encode_prompt(
        prompt=prompt,
        device=pipe.device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=cfg,
        negative_prompt=negative,
    )
    embeds, negative_embeds = encoded[0], encoded[1]
    token = (weight * signal).to(embeds.device, embeds.dtype).view(1, 1, -1)
    kwargs: dict[str, Any] = {"prompt_embeds": torch.cat([embeds, token], dim=1)}  # (1, L + 1, D)
    if cfg:
        kwargs["negative_prompt_embeds"] = torch.cat([negative_embeds, negative_embeds[:, -1:]], 1)
    if len(encoded) == 4:  # SDXL: pooled embeddings as well
        kwargs["pooled_prompt_embeds"] = encoded[2]
        if cfg:
            kwargs["negative_pooled_prompt_embeds"] = encoded[3]
    return kwargs


@torch.no_grad()
def end_of_text_embedding(pipe, text: str) -> Tensor:
    """(D,) the prompt embedding at the end-of-text token: a signal's alignment target."""
    encoded = pipe.encode_prompt(
        prompt=text, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    tokenizer = pipe.tokenizer
    ids = tokenizer(text, truncation=True, max_length=tokenizer.model_max_length).input_ids
    return encoded[0][0, len(ids) - 1].float().cpu()


class PipelineSpecialist(Specialist):
    """An adapter around one diffusers pipeline (``options.model`` as ``pipeline_kind``, in
    ``options.dtype``) whose signal target is the prompt's end-of-text embedding."""

    pipeline_kind: ClassVar[str]

    def load(self) -> None:
        dtype = torch_dtype(self.options.dtype, self.device)
        self.pipe = load_pipeline(self.pipeline_kind, self.options.model, dtype, self.device)

    def offloadable(self) -> list[Any]:
        return [self.pipe]

    def conditioning_target(self, task: str, text: str) -> Tensor:
        with self.active():
            return end_of_text_embedding(self.pipe, text)
