"""A conversation with Vitron: reply, parse calls, dispatch them, feed results back, answer.

One :meth:`Assistant.chat` turn:

1. the user's text (with placeholders added for new images, videos and regions) joins the
   history; the LLM replies (or the next scripted reply is used, see below);
2. the reply is parsed (``<invoke>`` JSON block or official tags); a plain reply is the answer;
3. the signal embeddings of the reply's ``<signal>`` tokens are computed (one forward pass
   over prompt + reply) and the calls run through the :class:`~vitron.router.Router`;
4. the results go back as a ``results`` message and the LLM writes the final answer (up to
   ``max_rounds`` rounds of calls; calls in the last answer are not run and are reported).

Scripted replies (``scripted_replies=[...]``) replace the LLM's decoding for the first replies
of the conversation: a testing and demonstration aid that makes a random tiny LLM dispatch real
calls. The rest of the pipeline (tokenization, signal embeddings, routing) stays real.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vitron.checks import check_generation
from vitron.invocations import (
    InputCounts,
    Invocation,
    InvocationError,
    ParsedReply,
    parse_reply,
    strip_eos,
)
from vitron.models.vitron import VitronModel
from vitron.processing import Message, check_reply_budget, reply_budget
from vitron.regions import Region, check_regions
from vitron.router import CallOutcome, Router, TurnInputs, results_message
from vitron.specialists.registry import SpecialistRegistry


@dataclass
class Reply:
    """One LLM reply: its raw text (special tokens kept) and whether it was scripted."""

    text: str
    scripted: bool


@dataclass
class Turn:
    """Everything one turn did.

    Args:
        user: the user's message as sent to the LLM.
        replies: the LLM's raw replies (first, then after each round of results).
        invocations: the calls of each round.
        outcomes: the call outcomes of each round.
        answer: the final answer text.
        parse_error: why the last reply's calls could not be parsed (then it is the answer).
        unexecuted: calls written in the final answer that were not run (``max_rounds``).
    """

    user: str
    replies: list[Reply] = field(default_factory=list)
    invocations: list[Invocation] = field(default_factory=list)
    outcomes: list[list[CallOutcome]] = field(default_factory=list)
    answer: str = ""
    parse_error: str | None = None
    unexecuted: Invocation | None = None

    @property
    def files(self) -> list[Path]:
        return [f for round_ in self.outcomes for o in round_ for f in o.files]

    @property
    def failed(self) -> list[CallOutcome]:
        """The calls that did not succeed (``error``, or ``skipped`` after a failed input)."""
        return [o for round_ in self.outcomes for o in round_ if o.status != "ok"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "replies": [{"text": r.text, "scripted": r.scripted} for r in self.replies],
            "invocations": [inv.to_dict() for inv in self.invocations],
            "outcomes": [[o.to_dict() for o in round_] for round_ in self.outcomes],
            "answer": self.answer,
            "parse_error": self.parse_error,
            "unexecuted": None if self.unexecuted is None else self.unexecuted.to_dict(),
        }


class Assistant:
    """Vitron with its specialists.

    Args:
        model: the Vitron model.
        registry: the specialists.
        output_dir: where specialists write files.
        max_new_tokens: tokens per reply; more than the model's ``max_length`` leaves after the
            shortest prompt is refused (``InvalidArgument``), and a reply also stops where the
            conversation fills ``max_length``.
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        seed: seed of the sampling and of the specialists.
        max_rounds: rounds of calls per turn (>= 1; more than ``max_length`` can hold is
            refused).
        grammar: reply grammar, ``"auto"``, ``"json"`` or ``"tags"``.
        scripted_replies: replies used instead of decoding, in order (testing aid).
    """

    def __init__(
        self,
        model: VitronModel,
        registry: SpecialistRegistry,
        output_dir: str | Path,
        *,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seed: int = 0,
        max_rounds: int = 1,
        grammar: str = "auto",
        scripted_replies: Sequence[str] = (),
    ) -> None:
        check_generation(max_new_tokens, temperature, top_p, seed, max_rounds)
        budget = reply_budget(model.tokenizer, model.config)
        check_reply_budget(max_new_tokens, max_rounds, budget)
        self.model = model.eval()
        self.router = Router(registry, output_dir, seed)
        self.generation = {
            "max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature,
            "top_p": top_p, "seed": seed,
        }  # fmt: skip
        self.max_rounds = max_rounds
        self.grammar = grammar
        self.scripted = list(scripted_replies)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (scripted replies already used stay used)."""
        self.messages: list[Message] = []
        self.inputs = TurnInputs([], [], [])

    @property
    def counts(self) -> InputCounts:
        return InputCounts(
            len(self.inputs.images),
            len(self.inputs.videos),
            region_images=tuple(r.image for r in self.inputs.regions),
        )

    def user_message(self, text: str, images, videos, regions) -> str:
        """The user's text with a placeholder for every new medium it does not mention: images
        and videos in front, regions after the text (an imported official model,
        ``prompt_layout="official"``: regions after the images, before the text)."""
        cfg = self.model.config
        prefix = ""
        for token, new in ((cfg.image_token, images), (cfg.video_token, videos)):
            missing = len(new) - text.count(token)
            if missing < 0:
                raise ValueError(
                    f"the text has {text.count(token)} {token} but {len(new)} were given"
                )
            prefix += f"{token}\n" * missing
        missing = len(regions) - text.count(cfg.region_token)
        if missing < 0:
            raise ValueError(
                f"the text has {text.count(cfg.region_token)} {cfg.region_token} but "
                f"{len(regions)} regions were given"
            )
        if cfg.prompt_layout == "official" and missing:
            # the release's page: each region's placeholder right after the image line and
            # before the text, "<image>\n<objs> {text}" (vitron.official_prompt)
            return prefix + f"{cfg.region_token} " * missing + text
        suffix = "".join(
            f" (region {len(self.inputs.regions) + i}: {cfg.region_token})" for i in range(missing)
        )
        return prefix + text + suffix

    def chat(
        self,
        text: str,
        images: Sequence[Image.Image] = (),
        videos: Sequence[Sequence[Image.Image]] = (),
        regions: Sequence[Region] = (),
        progress: bool = False,
    ) -> Turn:
        """One user turn; returns what happened (the answer is ``turn.answer``).

        Args:
            text: the user's message.
            images: new images (``$image<k>`` continues the conversation's numbering).
            videos: new videos as lists of frames.
            regions: new regions; ``region.image`` indexes the conversation's images, and a box
                or stroke not inside that image is refused (``ValueError``).

        Raises:
            ValueError: an empty image (0 pixels wide or high), a video without frames, or a
                region outside its image, naming it (``images[0] is empty: 0x0 pixels; ...``);
                the conversation stays as it was.
            progress: show the replies' tokens and the calls' progress on stderr
                (``common_kernels.runtime.progress``).
        """
        check_media(images, videos)
        if videos and self.model.config.video_support is not None:
            raise ValueError(
                f"videos: this model takes no videos: {self.model.config.video_support}"
            )
        check_regions(regions, [*self.inputs.images, *images])
        content = self.user_message(text, images, videos, regions)
        before = (list(self.messages), self.inputs)
        try:
            return self._turn(content, images, videos, regions, progress)
        except BaseException:
            # a failed turn (bad region, too long a conversation, an interrupt) leaves the
            # conversation as it was, so the next turn does not inherit its inputs
            self.messages, self.inputs = before
            raise

    def _turn(self, content: str, images, videos, regions, progress) -> Turn:
        self.inputs = TurnInputs(
            [*self.inputs.images, *images],
            [*self.inputs.videos, *videos],
            [*self.inputs.regions, *regions],
        )
        self.messages.append(Message("user", content))
        turn = Turn(user=content)
        for round_ in range(self.max_rounds + 1):
            reply = self.next_reply(progress)
            turn.replies.append(reply)
            raw = clean_reply(reply.text)
            try:
                parsed = parse_reply(
                    raw,
                    grammar=self.grammar,
                    counts=self.counts,
                    signal_token=self.model.config.signal_token,
                )
            except InvocationError as err:
                turn.parse_error = str(err)
                turn.answer = raw.replace(self.model.config.signal_token, "").strip()
                self.messages.append(Message("assistant", turn.answer))
                return turn
            if parsed.invocation is None:
                turn.answer = parsed.text
                self.messages.append(Message("assistant", parsed.text))
                return turn
            if round_ == self.max_rounds:
                turn.answer = parsed.text
                turn.unexecuted = parsed.invocation
                self.messages.append(Message("assistant", parsed.text))
                return turn
            self.messages.append(Message("assistant", parsed.text, parsed.invocation, raw=raw))
            signals = self.signals(parsed) if parsed.num_signals else {}
            outcomes = self.router.run(parsed.invocation, self.inputs, signals, progress)
            turn.invocations.append(parsed.invocation)
            turn.outcomes.append(outcomes)
            self.messages.append(Message("results", results_message(outcomes)))
        raise AssertionError("unreachable: every round returns")

    def next_reply(self, progress: bool = False) -> Reply:
        """The next reply: a scripted one, else the model's (its tokens' progress on stderr
        when ``progress``)."""
        if self.scripted:
            return Reply(self.scripted.pop(0), True)
        sample = self.model.processor.sample(
            self.messages, self.inputs.images, self.inputs.videos, self.inputs.regions,
            add_generation_prompt=True, with_labels=False,
        )  # fmt: skip
        ids = self.model.generate(sample, **self.generation, progress=progress)
        return Reply(self.model.tokenizer.decode(ids, skip_special_tokens=False), False)

    def signals(self, parsed: ParsedReply):
        """Call id -> signal embedding, from one forward pass over the conversation so far.

        The i-th signal token of the newest reply gives its i-th call's embedding (signal
        tokens elsewhere, e.g. in user text, are escaped and never count; see
        :func:`vitron.processing.encode_conversation`).
        """
        sample = self.model.processor.sample(
            self.messages,
            self.inputs.images,
            self.inputs.videos,
            self.inputs.regions,
            with_labels=False,
        )
        embeddings = self.model.signal_embeddings(sample)
        calls = parsed.invocation.calls
        # one entry per call of the conversation, in order: the newest reply's calls are last
        last = embeddings[len(embeddings) - len(calls) :]
        return {call.id: e[1] for call, e in zip(calls, last, strict=True) if e is not None}


