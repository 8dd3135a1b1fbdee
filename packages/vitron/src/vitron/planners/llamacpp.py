"""A GGUF chat model on llama.cpp as the planner: the engine made for the format.

``--planner FILE.gguf`` runs here when ``llama-cpp-python`` is installed (``vitron[gguf]``):
the file is memory-mapped as it is (quantised weights, no dequantisation, a fraction of a second
to open) and its KV cache keeps the conversation's prefix from one reply to the next. Without
it, :func:`vitron.planners.gguf.load_gguf` reads the file through transformers
(:func:`open_gguf_planner` chooses and says which in one line).

The reply is held to the planner's grammar by one of two grammar engines (``grammar_engine``):

- ``xgrammar`` (default): the same EBNF and :class:`~vitron.planners.chat.GrammarLogits` as on
  transformers, as a logits processor over llama.cpp's scores (a mask of microseconds a token);
- ``gbnf``: the same text as GBNF, held by llama.cpp's own grammar sampler, which checks every
  token of the vocabulary each step: on SmolLM2's 49k tokens about 9 ms a token, half of a 2-core
  CPU's decoding time (``benchmarks/planner_speed.py``), so it is the choice only where xgrammar
  is missing. Its text is checked (:func:`~vitron.planners.grammar.check_gbnf`) before the
  binding sees it: a GBNF parse error aborts the process.

:class:`LlamaCppPlanner` has the interface :class:`~vitron.planners.PlannerAssistant` needs of a
planner (``reply``, ``render``, ``vision``, ``convention``, ``last``).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from common_kernels.runtime.errors import InvalidValue, literal
from vitron.checks import check_generation
from vitron.planners.chat import PlannerMessage, ReplyStats, TextPieces, render_chat
from vitron.planners.gguf import check_gguf_file
from vitron.planners.grammar import PlannerGrammar
from vitron.planners.rules import AnswerRules, AnswerVocab, check_no_repeat

LLAMA_CPP_INSTALL = "pip install 'vitron[gguf]' (or: pip install llama-cpp-python)"
GRAMMAR_ENGINES = ("xgrammar", "gbnf")
MAX_CONTEXT = 8192  # positions of the KV cache by default (the model's own if fewer)


def llama_cpp_installed() -> bool:
    """Whether ``llama_cpp`` can be imported (without importing it)."""
    return sys.modules.get("llama_cpp", 0) is not None and (
        importlib.util.find_spec("llama_cpp") is not None
    )


class NumpyLogits:
    """A llama-cpp-python logits processor running a transformers one (``GrammarLogits``) on
    llama.cpp's arrays (the sequence's token ids, 1-D; the scores of the vocabulary)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        import torch

        # llama-cpp-python hands a strided view of its (id, logit, p) records: the masks are
        # written into a contiguous copy, which it writes back
        work = np.ascontiguousarray(scores, dtype=np.float32)
        # (L,) -> (1, L) and (V,) -> (1, V)
        self.inner(torch.from_numpy(input_ids)[None], torch.from_numpy(work)[None])
        return work


class RulesLogits:
    """A llama-cpp-python logits processor for the GBNF engine: the banned tokens and the answer
    rules, on the scores of the whole vocabulary before llama.cpp's grammar sampler (one use per
    reply).

    Args:
        rules: the reply's :class:`~vitron.planners.rules.AnswerRules`.
        banned: token ids never allowed.
        prompt: the number of prompt tokens (the reply's tokens follow them).
    """

    def __init__(self, rules: AnswerRules, banned: np.ndarray, prompt: int) -> None:
        self.rules, self.banned, self.seen = rules, banned, prompt
        self.timings: list[float] = []

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        for token in input_ids[self.seen :].tolist():
            self.rules.accept(token)
        self.seen = len(input_ids)
        scores[self.banned] = -np.inf
        if (only := self.rules.must_close()) is not None:
            scores[self.rules.vocab.outside[only]] = -np.inf
        elif banned := self.rules.banned():
            scores[banned] = -np.inf
        self.timings.append(time.perf_counter() - start)
        return scores


