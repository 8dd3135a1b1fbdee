"""Any chat model from the hub as Vitron's planner, zero-shot, its replies held to the invocation
grammar (:mod:`vitron.planners.grammar`) by xgrammar.

:class:`ChatPlanner` wraps a transformers model: an image-text-to-text model
(``AutoModelForImageTextToText`` + ``AutoProcessor``, its own chat template; it sees the images)
or a text-only chat LLM (``AutoModelForCausalLM`` + ``AutoTokenizer``; it is told what each
image is by name and size). :class:`PlannerAssistant` holds the conversation: the system prompt
lists the tasks from the schema's ``TaskSpec``s; each reply is one JSON object, a final answer or
calls; calls run through the :class:`~vitron.router.Router`, their results go back (the images
they made attached for a model that takes images, described otherwise) and the model answers.
Its ``chat`` returns the :class:`~vitron.assistant.Turn` of the trained model's Assistant, so
``vitron run``, ``chat`` and ``app`` take either.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from common_kernels.runtime.errors import InvalidValue, literal
from vitron.assistant import Reply, Turn, check_media
from vitron.checks import check_generation
from vitron.invocations.schema import IMAGE, InputCounts, InvocationError, parse_invocation
from vitron.io import printable
from vitron.planners.grammar import GrammarLimits, PlannerGrammar, describe_tasks
from vitron.planners.regions import convention_of, describe_region
from vitron.planners.rules import AnswerRules, AnswerVocab, check_no_repeat
from vitron.regions import Region, check_regions
from vitron.router import CallOutcome, Router, TurnInputs, results_message
from vitron.specialists.registry import SpecialistRegistry

GRAMMAR_INSTALL = "pip install 'vitron[planner]' (or: pip install xgrammar)"
SYSTEM_PROMPT = """You are the planner of a vision assistant. You answer the user's request, \
calling vision specialists when the request needs them.
Reply with exactly one JSON object and nothing else:
- {{"answer": "..."}} when no specialist is needed, and to answer after the results came back;
- {{"version": 1, "calls": [{{"id": "c0", "task": "TASK", "args": {{...}}}}, ...]}} to call \
specialists. Call ids are c0, c1, ... in order.
Argument values are literals, or references: {inputs}$c0.mask names the output "mask" of call c0 \
(a later call may use an earlier call's output).
Tasks:
{tasks}
After your calls run you get their results; then answer with {{"answer": "..."}}."""


def require_grammar_engine():
    """Refuse a missing xgrammar with its install line (``InvalidValue`` on ``planner``), without
    importing it (it imports transformers)."""
    import importlib.util
    import sys

    if sys.modules.get("xgrammar", 0) is None or importlib.util.find_spec("xgrammar") is None:
        raise InvalidValue(
            "planner", f"{{planner}} needs the grammar engine xgrammar: {GRAMMAR_INSTALL}"
        )


class GrammarLogits:
    """A transformers logits processor that holds a reply to its grammar and answer rules (one
    use per ``generate`` call, batch 1). Each step it sets to -inf, in place where the scores
    are (a GPU's logits stay on the GPU; only the grammar's bitmask travels), the tokens the
    grammar does not allow next, the ``banned`` ones (special tokens), the positions of a padded
    output layer beyond the tokenizer's vocabulary, and what
    :class:`~vitron.planners.rules.AnswerRules` refuses (the answer's length, repeated phrases).

    Args:
        compiled: the grammar compiled by xgrammar for the model's tokenizer.
        answers: the tokenizer's :class:`~vitron.planners.rules.AnswerVocab` (default: built
            from the compiled grammar's tokenizer, which takes a moment on a large vocabulary).
        banned: token ids never allowed.
        max_answer: tokens of a final answer's text (:class:`~vitron.planners.rules.AnswerRules`).
        no_repeat: n of the answer's no-repeat n-gram rule (0: off).

    Attributes:
        timings: each step's time in the grammar and the rules, in seconds.
        first_call: ``time.perf_counter()`` at the first step (the prompt's prefill done).
    """

    def __init__(
        self, compiled, answers: AnswerVocab | None = None, banned: Sequence[int] = (),
        max_answer: int = 256, no_repeat: int = 4,
    ) -> None:  # fmt: skip
        import xgrammar as xgr

        info = compiled.tokenizer_info
        self.apply = xgr.apply_token_bitmask_inplace
        self.matcher = xgr.GrammarMatcher(compiled)
        self.vocab = info.vocab_size
        self.mask = xgr.allocate_token_bitmask(1, self.vocab)  # filled on the CPU
        self.device_mask = self.mask  # its copy where the scores are
        answers = answers or AnswerVocab(info.decoded_vocab)
        self.rules = AnswerRules(answers, max_answer, no_repeat)
        self.banned = torch.tensor(sorted(set(banned)), dtype=torch.long)
        # for each set AnswerRules.must_close may return: the tokens outside it
        self.outside = {only: torch.from_numpy(o) for only, o in answers.outside.items()}
        self.timings: list[float] = []
        self.first_call: float | None = None
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor):
        start = time.perf_counter()
        self.first_call = self.first_call or start
        if self.started and not self.matcher.is_terminated():
            token = int(input_ids[0, -1])
            if not self.matcher.accept_token(token):
                raise RuntimeError(f"the grammar refused token {token} it had allowed")
            self.rules.accept(token)
        self.started = True
        self.matcher.fill_next_token_bitmask(self.mask, 0)
        self.to(scores.device)
        # scores: (1, V'), V' >= the tokenizer's vocabulary V (a padded output layer)
        work = scores if scores.dtype == torch.float32 else scores.float()
        work[:, self.vocab :] = float("-inf")
        if self.device_mask is not self.mask:
            # safe to refill next step: reading the sampled token waits for this copy
            self.device_mask.copy_(self.mask, non_blocking=True)
        self.apply(work, self.device_mask, vocab_size=self.vocab)
        work[:, self.banned] = float("-inf")
        if (only := self.rules.must_close()) is not None:
            work[:, : self.vocab][:, self.outside[only]] = float("-inf")
        elif banned := self.rules.banned():
            work[:, banned] = float("-inf")
        self.timings.append(time.perf_counter() - start)
        return work if work is scores else work.to(scores.dtype)

    def to(self, device: torch.device) -> None:
        """Keep the index tensors and a copy of the mask on the scores' device (moved once)."""
        if self.banned.device == device:
            return
        if device.type != "cpu":
            self.mask = self.mask.pin_memory() if device.type == "cuda" else self.mask
            self.device_mask = torch.empty_like(self.mask, device=device)
        self.banned = self.banned.to(device)
        self.outside = {only: outside.to(device) for only, outside in self.outside.items()}


@dataclass(frozen=True)
class ReplyStats:
    """What one reply cost.

    Args:
        tokens: tokens generated, the stop token included.
        first_token_s: seconds from the call until the first token's scores (the prompt's
            prefill).
        seconds: seconds of the whole reply.
        grammar_s: seconds of it in the grammar's mask and the answer rules (None: not
            measured apart, as by llama.cpp's GBNF sampler).
        stop: the stop token that ended the reply (None: its budget ran out).
    """

    tokens: int
    first_token_s: float
    seconds: float
    grammar_s: float | None
    stop: int | None = None

    @property
    def tokens_per_s(self) -> float:
        """Decoding speed after the first token (0 for a reply of one token)."""
        decode = self.seconds - self.first_token_s
        return (self.tokens - 1) / decode if self.tokens > 1 and decode > 0 else 0.0

    def line(self) -> str:
        """``57 tokens in 4.3 s (13.2 tokens/s; prompt 0.8 s, grammar 1%)``."""
        share = ""
        if self.grammar_s is not None and self.seconds > 0:
            share = f", grammar {self.grammar_s / self.seconds:.0%}"
        return (
            f"{self.tokens} tokens in {self.seconds:.1f} s ({self.tokens_per_s:.1f} tokens/s; "
            f"prompt {self.first_token_s:.1f} s{share})"
        )


@dataclass
class PlannerMessage:
    """One message: its role and its parts (texts and images, in order)."""

    role: str
    parts: list[str | Image.Image] = field(default_factory=list)


class ChatPlanner:
    """A chat model that writes Vitron's replies under the invocation grammar.

    Args:
        model: a transformers model with ``generate``.
        processor: its ``AutoProcessor`` (image-text-to-text) or ``AutoTokenizer`` (text-only);
            it must carry a chat template.
        vision: whether the model takes images.
        name: the model's name (messages, ``Turn`` records).
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature, > 0.
        top_p: nucleus sampling mass, in (0, 1].
        seed: the sampling seed.
        no_repeat: n of the no-repeat n-gram rule inside a final answer's text, 0 (off) or
            >= 2 (:class:`~vitron.planners.rules.AnswerRules`).

    Attributes:
        last: what the last reply cost (:class:`ReplyStats`; None before the first).
    """

    engine = "transformers"

    def __init__(
        self, model, processor, *, vision: bool, name: str = "planner", do_sample: bool = False,
        temperature: float = 0.7, top_p: float = 0.9, seed: int = 0, no_repeat: int = 4,
    ) -> None:  # fmt: skip
        require_grammar_engine()
        import xgrammar as xgr

        check_generation(1, temperature, top_p, seed, 1)
        check_no_repeat(no_repeat)

        if not getattr(processor, "chat_template", None):
            raise InvalidValue(
                "planner",
                f"{{planner}} {literal(name)} has no chat template (a chat or instruction-tuned "
                "model carries one in its tokenizer or processor config)",
            )
        self.model, self.processor, self.vision, self.name = model.eval(), processor, vision, name
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.convention = convention_of(model.config, vision)
        self.generation = {"do_sample": do_sample, "temperature": temperature, "top_p": top_p}
        self.seed = seed
        # the grammar covers the tokenizer's tokens; GrammarLogits masks the rest of a padded
        # output layer itself
        vocab = min(len(self.tokenizer), model.get_output_embeddings().weight.shape[0])
        self.stop_ids = stop_token_ids(self.tokenizer, model)
        info = xgr.TokenizerInfo.from_huggingface(
            self.tokenizer, vocab_size=vocab, stop_token_ids=self.stop_ids
        )
        self.compiler = xgr.GrammarCompiler(info)
        self.answers = AnswerVocab(info.decoded_vocab)

        # special tokens (image placeholders, row markers) never appear inside the JSON: as
        # text they would read as inputs when the history is rendered again
        special = {i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special}
        special |= set(self.tokenizer.all_special_ids)
        self.banned = sorted(i for i in special - set(self.stop_ids) if i < vocab)
        self.compiled: dict[str, Any] = {}
        self.no_repeat = no_repeat
        self.last: ReplyStats | None = None

    @classmethod
    def from_pretrained(
        cls, name: str | Path, *, device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None, **options: Any,
    ) -> ChatPlanner:  # fmt: skip
        """A planner from a hub id or folder: the grammar engine, the source (the loader rule:
        an unknown name or an unreachable hub says so at once), the config, the processor and
        its chat template are checked before any weight loads.

        Args:
            name: a transformers model id or folder, or a ``.gguf`` file (a text-only chat LLM
                read through transformers' GGUF support, :mod:`vitron.planners.gguf`).
            device: where the model runs.
            dtype: the weights' dtype (default float32).
            options: :class:`ChatPlanner`'s decoding options.
        """
        from vitron.models.sources import pretrained_source
        from vitron.planners.gguf import is_gguf_name, load_gguf

        require_grammar_engine()
        if is_gguf_name(name):
            # the file, the gguf package, its tokenizer and chat template checked first
            model, tokenizer = load_gguf(name, dtype)
            return cls(model.to(device), tokenizer, vision=False, name=str(name), **options)
        source = pretrained_source(name, "planner", "chat model folder")
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
        )
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        )

        try:
            config = AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as err:
            message = f"{{planner}} {literal(name)}: no transformers config ({literal(err)})"
            raise InvalidValue("planner", message) from None
        kind = config.model_type
        vision = kind in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        if not vision and kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise InvalidValue(
                "planner",
                f"{{planner}} {literal(name)} is a {literal(kind)} model, neither an "
                "image-text-to-text model nor a causal LM",
            )
        processor = (AutoProcessor if vision else AutoTokenizer).from_pretrained(source)
        if not getattr(processor, "chat_template", None):
            raise InvalidValue(
                "planner",
                f"{{planner}} {literal(name)} has no chat template (a chat or instruction-tuned "
                "model carries one in its tokenizer or processor config)",
            )
        auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        model = auto.from_pretrained(source, dtype=dtype or torch.float32).to(device)
        return cls(model, processor, vision=vision, name=str(name), **options)

    def compile(self, grammar: PlannerGrammar):
        """The grammar compiled for this tokenizer (cached by its text)."""
        if grammar.ebnf not in self.compiled:
            import xgrammar as xgr

            self.compiled[grammar.ebnf] = self.compiler.compile_grammar(
                xgr.Grammar.from_ebnf(grammar.ebnf)
            )
        return self.compiled[grammar.ebnf]

    def render(self, messages: Sequence[PlannerMessage]) -> str:
        """The prompt text of the conversation (images as the template's placeholders; see
        :func:`render_chat`)."""
        apply = functools.partial(
            self.processor.apply_chat_template, add_generation_prompt=True, tokenize=False
        )
        return render_chat(apply, self.row, messages)

    def row(self, message: PlannerMessage) -> dict[str, Any]:
        if not self.vision:
            return {"role": message.role, "content": "".join(str(p) for p in message.parts)}
        content = [
            {"type": "image"} if isinstance(p, Image.Image) else {"type": "text", "text": p}
            for p in message.parts
        ]
        return {"role": message.role, "content": content}

    def reply(
        self, messages: Sequence[PlannerMessage], grammar: PlannerGrammar,
        on_text: Callable[[str], None] | None = None,
    ) -> str:  # fmt: skip
        """The model's next reply under ``grammar`` (the JSON text, stop tokens removed).

        Args:
            messages: the conversation, system message first.
            grammar: the grammar the reply is held to.
            on_text: told each new piece of the reply's text as it is generated (the pieces
                joined are the reply); None for none.
        """
        text = self.render(messages)
        images = [p for m in messages for p in m.parts if isinstance(p, Image.Image)]
        if self.vision:
            batch = self.processor(text=text, images=images or None, return_tensors="pt")
        else:
            batch = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        from transformers import LogitsProcessorList

        torch.manual_seed(self.seed)
        processor, start = self.logits(grammar), time.perf_counter()
        pieces = None if on_text is None else TextPieces(self.decode, self.stop_ids, on_text)
        with torch.inference_mode():
            out = self.model.generate(
                **batch, max_new_tokens=grammar.max_tokens + 1,
                logits_processor=LogitsProcessorList([processor]),
                eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id
                if self.tokenizer.pad_token_id is not None else self.stop_ids[0],
                streamer=pieces,
                **self.sampling(),
            )  # fmt: skip
        end = time.perf_counter()
        tokens = out[0, batch["input_ids"].shape[1] :].tolist()
        first = (processor.first_call or end) - start
        stop = tokens[-1] if tokens and tokens[-1] in self.stop_ids else None
        self.last = ReplyStats(len(tokens), first, end - start, sum(processor.timings), stop)
        return self.decode([t for t in tokens if t not in self.stop_ids])

    def decode(self, tokens: list[int]) -> str:
        """The text of a reply's tokens (stop tokens removed)."""
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    def logits(self, grammar: PlannerGrammar) -> GrammarLogits:
        """A fresh logits processor of ``grammar`` and its answer rules (one per ``generate``
        call)."""
        compiled, limits = self.compile(grammar), grammar.limits
        return GrammarLogits(compiled, self.answers, self.banned, limits.max_answer, self.no_repeat)

    def sampling(self) -> dict[str, Any]:
        if self.generation["do_sample"]:
            return dict(self.generation)
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def render_chat(
    apply: Callable[[list[dict[str, Any]]], str],
    row: Callable[[PlannerMessage], dict[str, Any]],
    messages: Sequence[PlannerMessage],
) -> str:
    """The prompt text of a conversation by a chat template: with a system message, or with the
    system text at the head of the first user message for a template that takes no system role.

    Args:
        apply: the template, rows -> text (the generation prompt added).
        row: one message as the template's row (``{"role": ..., "content": ...}``).
        messages: the conversation, system message first.
    """
    rows = [row(m) for m in messages]
    try:
        return apply(rows)
    except Exception:  # a template that refuses a system role (jinja's TemplateError)
        if rows[0]["role"] != "system":
            raise
        return apply([row(m) for m in merge_system(messages)])


class TextPieces:
    """Tells ``on_text`` each new piece of a reply as its tokens come: the stop tokens left out,
    decoded as the whole reply is decoded, so the pieces joined are that reply. A transformers
    streamer (``generate(streamer=...)``: ``put``, ``end``) or fed by :meth:`add`.

    Args:
        decode: a reply's tokens -> its text.
        stop_ids: the tokens that end a reply.
        on_text: told each new piece.
    """

    def __init__(
        self, decode: Callable[[list[int]], str], stop_ids: Sequence[int],
        on_text: Callable[[str], None],
    ) -> None:  # fmt: skip
        self.decode, self.stop_ids, self.on_text = decode, set(stop_ids), on_text
        self.tokens: list[int] = []
        self.shown = 0
        self.prompt = True  # generate's first put is the prompt

    def put(self, value: torch.Tensor) -> None:
        if self.prompt:
            self.prompt = False
            return
        self.add(value.reshape(-1).tolist())

    def add(self, tokens: Sequence[int]) -> None:
        self.tokens += [t for t in tokens if t not in self.stop_ids]
        self.flush(final=False)

    def end(self) -> None:
        self.flush(final=True)

    def flush(self, final: bool) -> None:
        text = self.decode(self.tokens)

        # a byte-level token may end inside a character: wait for the rest of its bytes
        if (final or not text.endswith("\ufffd")) and len(text) > self.shown:
            self.on_text(text[self.shown :])
            self.shown = len(text)


def stop_token_ids(tokenizer, model) -> list[int]:
    """The ids that end a reply: the tokenizer's and the generation config's end-of-sequence."""
    found = []
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in found:
                found.append(int(token))
    if not found:
        raise InvalidValue("planner", "{planner} has no end-of-sequence token")
    return found


def merge_system(messages: Sequence[PlannerMessage]) -> list[PlannerMessage]:
    """The system text moved to the head of the first user message."""
    system, first, *rest = messages
    return [PlannerMessage(first.role, [*system.parts, "\n\n", *first.parts]), *rest]


class ReplyEcho:
    """Writes a planner's replies to stderr as they are written (``chat(progress=True)``): each
    after ``planner:`` on its own line, control characters escaped, then what it cost
    (:meth:`ReplyStats.line`), so a long reply is never a silence.

    Args:
        planner: the planner (its ``last`` is read after each reply).
        on_text: also told ``(k, piece)``, as ``chat``'s ``on_text`` (None: only written).
        stream: where to write (default: ``sys.stderr`` at each write).
    """

    def __init__(self, planner, on_text=None, stream=None) -> None:
        self.planner, self.on_text, self.stream = planner, on_text, stream
        self.started = False

    def write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(text)
        stream.flush()

    def __call__(self, k: int, piece: str) -> None:
        if not self.started:
            self.write("planner: ")
            self.started = True
        self.write(printable(piece))
        if self.on_text is not None:
            self.on_text(k, piece)

    def end(self, scripted: bool) -> None:
        """The reply is complete: its line ends, then its cost (none for a scripted reply)."""
        cost = self.planner.last
        tail = "" if scripted or cost is None else f"planner: {cost.line()}\n"
        self.write(("\n" if self.started else "") + tail)
        self.started = False


class PlannerAssistant:
    """A conversation with a :class:`ChatPlanner` and the specialists (the interface of
    :class:`~vitron.assistant.Assistant`: ``chat``, ``reset``, ``inputs``, ``router``).

    Args:
        planner: the chat model.
        registry: the specialists; their tasks are the ones offered.
        output_dir: where specialists write files.
        max_rounds: rounds of calls per turn, >= 1 (the reply after the last round is held to
            an answer).
        limits: the reply grammar's bounds.
        seed: the specialists' seed.
        require_calls: the first reply of a turn must call specialists (no direct answer).
        scripted_replies: replies used instead of decoding, in order (testing aid).
    """

    def __init__(
        self, planner: ChatPlanner, registry: SpecialistRegistry, output_dir: str | Path, *,
        max_rounds: int = 1, limits: GrammarLimits | None = None, seed: int = 0,
        require_calls: bool = False, scripted_replies: Sequence[str] = (),
    ) -> None:  # fmt: skip
        check_generation(1, 1.0, 1.0, seed, max_rounds)
        self.planner = planner
        self.router = Router(registry, output_dir, seed)
        self.tasks = [t for t in registry.by_task]
        self.max_rounds = max_rounds
        self.limits = limits or GrammarLimits()
        self.require_calls = require_calls
        self.scripted = list(scripted_replies)
        self.image_names: list[str] = []  # descriptions of the next images given without names
        self.reset()

    def reset(self) -> None:
        """Forget the conversation."""
        self.messages: list[PlannerMessage] = []
        self.inputs = TurnInputs([], [], [])
        self.names: list[str] = []

    @property
    def counts(self) -> InputCounts:
        return InputCounts(
            len(self.inputs.images), len(self.inputs.videos),
            region_images=tuple(r.image for r in self.inputs.regions),
        )  # fmt: skip

    def system(self) -> PlannerMessage:
        from vitron.invocations.schema import TASKS

        inputs = (
            "$image0, $image1, ... name the user's images, $region0, ... the regions they drew; "
        )
        tasks = describe_tasks({t: TASKS[t] for t in self.tasks})
        return PlannerMessage("system", [SYSTEM_PROMPT.format(inputs=inputs, tasks=tasks)])

    def chat(
        self, text: str, images: Sequence[Image.Image] = (),
        videos: Sequence[Sequence[Image.Image]] = (), regions: Sequence[Region] = (),
        progress: bool = False, names: Sequence[str] | None = None,
        on_text: Callable[[int, str], None] | None = None,
    ) -> Turn:  # fmt: skip
        """One user turn (see :meth:`vitron.assistant.Assistant.chat`).

        Args:
            text: the user's message.
            images: new images (``$image<k>`` continues the numbering).
            videos: not taken by a planner (refused).
            regions: new regions on the conversation's images; each reaches the model as its
                bounding box in the model's coordinate convention (:mod:`vitron.planners.regions`).
            progress: show on stderr each reply as it is written and what it cost
                (:class:`ReplyEcho`), and the calls' progress.
            names: a description of each new image; a text-only planner needs one per image
                (default: the image's file name, ``Image.filename``).
            on_text: told ``(k, piece)`` for each new piece of the turn's k-th reply as it is
                generated (a scripted reply in one piece); None for none.

        Raises:
            ValueError: an empty image, a video, a region outside its image, or an image without
                a description for a text-only planner, named; the conversation stays as it was.
        """
        check_media(images, videos)
        if videos:
            raise ValueError("videos: a chat-model planner takes images, not videos")
        if names is None:  # the command's file names first, then the images' own
            given, self.image_names = (
                self.image_names[: len(images)],
                self.image_names[len(images) :],
            )
            names = [*given, *(getattr(i, "filename", "") for i in images[len(given) :])]
        names = list(names)
        if len(names) != len(images):
            raise ValueError(f"names: {len(names)} names for {len(images)} images")
        if not self.planner.vision:
            for k, name in enumerate(names):
                if not str(name).strip():
                    raise ValueError(
                        f"images[{k}] has no description: a text-only planner sees an image only "
                        "as its name and size; give names=[...] (the command uses file names)"
                    )
        check_regions(regions, [*self.inputs.images, *images])
        before = (list(self.messages), self.inputs, list(self.names))
        try:
            return self._turn(text, list(images), list(regions), names, progress, on_text)
        except BaseException:
            self.messages, self.inputs, self.names = before
            raise

    def user_message(self, text: str, images, regions, names) -> PlannerMessage:
        parts: list[str | Image.Image] = []
        first = len(self.inputs.images)
        for k, (image, name) in enumerate(zip(images, names, strict=True)):
            label = f"$image{first + k}"
            size = f"{image.width}x{image.height} pixels"
            if self.planner.vision:
                parts += [image, f"(this image is {label}, {size})\n"]
            else:
                parts.append(f"[{label}: the image {Path(str(name)).name}, {size}]\n")
        every = [*self.inputs.images, *images]
        for k, region in enumerate(regions):
            label = f"$region{len(self.inputs.regions) + k}"
            where = describe_region(
                region.shape, every[region.image], self.planner.convention, self.planner.processor
            )
            parts.append(f"[{label}: a region on $image{region.image}, {where}]\n")
        parts.append(text)
        return PlannerMessage("user", parts)

    def _turn(self, text, images, regions, names, progress, on_text=None) -> Turn:
        message = self.user_message(text, images, regions, names)
        self.inputs = TurnInputs(
            [*self.inputs.images, *images], [], [*self.inputs.regions, *regions]
        )
        self.names += [str(n) for n in names]
        if not self.messages:
            self.messages.append(self.system())
        self.messages.append(message)
        turn = Turn(user=text)
        echo = ReplyEcho(self.planner, on_text) if progress else None
        for round_ in range(self.max_rounds + 1):
            mode = "answer" if round_ == self.max_rounds else "any"
            mode = "calls" if round_ == 0 and self.require_calls else mode
            grammar = PlannerGrammar(self.counts, self.tasks, self.limits, mode)
            tell = echo or on_text
            told = None if tell is None else functools.partial(tell, round_)
            if self.scripted:
                reply = Reply(self.scripted.pop(0), True)
                if told is not None:
                    told(reply.text)
            else:
                reply = Reply(self.planner.reply(self.messages, grammar, told), False)
            if echo is not None:
                echo.end(reply.scripted)
            turn.replies.append(reply)
            self.messages.append(PlannerMessage("assistant", [reply.text]))
            try:
                data = json.loads(reply.text)
                if isinstance(data, dict) and set(data) == {"answer"}:
                    turn.answer = str(data["answer"])
                    return turn
                invocation = parse_invocation(data, self.counts)
            except (json.JSONDecodeError, InvocationError) as err:
                turn.parse_error = str(err)
                turn.answer = reply.text
                return turn
            if round_ == self.max_rounds:  # a scripted reply may still hold calls here
                turn.unexecuted = invocation
                return turn
            outcomes = self.router.run(invocation, self.inputs, None, progress)
            turn.invocations.append(invocation)
            turn.outcomes.append(outcomes)
            self.messages.append(self.results(outcomes))
        raise AssertionError("unreachable: every round returns")

    def results(self, outcomes: Sequence[CallOutcome]) -> PlannerMessage:
        """The results message: one line per call, then each image a call made (attached for a
        model that takes images, its size otherwise)."""
        parts: list[str | Image.Image] = ["Results of your calls:\n" + results_message(outcomes)]
        for o in outcomes:
            for name, artifact in o.outputs.items():
                if artifact.kind != IMAGE or not isinstance(artifact.value, Image.Image):
                    continue
                image = artifact.value
                label = f"${o.call.id}.{name}"
                size = f"{image.width}x{image.height} pixels"
                if self.planner.vision:
                    parts += [f"\n{label} ({size}):", image]
                else:
                    parts.append(f"\n{label}: an image of {size}")
        parts.append('\nNow answer the user with {"answer": "..."} (or call more specialists).')
        return PlannerMessage("user", parts)
