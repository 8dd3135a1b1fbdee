"""Any chat model as the planner (issue 51, item 2): tiny random models of four architectures,
built offline, whose constrained replies always parse, and whose calls run real specialists."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from vitron.invocations import InputCounts, parse_invocation
from vitron.io import to_pil, to_tensor
from vitron.planners import ChatPlanner, GrammarLimits, PlannerAssistant, PlannerGrammar
from vitron.planners.regions import describe_region
from vitron.planners.rules import AnswerRules, AnswerVocab
from vitron.planners.tiny import ARCHITECTURES, write_tiny_planner
from vitron.regions import Box, Stroke
from vitron.specialists import SpecialistRegistry
from vitron.specialists.restoration import SemanirRestorer

pytest.importorskip("xgrammar")
LIMITS = GrammarLimits(max_calls=2, max_text=10, max_list=2, max_answer=24, int_digits=3)


@pytest.fixture(scope="module")
def planners(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("planners")
    return {a: str(write_tiny_planner(root / a, a, seed=0)) for a in ARCHITECTURES}


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))


def walk(grammar: PlannerGrammar, rng: random.Random) -> list[int]:
    """A random reply of the grammar and its answer rules: tokens drawn at random among those
    xgrammar's matcher and :class:`AnswerRules` allow, over single bytes (stop token left out)."""
    import xgrammar as xgr

    from vitron.tiny import byte_level_tokenizer

    tok = byte_level_tokenizer()
    info = xgr.TokenizerInfo.from_huggingface(
        tok, vocab_size=len(tok), stop_token_ids=[tok.eos_token_id]
    )
    matcher = xgr.GrammarMatcher(xgr.GrammarCompiler(info).compile_grammar(grammar.ebnf))
    rules = AnswerRules(AnswerVocab(info.decoded_vocab), grammar.limits.max_answer)
    mask = xgr.allocate_token_bitmask(1, len(tok))
    out = []
    while True:
        matcher.fill_next_token_bitmask(mask, 0)
        allowed = {i for i in range(len(tok)) if (int(mask[0, i // 32]) >> (i % 32)) & 1}
        if (only := rules.must_close()) is not None:
            allowed &= only
        token = rng.choice(sorted(allowed - set(rules.banned())))
        if token == tok.eos_token_id:
            return out
        assert matcher.accept_token(token)
        rules.accept(token)
        out.append(token)


@pytest.mark.parametrize("seed", range(6))
def test_every_sentence_of_the_grammar_is_a_valid_invocation_within_its_bound(seed):
    from vitron.tiny import byte_level_tokenizer

    counts = InputCounts(2, 0, region_images=(1,))
    grammar = PlannerGrammar(counts, limits=LIMITS, mode="calls" if seed % 2 else "any")
    tokens = walk(grammar, random.Random(seed))
    assert len(tokens) <= grammar.max_tokens
    text = byte_level_tokenizer().decode(tokens)
    data = json.loads(text)
    if "answer" in data:
        assert seed % 2 == 0 and set(data) == {"answer"}
    else:
        invocation = parse_invocation(data, counts)
        assert [c.id for c in invocation.calls] == [f"c{i}" for i in range(len(invocation.calls))]


def test_grammar_offers_only_what_exists():
    grammar = PlannerGrammar(InputCounts(1, 0, 0), tasks=["restore_image"], limits=LIMITS)
    assert '"\\"$image0\\""' in grammar.ebnf and "$image1" not in grammar.ebnf
    assert "segment_image" not in grammar.ebnf and "$region" not in grammar.ebnf
    answer = PlannerGrammar(InputCounts(1, 0, 0), limits=LIMITS, mode="answer")
    assert answer.ebnf.startswith("root ::= answer\n") and "invocation" not in answer.ebnf
    with pytest.raises(ValueError, match="tasks: unknown \\['paint'\\]"):
        PlannerGrammar(InputCounts(), tasks=["paint"])
    with pytest.raises(ValueError, match="max_calls must be an integer in \\[1, 4\\], got 5"):
        GrammarLimits(max_calls=5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_reply_of_a_random_model_parses(architecture, planners, photo):
    planner = ChatPlanner.from_pretrained(planners[architecture])
    assert planner.vision == (architecture != "llama")
    for seed in range(2):
        planner.seed = seed
        counts = InputCounts(1, 0, region_images=(0,))
        grammar = PlannerGrammar(counts, limits=LIMITS, mode="calls" if seed else "any")
        assistant = PlannerAssistant(planner, SpecialistRegistry(), "unused", limits=LIMITS)
        assistant.inputs.images.append(photo)
        messages = [assistant.system(), assistant.user_message("edit it", [photo], [], ["a.png"])]
        text = planner.reply(messages, grammar)
        data = json.loads(text)
        if "answer" not in data:
            parse_invocation(data, counts)
        else:
            assert seed == 0


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_planned_call_runs_the_bundled_restorer(architecture, planners, photo, tmp_path):
    """The planner must call (``require_calls``); the only task served is restore_image, so the
    call is the bundled gray denoiser's restore, compared with calling semanir directly."""
    import semanir

    planner = ChatPlanner.from_pretrained(planners[architecture])
    registry = SpecialistRegistry(adapters=(SemanirRestorer,))
    limits = GrammarLimits(max_calls=2, max_answer=24, optional_args=False)  # no random tile
    assistant = PlannerAssistant(
        planner, registry, tmp_path, limits=limits, require_calls=True, max_rounds=1
    )
    turn = assistant.chat("clean up this photo", [photo], names=["photo.png"])
    assert turn.parse_error is None and len(turn.replies) == 2
    [outcomes] = turn.outcomes
    assert {o.call.task for o in outcomes} == {"restore_image"}
    assert all(o.status == "ok" for o in outcomes), [o.summary for o in outcomes]
    first = outcomes[0]
    restored = to_tensor(first.outputs["image"].value)
    model = semanir.load_model(None)
    expected = semanir.restore(model, to_tensor(photo)[:, None], tile=first.call.args.get("tile"))
    assert torch.equal(restored, to_tensor(to_pil(expected[:, 0])))
    assert not torch.equal(restored, to_tensor(photo))
    assert set(json.loads(turn.replies[1].text)) == {"answer"}  # the last round answers
    # multi-turn: the conversation goes on with the restored image in the history
    again = assistant.chat("thanks", names=[])
    assert again.parse_error is None and len(assistant.inputs.images) == 1


def test_regions_reach_each_model_in_its_convention():
    image = Image.new("RGB", (200, 100))
    box = Box(20, 10, 120, 60)
    assert describe_region(box, image, "thousandths", None).startswith("box (100,100),(600,600)")
    assert describe_region(box, image, "fractions", None).startswith(
        "box [0.100, 0.100, 0.600, 0.600]"
    )
    assert describe_region(box, image, "pixels", None) == (
        "box [20, 10, 120, 60] in pixels of the 200x100 image"
    )
    # Qwen2.5-VL: pixels of the image its processor resizes to (multiples of 28 here)
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    text = describe_region(box, image, "resized_pixels", processor)
    assert text == "box [20, 11, 118, 67] in pixels of the 196x112 image you see"
    stroke = Stroke(((30.0, 40.0), (50.0, 40.0)), width=4.0)
    assert describe_region(stroke, image, "pixels", None).startswith("box [28, 38, 52, 42]")


def test_bad_planner_input_is_one_line_before_any_work(planners, tmp_path, photo):
    with pytest.raises(FileNotFoundError, match="nope"):
        ChatPlanner.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"planner: unknown model 'no_such_model'"):
        ChatPlanner.from_pretrained("no_such_model")
    folder = tmp_path / "plain"
    write_tiny_planner(folder, "llama")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="has no chat template"):
        ChatPlanner.from_pretrained(str(folder))
    text_only = ChatPlanner.from_pretrained(planners["llama"])
    assistant = PlannerAssistant(text_only, SpecialistRegistry(), tmp_path / "o", limits=LIMITS)
    with pytest.raises(ValueError, match=r"images\[0\] has no description: a text-only planner"):
        assistant.chat("what is this", [photo])
    assert assistant.messages == [] and not (tmp_path / "o").exists()


def test_vitron_run_with_a_planner(planners, photo, tmp_path, capsys):
    """``vitron run --planner DIR``: the scripted first reply calls the bundled restorer, the tiny
    model writes the final answer under the grammar, turn.json records both."""
    from vitron.cli import main

    photo.save(tmp_path / "photo.png")
    reply = {
        "version": 1,
        "calls": [{"id": "c0", "task": "restore_image", "args": {"image": "$image0"}}],
    }
    (tmp_path / "reply.txt").write_text(json.dumps(reply))
    argv = ["run", "clean it", "--planner", planners["llama"], "--image",
            str(tmp_path / "photo.png"), "-o", str(tmp_path / "out"),
            "--reply-file", str(tmp_path / "reply.txt"),
            "--max-new-tokens", "16"]  # fmt: skip
    assert main(argv) == 0
    turn = json.loads((tmp_path / "out" / "turn.json").read_text())
    assert turn["outcomes"][0][0]["status"] == "ok"
    assert [r["scripted"] for r in turn["replies"]] == [True, False]
    answer = json.loads(turn["replies"][1]["text"])["answer"]
    assert turn["answer"] == answer and len(answer) <= 16


def test_planner_flag_errors_are_one_line(planners, tmp_path, capsys, monkeypatch):
    from vitron.cli import main

    def error(argv) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        return err.strip()

    out = str(tmp_path / "out")
    assert error(["run", "x", "-o", out]) == (
        "vitron run: error: give one of --model and --planner (neither given)"
    )
    assert error(["run", "x", "--model", "./m", "--planner", "a/b", "-o", out]) == (
        "vitron run: error: give one of --model and --planner (both given)"
    )
    assert error(["eval", "qa", "--data", "d.jsonl", "--planner", "a/b", "-o", out]) == (
        "vitron eval: error: --planner: vitron eval runs a Vitron model (--model)"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["run", "x", "--planner", "nobody-here/no-such-planner", "-o", out]) == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line
    assert line.startswith("vitron run: error: cannot load --planner nobody-here/no-such-planner: ")
    assert "HF_HUB_OFFLINE is set, so the hub is not asked" in line
    monkeypatch.setitem(__import__("sys").modules, "xgrammar", None)
    assert error(["run", "x", "--planner", planners["llama"], "-o", out]) == (
        "vitron run: error: --planner needs the grammar engine xgrammar: "
        "pip install 'vitron[planner]' (or: pip install xgrammar)"
    )
    assert not (tmp_path / "out").exists()


def test_the_built_in_planner_names(tmp_path, capsys):
    """``--planner tiny-*`` builds the tests' random models in memory (what docs/benchmarks.md
    names); a bad engine for a name is refused before any model is built."""
    from vitron.cli import main
    from vitron.planners import BUILTIN_PLANNERS, open_planner

    assert BUILTIN_PLANNERS == (
        "tiny-qwen2_vl",
        "tiny-llava",
        "tiny-idefics3",
        "tiny-llama",
        "smollm2",
    )
    for name in BUILTIN_PLANNERS[:-1]:
        planner = open_planner(name)
        assert (planner.name, planner.vision) == (name, name != "tiny-llama")
    with pytest.raises(ValueError, match=r"^engine must be one of auto, llama.cpp, transformers"):
        open_planner("tiny-llama", engine="vllm")
    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 30), "gray").save(photo)
    (tmp_path / "reply.txt").write_text('{"answer": "a gray photo"}')
    argv = ["run", "what is it?", "--planner", "tiny-llama", "--image", str(photo), "-o",
            str(tmp_path / "out"), "--reply-file", str(tmp_path / "reply.txt")]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out == "a gray photo\n"
    turn = json.loads((tmp_path / "out" / "turn.json").read_text())
    assert turn["replies"] == [{"text": '{"answer": "a gray photo"}', "scripted": True}]
