"""The released checkpoint's prompt tokenisation, for imported models
(``VitronConfig.prompt_layout = "official"``).

The release (a LLaVA fork) does not tokenise its prompt in one pass. Its rule, in words:

1. the prompt is cut at every region placeholder (the release writes ``<objs>``) into pieces;
2. every piece is cut at every image placeholder (``<image>``) into chunks;
3. every chunk goes through the tokenizer's ordinary call on its own, special tokens included:
   a BOS in front when the tokenizer adds one, and sentencepiece's word-start ``▁`` in front of
   the chunk (one pass over the whole prompt would instead continue after the placeholder: no
   ``▁`` there for a ``legacy=False`` LLaMA tokenizer); the release's tokenizer is
   sentencepiece's own, which adds that ``▁`` even before a leading space, where transformers
   5's converted one does not: :func:`skips_leading_space` makes up for it (a chunk that starts
   with a space, such as the text after ``<objs> ``). Inside a chunk, the text after a special
   token (``</s>``) follows the tokenizer's ``legacy`` (``VitronConfig.tokenizer_options``);
4. the chunks are joined again, one image id between two chunks of a piece and one region id
   between two pieces;
5. BOS: in the first piece, when its first chunk starts with BOS, that BOS opens the prompt and
   every later chunk of the piece loses its first token (its own BOS); in the pieces after a
   region placeholder nothing is dropped, so each of their chunks keeps its BOS (a BOS follows
   every region placeholder, and every image placeholder after one).

The release also cuts at placeholders inside its own replies; here a placeholder inside a reply
is cut the same way, and :meth:`vitron.processing.VitronProcessor.placeholder_mask` then keeps
it an ordinary token (a reply never brings media). The release's ids for the placeholders
(-200, -300) are never embedded (the media rows replace them), so the model's own placeholder
ids stand in for them.

Where a region's features go: the release splices one row (its region extractor's output) at
each region placeholder, for the image spliced last before it, and its page writes the prompt
``<image>\\n<objs> {text}``; :meth:`vitron.assistant.Assistant.user_message` writes that layout
for an imported model.
"""

from __future__ import annotations

from typing import Any

Span = tuple[int, int]


def official_tokens(
    prompt: str,
    tokenizer: Any,
    image_token: str,
    region_token: str,
    image_id: int,
    region_id: int,
    *,
    offsets: bool = True,
) -> tuple[list[int], list[Span] | None]:
    """The token ids of ``prompt`` by the release's rule (module docstring), and the
    characters of ``prompt`` each token covers.

    Args:
        prompt: the whole prompt string (system prompt, turns, ``</s>`` separators); no BOS
            written in it: the tokenizer adds it.
        tokenizer: the model's transformers tokenizer (called once per chunk, as the release
            calls it: ``tokenizer(chunk)``).
        image_token: the image placeholder string.
        region_token: the region placeholder string.
        image_id: the id written for an image placeholder.
        region_id: the id written for a region placeholder.
        offsets: also return the spans (needs a tokenizer that gives offsets: a
            ``tokenizers``-backed one).

    Returns:
        the ids, and per id ``(start, end)`` in ``prompt`` (``start == end`` for a token that
        covers no character, such as a BOS), or ``None`` when ``offsets`` is False.
    """
    if not image_token or not region_token:
        raise ValueError("the official layout needs non-empty image and region placeholders")
    bos = tokenizer.bos_token_id
    pad = skips_leading_space(tokenizer)
    ids: list[int] = []
    spans: list[Span] = []
    cursor = 0  # where the next chunk starts in ``prompt``
    opens_with_bos = False
    for p, piece in enumerate(prompt.split(region_token)):
        if p:
            ids.append(region_id)
            spans.append((cursor, cursor + len(region_token)))
            cursor += len(region_token)
        for c, chunk in enumerate(piece.split(image_token)):
            if c:
                ids.append(image_id)
                spans.append((cursor, cursor + len(image_token)))
                cursor += len(image_token)
            chunk_ids, chunk_spans = _encode(tokenizer, chunk, cursor, offsets, pad)
            if p == 0 and c == 0:
                opens_with_bos = bos is not None and chunk_ids[:1] == [bos]
            elif p == 0 and opens_with_bos:
                # the first piece's later chunks lose their first token (their BOS)
                chunk_ids, chunk_spans = chunk_ids[1:], chunk_spans[1:]
            ids += chunk_ids
            spans += chunk_spans
            cursor += len(chunk)
    if cursor != len(prompt):
        raise AssertionError("the chunks must cover the prompt")
    return ids, (spans if offsets else None)


def skips_leading_space(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` adds no word start in front of a text that starts with a space:
    the ``Metaspace`` pre-tokenizer of transformers 5's LLaMA tokenizers does not, where
    sentencepiece itself (and so the release's tokenizer) always adds it (``" and"`` is
    ``"▁", "▁and"`` there, ``"▁and"`` here)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    if pre is None or type(pre).__name__ != "Metaspace":
        return False
    return getattr(pre, "prepend_scheme", "always") != "never"


def _encode(
    tokenizer: Any, chunk: str, at: int, offsets: bool, pad: bool = False
) -> tuple[list[int], list[Span]]:
    """One chunk through the tokenizer's ordinary call (special tokens added), its spans moved
    to where the chunk starts in the prompt. ``pad``: a chunk that starts with a space gets one
    more in front, so that a :func:`skips_leading_space` tokenizer writes sentencepiece's word
    start too (that space's token covers the chunk's first character)."""
    shift = 1 if pad and chunk.startswith(" ") else 0
    text = " " * shift + chunk
    if not offsets:
        chunk_ids = list(tokenizer(text)["input_ids"])
        return chunk_ids, [(at, at)] * len(chunk_ids)
    try:
        encoded = tokenizer(text, return_offsets_mapping=True)
    except NotImplementedError:
        raise ValueError(
            "the official prompt layout needs a tokenizer that gives character offsets (a "
            "tokenizers-backed one, as AutoTokenizer loads by default)"
        ) from None
    spans = [
        (at + max(start - shift, 0), at + max(end - shift, 0))
        for start, end in encoded["offset_mapping"]
    ]
    return list(encoded["input_ids"]), spans
