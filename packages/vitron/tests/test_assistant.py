# ruff: noqa: E501
"""Whole turns: scripted first reply, real dispatch to tiny specialists, results fed back, answer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vitron import Assistant, SpecialistRegistry
from vitron.invocations import InputCounts
from vitron.processing import render_reply
from vitron.regions import Box, Region, RegionError


@pytest.fixture
def registry(specialist_options):
    return SpecialistRegistry(specialist_options)


def test_full_turn_dispatches_and_answers(
    model, registry, image, tmp_path, segment_then_edit, reply_with_calls
):
    first = reply_with_calls("I will segment the dog, then repaint it as a cat.", segment_then_edit)
    assistant = Assistant(model, registry, tmp_path, scripted_replies=[first], max_new_tokens=6)
    turn = assistant.chat("segment the dog and make it a cat", images=[image])
    # the first reply was scripted, the final answer was decoded by the tiny random LLM
    assert [r.scripted for r in turn.replies] == [True, False]
    (outcomes,) = turn.outcomes
    assert [(o.call.id, o.status, o.specialist) for o in outcomes] == [
        ("seg", "ok", "itaclip"), ("edit", "ok", "diffusers-inpaint"), ("fix", "ok", "semanir"),
    ]  # fmt: skip
    assert [o.used_signal for o in outcomes] == [True, True, False]  # restore takes no signal
    names = sorted(p.name for p in turn.files)
    assert names == ["edit_image.png", "fix_image.png", "seg_mask.png", "seg_overlay.png"]
    assert all(p.parent == tmp_path and p.is_file() for p in turn.files)
    mask = np.asarray(Image.open(tmp_path / "seg_mask.png")) > 0
    edited = np.asarray(Image.open(tmp_path / "edit_image.png"))
    assert mask.any() and (edited[~mask] == np.asarray(image)[~mask]).all()
    with Image.open(tmp_path / "fix_image.png") as fixed:
        assert fixed.size == image.size
    # the results went back to the LLM before its final answer
    roles = [m.role for m in assistant.messages]
    assert roles == ["user", "assistant", "results", "assistant"]
    assert assistant.messages[2].text.startswith("[seg] segment_image ok: mask of 'dog' covers")
    expected = model.tokenizer.decode(
        model.generate(
            model.processor.sample(assistant.messages[:3], [image], add_generation_prompt=True, with_labels=False),
            max_new_tokens=6, seed=0,
        ),
        skip_special_tokens=False,
    )  # fmt: skip
    assert turn.answer == expected.replace("</s>", "").strip() and turn.parse_error is None
    assert turn.to_dict()["outcomes"][0][1]["files"] == {"image": str(tmp_path / "edit_image.png")}


def test_real_generate_that_parses_to_nothing_is_a_plain_answer(model, registry, image, tmp_path):
    assistant = Assistant(model, registry, tmp_path, max_new_tokens=12, seed=0)
    turn = assistant.chat("What is in this picture?", images=[image])
    raw = turn.replies[0].text
    assert not turn.replies[0].scripted and len(raw) > 0
    assert turn.invocations == [] and turn.outcomes == [] and turn.parse_error is None
    assert turn.answer == raw.replace("</s>", "").strip()
    assert not any(tmp_path.iterdir())  # no specialist ran


def test_official_tags_dispatch(model, registry, image, tmp_path):
    reply = "Sure.</s> <module> b </module><instruction>segmentation: the dog</instruction><region>[0, 0, 32, 24]</region>"
    assistant = Assistant(
        model, registry, tmp_path, scripted_replies=[reply, "Done: the mask is in c1_mask.png."]
    )
    turn = assistant.chat("where is the dog?", images=[image])
    (outcome,) = turn.outcomes[0]
    assert (outcome.call.task, outcome.status) == ("segment_image", "ok")
    mask = outcome.outputs["mask"].value
    assert not mask[24:].any() and not mask[:, 32:].any()
    assert turn.answer == "Done: the mask is in c1_mask.png."
    assert assistant.messages[1].text == "Sure."


def test_malformed_calls_become_the_answer_with_a_reason(model, registry, tmp_path):
    reply = 'Let me draw it. <invoke>{"version": 1, "calls": [{"id": "g", "task": "paint"}]}</invoke></s>'
    assistant = Assistant(model, registry, tmp_path, scripted_replies=[reply])
    turn = assistant.chat("draw a cat")
    assert turn.parse_error.startswith("calls[0].task: unknown task 'paint'")
    assert (
        turn.answer
        == 'Let me draw it. <invoke>{"version": 1, "calls": [{"id": "g", "task": "paint"}]}</invoke>'
    )
    assert turn.outcomes == []


def test_rounds_limit_and_conversation_state(model, registry, image, tmp_path, reply_with_calls):
    generate = {
        "version": 1,
        "calls": [{"id": "g", "task": "generate_image", "args": {"text": "a cat"}}],
    }
    again = {
        "version": 1,
        "calls": [{"id": "g2", "task": "generate_image", "args": {"text": "a dog"}}],
    }
    replies = [reply_with_calls("Drawing.", generate), reply_with_calls("One more.", again)]
    assistant = Assistant(model, registry, tmp_path, scripted_replies=replies, max_rounds=1)
    turn = assistant.chat("draw a cat")
    assert [o.call.id for o in turn.outcomes[0]] == ["g"]
    assert turn.unexecuted.calls[0].id == "g2" and turn.answer == "One more."
    assert (tmp_path / "g_image.png").is_file() and not (tmp_path / "g2_image.png").exists()
    # a later turn adds an image: placeholders and numbering continue
    assert (
        assistant.user_message("and this", [image], [], [Region(Box(0, 0, 4, 4))])
        == "<image>\nand this (region 0: <region>)"
    )
    with pytest.raises(
        ValueError, match=r"a region refers to image 3, but the conversation has 1 image\(s\)"
    ):
        assistant.chat("x", images=[image], regions=[Region(Box(0, 0, 4, 4), image=3)])
    with pytest.raises(ValueError, match=r"max_rounds must be >= 1, got 0"):
        Assistant(model, registry, tmp_path, max_rounds=0)
    bad = {
        "max_new_tokens": (0, r"max_new_tokens must be >= 1, got 0"),
        "top_p": (5.0, r"top_p must be in \(0, 1\], got 5.0"),
        "temperature": (-1.0, r"temperature must be a finite number > 0, got -1.0"),
    }
    for name, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            Assistant(model, registry, tmp_path, **{name: value})


def test_image_to_video_end_to_end(model, registry, image, tmp_path, reply_with_calls):
    """Animate the user's image (tiny I2VGen-XL), then segment the dog in the new video."""
    calls = {
        "version": 1,
        "calls": [
            {
                "id": "anim",
                "task": "image_to_video",
                "args": {"image": "$image0", "text": "make it run"},
            },
            {"id": "seg", "task": "segment_video", "args": {"video": "$anim.video", "text": "dog"}},
        ],
    }
    first = reply_with_calls("Animating it, then finding the dog.", calls)
    assistant = Assistant(model, registry, tmp_path, scripted_replies=[first, "Done."])
    turn = assistant.chat("make the dog run and show me where it is", images=[image])
    (outcomes,) = turn.outcomes
    assert [(o.call.id, o.status, o.specialist) for o in outcomes] == [
        ("anim", "ok", "diffusers-video"), ("seg", "ok", "itaclip"),
    ]  # fmt: skip
    frames = outcomes[0].outputs["video"].value
    assert [f.size for f in frames] == [(32, 32)] * 3
    with Image.open(tmp_path / "anim_video.gif") as gif:
        assert (gif.n_frames, gif.size) == (3, (32, 32))
    masks = outcomes[1].outputs["masks"].value
    assert len(masks) == 3 and all(tuple(m.shape) == (32, 32) for m in masks)
    assert sorted(p.name for p in turn.files) == [
        "anim_video.gif",
        "seg_masks.gif",
        "seg_overlay.gif",
    ]
    assert assistant.messages[2].text.startswith(
        "[anim] image_to_video ok: generated a 3-frame 32x32 video of 'make it run'"
    )
    assert turn.answer == "Done."


