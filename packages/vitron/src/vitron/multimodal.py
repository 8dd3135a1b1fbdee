"""Splice media embeddings into token embeddings at their placeholders.

Each placeholder token (``<image>``, ``<video>``, ``<region>``) is replaced by its media's
embedding rows (an image: grid^2 rows, a video: frames x pooled grid^2 rows, a region: one row);
with a ``media_mask`` (``Sample.placeholder_mask``) only the marked ones are: a placeholder token
inside an assistant reply (an official ``<region>...</region>`` tag) keeps its token embedding.
Signal positions are those the sample's ``signal_index`` marks (signal tokens of assistant
replies, see :func:`vitron.processing.encode_conversation`), never every signal-token id.
Labels of media rows are ``IGNORE_INDEX``. Sequences longer than ``max_length`` are cut, but
never inside a media span: a span that would be cut is dropped whole. Batches are padded on the
right (training) or on the left (generation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vitron.processing import IGNORE_INDEX


@dataclass(frozen=True)
class Span:
    """Rows ``[start, end)`` of the spliced sequence filled by one medium of ``kind``."""

    kind: str
    start: int
    end: int


@dataclass
class Spliced:
    """A padded batch of spliced sequences.

    Args:
        inputs_embeds: (B, L, H) embeddings.
        attention_mask: (B, L) 1 on real rows, 0 on padding.
        labels: (B, L) targets or ``IGNORE_INDEX``; ``None`` without labels.
        spans: per sample, its media spans (positions in the padded batch).
        signal_positions: per sample, positions of its call signals that survived truncation.
        signal_indices: per sample, the call (index in ``Sample.signal_tasks``) of each of
            those positions.
        lengths: per sample, its unpadded length.
    """

    inputs_embeds: Tensor
    attention_mask: Tensor
    labels: Tensor | None
    spans: list[list[Span]]
    signal_positions: list[list[int]]
    signal_indices: list[list[int]]
    lengths: list[int]


def splice_batch(
    input_ids: Sequence[Tensor],
    token_embeds: Sequence[Tensor],
    media: Sequence[Sequence[Tensor]],
    placeholders: dict[int, str],
    *,
    labels: Sequence[Tensor] | None = None,
    signal_index: Sequence[Tensor | None] | None = None,
    media_mask: Sequence[Tensor | None] | None = None,
    max_length: int | None = None,
    padding_side: str = "right",
) -> Spliced:
    """Splice and pad a batch.

    Args:
        input_ids: per sample, (L_i,) token ids.
        token_embeds: per sample, (L_i, H) embeddings of those ids (placeholder rows unused).
        media: per sample, the embeddings (n_k, H) of its placeholders in order of appearance.
        placeholders: placeholder token id -> media kind.
        labels: per sample, (L_i,) labels.
        signal_index: per sample, (L_i,) the call index of each token that is a call's signal,
            -1 elsewhere (``Sample.signal_index``); ``None`` (for all or one sample): no signals.
        media_mask: per sample, (L_i,) bool: which placeholder tokens stand for media
            (``Sample.placeholder_mask``; a placeholder token inside an assistant reply is an
            ordinary token); ``None`` (for all or one sample): every placeholder token does.
        max_length: cut each spliced sequence to at most this many rows (``None`` = no cut).
        padding_side: ``"right"`` or ``"left"``.
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    rows, row_labels, spans, signals = [], [], [], []
    for i, ids in enumerate(input_ids):
        sample = _splice_one(
            ids,
            token_embeds[i],
            media[i],
            placeholders,
            None if labels is None else labels[i],
            None if signal_index is None else signal_index[i],
            None if media_mask is None else media_mask[i],
        )
        rows_i, labels_i, spans_i, signals_i = _truncate(*sample, max_length)
        rows.append(rows_i)
        row_labels.append(labels_i)
        spans.append(spans_i)
        signals.append(signals_i)
    lengths = [r.shape[0] for r in rows]
    longest, hidden = max(lengths), rows[0].shape[1]
    embeds = rows[0].new_zeros(len(rows), longest, hidden)
    mask = torch.zeros(len(rows), longest, dtype=torch.long, device=embeds.device)
    out_labels = torch.full(
        (len(rows), longest), IGNORE_INDEX, dtype=torch.long, device=embeds.device
    )
    out_spans, positions, indices = [], [], []
    for i, (r, n) in enumerate(zip(rows, lengths, strict=True)):
        shift = longest - n if padding_side == "left" else 0
        embeds[i, shift : shift + n] = r
        mask[i, shift : shift + n] = 1
        out_labels[i, shift : shift + n] = row_labels[i]
        out_spans.append([Span(s.kind, s.start + shift, s.end + shift) for s in spans[i]])
        positions.append([p + shift for p, _ in signals[i]])
        indices.append([k for _, k in signals[i]])
    return Spliced(
        embeds, mask, None if labels is None else out_labels, out_spans, positions, indices, lengths
    )


