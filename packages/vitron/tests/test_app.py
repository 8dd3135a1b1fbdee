"""The Gradio app: the session logic directly, and one request through a served page."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
from PIL import Image

from vitron import Assistant, SpecialistRegistry
from vitron.app import ChatSession, launch_app


@pytest.fixture
def session_for(model, specialist_options, tmp_path):
    """``make(*scripted_replies)``: a session over the tiny model and specialists."""

    def make(*replies: str) -> ChatSession:
        registry = SpecialistRegistry(specialist_options)
        assistant = Assistant(model, registry, tmp_path, scripted_replies=replies, max_new_tokens=4)
        return ChatSession(assistant, tmp_path)

    return make


def test_turn_shows_answer_calls_and_files(
    session_for, image, tmp_path, segment_then_edit, reply_with_calls
):
    session = session_for(reply_with_calls("Segmenting, then painting.", segment_then_edit))
    messages, pictures, files = session.submit("  segment the dog and make it a cat ", image)
    # the attached image is shown first, as the page wrote it; the images the calls wrote last
    assert [m["role"] for m in messages] == ["user", "user"] + ["assistant"] * 5
    shown = messages[0]["content"]
    assert shown["alt_text"] == "your image, 64x48"
    assert shown["path"] == str(session.output_dir / "turn_001_image.png")
    with Image.open(shown["path"]) as written:
        assert np.array_equal(np.asarray(written), np.asarray(image.convert("RGB")))
    assert messages[1]["content"] == "segment the dog and make it a cat"
    lines = messages[2]["content"].splitlines()
    assert lines[1].startswith("- `seg` segment_image: mask of 'dog' covers")
    assert [line.split("`")[1] for line in lines[1:]] == ["seg", "edit", "fix"]
    names = ["seg_mask.png", "seg_overlay.png", "edit_image.png", "fix_image.png"]
    assert sorted(os.path.basename(p) for p in pictures) == sorted(names)
    assert sorted(os.path.basename(p) for p in files) == sorted(names)
    shown = [m["content"] for m in messages[3:]]
    assert [c["path"] for c in shown] == pictures  # in the order the calls wrote them
    assert [c["alt_text"] for c in shown] == [os.path.basename(p)[:-4] for p in pictures]
    record = json.loads((tmp_path / "turn_001.json").read_text())
    assert record["answer"] == lines[0] and record["user"].endswith("make it a cat")
    # a plain second turn adds two messages and no files
    messages, pictures, _ = session.submit("thanks")
    assert len(messages) == 9 and len(pictures) == 4 and session.turns == 2


def test_box_goes_on_the_latest_image(session_for, image):
    session = session_for("A dog.", "Still a dog.")
    session.submit("what is this?", image)
    session.submit("and here?", None, "0,0,32,24")
    (region,) = session.assistant.inputs.regions
    assert region.image == 0
    assert (region.shape.x1, region.shape.y1, region.shape.x2, region.shape.y2) == (0, 0, 32, 24)
    assert session.assistant.messages[-2].text.endswith("and here? (region 0: <region>)")


@pytest.mark.parametrize(
    ("text", "with_image", "box", "message"),
    [
        ("   ", True, "", "the message is empty: write what you want first"),
        ("look here", False, "0,0,5,5", "a box region needs an image: add one with the message"),
        ("look here", True, "0,0,5", "box must be four numbers"),
        ("look here", True, "0,0,65,10", r"regions\[0\] Box\(.*\) lies outside the 64x48 image"),
    ],
)
def test_bad_input(session_for, image, text, with_image, box, message, tmp_path):
    session = session_for("unused")
    with pytest.raises(ValueError, match=message):  # before anything is shown or written
        next(session.stream(text, image if with_image else None, box))
    assert session.messages == [] and session.turns == 0 and not list(tmp_path.iterdir())


def test_a_turn_refused_while_it_runs_leaves_the_conversation_as_it_was(session_for, image):
    """The assistant refuses the message after the page showed it: the page shows the
    conversation as it was, then the one-line error; the next turn runs."""
    session = session_for("Fine.")
    turn = session.stream("what is <image>?")  # one <image> written, none attached
    shown, _, _ = next(turn)
    assert [m["content"] for m in shown] == ["what is <image>?", "*working...*"]
    assert next(turn) == ([], [], [])
    with pytest.raises(ValueError, match="the text has 1 <image> but 0 were given"):
        next(turn)
    assert session.messages == [] and session.turns == 0
    messages, _, _ = session.submit("and now?", image)  # the turn's lock was released
    assert messages[-1] == {"role": "assistant", "content": "Fine."} and session.turns == 1


def test_reset_starts_a_new_conversation(session_for, image):
    session = session_for("One.", "Two.")
    session.submit("first", image)
    session.reset()
    assert session.messages == [] and session.files == [] and session.assistant.messages == []
    messages, _, _ = session.submit("second")
    assert messages[1]["content"] == "Two." and session.assistant.inputs.images == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _text(content) -> str:
    """A served chat message's text: a string (gradio 5) or typed parts (gradio 6)."""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part["type"] == "text")


