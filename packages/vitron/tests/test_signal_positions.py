"""Which token each signal embedding is read from: the i-th signal token of a reply, for its
i-th call, at inference (Assistant) and in stage-3 batches; never the system prompt or user text.

The positions are pinned from outside the code under test: the signal tokens are found in the
token ids (or in the LLM's input rows) directly, and the hidden state the LLM returns at exactly
one of them is perturbed; exactly the matching call's embedding must change.
"""

from __future__ import annotations

import json

import pytest
import torch

from vitron import Assistant, SpecialistRegistry
from vitron.invocations import parse_invocation
from vitron.processing import (
    SYSTEM_PROMPT,
    ZERO_WIDTH_SPACE,
    Message,
    encode_conversation,
    escape_token,
)

SIGNAL = "<signal>"
FIRST = {
    "version": 1,
    "calls": [
        {"id": "seg", "task": "segment_image", "args": {"image": "$image0", "text": "dog"}},
        {"id": "gen", "task": "generate_image", "args": {"text": "a cat"}},
    ],
}
SECOND = {
    "version": 1,
    "calls": [{"id": "fix", "task": "restore_image", "args": {"image": "$image0"}}],
}
THIRD = {
    "version": 1,
    "calls": [
        {"id": "gen2", "task": "generate_image", "args": {"text": "a red <signal> sign"}},
        {"id": "edit", "task": "edit_image", "args": {"image": "$image0", "text": "a hat"}},
    ],
}
IMAGE_ROWS = 16  # the tiny tower's 4 x 4 patch grid replaces one <image> placeholder


def three_replies() -> list[Message]:
    """Three assistant replies; the second wrote its call without a signal token."""
    second_raw = "Cleaning. <invoke>" + json.dumps(SECOND) + "</invoke>"
    return [
        Message("user", f"<image>\nWhat does {SIGNAL} mean? Find the dog, draw a cat."),
        Message(
            "assistant", f"It is a token. Segmenting {SIGNAL} and drawing.", parse_invocation(FIRST)
        ),
        Message("results", f"[seg] segment_image ok: mask of '{SIGNAL}' (files: seg_mask.png)"),
        Message("user", "now clean it"),
        Message("assistant", "Cleaning.", parse_invocation(SECOND), raw=second_raw),
        Message("results", "[fix] restore_image ok: restored"),
        Message("user", f"draw a sign saying {SIGNAL} and add a hat"),
        Message("assistant", "Drawing.", parse_invocation(THIRD)),
    ]


def signal_token_positions(model, input_ids: torch.Tensor) -> list[int]:
    return torch.nonzero(input_ids == model.signal_token_id)[:, 0].tolist()


def delta(model) -> torch.Tensor:
    """A fixed random change of one hidden state."""
    width = model.llm.get_input_embeddings().weight.shape[1]
    return torch.randn(width, generator=torch.Generator().manual_seed(7))


def find(sequence: torch.Tensor, pattern: torch.Tensor) -> int:
    """Index of the first occurrence of ``pattern`` in ``sequence`` (-1 when absent)."""
    n = len(pattern)
    return next(
        (k for k in range(len(sequence) - n + 1) if torch.equal(sequence[k : k + n], pattern)), -1
    )


@torch.no_grad()
def last_hidden_states(model, spliced) -> torch.Tensor:
    """(B, L, D) the LLM's last hidden states over a spliced batch."""
    return model.llm(
        inputs_embeds=spliced.inputs_embeds,
        attention_mask=spliced.attention_mask,
        output_hidden_states=True,
    ).hidden_states[-1]


def patch_last_hidden(monkeypatch, model, where: tuple[int, int] | None):
    """Make the LLM return ``hidden_states[-1]`` changed at (sample, position) only."""
    original = model.llm.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        if where is not None and kwargs.get("output_hidden_states"):
            last = out.hidden_states[-1].clone()
            last[where] += delta(model).to(last)
            out.hidden_states = (*out.hidden_states[:-1], last)
        return out

    monkeypatch.setattr(model.llm, "forward", forward)


# ----------------------------------------------------------------- tokens and escaping


