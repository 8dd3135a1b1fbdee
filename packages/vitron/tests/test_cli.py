"""The ``vitron`` command end to end on tiny components saved to folders."""

# ruff: noqa: E501
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitron.cli import main
from vitron.options import parse_settings


@pytest.fixture
def image_file(tmp_path, image):
    path = tmp_path / "dog.png"
    image.save(path)
    return path


@pytest.fixture
def run_scripted(tmp_path, model_dir, specialists_file, image_file):
    """``run(prompt, reply, *flags)``: ``vitron run`` on the dog image with ``reply`` as the LLM's
    first reply; returns the exit status and the output folder."""

    def run(prompt: str, reply: str, *flags: str) -> tuple[int, Path]:
        reply_file = tmp_path / "reply.txt"
        reply_file.write_text(reply)
        out = tmp_path / "out"
        status = main([
            "run", prompt, "--image", str(image_file), "-o", str(out), "--model", str(model_dir),
            "--specialists", str(specialists_file), "--reply-file", str(reply_file), *flags,
        ])  # fmt: skip
        return status, out

    return run


def test_run_with_scripted_reply(capsys, run_scripted, segment_then_edit, reply_with_calls):
    status, out = run_scripted(
        "segment the dog and make it a cat",
        reply_with_calls("Segmenting the dog, then painting a cat.", segment_then_edit),
        "--max-new-tokens", "4", "--set", "itaclip.signal_weight=0.0",
    )  # fmt: skip
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "edit_image.png",
        "fix_image.png",
        "seg_mask.png",
        "seg_overlay.png",
        "turn.json",
    ]
    turn = json.loads((out / "turn.json").read_text())
    assert [o["status"] for o in turn["outcomes"][0]] == ["ok", "ok", "ok"]
    assert turn["replies"][0]["scripted"] is True and turn["replies"][1]["scripted"] is False
    printed = capsys.readouterr().out
    assert "[seg] segment_image: ok - mask of 'dog' covers" in printed
    assert printed.rstrip("\n").endswith(turn["answer"])


def test_run_with_a_region_flag(run_scripted):
    status, out = run_scripted(
        "where is the dog in this box?",
        "<module>B</module><instruction>the dog</instruction>",
        "--box", "0,0,32,24@0", "--max-new-tokens", "2",
    )  # fmt: skip
    assert status == 0
    turn = json.loads((out / "turn.json").read_text())
    assert turn["user"].endswith("where is the dog in this box? (region 0: <region>)")
    # the user's box reaches the segmentation call (official grammar, no <region> of its own)
    assert turn["invocations"][0]["calls"][0]["args"] == {
        "text": "the dog", "image": "$image0", "region": "$region0",
    }  # fmt: skip
    mask = np.asarray(Image.open(out / "c1_mask.png")) > 0
    assert not mask[24:].any() and not mask[:, 32:].any()


