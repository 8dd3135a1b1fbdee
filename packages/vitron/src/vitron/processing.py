"""Conversations to token ids with label masks, and images / videos / regions to model inputs.

A conversation is a list of :class:`Message` (user, assistant, results). Templates:

``vicuna_v1`` (the official Vitron / LLaVA-1.5 template)::

    <s>{system} USER: {user} ASSISTANT: {reply}</s>USER: Results: {results} ASSISTANT: ...

``plain`` (stage-1 alignment: ``{user}\\n{reply}</s>`` with no system prompt).

The full string is tokenized once (so training and inference see the same tokens; an imported
official model tokenises it chunk by chunk around its placeholders, as the release does:
:mod:`vitron.official_prompt`) and the tokens whose characters fall inside an assistant reply
(its leading space, text, calls block, signal tokens and the closing end-of-sequence token) are
the only supervised labels.

Signal tokens come only from assistant replies. The system prompt describes the signal token
without spelling it, and a literal signal-token string in user text, results text or an
assistant's free text / calls block is escaped (:func:`escape_token`: a zero-width space after
its first character) so that it tokenises as ordinary text. Only a reply written by the model
itself (``Message.raw``) keeps its signal tokens as written. The i-th signal token inside an
assistant reply is the signal of that reply's i-th call; signal tokens anywhere else (or beyond
the reply's calls) belong to no call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import Tensor

from vitron.geometry import Geometry, apply_geometry, plan_geometry
from vitron.invocations.schema import TASKS, Invocation
from vitron.io import to_tensor
from vitron.models.config import VitronConfig
from vitron.regions import Region, model_box, patch_coverage

IGNORE_INDEX = -100
ROLES = ("user", "assistant", "results")
SYSTEM_PROMPT = (
    "You are Vitron, a vision assistant that understands, generates, segments and edits images "
    "and videos. When a request needs a tool, answer briefly, then write the calls as "
    '<invoke>{"version": 1, "calls": [...]}</invoke> followed by one signal token per call. '
    "Tools: " + ", ".join(TASKS) + "."
)  # never spell the signal token here: it would tokenise as a signal (see escape_token)
ZERO_WIDTH_SPACE = "\u200b"


def escape_token(text: str, token: str) -> str:
    """``text`` with every literal ``token`` broken by a zero-width space after its first
    character (``"<signal>"`` -> ``"<\\u200bsignal>"``): it reads the same but tokenises as
    ordinary text instead of as the special token."""
    if len(token) < 2:
        raise ValueError(f"cannot escape a token shorter than 2 characters: {token!r}")
    while token in text:  # a loop: self-overlapping tokens can reappear after one pass
        text = text.replace(token, token[0] + ZERO_WIDTH_SPACE + token[1:])
    return text


@dataclass
class Message:
    """One conversation turn.

    Args:
        role: ``"user"``, ``"assistant"`` or ``"results"`` (specialist results fed back).
        text: the text, with ``<image>`` / ``<video>`` / ``<region>`` placeholders for users.
        invocation: an assistant's calls, rendered after its text with one signal per call.
        raw: an assistant reply exactly as the model wrote it (end-of-sequence removed);
            rendered instead of ``text`` + canonical calls, so that signal embeddings and later
            turns see the model's own tokens. ``invocation`` still gives the signals' tasks.
    """

    role: str
    text: str
    invocation: Invocation | None = None
    raw: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if (self.invocation is not None or self.raw is not None) and self.role != "assistant":
            raise ValueError("only assistant messages carry an invocation or a raw reply")


def render_reply(message: Message, signal_token: str) -> str:
    """An assistant message as the LLM writes it (text, calls block, signal tokens).

    A raw reply is kept exactly; otherwise the text and the calls block are escaped
    (:func:`escape_token`) and exactly one signal token per call follows the block.
    """
    if message.raw is not None:
        return message.raw
    text = escape_token(message.text, signal_token)
    if message.invocation is None:
        return text
    block = escape_token(message.invocation.render(), signal_token)
    calls = block + signal_token * len(message.invocation.calls)
    return f"{text} {calls}" if text else calls


def render_conversation(
    messages: Sequence[Message],
    template: str,
    eos: str,
    signal_token: str,
    add_generation_prompt: bool,
    system_prompt: str | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """The prompt string and the character ranges of its supervised parts.

    ``system_prompt`` replaces :data:`SYSTEM_PROMPT` (``VitronConfig.system_prompt``: an
    imported official model keeps the system prompt it was trained with).

    Returns:
        the string, and one ``(start, end)`` character range per assistant message, in order.
        Only inside those ranges can a signal token appear: the system prompt, user and
        results texts are escaped (:func:`escape_token`).
    """
    if template == "plain":
        return _render_plain(messages, eos, signal_token, add_generation_prompt)
    system = SYSTEM_PROMPT if system_prompt is None else system_prompt
    text = escape_token(system, signal_token) + " "
    supervised = []
    for message in messages:
        if message.role == "user":
            text += f"USER: {escape_token(message.text, signal_token)} "
        elif message.role == "results":
            text += f"USER: Results: {escape_token(message.text, signal_token)} "
        else:
            text += "ASSISTANT:"
            start = len(text)
            text += " " + render_reply(message, signal_token) + eos
            supervised.append((start, len(text)))
    if add_generation_prompt:
        text += "ASSISTANT:"
    return text, supervised


def _render_plain(messages, eos, signal_token, add_generation_prompt):
    text, supervised = "", []
    for message in messages:
        if message.role == "assistant":
            start = len(text)
            text += render_reply(message, signal_token) + eos
            supervised.append((start, len(text)))
        else:
            text += escape_token(message.text, signal_token) + "\n"
    return text, supervised


def tokenize_conversation(
    tokenizer,
    messages: Sequence[Message],
    template: str,
    signal_token: str,
    add_generation_prompt: bool = False,
    system_prompt: str | None = None,
    placeholders: tuple[str, str] | None = None,
) -> tuple[Tensor, Tensor]:
    """Token ids and labels (``IGNORE_INDEX`` outside assistant replies) of a conversation.

    Args:
        tokenizer: a fast transformers tokenizer holding the placeholder tokens.
        messages: the conversation.
        template: ``"vicuna_v1"`` or ``"plain"``.
        signal_token: the signal placeholder string.
        add_generation_prompt: end with the assistant's prompt (inference).
        system_prompt: the ``vicuna_v1`` system prompt (``None``: :data:`SYSTEM_PROMPT`).
        placeholders: ``(image_token, region_token)`` of the official layout
            (``VitronConfig.official_placeholders``), or ``None``: one pass.

    Returns:
        (L,) int64 ids (BOS first when the tokenizer has one) and (L,) int64 labels.
    """
    ids, labels, _ = encode_conversation(
        tokenizer, messages, template, signal_token, add_generation_prompt, system_prompt,
        placeholders,
    )  # fmt: skip
    return ids, labels


def encode_conversation(
    tokenizer,
    messages: Sequence[Message],
    template: str,
    signal_token: str,
    add_generation_prompt: bool = False,
    system_prompt: str | None = None,
    placeholders: tuple[str, str] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Token ids, labels and the call each signal token belongs to.

    ``placeholders`` (``VitronConfig.official_placeholders``: image and region placeholder of
    an imported official model) tokenises the prompt as the release does
    (:func:`vitron.official_prompt.official_tokens`: chunk by chunk, the tokenizer's own BOS
    and word-start rule per chunk); ``None``: in one pass, BOS in front.

    Calls are numbered over the whole conversation, in order (``Sample.signal_tasks``). The
    i-th signal token inside the characters of an assistant reply is the signal of that
    reply's i-th call; a reply written without signals gives its calls none (later replies are
    not shifted), and signal tokens outside the replies or beyond a reply's calls belong to no
    call.

    Returns:
        (L,) int64 ids, (L,) int64 labels (as :func:`tokenize_conversation`) and (L,) int64
        signal index: the call index of each signal token of a reply, -1 everywhere else.
    """
    eos = tokenizer.eos_token or ""
    text, supervised = render_conversation(
        messages, template, eos, signal_token, add_generation_prompt, system_prompt
    )
    replies = [m for m in messages if m.role == "assistant"]
    if len(replies) != len(supervised):
        raise AssertionError("one supervised range per assistant message")
    num_calls = [len(m.invocation.calls) if m.invocation is not None else 0 for m in replies]
    first_call = [sum(num_calls[:r]) for r in range(len(replies))]
    signal_id = tokenizer.get_vocab().get(signal_token)
    if placeholders is None:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = list(encoded["input_ids"]), list(encoded["offset_mapping"])
    else:
        from vitron.official_prompt import official_tokens

        image_id, region_id = tokenizer.convert_tokens_to_ids(list(placeholders))
        ids, spans = official_tokens(text, tokenizer, *placeholders, image_id, region_id)
    labels = [IGNORE_INDEX] * len(ids)
    signal_index = [-1] * len(ids)
    seen = [0] * len(replies)  # signal tokens met so far in each reply
    for k, (start, end) in enumerate(spans):
        if end <= start:
            continue
        inside = [r for r, (lo, hi) in enumerate(supervised) if start < hi and end > lo]
        if inside:
            labels[k] = ids[k]
        if signal_id is not None and ids[k] == signal_id and len(inside) == 1:
            r = inside[0]
            if seen[r] < num_calls[r]:
                signal_index[k] = first_call[r] + seen[r]
            seen[r] += 1
    if placeholders is None and tokenizer.bos_token_id is not None:
        ids, labels = [tokenizer.bos_token_id, *ids], [IGNORE_INDEX, *labels]
        signal_index = [-1, *signal_index]
    return (
        torch.tensor(ids, dtype=torch.long),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(signal_index, dtype=torch.long),
    )