def test_escape_token_breaks_the_literal_only():
    escaped = escape_token("a <signal> b <signal>", SIGNAL)
    assert escaped == f"a <{ZERO_WIDTH_SPACE}signal> b <{ZERO_WIDTH_SPACE}signal>"
    assert escape_token(escaped, SIGNAL) == escaped  # idempotent
    assert escape_token("no token here", SIGNAL) == "no token here"
    assert escape_token("aaa", "aa") == f"a{ZERO_WIDTH_SPACE}a{ZERO_WIDTH_SPACE}a"  # overlaps
    with pytest.raises(ValueError, match=r"cannot escape a token shorter than 2 characters: '#'"):
        escape_token("#", "#")


def test_system_prompt_and_user_text_produce_no_signal_tokens(model):
    assert SIGNAL not in SYSTEM_PROMPT and "signal token" in SYSTEM_PROMPT
    tok = model.tokenizer
    messages = [Message("user", f"what is {SIGNAL}? {SIGNAL}{SIGNAL}")]
    for template in ("vicuna_v1", "plain"):
        ids, _, index = encode_conversation(tok, messages, template, SIGNAL, True)
        assert signal_token_positions(model, ids) == [] and bool((index == -1).all())
        # the user's words are kept, escaped
        assert f"what is <{ZERO_WIDTH_SPACE}signal>?" in tok.decode(ids)
    # the system prompt alone: no signal token (it used to spell one, counted as signal #0)
    ids, _, _ = encode_conversation(tok, [], "vicuna_v1", SIGNAL, True)
    assert signal_token_positions(model, ids) == []


def test_signal_tokens_map_to_their_reply_calls(model):
    messages = three_replies()
    ids, labels, index = encode_conversation(model.tokenizer, messages, "vicuna_v1", SIGNAL)
    positions = signal_token_positions(model, ids)
    # reply 1: two signals (calls 0, 1); reply 2: none (call 2 has none, and does not shift
    # the rest); reply 3: two signals (calls 3, 4). Nothing from the system prompt, the users'
    # literals, the results text or the literal inside a reply's text and calls block.
    assert len(positions) == 4
    assert index[positions].tolist() == [0, 1, 3, 4]
    assert torch.nonzero(index >= 0)[:, 0].tolist() == positions
    assert bool((labels[positions] == model.signal_token_id).all())  # inside the replies
    replies = model.tokenizer.decode(ids).split("ASSISTANT:")
    assert [r.count(SIGNAL) for r in replies] == [0, 2, 0, 2]


def test_extra_signal_tokens_of_a_raw_reply_belong_to_no_call(model):
    raw = "<invoke>" + json.dumps(SECOND) + "</invoke>" + SIGNAL * 2
    messages = [
        Message("user", "<image> clean it"),
        Message("assistant", "", parse_invocation(SECOND), raw=raw),
    ]
    ids, _, index = encode_conversation(model.tokenizer, messages, "vicuna_v1", SIGNAL)
    positions = signal_token_positions(model, ids)
    assert len(positions) == 2 and index[positions].tolist() == [0, -1]


# ----------------------------------------------------------------- inference: the model


