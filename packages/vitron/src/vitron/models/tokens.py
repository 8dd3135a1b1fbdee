"""The Vitron tokens a tokenizer and its LLM must hold (placeholders, signal tokens)."""

from __future__ import annotations

import torch
from torch import nn

from vitron.models.config import VitronConfig


def add_vitron_tokens(tokenizer, llm: nn.Module, config: VitronConfig) -> None:
    """Add the placeholder and signal tokens; new embedding rows start at the mean row."""
    old = llm.get_input_embeddings().weight.shape[0]
    missing = [t for t in config.special_tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if len(tokenizer) > old:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for emb in (llm.get_input_embeddings(), llm.get_output_embeddings()):
                if emb is not None:
                    emb.weight[old:] = emb.weight[:old].mean(0, keepdim=True)