def test_parse_command(capsys):
    assert (
        main(
            [
                "parse",
                "Ok.</s><module> C </module><instruction>edit: write Note: closed</instruction><region>1,2,3,4</region>",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["text"] == "Ok." and data["grammar"] == "tags"
    assert data["invocation"]["calls"][0]["args"] == {
        "text": "write Note: closed",
        "image": "$image0",
        "region": {"box": [1.0, 2.0, 3.0, 4.0]},
    }
    assert main(["parse", "<module>Z</module>"]) == 2  # one line; tests/test_cli_errors.py
    err = capsys.readouterr().err
    assert err.startswith("vitron parse: error: REPLY does not parse: <module> at character 0: ")


def test_specialists_command(capsys, specialists_file):
    assert main(["specialists", "--specialists", str(specialists_file)]) == 0
    printed = capsys.readouterr().out
    assert "itaclip            segment_image, segment_video" in printed
    assert "consumes text, image, region, mask, signal" in printed  # diffusers-inpaint


def test_chat_session(tmp_path, capsys, model_dir, specialists_file, image_file, image):
    from vitron.cli import build_parser, run_chat

    args = build_parser().parse_args([
        "chat", "--model", str(model_dir), "--specialists", str(specialists_file), "-o", str(tmp_path / "chat"),
        "--max-new-tokens", "3",
    ])  # fmt: skip
    lines = io.StringIO(
        f"/image {image_file}\n/box 200,200,220,220\nlook there\n"  # box outside: refused
        f"/image {image_file}\n/box 0,0,10,10\n/box 0,0,10,10@4\nwhat is this?\n/frobnicate\n/reset\n/quit\nnever read\n"
    )  # fmt: skip
    assert run_chat(args, stdin=lines) == 0
    printed = capsys.readouterr().out
    size = f"{image.width}x{image.height}"
    assert f"error: /box 200,200,220,220 lies outside the {size} image\n" in printed
    assert "(image $image0 added)" in printed and "(region added)" in printed
    assert "(image $image1 added)" in printed  # the first turn kept its image
    assert "error: /box refers to image 4, but 2 image(s) were given" in printed  # and it went on
    first = json.loads((tmp_path / "chat" / "turn_001.json").read_text())
    assert first["user"] == "<image>\nlook there"  # the refused box is not in it
    turn = json.loads((tmp_path / "chat" / "turn_002.json").read_text())
    assert turn["user"].startswith("<image>\nwhat is this? (region 0: <region>)")
    assert "unknown command /frobnicate" in printed and "(conversation reset)" in printed


def test_tiny_specialists_and_train_commands(tmp_path, capsys, model_dir):
    assert main(["tiny-specialists", str(tmp_path / "spec"), "--no-video"]) == 0
    options = json.loads((tmp_path / "spec" / "specialists.json").read_text())
    assert sorted(options) == ["diffusers-image", "diffusers-inpaint", "itaclip", "semanir"]
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    record = {
        "images": ["a.png"],
        "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "black"}],
    }
    (tmp_path / "data.jsonl").write_text(json.dumps(record) + "\n")
    status = main([
        "train", "--model", str(model_dir), "--data", str(tmp_path / "data.jsonl"), "--stage", "1",
        "-o", str(tmp_path / "trained"), "--max-steps", "2", "--batch-size", "1", "--lr", "1e-3",
        "--accelerator", "cpu",
    ])  # fmt: skip
    assert status == 0
    assert (tmp_path / "trained" / "model.safetensors").is_file()
    assert "stage 1: loss" in capsys.readouterr().out


def test_parse_settings():
    assert parse_settings(["itaclip.signal_weight=0.5", "itaclip.preset=voc21", "semanir.model=null"]) == {
        "itaclip": {"signal_weight": 0.5, "preset": "voc21"}, "semanir": {"model": None},
    }  # fmt: skip


def test_run_exits_1_naming_each_call_that_failed(
    capsys, monkeypatch, run_scripted, segment_then_edit, reply_with_calls
):
    from vitron.specialists import SpecialistError, SpecialistRegistry

    real = SpecialistRegistry.specialist

    def no_editor(self, task):
        if task == "edit_image":
            raise SpecialistError("the editor's weights are missing")
        return real(self, task)

    monkeypatch.setattr(SpecialistRegistry, "specialist", no_editor)
    status, out = run_scripted(
        "segment the dog and make it a cat",
        reply_with_calls("Segmenting, then painting.", segment_then_edit),
        "--max-new-tokens", "2",
    )  # fmt: skip
    assert status == 1
    turn = json.loads((out / "turn.json").read_text())  # still written
    statuses = {o["id"]: o["status"] for o in turn["outcomes"][0]}
    failed = [o for o in turn["outcomes"][0] if o["status"] != "ok"]
    err = capsys.readouterr().err.splitlines()
    assert statuses == {"seg": "ok", "edit": "error", "fix": "skipped"}
    assert [o["id"] for o in failed] == ["edit", "fix"]
    assert err == [
        "vitron run: error: call edit (edit_image) failed: the editor's weights are missing",
        "vitron run: error: call fix (restore_image) was skipped: it depends on edit, which did "
        "not succeed",
    ]
    ok = [o for o in turn["outcomes"][0] if o["status"] == "ok"]
    assert [o["id"] for o in ok] == ["seg"]
    assert all(Path(f).is_file() for o in ok for f in o["files"].values())  # still written
    assert sorted(p.name for p in out.iterdir()) == ["seg_mask.png", "seg_overlay.png", "turn.json"]