def _splice_one(ids, embeds, media, placeholders, labels, signal_index, media_mask=None):
    """One sample: (rows (N, H), labels (N,), spans, [(signal position, call index)])."""
    is_placeholder = torch.zeros_like(ids, dtype=torch.bool)
    for token_id in placeholders:
        is_placeholder |= ids == token_id
    if media_mask is not None:
        if media_mask.shape != ids.shape:
            raise ValueError(
                f"media_mask has shape {tuple(media_mask.shape)}; expected {tuple(ids.shape)}"
            )
        is_placeholder &= media_mask.to(ids.device)
    where = torch.nonzero(is_placeholder)[:, 0].tolist()
    if len(where) != len(media):
        raise ValueError(f"sample has {len(where)} placeholders but {len(media)} media embeddings")
    if labels is None:
        labels = torch.full_like(ids, IGNORE_INDEX)
    pieces, piece_labels, spans, signals = [], [], [], []
    cursor, length = 0, 0
    if signal_index is None:
        signal_index = torch.full_like(ids, -1)
    elif signal_index.shape != ids.shape:
        raise ValueError(
            f"signal_index has shape {tuple(signal_index.shape)}; expected {tuple(ids.shape)}"
        )
    signal_index = signal_index.to(ids.device)
    is_signal = (signal_index >= 0) & ~is_placeholder

    def add_text(start: int, end: int) -> None:
        nonlocal length
        if end <= start:
            return
        pieces.append(embeds[start:end])
        piece_labels.append(labels[start:end])
        for p in torch.nonzero(is_signal[start:end])[:, 0].tolist():
            signals.append((length + p, int(signal_index[start + p])))
        length += end - start

    for k, pos in enumerate(where):
        add_text(cursor, pos)
        rows = media[k].to(embeds.dtype)
        if rows.ndim != 2 or rows.shape[1] != embeds.shape[1]:
            raise ValueError(
                f"media embedding {k} has shape {tuple(rows.shape)}; "
                f"expected (n, {embeds.shape[1]})"
            )
        pieces.append(rows)
        piece_labels.append(
            torch.full((rows.shape[0],), IGNORE_INDEX, dtype=torch.long, device=ids.device)
        )
        spans.append(Span(placeholders[int(ids[pos])], length, length + rows.shape[0]))
        length += rows.shape[0]
        cursor = pos + 1
    add_text(cursor, ids.shape[0])
    return torch.cat(pieces), torch.cat(piece_labels), spans, signals


def _truncate(rows, labels, spans, signals, max_length):
    """Cut to ``max_length`` rows, moving the cut before any media span it would split."""
    if max_length is None or rows.shape[0] <= max_length:
        return rows, labels, spans, signals
    cut = max_length
    for span in spans:
        if span.start < cut < span.end:
            cut = span.start
    kept_spans = [s for s in spans if s.end <= cut]
    kept_signals = [(p, k) for p, k in signals if p < cut]
    return rows[:cut], labels[:cut], kept_spans, kept_signals
