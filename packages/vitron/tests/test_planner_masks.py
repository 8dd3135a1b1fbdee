"""Each masking rule of a planner's reply, on a tiny model whose own logits prefer what the rule
forbids (issue 58, item 5): the grammar, the banned special tokens, the padded vocabulary beyond
the tokenizer's, the stop tokens, and the answer rules (length, no repeated phrase). Each test
fails when its rule's line is dropped; the mask is applied in place, where the scores are."""

from __future__ import annotations

import json

import pytest
import torch

from vitron.invocations import InputCounts
from vitron.planners import ChatPlanner, GrammarLimits, PlannerGrammar
from vitron.planners.chat import GrammarLogits, PlannerMessage
from vitron.planners.rules import AnswerRules, AnswerVocab
from vitron.tiny import byte_level_tokenizer

pytest.importorskip("xgrammar")
CHAT = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}</s>{% endfor %}<|assistant|>"
MESSAGES = [PlannerMessage("system", ["plan"]), PlannerMessage("user", ["hi"])]


def biased_planner(prefer: dict[str, float] | None = None, pad: int = 0, stops=None, **options):
    """A tiny random Llama whose logits get ``+bias`` on the tokens ``prefer`` names (their text,
    or ``#ID`` for an id), with ``pad`` extra rows in its output layer (a padded vocabulary) and
    ``stops`` as its generation config's end-of-sequence ids."""
    import transformers as tf

    class Biased(tf.LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits + self.bias  # (B, L, V') + (V',)
            return out

    torch.manual_seed(0)
    tok = byte_level_tokenizer()
    tok.chat_template = CHAT
    config = tf.LlamaConfig(
        vocab_size=len(tok) + pad, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, eos_token_id=stops or tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
    )  # fmt: skip
    model = Biased(config).eval()
    model.generation_config.eos_token_id = stops or tok.eos_token_id
    model.bias = torch.zeros(len(tok) + pad)
    for token, bias in (prefer or {}).items():
        index = int(token[1:]) if token.startswith("#") else tok.convert_tokens_to_ids(token)
        model.bias[index] = bias
    options.setdefault("no_repeat", 0)  # one rule at a time: the no-repeat rule has its test
    return ChatPlanner(model, tok, vision=False, **options)


def answer_grammar(**limits) -> PlannerGrammar:
    return PlannerGrammar(InputCounts(), limits=GrammarLimits(**limits), mode="answer")


def test_the_grammar_holds_a_model_that_prefers_something_else():
    planner = biased_planner({"x": 50.0})  # unmasked, every token would be 'x'
    reply = planner.reply(MESSAGES, answer_grammar(max_answer=6))
    assert reply.startswith('{"answer": "') and json.loads(reply)["answer"] == "xxxxxx"


def test_banned_special_tokens_never_appear_in_a_reply():
    planner = biased_planner({"<pad>": 50.0, "x": 10.0})  # '<pad>' as text is the favourite
    pad = planner.tokenizer.pad_token_id
    assert pad in planner.banned
    reply = planner.reply(MESSAGES, answer_grammar(max_answer=6))
    assert "<pad>" not in reply and json.loads(reply)["answer"] == "xxxxxx"


def test_a_padded_output_layer_never_yields_a_token_beyond_the_tokenizer():
    planner = biased_planner({"#263": 50.0, "x": 10.0}, pad=8)  # 263: a padded row
    assert len(planner.tokenizer) == 260 and planner.model.lm_head.weight.shape[0] == 268
    reply = planner.reply(MESSAGES, answer_grammar(max_answer=4))
    assert json.loads(reply) == {"answer": "xxxx"}


def test_stop_tokens_end_a_reply_only_when_its_json_is_whole():
    """The model's second stop token (its generation config's, not the tokenizer's) is its
    favourite from the first step: it must wait for the end of the JSON, then end the reply,
    never be written as text."""
    tok = byte_level_tokenizer()
    unk = tok.unk_token_id
    planner = biased_planner({"<unk>": 50.0, "x": 10.0}, stops=[tok.eos_token_id, unk])
    assert planner.stop_ids == [tok.eos_token_id, unk]
    reply = planner.reply(MESSAGES, answer_grammar(max_answer=3))
    assert json.loads(reply) == {"answer": "xxx"} and "<unk>" not in reply
    assert planner.last.tokens == len(reply) + 1  # one byte a token, then the stop token
    assert planner.last.stop == unk


def test_an_answer_ends_at_max_answer_tokens():
    planner = biased_planner({"x": 50.0})
    for length in (1, 5, 17):
        reply = planner.reply(MESSAGES, answer_grammar(max_answer=length))
        assert json.loads(reply) == {"answer": "x" * length}


def test_an_answer_never_repeats_a_run_of_no_repeat_tokens():
    preferred = {"a": 50.0, "b": 40.0, "c": 30.0, "d": 20.0}  # unmasked: "aaaa..."
    words = {}
    for no_repeat in (0, 2, 3, 4):
        planner = biased_planner(preferred, no_repeat=no_repeat)
        words[no_repeat] = json.loads(planner.reply(MESSAGES, answer_grammar(max_answer=12)))
    assert words[0] == {"answer": "a" * 12}  # the rule off: the model's loop
    for n in (2, 3, 4):
        text = words[n]["answer"]
        grams = [text[i : i + n] for i in range(len(text) - n + 1)]
        assert len(grams) == len(set(grams)), (n, text)  # no n-gram twice
        assert text.startswith("a" * (n - 1))  # the rule waits for a whole n-gram
    assert words[2]["answer"].startswith("aabacad")


def test_the_mask_is_applied_in_place_on_the_scores():
    """No round trip through the CPU: the processor writes into the tensor it is given (on a
    GPU the scores stay there) and returns it."""
    planner = biased_planner()
    processor = planner.logits(answer_grammar(max_answer=4))
    scores = torch.randn(1, len(planner.tokenizer))
    out = processor(torch.tensor([[1, 2]]), scores)
    assert out is scores
    allowed = torch.isfinite(scores[0]).nonzero().flatten().tolist()
    assert allowed == [planner.tokenizer.convert_tokens_to_ids("{")]


@pytest.mark.gpu
def test_the_mask_on_a_gpu_equals_the_cpu_mask():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    planner = biased_planner(pad=8)
    grammar = answer_grammar(max_answer=4)
    prompt = torch.tensor([[1, 2]])
    scores = torch.randn(1, 268)
    on_cpu = planner.logits(grammar)(prompt, scores.clone())
    on_gpu = planner.logits(grammar)(prompt.cuda(), scores.cuda())
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), on_cpu)


