"""Auxiliary texts (definitions, synonyms) from any transformers causal language model.

The paper used Llama-3-8B-Instruct with temperature 0.6, top_p 0.9 and up to 256 new tokens;
any ``AutoModelForCausalLM`` works (chat models get their chat template applied). The model
name follows the repository's loader rule (``common_kernels.runtime.hub``): a path is a local
folder, a
missing one an error at once; anything else is a hub id, and an unreachable hub is said within
seconds.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common_kernels.runtime.cli import check_file_writable, one_line
from common_kernels.runtime.errors import InvalidValue, MissingPath, argument_errors, literal
from common_kernels.runtime.hub import HubUnreachableError, check_hub, resolve_model_name
from itaclip.protect import check_not_replacing, folder_files
from itaclip.sources import ModelLoadError

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
INSTALL_HINT = "the LLM generator needs transformers: pip install 'itaclip[generate]'"


def require_transformers() -> None:
    """Fail (``ImportError``, with the install command) unless transformers is installed."""
    if importlib.util.find_spec("transformers") is None:
        raise ImportError(INSTALL_HINT)


def check_sampling(settings: Mapping[str, Any]) -> None:
    """Sampling settings in their ranges (every ``SamplingConfig`` field given).

    Args:
        settings: field -> value.

    Raises:
        InvalidArgument: the first setting out of range, named.
    """
    temperature, top_p = settings["temperature"], settings["top_p"]
    if not (math.isfinite(temperature) and temperature > 0):
        raise InvalidValue("temperature", f"{{temperature}} must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise InvalidValue("top_p", f"{{top_p}} must be in (0, 1], got {top_p}")
    tokens = settings["max_new_tokens"]
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise InvalidValue(
            "max_new_tokens", f"{{max_new_tokens}} must be >= 1, got {literal(repr(tokens))}"
        )
    seed = settings["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise InvalidValue(
            "seed", f"{{seed}} must be an integer >= 0 or None, got {literal(repr(seed))}"
        )


def check_lm(name: str | os.PathLike) -> Path | str:
    """The language model's folder, or its hub id (nothing is loaded or downloaded).

    Args:
        name: a model folder (``./lm``, ``/models/lm``, ``~/lm`` or an existing folder) or a
            hub id (``owner/name``).

    Raises:
        InvalidArgument: (``name``) a path where nothing is, a file instead of a folder, or
            neither a path nor a hub id ``owner/name`` (an unknown model:
            ``common_kernels.runtime.hub.resolve_model_name``, never sent to the hub).
    """
    try:
        source = resolve_model_name(name, argument="name")
    except FileNotFoundError as error:
        raise MissingPath("name", literal(error)) from None
    if isinstance(source, Path) and not source.is_dir():
        raise InvalidValue(
            "name",
            "{name} "
            + literal(f"{os.fspath(name)} is a file; expected a hub id or a model folder"),
        )
    return source


def check_aux_output(output: str | os.PathLike, lm: Path | str) -> Path:
    """The file ``itaclip aux`` writes, checked before the model loads: its folder exists or can
    be created, and it is none of the language model's own files.

    Args:
        output: the file (``.json``, or the official format).
        lm: what ``check_lm`` returned (a folder, or a hub id).

    Raises:
        InvalidArgument: (``output``) a folder, a folder that cannot be created or written,
            or ``PATH would replace the input PATH (a file of the language
            model); choose another file``.
    """
    output = Path(output)
    with argument_errors("output"):
        check_file_writable(output, "output")
    if isinstance(lm, Path):
        inputs = folder_files(lm, "a file of the language model")
        check_not_replacing([output], inputs, argument="output")
    return output


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

    def __post_init__(self) -> None:
        check_sampling(vars(self))


def make_sampling(**settings: Any) -> SamplingConfig:
    """``SamplingConfig`` with ``settings`` replacing the paper's, checked
    (``SamplingConfig.__post_init__``) before use.

    Args:
        **settings: ``SamplingConfig`` fields.
    """
    return SamplingConfig(**settings)


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
        cls,
        name: str | os.PathLike = "meta-llama/Meta-Llama-3-8B-Instruct",
        sampling: SamplingConfig | None = None,
        **model_kwargs: Any,
    ) -> AuxTextGenerator:
        """Load ``name`` with ``AutoModelForCausalLM`` / ``AutoTokenizer``.

        Args:
            name: a model folder or a hub id (``check_lm``); a hub model that is not cached
                needs the hub, which is checked within seconds first.
            sampling: sampling settings (default: the paper's).
            **model_kwargs: passed to ``AutoModelForCausalLM.from_pretrained``.

        Raises:
            ImportError: transformers is not installed.
            common_kernels.runtime.hub.HubUnreachableError: the hub cannot be reached (an
            ``OSError``).
            ModelLoadError: transformers could not load the model (an ``OSError``).
        """
        require_transformers()
        return cls.load(check_lm(name), sampling, **model_kwargs)

    @classmethod
    def load(
        cls, source: Path | str, sampling: SamplingConfig | None = None, **model_kwargs: Any
    ) -> AuxTextGenerator:
        """Load a checked model (what ``check_lm`` returned; transformers installed), as
        ``from_pretrained`` does after its checks.

        Args:
            source: the model folder, or its hub id.
            sampling: sampling settings (default: the paper's).
            **model_kwargs: passed to ``AutoModelForCausalLM.from_pretrained``.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = os.fspath(source)
        try:
            if isinstance(source, str):
                check_hub(source)
            tokenizer = AutoTokenizer.from_pretrained(name)
            model = AutoModelForCausalLM.from_pretrained(name, **model_kwargs)
        except HubUnreachableError as error:
            raise HubUnreachableError(f"cannot load {name}: {error}") from None
        except (OSError, RuntimeError, ValueError, KeyError) as error:
            raise ModelLoadError(f"cannot load {name}: {one_line(error)}") from error
        return cls(model, tokenizer, sampling)

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
