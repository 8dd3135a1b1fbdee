"""GGUF planners on llama.cpp (issue 58, item 2). The default lane checks what runs without
llama-cpp-python (the engine's choice and its line, the GBNF text check, the logits adapters on
llama.cpp's strided arrays); the slow lane runs the real SmolLM2-135M through the binding
(built from source: it has no wheel for this platform)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from vitron.invocations import InputCounts
from vitron.planners import GrammarLimits, PlannerGrammar
from vitron.planners.chat import PlannerMessage
from vitron.planners.grammar import check_gbnf
from vitron.planners.rules import AnswerRules, AnswerVocab

pytest.importorskip("xgrammar")
MESSAGES = [PlannerMessage("user", ["[$image0: the image bird.png, 288x288 pixels]\nWhat is it?"])]


def test_the_grammar_is_gbnf_that_llama_cpp_reads():
    """Rule names of letters, digits and '-' (llama.cpp's parser aborts on '_'), escapes it
    knows, every rule defined: checked in Python before the binding sees the text."""
    grammar = PlannerGrammar(InputCounts(2, 0, region_images=(1,)))
    assert grammar.gbnf == grammar.ebnf
    names = [line.split(" ::= ")[0] for line in grammar.ebnf.splitlines()]
    assert "calls-0" in names and "text-list" in names and not any("_" in n for n in names)
    with pytest.raises(ValueError, match=r"^GBNF line 1 \(root\): cannot read '_b'$"):
        check_gbnf("root ::= a_b\n")
    with pytest.raises(ValueError, match=r"^GBNF line 2: not NAME ::= BODY with a name of "):
        check_gbnf('root ::= "x"\na_b ::= "y"\n')
    with pytest.raises(ValueError, match=r"^GBNF line 1 \(root\): cannot read '\[\\\\q\]'"):
        check_gbnf("root ::= [\\q]\n")
    with pytest.raises(ValueError, match=r"^GBNF: rule 'b' \(line 1\) is not defined$"):
        check_gbnf('root ::= "a" b\n')
    with pytest.raises(ValueError, match=r"^GBNF: no root rule$"):
        check_gbnf('start ::= "a"\n')


def test_without_llama_cpp_a_gguf_runs_on_transformers_and_says_so(tmp_path, monkeypatch):
    from vitron.planners.catalog import open_gguf_planner
    from vitron.planners.gguf import write_tiny_gguf
    from vitron.planners.llamacpp import LLAMA_CPP_INSTALL

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    said: list[str] = []
    planner = open_gguf_planner(path, say=said.append)
    assert planner.engine == "transformers"
    assert said == [
        f"planner tiny.gguf: transformers, dequantised to float32 (llama.cpp runs it faster: "
        f"{LLAMA_CPP_INSTALL})"
    ]
    with pytest.raises(ValueError, match=r"^planner on llama.cpp needs llama-cpp-python: pip "):
        open_gguf_planner(path, engine="llama.cpp")
    with pytest.raises(ValueError, match=r"^engine llama.cpp runs a GGUF file \(planner FILE"):
        open_gguf_planner("owner/model", engine="llama.cpp")


def strided(scores: np.ndarray) -> np.ndarray:
    """The scores as llama-cpp-python hands them: a view of (id, logit, p) records."""
    records = np.zeros(len(scores), dtype=[("id", np.intc), ("logit", np.single), ("p", np.single)])
    records["logit"] = scores
    return records.view(np.recarray).logit


def test_the_xgrammar_adapter_masks_llama_cpp_scores():
    """``NumpyLogits`` runs ``GrammarLogits`` on llama.cpp's strided scores: the same tokens
    allowed as on a torch tensor, returned as a new contiguous array."""
    from vitron.planners import ChatPlanner
    from vitron.planners.llamacpp import NumpyLogits
    from vitron.planners.tiny import tiny_planner

    model, tokenizer = tiny_planner("llama")
    planner = ChatPlanner(model, tokenizer, vision=False)
    grammar = PlannerGrammar(InputCounts(), limits=GrammarLimits(max_answer=3), mode="answer")
    scores = np.random.default_rng(0).standard_normal(len(tokenizer)).astype(np.float32)
    view = strided(scores)
    assert not view.flags.c_contiguous
    out = NumpyLogits(planner.logits(grammar))(np.array([1, 2]), view)
    expected = planner.logits(grammar)(
        torch.tensor([[1, 2]]), torch.from_numpy(scores.copy())[None]
    )
    assert np.array_equal(np.isfinite(out), torch.isfinite(expected[0]).numpy())
    assert np.isfinite(out).sum() == 1  # '{' only


def test_the_gbnf_rules_adapter_bans_and_closes():
    """``RulesLogits`` (the GBNF engine's processor): banned tokens always, and the answer
    rules on the reply's tokens after the prompt."""
    from vitron.planners.llamacpp import RulesLogits

    pieces = [b'{"answer": "', b"a", b"b", b'"', b'"}', b"<s>"]
    vocab = AnswerVocab(pieces)
    processor = RulesLogits(AnswerRules(vocab, 2, no_repeat=0), np.array([5]), prompt=3)
    prompt = [9, 9, 9]
    out = processor(np.array(prompt), strided(np.zeros(6, dtype=np.float32)))
    assert np.isinf(out).tolist() == [False, False, False, False, False, True]
    out = processor(np.array([*prompt, 0, 1, 2]), strided(np.zeros(6, dtype=np.float32)))
    assert np.isfinite(out).tolist() == [False, False, False, True, True, False]  # close now


# -- the real model on the binding ---------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("llama_cpp", reason="pip install 'vitron[gguf]' (a source build)")
    from vitron.planners.gguf import fetch_smollm2

    return fetch_smollm2()


@pytest.mark.slow
def test_llama_cpp_and_transformers_read_the_same_prompt(smollm2):
    """The same chat template and tokens on both engines; greedy replies under the grammar that
    parse on both, and both of llama.cpp's grammar engines give the same reply."""
    from vitron.planners.catalog import open_gguf_planner

    said: list[str] = []
    on_llama = open_gguf_planner(smollm2, say=said.append, threads=2)
    assert said == [
        "planner SmolLM2-135M-Instruct.Q4_1.gguf: llama.cpp (llama-cpp-python), the file's own "
        "weights"
    ]
    on_transformers = open_gguf_planner(smollm2, engine="transformers")
    text = on_transformers.render(MESSAGES)
    assert on_llama.render(MESSAGES) == text
    hf_tokens = on_transformers.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert on_llama.tokens(text) == hf_tokens
    # llama.cpp also ends a reply at the file's other end-of-text tokens (its EOG set)
    assert on_transformers.stop_ids == [2] and on_llama.stop_ids == [0, 2, 4]
    grammar = PlannerGrammar(InputCounts(1, 0), limits=GrammarLimits(max_answer=40))
    replies = {}
    for name, planner in (("llama", on_llama), ("transformers", on_transformers)):
        replies[name] = planner.reply(MESSAGES, grammar)
        assert json.loads(replies[name])  # parses
        assert planner.last.stop == 2
    gbnf = open_gguf_planner(smollm2, grammar_engine="gbnf", threads=2)
    assert gbnf.reply(MESSAGES, grammar) == replies["llama"]
    assert gbnf.last.grammar_s is None and on_llama.last.grammar_s is not None


@pytest.mark.slow
def test_vitron_run_on_llama_cpp_streams_the_reply(smollm2, tmp_path, capfd):
    """``vitron run --planner FILE.gguf``: the engine in one line, the reply streamed on stderr
    with its cost line, the answer on stdout."""
    from PIL import Image

    from vitron.cli import main

    Image.new("RGB", (32, 24), "red").save(tmp_path / "red.png")
    argv = ["run", "What colour is this image?", "--planner", str(smollm2), "--image",
            str(tmp_path / "red.png"), "-o", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert lines[0].startswith("vitron: planner SmolLM2-135M-Instruct.Q4_1.gguf: llama.cpp")
    reply = json.loads((tmp_path / "out" / "turn.json").read_text())["replies"][0]["text"]
    assert lines[1] == f"planner: {reply}"
    assert lines[2].startswith("planner: ") and " tokens/s; prompt " in lines[2]
    assert out.strip() == json.loads(reply)["answer"]