# -- AnswerRules alone, over a hand-written vocabulary ---------------------------------------

PIECES = [b'{"answer": "', b"a", b"b", b'"', b'"}', b"}", b"\\", b"n", b'n"', b"\xc3", b"\xa9",
          b'\xa9"', b' "a', b'{"answer":', b'\\"']  # fmt: skip
VOCAB = AnswerVocab(PIECES)
ID = {piece: i for i, piece in enumerate(PIECES)}


def feed(rules: AnswerRules, *pieces: bytes) -> AnswerRules:
    for piece in pieces:
        rules.accept(ID[piece])
    return rules


def test_answer_vocab_sorts_the_closing_and_finishing_tokens():
    assert VOCAB.closers == {ID[b'"'], ID[b'"}']}
    assert VOCAB.finishers["escape"] == {ID[b'"'], ID[b"\\"], ID[b"n"], ID[b'n"'], ID[b'\\"']}
    assert VOCAB.finishers[1] == {ID[b"\xa9"], ID[b'\xa9"']}
    assert VOCAB.finishers[2] == {ID[b"\xa9"]}  # one byte of two, then one more
    assert VOCAB.outside[VOCAB.closers].tolist() == [p[:1] != b'"' for p in PIECES]


def test_the_length_rule_counts_the_answer_text_tokens():
    rules = feed(AnswerRules(VOCAB, 2), b'{"answer":')
    assert not rules.inside and rules.must_close() is None
    feed(rules, b' "a')  # ends the head and writes the text's first token
    assert rules.inside and rules.text == [ID[b' "a']] and rules.must_close() is None
    feed(rules, b"b")
    assert rules.must_close() == VOCAB.closers
    feed(rules, b'"}')
    assert not rules.inside and rules.must_close() is None and rules.banned() == []


def test_at_the_limit_an_escape_or_a_character_is_finished_first():
    rules = feed(AnswerRules(VOCAB, 2), b'{"answer": "', b"a", b"\\")
    assert rules.must_close() == VOCAB.finishers["escape"]
    feed(rules, b'"')  # an escaped quote does not end the text
    assert rules.inside and rules.escape is False and rules.must_close() == VOCAB.closers
    rules = feed(AnswerRules(VOCAB, 9), b'{"answer": "', b'\\"')  # an escaped quote
    assert rules.inside and not rules.escape
    feed(rules, b"\\", b'\\"')  # an escaped backslash, then '"' ends the text
    assert rules.closed and rules.text == [ID[b'\\"'], ID[b"\\"], ID[b'\\"']]
    rules = feed(AnswerRules(VOCAB, 2), b'{"answer": "', b"a", b"\xc3")
    assert rules.missing == 1 and rules.must_close() == VOCAB.finishers[1]
    feed(rules, b'\xa9"')
    assert not rules.inside and rules.text == [ID[b"a"], ID[b"\xc3"], ID[b'\xa9"']]


def test_no_repeat_bans_the_continuation_of_a_written_phrase_but_never_a_closer():
    rules = feed(AnswerRules(VOCAB, 99, no_repeat=3), b'{"answer": "', b"a", b"b", b'"', b"a")
    assert rules.text == [ID[b"a"], ID[b"b"]] and rules.closed  # the '"' ended the text
    rules = feed(AnswerRules(VOCAB, 99, no_repeat=3), b'{"answer": "', b"a", b"b", b"a")
    assert rules.banned() == []  # (b, a) has not been followed yet
    feed(rules, b"b")
    assert rules.banned() == [ID[b"a"]]  # "a b" was followed by "a" once
    rules = feed(AnswerRules(VOCAB, 99, no_repeat=2), b'{"answer":', b' "a')
    assert rules.banned() == []  # only the head's token: nothing repeated yet
    feed(rules, b"\\")
    assert rules.banned() == []  # inside an escape: nothing banned


def test_bad_rule_settings_are_refused_by_name():
    with pytest.raises(ValueError, match=r"max_answer must be >= 1, got 0"):
        AnswerRules(VOCAB, 0)
    with pytest.raises(ValueError, match=r"no_repeat must be 0 \(off\) or an integer >= 2, got 1"):
        AnswerRules(VOCAB, 4, no_repeat=1)
    with pytest.raises(ValueError, match=r"no_repeat must be 0 \(off\) or an integer >= 2, got 1"):
        biased_planner(no_repeat=1)


def test_grammar_logits_builds_its_answer_vocab_when_none_is_given():
    planner = biased_planner()
    compiled = planner.compile(answer_grammar(max_answer=4))
    processor = GrammarLogits(compiled, max_answer=4)
    assert processor.rules.vocab.closers == planner.answers.closers
