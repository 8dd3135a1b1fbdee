"""Splicing media into token embeddings (spans, labels, truncation, padding) and label masking."""

from __future__ import annotations

import pytest
import torch

from vitron.invocations import parse_invocation
from vitron.multimodal import Span, splice_batch
from vitron.processing import IGNORE_INDEX, Message, tokenize_conversation

IMG, REG, SIG = 100, 101, 102
PLACEHOLDERS = {IMG: "image", REG: "region"}


def embed(ids: torch.Tensor) -> torch.Tensor:
    """(L,) ids -> (L, 2) rows [id, -id] so every row says where it came from."""
    return torch.stack([ids.float(), -ids.float()], dim=1)


def media(value: float, rows: int) -> torch.Tensor:
    return torch.full((rows, 2), value)


def signal_index(ids: torch.Tensor, calls: list[int]) -> torch.Tensor:
    """(L,) -1 everywhere but at the SIG tokens, which get ``calls`` in order."""
    index = torch.full_like(ids, -1)
    index[ids == SIG] = torch.tensor(calls)
    return index


def test_splice_rows_spans_labels_and_signals():
    ids = torch.tensor([1, SIG, 2, IMG, 3, REG, 4, SIG, 5])
    labels = torch.tensor([-100, -100, -100, -100, -100, -100, 4, SIG, 5])
    out = splice_batch(
        [ids], [embed(ids)], [[media(7.0, 3), media(9.0, 1)]], PLACEHOLDERS,
        labels=[labels], signal_index=[signal_index(ids, [-1, 2])],
    )  # fmt: skip
    expected_rows = torch.cat([
        embed(torch.tensor([1, SIG, 2])), media(7.0, 3), embed(torch.tensor([3])),
        media(9.0, 1), embed(torch.tensor([4, SIG, 5])),
    ])  # fmt: skip
    assert torch.equal(out.inputs_embeds[0], expected_rows)
    assert out.spans == [[Span("image", 3, 6), Span("region", 7, 8)]]
    assert out.labels[0].tolist() == [-100] * 8 + [4, SIG, 5]
    # only the marked signal counts (the unmarked SIG id at row 1 is not a call's signal)
    assert out.signal_positions == [[9]] and out.signal_indices == [[2]]
    assert out.attention_mask.tolist() == [[1] * 11] and out.lengths == [11]
    # without signal_index no token is a signal, whatever its id
    plain = splice_batch([ids], [embed(ids)], [[media(7.0, 3), media(9.0, 1)]], PLACEHOLDERS)
    assert plain.signal_positions == [[]] and plain.signal_indices == [[]]