class LlamaCppPlanner:
    """A text-only GGUF chat model on llama.cpp that writes Vitron's replies under the grammar.

    Args:
        llm: a ``llama_cpp.Llama``.
        name: the model's name (messages, ``Turn`` records).
        chat_template: the Jinja chat template (the file's ``tokenizer.chat_template``).
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature, > 0.
        top_p: nucleus sampling mass, in (0, 1].
        seed: the sampling seed.
        no_repeat: n of the no-repeat n-gram rule inside a final answer's text, 0 (off) or >= 2.
        grammar_engine: ``xgrammar`` (default) or ``gbnf`` (see the module's docstring).

    Attributes:
        last: what the last reply cost (:class:`~vitron.planners.chat.ReplyStats`; with
            ``gbnf`` without a grammar share: llama.cpp's grammar sampler is timed inside its
            decoding loop).
    """

    vision = False
    convention = "pixels"  # a text-only planner reads regions in the image's pixels
    processor = None
    engine = "llama.cpp"

    def __init__(
        self, llm, *, name: str, chat_template: str, do_sample: bool = False,
        temperature: float = 0.7, top_p: float = 0.9, seed: int = 0, no_repeat: int = 4,
        grammar_engine: str = "xgrammar",
    ) -> None:  # fmt: skip
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        check_generation(1, temperature, top_p, seed, 1)
        check_no_repeat(no_repeat)
        if grammar_engine not in GRAMMAR_ENGINES:
            raise InvalidValue(
                "grammar_engine",
                f"{{grammar_engine}} must be one of {', '.join(GRAMMAR_ENGINES)}, got "
                f"{literal(repr(grammar_engine))}",
            )
        if grammar_engine == "xgrammar":
            from vitron.planners.chat import require_grammar_engine

            require_grammar_engine()
        self.grammar_engine = grammar_engine
        self.llama_cpp, self.llm, self.name = llama_cpp, llm, name
        self.generation = {"do_sample": do_sample, "temperature": temperature, "top_p": top_p}
        self.seed, self.no_repeat = seed, no_repeat
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        pieces = [_piece(llama_cpp, vocab, i) for i in range(llm.n_vocab())]
        self.stop_ids = [i for i in range(len(pieces)) if llama_cpp.llama_vocab_is_eog(vocab, i)]
        self.stops = set(self.stop_ids)
        # control tokens (chat markers) never appear inside the JSON, as for ChatPlanner
        control = [i for i in range(len(pieces)) if llama_cpp.llama_vocab_is_control(vocab, i)]
        self.banned = np.array(sorted(set(control) - set(self.stop_ids)), dtype=np.int64)
        self.answers = AnswerVocab(pieces)
        self.compiler = None
        if grammar_engine == "xgrammar":
            import xgrammar as xgr

            # llama.cpp's pieces are the tokens' bytes as written (control tokens: empty, which
            # xgrammar never allows)
            info = xgr.TokenizerInfo(
                pieces, xgr.VocabType.RAW, vocab_size=len(pieces), stop_token_ids=self.stop_ids
            )
            self.compiler = xgr.GrammarCompiler(info)
        self.formatter = Jinja2ChatFormatter(
            template=chat_template, eos_token=_text(llm, llm.token_eos()),
            bos_token=_text(llm, llm.token_bos()), add_generation_prompt=True,
        )  # fmt: skip
        self.grammars: dict[str, Any] = {}
        self.last: ReplyStats | None = None

    @classmethod
    def from_gguf(
        cls, path: str | os.PathLike, *, threads: int | None = None, context: int | None = None,
        device: str = "cpu", **options: Any,
    ) -> LlamaCppPlanner:  # fmt: skip
        """Open a GGUF chat model (checked first: the file, llama-cpp-python, a chat template).

        Args:
            path: the ``.gguf`` file.
            threads: CPU threads (default: the cores this process may use).
            context: positions of the KV cache (default: the model's, at most 8192).
            device: ``cpu``, or ``cuda`` to offload every layer (a CUDA build of llama.cpp).
            options: the decoding options of :class:`LlamaCppPlanner`.
        """
        info = check_gguf_file(path)
        if not llama_cpp_installed():
            raise InvalidValue(
                "planner", f"{{planner}} on llama.cpp needs llama-cpp-python: {LLAMA_CPP_INSTALL}"
            )
        import llama_cpp

        threads = threads or len(os.sched_getaffinity(0))
        layers = -1 if str(device).startswith("cuda") else 0

        def load(positions: int):
            try:
                return llama_cpp.Llama(
                    str(info), n_ctx=positions, n_threads=threads, n_threads_batch=threads,
                    n_gpu_layers=layers, verbose=False,
                )  # fmt: skip
            except ValueError as err:
                message = f"{{planner}} {literal(info)}: llama.cpp cannot open it ({literal(err)})"
                raise InvalidValue("planner", message) from None

        wanted = context or MAX_CONTEXT
        llm = load(wanted)
        trained = llama_cpp.llama_model_n_ctx_train(llm.model)
        if 0 < trained < wanted:  # no more positions than the model was trained for
            del llm
            llm = load(trained)
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise InvalidValue(
                "planner",
                f"{{planner}} {literal(info)} has no chat template (no tokenizer.chat_template "
                "in the file; a chat model's GGUF carries one)",
            )
        name = llm.metadata.get("general.name") or info.name
        return cls(llm, name=str(name), chat_template=template, **options)

    def render(self, messages: Sequence[PlannerMessage]) -> str:
        """The prompt text of the conversation (see :func:`~vitron.planners.chat.render_chat`)."""
        apply = lambda rows: self.formatter(messages=rows).prompt  # noqa: E731
        return render_chat(apply, self.row, messages)

    def row(self, message: PlannerMessage) -> dict[str, Any]:
        return {"role": message.role, "content": "".join(str(p) for p in message.parts)}

    def tokens(self, text: str) -> list[int]:
        """The prompt's tokens (the template writes any BOS it wants)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def grammar(self, grammar: PlannerGrammar):
        """The grammar compiled for this vocabulary: xgrammar's, or llama.cpp's ``LlamaGrammar``
        (its GBNF checked first); cached by its text."""
        if grammar.ebnf not in self.grammars:
            if self.compiler is not None:
                import xgrammar as xgr

                compiled = self.compiler.compile_grammar(xgr.Grammar.from_ebnf(grammar.ebnf))
            else:  # check_gbnf first: the binding aborts the process on a parse error
                compiled = self.llama_cpp.LlamaGrammar.from_string(grammar.gbnf, verbose=False)
            self.grammars[grammar.ebnf] = compiled
        return self.grammars[grammar.ebnf]

    def logits(self, grammar: PlannerGrammar, prompt: int):
        """``(logits processor, llama.cpp grammar or None)`` of one reply."""
        limits = grammar.limits
        if self.compiler is not None:
            from vitron.planners.chat import GrammarLogits

            logits = GrammarLogits(
                self.grammar(grammar), self.answers, self.banned.tolist(), limits.max_answer,
                self.no_repeat,
            )  # fmt: skip
            return NumpyLogits(logits), None
        rules = AnswerRules(self.answers, limits.max_answer, self.no_repeat)
        return RulesLogits(rules, self.banned, prompt), self.grammar(grammar)

    def reply(
        self, messages: Sequence[PlannerMessage], grammar: PlannerGrammar,
        on_text: Callable[[str], None] | None = None,
    ) -> str:  # fmt: skip
        """The model's next reply under ``grammar`` (as :meth:`ChatPlanner.reply`).

        Raises:
            ValueError: the prompt and the reply's budget do not fit the KV cache.
        """
        from llama_cpp import LogitsProcessorList

        prompt = self.tokens(self.render(messages))
        budget = grammar.max_tokens + 1
        if len(prompt) + budget > self.llm.n_ctx():
            raise ValueError(
                f"the conversation ({len(prompt)} tokens) and a reply of up to {budget} do not "
                f"fit {self.llm.n_ctx()} positions: start a new conversation"
            )
        processor, gbnf = self.logits(grammar, len(prompt))
        pieces = None if on_text is None else TextPieces(self.decode, self.stop_ids, on_text)
        sampling = self.sampling()
        self.llm.set_seed(self.seed)
        start, first, tokens = time.perf_counter(), None, []
        for token in self.llm.generate(
            prompt, logits_processor=LogitsProcessorList([processor]),
            grammar=gbnf, **sampling,
        ):  # fmt: skip
            first = first or time.perf_counter()
            tokens.append(token)
            if token in self.stops:
                break
            if pieces is not None:
                pieces.add([token])
            if len(tokens) >= budget:
                raise RuntimeError(f"the reply ran past its {budget} tokens without ending")
        if pieces is not None:
            pieces.end()
        end = time.perf_counter()
        # llama.cpp's grammar sampler runs inside its decoding loop, timed with it: no share
        grammar_s = sum(processor.inner.timings) if gbnf is None else None
        stop = tokens[-1] if tokens and tokens[-1] in self.stops else None
        self.last = ReplyStats(len(tokens), (first or end) - start, end - start, grammar_s, stop)
        return self.decode([t for t in tokens if t not in self.stop_ids])

    def decode(self, tokens: list[int]) -> str:
        """The text of a reply's tokens (stop tokens removed)."""
        data = b"".join(self.answers.pieces[t] for t in tokens)
        return data.decode("utf-8", errors="replace")

    def sampling(self) -> dict[str, Any]:
        """llama.cpp's sampler settings equal to transformers' for the same options: greedy, or
        temperature + top-k 50 + top-p (min-p and typical sampling off)."""
        neutral = {"min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0}
        if not self.generation["do_sample"]:
            return {**neutral, "temp": 0.0, "top_k": 1, "top_p": 1.0}
        g = self.generation
        return {**neutral, "temp": g["temperature"], "top_k": 50, "top_p": g["top_p"]}


def _piece(llama_cpp, vocab, token: int) -> bytes:
    """A token's bytes as it is written in text (control tokens: empty)."""
    buffer = ctypes.create_string_buffer(256)
    size = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    return buffer.raw[: max(size, 0)]


def _text(llm, token: int) -> str:
    """A special token's text (``<|im_end|>``) for the chat template; empty if none."""
    if token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")