def check_media(images: Sequence[Image.Image], videos: Sequence[Sequence[Image.Image]]) -> None:
    """Refuse an empty image (0 pixels wide or high) or a video without frames, naming it as
    ``Assistant.chat``'s arguments (``images[0]``, ``videos[1][3]``)."""
    named = [(f"images[{k}]", image) for k, image in enumerate(images)]
    for k, frames in enumerate(videos):
        if len(frames) == 0:
            raise ValueError(f"videos[{k}] has no frames; a video needs at least one")
        named += [(f"videos[{k}][{t}]", frame) for t, frame in enumerate(frames)]
    for name, image in named:
        if image.width < 1 or image.height < 1:
            raise ValueError(
                f"{name} is empty: {image.width}x{image.height} pixels; an image needs at least 1x1"
            )


def clean_reply(text: str) -> str:
    """A model reply as the history keeps it: end-of-sequence strings and official end markers
    (``<SP>None</SP>``) removed, exactly as :func:`~vitron.invocations.parse_reply` removes
    them. Input placeholders the model wrote (``<image>``, a ``<region>`` in prose or in a
    ``<region>...</region>`` tag) stay as written: inside a reply they are ordinary tokens,
    never conversation inputs (see :meth:`vitron.processing.VitronProcessor.sample`)."""
    return strip_eos(text).strip()