def test_truncation_never_splits_a_media_span():
    ids = torch.tensor([1, 2, IMG, 3, SIG, 4])
    rows = [[media(7.0, 3)]]
    sig = {"signal_index": [signal_index(ids, [0])]}
    cut_inside = splice_batch([ids], [embed(ids)], rows, PLACEHOLDERS, **sig, max_length=4)
    assert cut_inside.lengths == [2]  # the image (rows 2-4) would be cut: dropped whole
    assert cut_inside.spans == [[]] and cut_inside.signal_positions == [[]]
    cut_after = splice_batch([ids], [embed(ids)], rows, PLACEHOLDERS, **sig, max_length=6)
    assert cut_after.lengths == [6] and cut_after.spans == [[Span("image", 2, 5)]]
    assert cut_after.signal_positions == [[]]  # the signal (row 6) is beyond the cut
    keep_all = splice_batch([ids], [embed(ids)], rows, PLACEHOLDERS, **sig, max_length=8)
    assert keep_all.lengths == [8] and keep_all.signal_positions == [[6]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_padding(side):
    a, b = torch.tensor([1, IMG, SIG]), torch.tensor([5, 6])
    out = splice_batch(
        [a, b], [embed(a), embed(b)], [[media(7.0, 2)], []], PLACEHOLDERS,
        labels=[a.clone(), b.clone()], signal_index=[signal_index(a, [0]), None],
        padding_side=side,
    )  # fmt: skip
    assert out.inputs_embeds.shape == (2, 4, 2) and out.lengths == [4, 2]
    if side == "right":
        assert out.attention_mask[1].tolist() == [1, 1, 0, 0]
        assert torch.equal(out.inputs_embeds[1, :2], embed(b))
        assert out.labels[1].tolist() == [5, 6, -100, -100]
    else:
        assert out.attention_mask[1].tolist() == [0, 0, 1, 1]
        assert torch.equal(out.inputs_embeds[1, 2:], embed(b))
        assert torch.equal(out.inputs_embeds[1, :2], torch.zeros(2, 2))
    # the longer sample is not shifted by either padding side; b has no signals
    assert out.signal_positions == [[3], []] and out.signal_indices == [[0], []]


def test_splice_errors():
    ids = torch.tensor([1, IMG])
    with pytest.raises(ValueError, match=r"sample has 1 placeholders but 0 media embeddings"):
        splice_batch([ids], [embed(ids)], [[]], PLACEHOLDERS)
    with pytest.raises(
        ValueError, match=r"media embedding 0 has shape \(2, 3\); expected \(n, 2\)"
    ):
        splice_batch([ids], [embed(ids)], [[torch.zeros(2, 3)]], PLACEHOLDERS)
    with pytest.raises(ValueError, match=r"padding_side must be 'right' or 'left', got 'up'"):
        splice_batch([ids], [embed(ids)], [[media(1.0, 1)]], PLACEHOLDERS, padding_side="up")
    with pytest.raises(ValueError, match=r"signal_index has shape \(3,\); expected \(2,\)"):
        splice_batch(
            [ids], [embed(ids)], [[media(1.0, 1)]], PLACEHOLDERS,
            signal_index=[torch.full((3,), -1)],
        )  # fmt: skip


def supervised_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode(ids[labels != IGNORE_INDEX])


def test_labels_cover_exactly_the_assistant_replies(model):
    tok = model.tokenizer
    calls = parse_invocation(
        {"version": 1, "calls": [{"id": "g", "task": "generate_image", "args": {"text": "a cat"}}]}
    )
    messages = [
        Message("user", "<image>\nDraw a cat: like this one."),
        Message("assistant", "Drawing it.", calls),
        Message("results", "[g] generate_image ok: generated"),
        Message("assistant", "Here it is: USER: not a turn."),
    ]
    ids, labels = tokenize_conversation(tok, messages, "vicuna_v1", "<signal>")
    block = calls.render()
    assert supervised_text(tok, ids, labels) == (
        f" Drawing it. {block}<signal></s> Here it is: USER: not a turn.</s>"
    )
    text = tok.decode(ids)
    assert text.startswith("<s>You are Vitron")
    assert "USER: <image>\nDraw a cat: like this one. ASSISTANT: Drawing it." in text
    assert "</s>USER: Results: [g] generate_image ok: generated ASSISTANT: Here it is" in text
    prompt, prompt_labels = tokenize_conversation(tok, messages[:1], "vicuna_v1", "<signal>", True)
    assert tok.decode(prompt).endswith("ASSISTANT:") and bool((prompt_labels == IGNORE_INDEX).all())
    assert torch.equal(prompt, ids[: len(prompt)])  # the prompt is a prefix of the training text


def test_plain_template_for_alignment(model):
    tok = model.tokenizer
    messages = [Message("user", "<image>"), Message("assistant", "a red square")]
    ids, labels = tokenize_conversation(tok, messages, "plain", "<signal>")
    assert tok.decode(ids) == "<s><image>\na red square</s>"
    assert supervised_text(tok, ids, labels) == "a red square</s>"


def test_sample_checks_placeholders(model, image):
    processor = model.processor
    with pytest.raises(
        ValueError, match=r"has 1 <image> placeholder\(s\) but 2 image\(s\) were given"
    ):
        processor.sample([Message("user", "<image> hi"), Message("assistant", "x")], [image, image])
    with pytest.raises(
        ValueError, match=r"has 0 <region> placeholder\(s\) but 1 region\(s\) were given"
    ):
        from vitron.regions import Box, Region

        processor.sample(
            [Message("user", "<image>"), Message("assistant", "x")],
            [image],
            regions=[Region(Box(0, 0, 5, 5))],
        )
    with pytest.raises(
        ValueError, match=r"role must be one of \('user', 'assistant', 'results'\), got 'system'"
    ):
        Message("system", "x")