@dataclass
class RegionInput:
    """A region ready for the region encoder.

    Args:
        image: index of its image among the sample's images.
        coverage: (grid * grid,) fraction of each patch covered.
        box: (4,) bounding box in the model frame, in [0, 1].
    """

    image: int
    coverage: Tensor
    box: Tensor


@dataclass
class Sample:
    """One conversation with its media, ready for splicing.

    Args:
        input_ids: (L,) ids with one placeholder per image, video and region.
        labels: (L,) supervised ids or ``IGNORE_INDEX``; ``None`` at inference.
        images: (n, 3, S, S) normalised images, in placeholder order.
        videos: (m, T, 3, S, S) normalised videos.
        regions: regions in placeholder order.
        signal_tasks: task of each call of the conversation, in order (a call's signal
            embedding, when its reply wrote signal tokens, has this task).
        signal_targets: the specialist-conditioning target of each call's signal (or ``None``).
        geometries: how each image was mapped into the model frame.
        signal_index: (L,) for each token, the index in ``signal_tasks`` of the call whose
            signal token it is (signal tokens of assistant replies only), -1 everywhere else;
            ``None``: the sample has no signals.
        placeholder_mask: (L,) bool, True at the placeholder tokens that stand for an image,
            video or region (those outside assistant replies); a placeholder token inside a
            reply (the ``<region>`` of an official ``<region>...</region>`` tag) is an ordinary
            token with its own embedding. ``None``: every placeholder token counts.
    """

    input_ids: Tensor
    labels: Tensor | None = None
    images: Tensor | None = None
    videos: Tensor | None = None
    regions: list[RegionInput] = field(default_factory=list)
    signal_tasks: tuple[str, ...] = ()
    signal_targets: list[Tensor | None] = field(default_factory=list)
    geometries: list[Geometry] = field(default_factory=list)
    signal_index: Tensor | None = None
    placeholder_mask: Tensor | None = None


