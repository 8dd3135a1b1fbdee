"""A planner's reply streamed as it is generated (issue 51, item 4): the pieces a tiny random
chat model's ``generate`` hands out, joined, are exactly the reply it returns, and a
conversation tells each reply's pieces with the reply's index."""

from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from vitron.assistant import Turn
from vitron.chat import print_turn
from vitron.invocations import InputCounts
from vitron.io import printable
from vitron.planners import ChatPlanner, GrammarLimits, PlannerAssistant, PlannerGrammar
from vitron.planners.chat import TextPieces
from vitron.planners.tiny import tiny_planner
from vitron.specialists import SpecialistRegistry
from vitron.specialists.restoration import SemanirRestorer

pytest.importorskip("xgrammar")
LIMITS = GrammarLimits(max_calls=1, max_text=10, max_list=2, max_answer=8, optional_args=False)


@pytest.fixture(scope="module")
def planner() -> ChatPlanner:
    model, processor = tiny_planner("llama", seed=0)
    return ChatPlanner(model, processor, vision=False, name="tiny llama")


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["calls", "answer"])
def test_pieces_joined_are_the_reply(planner, photo, mode):
    registry = SpecialistRegistry(adapters=(SemanirRestorer,))
    assistant = PlannerAssistant(planner, registry, "unused", limits=LIMITS)
    messages = [assistant.system(), assistant.user_message("clean it", [photo], [], ["a.png"])]
    grammar = PlannerGrammar(InputCounts(1, 0, 0), ["restore_image"], LIMITS, mode)
    pieces: list[str] = []
    reply = planner.reply(messages, grammar, pieces.append)
    assert "".join(pieces) == reply  # the reply is decoded from generate's output, not the pieces
    assert len(pieces) > 3 and all(pieces)  # streamed, not told once at the end
    assert not any(p.endswith("\ufffd") for p in pieces)
    assert set(json.loads(reply)) == ({"answer"} if mode == "answer" else {"version", "calls"})


def test_a_piece_waits_for_the_rest_of_a_character(planner):
    """Byte-level tokens may split a character: nothing is told until it is whole."""
    told: list[str] = []
    pieces = TextPieces(planner.decode, planner.stop_ids, told.append)
    pieces.put(torch.tensor([[1, 2, 3]]))  # the prompt: never told
    tokens = planner.tokenizer.encode("é!", add_special_tokens=False)
    assert len(tokens) == 3  # the two bytes of 'é', then '!'
    for token in tokens:
        pieces.put(torch.tensor([token]))
    pieces.put(torch.tensor([planner.stop_ids[0]]))  # a stop token is never told
    pieces.end()
    assert told == ["é", "!"]


@pytest.mark.parametrize("progress", [False, True])
def test_a_turn_tells_each_reply_with_its_index(planner, photo, tmp_path, capsys, progress):
    """``on_text`` is told each piece of the turn's k-th reply. With ``progress`` (what ``vitron
    run`` and ``chat`` ask), each reply is also written on stderr after ``planner:`` as it comes,
    then what it cost (no cost line for a scripted reply); without it, nothing is written."""
    registry = SpecialistRegistry(adapters=(SemanirRestorer,))
    call = {"version": 1, "calls": [{"id": "c0", "task": "restore_image",
                                     "args": {"image": "$image0"}}]}  # fmt: skip
    assistant = PlannerAssistant(
        planner, registry, tmp_path, limits=LIMITS, scripted_replies=[json.dumps(call)]
    )
    told: list[tuple[int, str]] = []
    turn = assistant.chat("clean it", [photo], names=["a.png"], progress=progress,
                          on_text=lambda k, piece: told.append((k, piece)))  # fmt: skip
    assert turn.outcomes[0][0].status == "ok" and len(turn.replies) == 2
    first = [p for k, p in told if k == 0]
    second = [p for k, p in told if k == 1]
    assert first == [json.dumps(call)]  # a scripted reply, in one piece
    assert "".join(second) == turn.replies[1].text and len(second) > 1
    assert [k for k, _ in told] == sorted(k for k, _ in told)  # reply 0 before reply 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("planner")]
    if not progress:
        assert lines == []
        return
    assert lines[0] == f"planner: {turn.replies[0].text}"
    assert lines[1] == f"planner: {printable(turn.replies[1].text)}"
    assert lines[2] == f"planner: {planner.last.line()}" and len(lines) == 3
    assert re.fullmatch(r"planner: \d+ tokens in \d+\.\d s \(\d+\.\d tokens/s; prompt \d+\.\d s, "
                        r"grammar \d+%\)", lines[2])  # fmt: skip


def test_printed_text_carries_no_control_characters():
    """A model's text cannot drive the terminal: escapes, carriage returns and C1 controls are
    written as \\xNN; newlines and tabs stay."""

    assert printable("a\x1b[2Jb\r\n\tc\x9b\x7f") == "a\\x1b[2Jb\\x0d\n\tc\\x9b\\x7f"
    turn = Turn(user="x")
    turn.answer = "red\x1b]0;pwned\x07 bird"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_turn(turn)
    assert out.getvalue() == "red\\x1b]0;pwned\\x07 bird\n"