def test_each_call_reads_its_own_reply_signal(model, image, monkeypatch):
    sample = model.processor.sample(three_replies(), [image], with_labels=False)
    assert sample.signal_tasks == (
        "segment_image", "generate_image", "restore_image", "generate_image", "edit_image",
    )  # fmt: skip
    # the image placeholder comes first: every later token sits IMAGE_ROWS - 1 rows further
    rows = [p + IMAGE_ROWS - 1 for p in signal_token_positions(model, sample.input_ids)]
    calls = [0, 1, 3, 4]
    base = model.signal_embeddings(sample)
    assert base[2] is None  # its reply wrote no signal token
    # the values: the signal heads applied to the LLM's last hidden state at those rows
    hidden = last_hidden_states(model, model.splice([sample], truncate=False))
    with torch.no_grad():
        for row, k in zip(rows, calls, strict=True):
            task = sample.signal_tasks[k]
            expected = model.signal_heads(hidden[0, [row]], [task]).embeddings[0]
            assert base[k][0] == task
            torch.testing.assert_close(base[k][1], expected)
    # pin: perturb one reply signal's hidden state, exactly its call's embedding changes
    for row, k in zip(rows, calls, strict=True):
        patch_last_hidden(monkeypatch, model, (0, row))
        changed = model.signal_embeddings(sample)
        monkeypatch.undo()
        for j, (before, after) in enumerate(zip(base, changed, strict=True)):
            if before is None:
                assert after is None
            elif j == k:
                assert not torch.allclose(before[1], after[1]), (row, k)
            else:
                assert torch.equal(before[1], after[1]), (row, k, j)
    # rows outside the replies (BOS, system prompt, the user's escaped literal, the reply's
    # escaped literal) change nothing
    literal = torch.tensor(
        model.tokenizer(f" <{ZERO_WIDTH_SPACE}signal>", add_special_tokens=False)["input_ids"]
    )
    user_literal = find(sample.input_ids, literal)
    reply_literal = find(sample.input_ids[user_literal + 1 :], literal) + user_literal + 1
    assert 0 < user_literal < reply_literal < rows[0] - IMAGE_ROWS
    outside = [0, 5, user_literal + IMAGE_ROWS, reply_literal + IMAGE_ROWS, rows[0] - 1]
    for row in outside:
        patch_last_hidden(monkeypatch, model, (0, row))
        changed = model.signal_embeddings(sample)
        monkeypatch.undo()
        assert all(
            (a is None and b is None) or torch.equal(a[1], b[1])
            for a, b in zip(base, changed, strict=True)
        )


# ----------------------------------------------------------------- inference: the Assistant


def reply(invocation: dict, signals: bool = True, text: str = "On it.") -> str:
    block = "<invoke>" + json.dumps(invocation) + "</invoke>"
    return f"{text} {block}" + (SIGNAL * len(invocation["calls"]) if signals else "") + "</s>"


class SignalSpy:
    """Patches the LLM: records the input rows equal to the signal token's embedding, adds
    ``delta`` to the last hidden state at the ``perturb``-th of them, and the router's calls."""

    def __init__(self, monkeypatch, assistant: Assistant, perturb: int | None = None):
        self.model = assistant.model
        self.perturb = perturb
        self.signal_rows: list[list[int]] = []
        self.signals: list[dict] = []
        original = self.model.llm.forward

        def forward(*args, **kwargs):
            out = original(*args, **kwargs)
            if kwargs.get("output_hidden_states"):
                weight = self.model.llm.get_input_embeddings().weight
                row = weight[self.model.signal_token_id]
                embeds = kwargs["inputs_embeds"][0]
                found = torch.nonzero((embeds == row).all(-1))[:, 0].tolist()
                self.signal_rows.append(found)
                if self.perturb is not None:
                    last = out.hidden_states[-1].clone()
                    last[0, found[self.perturb]] += delta(self.model).to(last)
                    out.hidden_states = (*out.hidden_states[:-1], last)
            return out

        def run(invocation, inputs, signals, progress=None):
            self.signals.append(dict(signals))
            return []

        monkeypatch.setattr(self.model.llm, "forward", forward)
        monkeypatch.setattr(assistant.router, "run", run)


def test_two_requests_give_different_first_call_embeddings(model, image, tmp_path, monkeypatch):
    firsts = []
    for request in ("segment the dog", "find the small cat on the left"):
        assistant = Assistant(
            model, SpecialistRegistry(), tmp_path, scripted_replies=[reply(FIRST), "Done.</s>"]
        )
        spy = SignalSpy(monkeypatch, assistant)
        assistant.chat(request, images=[image])
        monkeypatch.undo()
        assert list(spy.signals[0]) == ["seg", "gen"]
        firsts.append(spy.signals[0]["seg"])
    assert not torch.allclose(firsts[0], firsts[1])


