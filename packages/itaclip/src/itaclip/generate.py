"""Auxiliary texts (definitions, synonyms) from any transformers causal language model.

The paper used Llama-3-8B-Instruct with temperature 0.6, top_p 0.9 and up to 256 new tokens;
any ``AutoModelForCausalLM`` works (chat models get their chat template applied).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

DEFINITION_PROMPT = (
    "Define the word '{name}' briefly, in fewer than 50 words, in the style of this example: "
    "house >= a building for people to live in. Reply with the definition only."
)
SYNONYM_PROMPT = (
    "Reply with exactly one synonym of the word '{name}'. If it has no synonym, reply with the "
    "single word closest to it in meaning. Reply with that one word only."
)
PROMPTS = {"definition": DEFINITION_PROMPT, "synonym": SYNONYM_PROMPT}
MAX_DEFINITION_WORDS = 50


@dataclass
class SamplingConfig:
    """Sampling settings of the paper.

    Args:
        temperature: softmax temperature.
        top_p: nucleus-sampling mass.
        max_new_tokens: generation budget per answer.
        seed: torch seed set before each answer (reproducible outputs).
    """

    temperature: float = 0.6
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int | None = 0


def clean_definition(name: str, text: str) -> str:
    """First non-empty line, without an echoed ``"name >="`` / ``"name:"`` prefix, <= 50 words."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    line = re.sub(rf"^\s*{re.escape(name)}\s*(>=|:|-|=)\s*", "", line, flags=re.IGNORECASE)
    return " ".join(line.split()[:MAX_DEFINITION_WORDS]) or name


def clean_synonym(name: str, text: str) -> str:
    """The first word of the answer (letters, digits, hyphens); the name itself if none."""
    match = re.search(r"[A-Za-z][A-Za-z0-9\-]*", text)
    return match.group(0).lower() if match else name


class AuxTextGenerator:
    """Generate one definition or synonym per class name with a causal language model.

    Args:
        model: a transformers causal LM (``model.generate``).
        tokenizer: its tokenizer; a chat template is used when the tokenizer has one.
        sampling: sampling settings.
    """

    def __init__(self, model: Any, tokenizer: Any, sampling: SamplingConfig | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingConfig()

    @classmethod
    def from_pretrained(
        cls, name: str = "meta-llama/Meta-Llama-3-8B-Instruct", **model_kwargs: Any
    ) -> AuxTextGenerator:
        """Load ``name`` with ``AutoModelForCausalLM`` / ``AutoTokenizer`` (hub id or folder)."""
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as error:
            raise ImportError(
                "the LLM generator needs transformers: pip install 'itaclip[generate]'"
            ) from error

        tokenizer = AutoTokenizer.from_pretrained(name)
        return cls(AutoModelForCausalLM.from_pretrained(name, **model_kwargs), tokenizer)

    def prompt(self, kind: str, name: str) -> str:
        """The model input asking for a ``kind`` (``"definition"`` or ``"synonym"``) of ``name``."""
        if kind not in PROMPTS:
            raise ValueError(f"kind must be 'definition' or 'synonym', got {kind!r}")
        text = PROMPTS[kind].format(name=name)
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": text}]
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return f"{text}\n"

    @torch.no_grad()
    def answer(self, prompt: str) -> str:
        """Sampled continuation of ``prompt`` (new tokens only, special tokens dropped)."""
        cfg = self.sampling
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.model.device)
        pad = self.tokenizer.pad_token_id
        output = self.model.generate(
            **inputs,
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            pad_token_id=self.tokenizer.eos_token_id if pad is None else pad,
        )
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)

    def generate(self, kind: str, names: Sequence[str]) -> list[str]:
        """One cleaned ``kind`` text per class name."""
        clean = clean_definition if kind == "definition" else clean_synonym
        return [clean(name, self.answer(self.prompt(kind, name))) for name in names]