def test_importing_vitron_and_building_its_commands_load_no_specialist():
    """Nor Lightning: ``vitron --help`` builds every command's parser (``train``'s too, whose
    package once imported Lightning on import: 4.5 s of every command's start)."""
    heavy = [
        "itaclip",
        "semanir",
        "diffusers",
        "pixelsmith",
        "diffeat",
        "open_clip",
        "lightning",
        "peft",
    ]
    code = (
        "import sys, vitron, vitron.specialists, vitron.cli, vitron.tiny; "
        "vitron.cli.build_parser().format_help(); "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_failed_turn_leaves_the_conversation_as_it_was(model, registry, image, tmp_path):
    assistant = Assistant(model, registry, tmp_path, max_new_tokens=3)
    outside = Region(Box(100, 100, 120, 120), image=0)  # the image is 64x48
    with pytest.raises(RegionError, match=r"lies outside the 64x48 image"):
        assistant.chat("look here", images=[image], regions=[outside])
    assert assistant.messages == [] and assistant.counts == InputCounts(0, 0, region_images=())
    turn = assistant.chat("what is this?", images=[image])  # works: nothing left behind
    assert [m.role for m in assistant.messages] == ["user", "assistant"]
    assert turn.user == "<image>\nwhat is this?" and assistant.counts == InputCounts(
        1, 0, region_images=()
    )


def test_placeholders_in_replies_stay_as_written_and_are_no_inputs(
    model, registry, image, tmp_path, segment_then_edit, reply_with_calls
):
    echo = "A dog at <region> beside <image> here.</s>"
    calls = reply_with_calls("Segmenting the dog in <region> first.", segment_then_edit)
    assistant = Assistant(model, registry, tmp_path, scripted_replies=[echo, calls])
    first = assistant.chat("where?", images=[image], regions=[Region(Box(0, 0, 20, 20))])
    assert first.parse_error is None and first.answer == "A dog at <region> beside <image> here."
    assert assistant.messages[1].text == first.answer
    # the reply's placeholders are ordinary tokens: the next turn still has one image and one
    # region as inputs, and a JSON reply whose text mentions <region> is not taken for tags
    second = assistant.chat("segment the dog and make it a cat")
    assert second.parse_error is None
    assert second.invocations[0].calls[0].task == "segment_image"
    assert [o.status for o in second.outcomes[0]] == ["ok", "ok", "ok"]
    assert assistant.counts == InputCounts(1, 0, region_images=(0,))


def test_signals_are_read_from_the_reply_the_model_wrote(model, registry, image, tmp_path):
    tags = "<module> b </module><instruction>image segmentation: the dog</instruction><signal></s>"
    assistant = Assistant(model, registry, tmp_path, scripted_replies=[tags], max_new_tokens=2)
    turn = assistant.chat("segment the dog", images=[image])
    assert turn.invocations[0].calls[0].task == "segment_image"
    reply = assistant.messages[1]
    assert reply.raw == tags.removesuffix("</s>") and reply.invocation is not None
    assert render_reply(reply, model.config.signal_token) == reply.raw
    sample = model.processor.sample(assistant.messages[:2], [image], with_labels=False)
    reply_tokens = model.tokenizer.decode(sample.input_ids).split("ASSISTANT:")[-1]
    assert reply_tokens.startswith(" <module> b </module>") and "<invoke>" not in reply_tokens
    assert sample.signal_tasks == ("segment_image",)