@pytest.mark.parametrize("perturb", [0, 1])
def test_assistant_reads_the_newest_reply_signals_across_turns(
    model, image, tmp_path, monkeypatch, perturb
):
    """Turn 1 writes its calls without signals: turn 2's calls still read turn 2's signals."""
    scripted = [reply(SECOND, signals=False), "Done.</s>", reply(FIRST), "Done.</s>"]

    def run(perturb: int | None) -> dict:
        assistant = Assistant(model, SpecialistRegistry(), tmp_path, scripted_replies=scripted)
        spy = SignalSpy(monkeypatch, assistant, perturb)
        assistant.chat(f"clean this {SIGNAL} photo", images=[image])
        spy.perturb = perturb
        assistant.chat(f"segment the dog and draw a {SIGNAL}")
        monkeypatch.undo()
        assert spy.signals[0] == {}  # turn 1: no signal tokens, no embeddings
        # one forward pass for turn 2's signals; only its reply's two signal tokens exist
        # (the users' literals and the system prompt are escaped / rephrased)
        (rows,) = spy.signal_rows
        assert len(rows) == 2
        return spy.signals[1]

    base, changed = run(None), run(perturb)
    assert list(base) == list(changed) == ["seg", "gen"]
    for k, call in enumerate(["seg", "gen"]):
        if k == perturb:
            assert not torch.allclose(base[call], changed[call])
        else:
            assert torch.equal(base[call], changed[call])


# ----------------------------------------------------------------- stage 3 batches


def test_stage3_batch_aligns_the_states_of_each_reply_signal(model, image, monkeypatch):
    targets = [torch.randn(16, generator=torch.Generator().manual_seed(k)) for k in range(5)]
    first = model.processor.sample(three_replies(), [image], signal_targets=targets)
    second_messages = [
        Message("user", f"draw {SIGNAL}"),
        Message(
            "assistant",
            f"Drawing {SIGNAL}.",
            parse_invocation({"version": 1, "calls": THIRD["calls"][:1]}),
        ),
    ]
    second = model.processor.sample(second_messages, signal_targets=[targets[0]])
    batch = [first, second]
    rows = [
        [p + IMAGE_ROWS - 1 for p in signal_token_positions(model, first.input_ids)],
        signal_token_positions(model, second.input_ids),
    ]
    assert [len(r) for r in rows] == [4, 1]
    # calls with a head, per sample: (call index, row)
    headed = [
        [(0, rows[0][0]), (1, rows[0][1]), (3, rows[0][2]), (4, rows[0][3])],
        [(0, rows[1][0])],
    ]
    base = model(batch, align_weight=1.0, synergy_weight=0.1)
    assert [f.tasks for f in base.signals] == [
        ("segment_image", "generate_image", "generate_image", "edit_image"), ("generate_image",),
    ]  # fmt: skip
    # the values: heads of the LLM's last hidden state at those rows, aligned to their targets
    hidden = last_hidden_states(model, model.splice(batch))
    with torch.no_grad():
        terms = []
        for i, sample in enumerate(batch):
            for n, (k, row) in enumerate(headed[i]):
                task = sample.signal_tasks[k]
                expected = model.signal_heads(hidden[i, [row]], [task]).embeddings[0]
                torch.testing.assert_close(base.signals[i].embeddings[n], expected)
                cos = torch.nn.functional.cosine_similarity(expected, sample.signal_targets[k], 0)
                terms.append(1 - cos)
        torch.testing.assert_close(base.align_loss, torch.stack(terms).mean())
    # pin: perturb one reply signal's state, exactly its call's features change
    for i in range(len(batch)):
        for n, (_, row) in enumerate(headed[i]):
            patch_last_hidden(monkeypatch, model, (i, row))
            changed = model(batch, align_weight=1.0, synergy_weight=0.1)
            monkeypatch.undo()
            for j in range(len(batch)):
                for m in range(len(headed[j])):
                    a, b = base.signals[j], changed.signals[j]
                    same = all(
                        torch.equal(getattr(a, f)[m], getattr(b, f)[m])
                        for f in ("specific", "invariant", "embeddings")
                    )
                    assert same != ((j, m) == (i, n)), (i, n, j, m)
            assert not torch.equal(base.align_loss, changed.align_loss)
            torch.testing.assert_close(changed.lm_loss, base.lm_loss)  # logits untouched