class VitronProcessor:
    """Turns conversations, images, videos and regions into :class:`Sample` objects.

    Args:
        tokenizer: the model's tokenizer (with the placeholder tokens added).
        config: the model config (image size, preprocessing, template, tokens).
    """

    def __init__(self, tokenizer, config: VitronConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        vision = config.vision
        self.mean = torch.tensor(vision.mean).view(3, 1, 1)
        self.std = torch.tensor(vision.std).view(3, 1, 1)

    def image(self, image: Image.Image) -> tuple[Tensor, Geometry]:
        """PIL image -> ((3, S, S) normalised pixels, its geometry)."""
        vision = self.config.vision
        pixels = to_tensor(image)  # (3, H, W)
        geometry = plan_geometry(
            pixels.shape[1], pixels.shape[2], vision.image_size, vision.preprocess
        )
        framed = apply_geometry(pixels, geometry, fill=vision.mean)  # (3, S, S)
        return (framed - self.mean) / self.std, geometry

    def video(self, frames: Sequence[Image.Image]) -> Tensor:
        """Frames -> (T, 3, S, S) with T = ``config.video_frames`` sampled uniformly."""
        if len(frames) == 0:
            raise ValueError("a video needs at least one frame")
        count = self.config.video_frames
        picks = torch.linspace(0, len(frames) - 1, count).round().long().tolist()
        return torch.stack([self.image(frames[i])[0] for i in picks])

    def region(self, region: Region, geometries: Sequence[Geometry]) -> RegionInput:
        """A region drawn on image ``region.image`` -> its patch coverage and box."""
        if not 0 <= region.image < len(geometries):
            raise ValueError(
                f"region refers to image {region.image} but the conversation has "
                f"{len(geometries)} image(s)"
            )
        geometry = geometries[region.image]
        coverage = patch_coverage(region.shape, geometry, self.config.vision.grid)
        return RegionInput(
            region.image, coverage.flatten().float(), model_box(region.shape, geometry).float()
        )

    def sample(
        self,
        messages: Sequence[Message],
        images: Sequence[Image.Image] = (),
        videos: Sequence[Sequence[Image.Image]] = (),
        regions: Sequence[Region] = (),
        *,
        add_generation_prompt: bool = False,
        with_labels: bool = True,
        signal_targets: Sequence[Tensor | None] | None = None,
    ) -> Sample:
        """Tokenize a conversation and preprocess its media.

        Raises:
            ValueError: when the placeholders do not match the media counts.
        """
        cfg = self.config
        if videos and cfg.video_support is not None:
            raise ValueError(f"this model takes no videos: {cfg.video_support}")
        ids, labels, signal_index = encode_conversation(
            self.tokenizer, messages, cfg.template, cfg.signal_token, add_generation_prompt,
            cfg.system_prompt, cfg.official_placeholders,
        )  # fmt: skip
        media = self.placeholder_mask(ids, labels)
        self.check_placeholders(ids, len(images), len(videos), len(regions), media)
        processed = [self.image(im) for im in images]
        geometries = [g for _, g in processed]
        tasks = tuple(
            call.task for m in messages if m.invocation is not None for call in m.invocation.calls
        )
        targets = list(signal_targets) if signal_targets is not None else [None] * len(tasks)
        if len(targets) != len(tasks):
            raise ValueError(f"{len(targets)} signal targets for {len(tasks)} calls")
        return Sample(
            input_ids=ids,
            labels=labels if with_labels else None,
            images=torch.stack([p for p, _ in processed]) if processed else None,
            videos=torch.stack([self.video(v) for v in videos]) if videos else None,
            regions=[self.region(r, geometries) for r in regions],
            signal_tasks=tasks,
            signal_targets=targets,
            geometries=geometries,
            signal_index=signal_index,
            placeholder_mask=media,
        )

    def placeholder_mask(self, ids: Tensor, labels: Tensor) -> Tensor:
        """(L,) bool: the placeholder tokens outside assistant replies (whose ``labels`` are
        ``IGNORE_INDEX``; see :func:`encode_conversation`). Only those stand for media: a
        reply is written by the model, and a placeholder token in it (an official
        ``<region>...</region>`` tag) is just a token it wrote."""
        cfg = self.config
        tokens = (cfg.image_token, cfg.video_token, cfg.region_token)
        is_placeholder = torch.isin(ids, torch.tensor([self.token_id(t) for t in tokens]))
        return is_placeholder & (labels == IGNORE_INDEX)

    def token_id(self, token: str) -> int:
        return self.tokenizer.convert_tokens_to_ids(token)

    def check_placeholders(
        self, ids: Tensor, images: int, videos: int, regions: int, mask: Tensor | None = None
    ) -> None:
        """Placeholders (those in ``mask``, default all) must match the media counts."""
        cfg = self.config
        for token, count in (
            (cfg.image_token, images),
            (cfg.video_token, videos),
            (cfg.region_token, regions),
        ):
            is_token = ids == self.token_id(token)
            found = int((is_token if mask is None else is_token & mask).sum())
            if found != count:
                raise ValueError(
                    f"the conversation has {found} {token} placeholder(s) but {count} "
                    f"{token.strip('<>')}(s) were given"
                )


@dataclass(frozen=True)
class ReplyBudget:
    """What a model's positions leave for replies (:func:`reply_budget`).

    Args:
        max_length: positions the model holds (``VitronConfig.max_length``).
        prompt: positions of the shortest prompt (system prompt, an empty user message, the
            assistant's prompt).
        round: positions one more round of calls adds at least (an empty reply and an empty
            results message).
    """

    max_length: int
    prompt: int
    round: int

    @property
    def reply(self) -> int:
        """The most new tokens a reply can have: the positions the shortest prompt leaves."""
        return self.max_length - self.prompt


def reply_budget(tokenizer, config: VitronConfig) -> ReplyBudget:
    """The positions of ``config``'s model that replies can use (nothing but the tokenizer runs).

    Args:
        tokenizer: the model's tokenizer.
        config: the model's config (template, tokens, ``max_length``).
    """

    def positions(messages: Sequence[Message]) -> int:
        ids, _, _ = encode_conversation(
            tokenizer, messages, config.template, config.signal_token, True,
            config.system_prompt, config.official_placeholders,
        )  # fmt: skip
        return int(ids.numel())

    first = [Message("user", "")]
    prompt = positions(first)
    then = positions([*first, Message("assistant", ""), Message("results", "")])
    return ReplyBudget(config.max_length, prompt, max(then - prompt, 1))


def check_reply_budget(
    max_new_tokens: int, max_rounds: int, budget: ReplyBudget, model: str = "the model"
) -> None:
    """Refuse a ``max_new_tokens`` or ``max_rounds`` the model's positions cannot hold, before
    any weights load or any token is generated: a reply of ``max_new_tokens`` after the
    shortest prompt, and ``max_rounds`` rounds of calls each adding at least ``budget.round``
    positions, must fit in ``max_length``.

    Args:
        max_new_tokens: tokens per reply.
        max_rounds: rounds of calls per turn.
        budget: the model's :class:`ReplyBudget`.
        model: how the message names the model.

    Raises:
        InvalidValue: (``max_new_tokens`` or ``max_rounds``) the estimate and the limit.
    """
    from common_kernels.runtime.errors import InvalidValue, literal

    holds = f"the {budget.max_length} positions {literal(model)} holds (its max_length)"
    need = budget.prompt + max_new_tokens
    if need > budget.max_length:
        raise InvalidValue(
            "max_new_tokens",
            f"{{max_new_tokens}} {max_new_tokens}: a reply of {max_new_tokens} tokens after the "
            f"shortest prompt ({budget.prompt} positions) needs {need} positions, more than "
            f"{holds}; at most {budget.reply}",
        )
    most = budget.reply // budget.round
    if max_rounds > most:
        need = budget.prompt + max_rounds * budget.round
        raise InvalidValue(
            "max_rounds",
            f"{{max_rounds}} {max_rounds}: {max_rounds} rounds of calls after the shortest "
            f"prompt ({budget.prompt} positions) need at least {need} positions "
            f"({budget.round} per round), more than {holds}; at most {most}",
        )
