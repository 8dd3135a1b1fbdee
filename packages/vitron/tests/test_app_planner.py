"""The page over a chat-model planner (issue 51, item 4), without a browser: the planner's replies
stream into the conversation as they are generated, and ``vitron app`` without ``--model`` or
``--planner`` starts with the default planner, saying which hub model it would use and the
command that gets it when none is installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitron.app import ChatSession, format_progress
from vitron.invocations import InputCounts
from vitron.planners import ChatPlanner, GrammarLimits, PlannerAssistant, PlannerGrammar
from vitron.planners.chat import PlannerMessage
from vitron.planners.default import (
    DEFAULT_PLANNERS,
    choose_default_planner,
    open_default_planner,
)
from vitron.planners.tiny import tiny_planner, write_tiny_planner
from vitron.specialists import SpecialistRegistry
from vitron.specialists.restoration import SemanirRestorer

pytest.importorskip("xgrammar")
CALL = {"version": 1, "calls": [{"id": "c0", "task": "restore_image",
                                 "args": {"image": "$image0"}}]}  # fmt: skip
LIMITS = GrammarLimits(max_calls=1, max_answer=8, optional_args=False)


@pytest.fixture(scope="module")
def llama() -> ChatPlanner:
    model, tokenizer = tiny_planner("llama", seed=0)
    return ChatPlanner(model, tokenizer, vision=False, name="tiny llama")


def test_the_planners_replies_stream_into_the_conversation(llama, tmp_path):
    registry = SpecialistRegistry(adapters=(SemanirRestorer,))
    assistant = PlannerAssistant(
        llama, registry, tmp_path, limits=LIMITS, scripted_replies=[json.dumps(CALL)]
    )
    session = ChatSession(assistant, tmp_path)
    photo = Image.fromarray(np.random.default_rng(5).integers(0, 256, (24, 32, 3), np.uint8))
    states = list(session.stream("clean this photo", photo))
    shown = [messages[-1]["content"] for messages, _, _ in states[:-1]]
    assert shown[0] == "*working...*"  # the user's image and message come at once
    assert [m["content"] for m in states[0][0][1:3]] == ["clean this photo", "*working...*"]
    # the fixed first reply in one piece, its calls running; then the answer as it grows
    assert shown[1] == f"```json\n{json.dumps(CALL)}\n```\n\n*running the calls...*"
    record = json.loads((tmp_path / "turn_001.json").read_text())
    answer_reply = record["replies"][1]["text"]
    growing = [text.split("```json\n")[2].removesuffix("\n```") for text in shown[2:]]
    assert len(growing) > 2 and growing[-1] == answer_reply
    assert all(answer_reply.startswith(g) for g in growing)
    assert [len(g) for g in growing] == sorted({len(g) for g in growing})  # each state longer
    # the end: the answer, the call's line, the restored image in the conversation
    messages, pictures, files = states[-1]
    answer = messages[2]["content"].splitlines()
    assert answer[0] == json.loads(answer_reply)["answer"] == record["answer"]
    assert answer[1].startswith("- `c0` restore_image: restored the 32x24 image to 32x24")
    restored = {"path": str(tmp_path / "c0_image.png"), "alt_text": "c0_image"}
    assert messages[3]["content"] == restored
    assert pictures == files == [str(tmp_path / "c0_image.png")]
    # a text-only planner is told the image by the name the page wrote it under
    told = "".join(str(p) for p in assistant.messages[1].parts)
    assert told.startswith("[$image0: the image turn_001_image.png, 32x24 pixels]\n")


def test_progress_says_what_runs():
    assert format_progress([]) == "*working...*"
    assert format_progress(['{"answ']) == '```json\n{"answ\n```'
    assert format_progress(['{"answer": "hi"}']) == '```json\n{"answer": "hi"}\n```'
    assert format_progress([json.dumps(CALL)]).endswith("\n\n*running the calls...*")


def test_the_default_planner_is_the_first_installed_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("VITRON_CACHE", str(tmp_path / "empty-vitron-cache"))  # no GGUF fetched
    choice = choose_default_planner()
    assert choice.repo_id is None
    assert choice.note.startswith(
        "**No real planner is installed** (none of `Qwen/Qwen2.5-VL-3B-Instruct`, "
        "`HuggingFaceTB/SmolVLM-256M-Instruct` is in the local hub cache). The page would "
        "use `Qwen/Qwen2.5-VL-3B-Instruct` (7.5 GB): get it with "
        "`hf download Qwen/Qwen2.5-VL-3B-Instruct` and start the page again. A smaller one "
        "(0.5 GB): `hf download HuggingFaceTB/SmolVLM-256M-Instruct`."
    )
    assert choice.note.endswith("its replies parse and its calls run, but they are noise.")
    # a snapshot of the smaller one in the cache (what hf download leaves): that one is used
    (tmp_path / "models--HuggingFaceTB--SmolVLM-256M-Instruct" / "snapshots" / "0a1b").mkdir(
        parents=True
    )
    choice = choose_default_planner()
    assert choice.repo_id == DEFAULT_PLANNERS[1]
    assert choice.note == "Planner: `HuggingFaceTB/SmolVLM-256M-Instruct` (in the local hub cache)."
    with pytest.raises(ValueError, match="candidates: give at least one hub id"):
        choose_default_planner(())


def test_a_fetched_gguf_is_the_default_planner_when_no_hub_model_is_cached(tmp_path, monkeypatch):
    """``--planner smollm2`` fetched SmolLM2 before: the page runs it and says so (a tiny GGUF
    under its name stands in for it here)."""
    from vitron.planners.gguf import SMOLLM2, write_tiny_gguf

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("VITRON_CACHE", str(tmp_path / "cache"))
    assert "--planner smollm2" in choose_default_planner().note  # not fetched: the note says how
    (tmp_path / "cache" / "gguf").mkdir(parents=True)
    fetched = write_tiny_gguf(tmp_path / "cache" / "gguf" / SMOLLM2.filename)
    choice = choose_default_planner()
    assert (choice.repo_id, choice.gguf) == (None, fetched)
    assert choice.note.startswith(
        f"Planner: `{SMOLLM2.filename}` (fetched before, in `{fetched.parent}`): SmolLM2-135M"
    )
    # as where llama-cpp-python is not installed (the tiny GGUF has no BPE merges, which
    # llama.cpp needs; llama.cpp runs the real SmolLM2 in the slow lane)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    planner = open_default_planner(choice)
    assert planner.engine == "transformers" and planner.name == str(fetched)
    grammar = PlannerGrammar(InputCounts(), limits=GrammarLimits(max_answer=5), mode="answer")
    messages = [PlannerMessage("system", ["plan"]), PlannerMessage("user", ["hi"])]
    assert set(json.loads(planner.reply(messages, grammar))) == {"answer"}


def served_session(argv: list[str], monkeypatch) -> ChatSession:
    """The session ``vitron app ARGV`` serves (its page not launched)."""
    from common_kernels.runtime import app as runtime_app
    from vitron.cli import main

    served = {}
    monkeypatch.setattr(runtime_app, "launch_blocks", lambda blocks, **o: served.update(o))
    monkeypatch.setattr("vitron.app.ChatSession.__init__", _recording(served))
    assert main([*argv, "--device", "cpu", "--port", "7777"]) == 0
    assert served["port"] == 7777
    return served["session"]


def _recording(served: dict):
    init = ChatSession.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        served["session"] = self

    return record


def test_vitron_app_without_a_model_starts_the_default_planner(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("VITRON_CACHE", str(tmp_path / "empty-vitron-cache"))  # no GGUF fetched
    session = served_session(["app", "-o", str(tmp_path / "out")], monkeypatch)
    assert session.assistant.planner.name == "tiny random qwen2_vl" and session.streams
    assert "get it with `hf download Qwen/Qwen2.5-VL-3B-Instruct`" in session.note
    assert session.output_dir == tmp_path / "out"


def test_vitron_app_with_a_planner_folder(tmp_path, monkeypatch):
    folder = write_tiny_planner(tmp_path / "planner", "llama")
    argv = ["app", "--planner", str(folder), "-o", str(tmp_path / "out")]
    session = served_session(argv, monkeypatch)
    assert session.assistant.planner.vision is False
    assert session.note == f"Planner: `{folder}`, its replies held to the calls' grammar."


def test_the_default_planner_without_the_grammar_engine_is_one_line(tmp_path, monkeypatch, capsys):
    from vitron.cli import main

    monkeypatch.setitem(sys.modules, "xgrammar", None)
    assert main(["app", "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        "vitron app: error: the page's default planner needs the grammar engine xgrammar: "
        "pip install 'vitron[planner]' (or: pip install xgrammar); or give --model\n"
    )
    assert not Path(tmp_path / "out").exists()


def test_closing_the_page_stops_a_turn_at_the_planners_next_token(llama, tmp_path):
    from vitron.app import TurnStopped

    registry = SpecialistRegistry(adapters=(SemanirRestorer,))
    session = ChatSession(PlannerAssistant(llama, registry, tmp_path, limits=LIMITS), tmp_path)
    photo = Image.fromarray(np.random.default_rng(5).integers(0, 256, (24, 32, 3), np.uint8))
    turn = session.stream("clean this photo", photo)
    for messages, _, _ in turn:
        if messages[-1]["content"].startswith("```json\n{"):  # the planner is writing
            session.close()
            break
    assert next(turn) == ([], [], [])  # the conversation as it was
    with pytest.raises(TurnStopped, match="the page stopped while the planner wrote its reply"):
        next(turn)
    assert session.turns == 0 and session.assistant.messages == []
    assert session.lock.acquire(blocking=False)  # the turn ended


def test_serving_ends_by_stopping_the_turn(llama, tmp_path, monkeypatch):
    """However the page stops (here Ctrl-C), a turn in progress is told to stop."""
    from common_kernels.runtime import app as runtime_app
    from vitron.app import serve

    def interrupted(blocks, **options):
        assert options["port"] == 7000 and options["allowed_paths"] == [tmp_path]
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime_app, "launch_blocks", interrupted)
    session = ChatSession(PlannerAssistant(llama, SpecialistRegistry(), tmp_path), tmp_path)
    with pytest.raises(KeyboardInterrupt):
        serve(session, host="127.0.0.1", port=7000, share=False)
    assert session.closing.is_set()