def test_served_page_answers_through_gradio_client(session_for, image, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client, handle_file

    restore = {"version": 1, "calls": [
        {"id": "fix", "task": "restore_image", "args": {"image": "$image0"}}]}  # fmt: skip
    session = session_for("Restoring it. <invoke>" + json.dumps(restore) + "</invoke>")
    upload = tmp_path / "upload.png"
    image.save(upload)
    demo = launch_app(
        session, server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True,
        quiet=True,
    )  # fmt: skip
    try:
        client = Client(demo.local_url, verbose=False)
        chat, gallery, files, message, image_out, box = client.predict(
            "clean this photo", handle_file(str(upload)), "", api_name="/send"
        )
    finally:
        demo.close()
    # the user's image, their text, the answer, the restored image
    assert [m["role"] for m in chat] == ["user", "user", "assistant", "assistant"]
    assert _text(chat[1]["content"]) == "clean this photo"
    answer = _text(chat[2]["content"]).splitlines()
    assert answer[1].startswith("- `fix` restore_image: ")
    assert (message, box) == ("", "") and image_out is None
    # the restored image came back through the page (served from the output folder)
    (picture,) = gallery
    served = picture["image"] if isinstance(picture, dict) else picture[0]
    path = served["path"] if isinstance(served, dict) else served
    with Image.open(path) as got, Image.open(tmp_path / "fix_image.png") as written:
        assert got.size == written.size == image.size
        assert np.array_equal(np.asarray(got), np.asarray(written))
    assert session.turns == 1 and len(files) == 1


def test_launch_lets_gradio_serve_the_output_folders(session_for, tmp_path, monkeypatch):
    import gradio as gr

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: seen.update(kwargs))
    session = session_for("unused")
    launch_app(session, server_port=1234)
    assert seen["allowed_paths"] == [str(tmp_path.resolve())] and seen["server_port"] == 1234


def test_the_app_command_serves_through_launch_blocks(
    model, specialists_file, tmp_path, monkeypatch
):
    """``vitron app`` serves its page as every package's does (common-kernels' launch_blocks:
    the server closed and the process ready to exit at once after Ctrl-C or SIGTERM), with
    the conversation's and the specialists' output folders served."""
    import gradio as gr

    from common_kernels.runtime import app as runtime_app
    from vitron.cli import main

    model.save_pretrained(tmp_path / "model")
    served = {}
    monkeypatch.setattr(
        runtime_app,
        "launch_blocks",
        lambda blocks, **options: served.update(options, blocks=blocks),
    )
    argv = ["app", "--model", str(tmp_path / "model"), "--specialists", str(specialists_file),
            "-o", str(tmp_path / "out"), "--port", "7777", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert isinstance(served.pop("blocks"), gr.Blocks)
    assert served["host"] == "127.0.0.1" and served["port"] == 7777 and served["share"] is False
    assert served["allowed_paths"] == [tmp_path / "out"]  # the specialists write there too
