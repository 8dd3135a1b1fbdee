"""Split an LLM reply into its free text and its invocation (typed JSON block or official tags)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from vitron.invocations.schema import (
    BLOCK_CLOSE,
    BLOCK_OPEN,
    InputCounts,
    Invocation,
    InvocationError,
    parse_invocation,
)
from vitron.invocations.tags import join_kept_text, parse_tags, tag_matches

GRAMMARS = ("auto", "json", "tags")
GRAMMAR_HELP = (
    "the calls' format in a Vitron model's reply: json (vitron's schema), tags (the official "
    "release's) or auto (either) (default: auto)"
)
DEFAULT_EOS = ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<eos>")
# end markers of the official model: "<SP>None</SP>" (also empty, any case and whitespace)
END_MARKER = re.compile(r"<\s*SP\s*>\s*(?:None)?\s*<\s*/\s*SP\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedReply:
    """A parsed reply.

    Args:
        text: the free text (blocks and end-of-sequence strings removed).
        invocation: the calls, or ``None`` for a plain answer.
        grammar: ``"json"``, ``"tags"`` or ``"none"``.
        num_signals: signal tokens found in the reply.
    """

    text: str
    invocation: Invocation | None
    grammar: str
    num_signals: int = 0


def strip_eos(text: str, eos: Sequence[str] = DEFAULT_EOS) -> str:
    """Remove every end-of-sequence string and official end marker (``<SP>None</SP>``),
    anywhere: generation can emit them mid-reply."""
    for token in eos:
        text = text.replace(token, "")
    pieces = END_MARKER.split(text)
    return join_kept_text(pieces) if len(pieces) > 1 else text


def parse_reply(
    text: str,
    *,
    grammar: str = "auto",
    counts: InputCounts | None = None,
    eos: Sequence[str] = DEFAULT_EOS,
    signal_token: str = "<signal>",
) -> ParsedReply:
    """Parse an LLM reply.

    Args:
        text: the decoded reply (special tokens kept).
        grammar: ``"json"`` (the ``<invoke>`` block), ``"tags"`` (official grammar) or
            ``"auto"`` (whichever appears; a reply using both is an error).
        counts: the conversation's inputs, to check ``$image<k>`` references.
        eos: end-of-sequence strings to remove.
        signal_token: the signal placeholder; its count must be 0 or the number of calls.

    Input placeholders the model wrote in its prose (``<image>``, ``<video>``, a ``<region>``
    that opens no ``<region>...</region>`` tag) are text and stay in ``text`` as written.

    Raises:
        InvocationError: a malformed block, or signal tokens that do not match the calls.
    """
    if grammar not in GRAMMARS:
        raise ValueError(f"grammar must be one of {GRAMMARS}, got {grammar!r}")
    text = strip_eos(text, eos)
    num_signals = text.count(signal_token)
    text = text.replace(signal_token, "")
    has_json = BLOCK_OPEN in text or BLOCK_CLOSE in text
    has_tags = bool(tag_matches(text))
    if grammar == "auto":
        if has_json and has_tags:
            raise InvocationError("", "the reply mixes an <invoke> block and official tags")
        grammar = "json" if has_json else "tags" if has_tags else "none"
    if grammar == "json" and has_json:
        free, invocation = _parse_json_block(text, counts)
    elif grammar == "tags" and has_tags:
        free, invocation = parse_tags(text, counts)
    else:
        free, invocation, grammar = text.strip(), None, "none"
    if invocation is not None and num_signals not in (0, len(invocation.calls)):
        raise InvocationError(
            "", f"the reply has {num_signals} signal tokens for {len(invocation.calls)} calls "
            "(expected none or one per call)"
        )  # fmt: skip
    return ParsedReply(free, invocation, grammar if invocation else "none", num_signals)


def _parse_json_block(text: str, counts: InputCounts | None) -> tuple[str, Invocation]:
    opens = [m.start() for m in re.finditer(re.escape(BLOCK_OPEN), text)]
    closes = [m.start() for m in re.finditer(re.escape(BLOCK_CLOSE), text)]
    if len(opens) != 1 or len(closes) != 1:
        raise InvocationError(
            "", f"a reply holds exactly one {BLOCK_OPEN}...{BLOCK_CLOSE} block "
            f"(found {len(opens)} opening and {len(closes)} closing tags)"
        )  # fmt: skip
    start, end = opens[0], closes[0]
    if end < start:
        raise InvocationError("", f"{BLOCK_CLOSE} comes before {BLOCK_OPEN}")
    invocation = parse_invocation(text[start + len(BLOCK_OPEN) : end], counts)
    return join_kept_text([text[:start], text[end + len(BLOCK_CLOSE) :]]), invocation
