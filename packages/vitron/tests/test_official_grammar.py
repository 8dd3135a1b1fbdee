# ruff: noqa: E501
"""The official tag grammar end to end: through `parse_reply` / `vitron parse`, through
`Assistant` (scripted first reply, real dispatch to tiny specialists, decoded answer) and through
`vitron run`; and the "$" escape of the typed schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitron import Assistant, SpecialistRegistry
from vitron.cli import main
from vitron.invocations import InputCounts, InvocationError, Ref, parse_invocation, parse_reply
from vitron.invocations.tags import edit_target, split_instruction
from vitron.regions import Box, Region, region_mask_at


@pytest.fixture
def registry(specialist_options):
    return SpecialistRegistry(specialist_options)


@pytest.fixture
def calls_seen(registry, monkeypatch):
    """Every call's resolved arguments as its specialist received them, and every text the
    segmenter was asked for (itaclip also segments an edit's target)."""
    seen: dict[str, list] = {"calls": [], "segmented": []}
    for task in ("segment_image", "edit_image", "image_to_video"):
        specialist = registry.specialist(task)

        def run(inputs, _original=specialist.run):
            seen["calls"].append((inputs.call_id, inputs.task, dict(inputs.args)))
            return _original(inputs)

        monkeypatch.setattr(specialist, "run", run)
    segmenter = registry.specialist("segment_image")

    def segment(image, text, classes, signal, _original=segmenter.segment):
        seen["segmented"].append(text)
        return _original(image, text, classes, signal)

    monkeypatch.setattr(segmenter, "segment", segment)
    return seen


def decoded_answer(model, assistant, images, upto):
    ids = model.generate(
        model.processor.sample(
            assistant.messages[:upto], images, regions=assistant.inputs.regions,
            add_generation_prompt=True, with_labels=False,
        ),
        max_new_tokens=4, seed=0,
    )  # fmt: skip
    return model.tokenizer.decode(ids, skip_special_tokens=False).replace("</s>", "").strip()


def parse_cli(capsys, *argv):
    assert main(["parse", *argv]) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------- a <region> tag does not fail


REGION_TAG_REPLY = "Sure. <module>B</module><instruction>segmentation: the dog</instruction><region>[0, 0, 32, 24]</region><signal></s>"


def test_region_tag_reply_runs_and_the_turn_and_next_turn_succeed(model, registry, image, tmp_path):
    assistant = Assistant(
        model, registry, tmp_path, scripted_replies=[REGION_TAG_REPLY], max_new_tokens=4
    )
    turn = assistant.chat("where is the dog?", images=[image])
    (outcome,) = turn.outcomes[0]
    assert (outcome.call.id, outcome.status, outcome.used_signal) == ("c1", "ok", True)
    mask = outcome.outputs["mask"].value
    assert not mask[24:].any() and not mask[:, 32:].any()
    # the reply stays in the history as written, its <region> tag not counted as an input region
    assert assistant.messages[1].raw == REGION_TAG_REPLY.removesuffix("</s>")
    assert assistant.inputs.regions == []
    assert turn.parse_error is None and turn.answer == decoded_answer(model, assistant, [image], 3)
    # the next turn (decoded by the model over a history holding the tag) works as well
    second = assistant.chat("thanks")
    assert second.parse_error is None and [m.role for m in assistant.messages] == [
        "user", "assistant", "results", "assistant", "user", "assistant",
    ]  # fmt: skip


def test_region_tag_in_assistant_reply_is_an_ordinary_token(model, image):
    from vitron.processing import Message

    messages = [Message("user", "<image>\nwhere?"), Message("assistant", "", raw=REGION_TAG_REPLY)]
    sample = model.processor.sample(messages, [image], with_labels=False)
    region_id = model.region_token_id
    inside = (sample.input_ids == region_id).nonzero()[:, 0].tolist()
    assert len(inside) == 1 and not bool(sample.placeholder_mask[inside[0]])
    assert int(sample.placeholder_mask.sum()) == 1  # only the user's <image>
    spliced = model.splice([sample])
    assert [s.kind for s in spliced.spans[0]] == ["image"]
    # the <region> token of the reply keeps its own token embedding
    position = inside[0] - 1 + model.config.vision.grid**2  # the image row replaced one token
    expected = model.llm.get_input_embeddings().weight[region_id]
    assert torch.equal(spliced.inputs_embeds[0, position], expected)


def test_run_with_a_region_tag_reply_exits_0_and_writes_turn(
    tmp_path, capsys, model_dir, specialists_file, image
):
    image_file = tmp_path / "dog.png"
    image.save(image_file)
    reply = tmp_path / "reply.txt"
    reply.write_text(REGION_TAG_REPLY)
    out = tmp_path / "out"
    status = main([
        "run", "where is the dog?", "--image", str(image_file), "-o", str(out), "--model", str(model_dir),
        "--specialists", str(specialists_file), "--reply-file", str(reply), "--max-new-tokens", "4",
    ])  # fmt: skip
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["c1_mask.png", "c1_overlay.png", "turn.json"]
    turn = json.loads((out / "turn.json").read_text())
    assert turn["parse_error"] is None and turn["outcomes"][0][0]["status"] == "ok"
    assert turn["invocations"][0]["calls"][0]["args"]["region"] == {"box": [0.0, 0.0, 32.0, 24.0]}
    assert turn["replies"][1]["scripted"] is False
    assert capsys.readouterr().out.rstrip("\n").endswith(turn["answer"])


# ------------------------------------------------------------- task labels stripped by task


LABELLED = (
    "<module>C</module><instruction>generation: turn the dog into a cat</instruction>"
    "<module>G</module><instruction>generation: make it run</instruction>"
)


def test_official_labels_are_stripped_by_task(capsys):
    parsed = parse_reply(
        LABELLED + "<module>E</module><instruction>generation: the cat</instruction>",
        counts=InputCounts(images=1, videos=1),
    )
    c, g, e = parsed.invocation.calls
    assert (c.args["text"], c.args["target"]) == ("a cat", "the dog")
    assert g.args["text"] == "make it run" and e.args["text"] == "the cat"
    # a colon whose prefix is no label still stays in the text
    parsed = parse_reply("<module>A</module><instruction>a sign saying Note: closed</instruction>")
    assert parsed.invocation.calls[0].args["text"] == "a sign saying Note: closed"
    data = parse_cli(capsys, LABELLED)
    assert [call["args"] for call in data["invocation"]["calls"]] == [
        {"text": "a cat", "image": "$image0", "target": "the dog"},
        {"text": "make it run", "image": "$c1.image"},
    ]


def test_labels_do_not_reach_the_specialists(model, registry, calls_seen, image, tmp_path):
    assistant = Assistant(model, registry, tmp_path, scripted_replies=[LABELLED, "Done."])
    turn = assistant.chat("make the dog a cat and animate it", images=[image])
    edited, animated = turn.outcomes[0]
    assert [(o.call.task, o.status) for o in (edited, animated)] == [
        ("edit_image", "ok"),
        ("image_to_video", "ok"),  # the tiny I2VGen-XL animates the edited image
    ]
    assert len(animated.outputs["video"].value) == 3
    (_, _, edit), (_, _, animate) = calls_seen["calls"]
    assert (edit["text"], edit["target"]) == ("a cat", "the dog")
    assert animate["text"] == "make it run"
    assert calls_seen["segmented"] == ["the dog"]
    assert turn.answer == "Done."


# ------------------------------------------------------------- a lone C segments its target


@pytest.mark.parametrize(
    ("instruction", "target", "prompt"),
    [
        ("turn the dog into a cat", "the dog", "a cat"),
        ("Replace the red car with a bicycle", "the red car", "a bicycle"),
        ("change the sky to a sunset", "the sky", "a sunset"),
        ("make it look older", "make it look older", "make it look older"),
    ],
)
def test_edit_target(instruction, target, prompt):
    assert edit_target(instruction) == (target, prompt)


def test_lone_edit_segments_its_target_first(model, registry, calls_seen, image, tmp_path, capsys):
    reply = "Repainting.<module>C</module><instruction>image editing: turn the dog into a cat</instruction>"
    data = parse_cli(capsys, reply)
    assert data["invocation"]["calls"] == [
        {
            "id": "c1",
            "task": "edit_image",
            "args": {"text": "a cat", "image": "$image0", "target": "the dog"},
        }
    ]
    assistant = Assistant(model, registry, tmp_path, scripted_replies=[reply, "Done."])
    turn = assistant.chat("make the dog a cat", images=[image])
    (outcome,) = turn.outcomes[0]
    assert (outcome.call.task, outcome.status) == ("edit_image", "ok")
    assert calls_seen["segmented"] == ["the dog"]  # itaclip first, on the target
    ((_, _, args),) = calls_seen["calls"]
    assert args["text"] == "a cat" and "mask" not in args and "region" not in args
    # the repainted pixels are exactly itaclip's mask of the target
    dog = registry.specialist("segment_image").segment(image, "the dog", None, None)[0].numpy()
    edited = np.asarray(outcome.outputs["image"].value)
    assert dog.any() and (edited[~dog] == np.asarray(image)[~dog]).all()
    assert (edited[dog] != np.asarray(image)[dog]).any()


# ------------------------------------------------------------- the user's region feeds B/C/E


def test_user_region_feeds_segmentation_and_editing(
    model, registry, calls_seen, image, tmp_path, capsys
):
    reply = (
        "<module>B</module><instruction>segmentation: the dog</instruction>"
        "<module>C</module><instruction>editing: a cat</instruction>"
    )
    data = parse_cli(capsys, reply, "--images", "1", "--region", "0")
    seg, edit = data["invocation"]["calls"]
    assert seg["args"] == {"text": "the dog", "image": "$image0", "region": "$region0"}
    assert edit["args"] == {"text": "a cat", "image": "$image0", "mask": "$c1.mask"}
    lone = parse_cli(
        capsys,
        "<module>C</module><instruction>a cat</instruction>",
        "--images",
        "1",
        "--region",
        "0",
    )
    assert lone["invocation"]["calls"][0]["args"] == {
        "text": "a cat",
        "image": "$image0",
        "region": "$region0",
    }
    # a region drawn on another image does not feed a call on the newest image
    other = parse_cli(
        capsys,
        "<module>B</module><instruction>the dog</instruction>",
        "--images",
        "2",
        "--region",
        "0",
    )
    assert other["invocation"]["calls"][0]["args"] == {"text": "the dog", "image": "$image1"}

    assistant = Assistant(model, registry, tmp_path, scripted_replies=[reply, "Done."])
    box = Box(0, 0, 32, 24)
    turn = assistant.chat("the dog here, as a cat", images=[image], regions=[Region(box, 0)])
    assert [(o.call.id, o.status) for o in turn.outcomes[0]] == [("c1", "ok"), ("c2", "ok")]
    (_, _, seg_args), (_, _, edit_args) = calls_seen["calls"]
    assert seg_args["region"] == box and seg_args["text"] == "the dog"
    inside = region_mask_at(box, 48, 64).numpy()
    mask = turn.outcomes[0][0].outputs["mask"].value.numpy()
    assert mask.any() and not mask[~inside].any()
    assert (edit_args["mask"].numpy() == mask).all() and edit_args["text"] == "a cat"
    edited = np.asarray(turn.outcomes[0][1].outputs["image"].value)
    assert (edited[~inside] == np.asarray(image)[~inside]).all()


def frames_of(image: Image.Image, count: int = 3) -> list[Image.Image]:
    pixels = np.asarray(image)
    return [Image.fromarray(np.roll(pixels, 2 * t, axis=1)) for t in range(count)]


def test_video_segmentation_tracks_from_a_region(model, registry, image, tmp_path, capsys):
    tagged = "<module>E</module><instruction>tracking: the dog</instruction><region>[0, 0, 32, 24]</region>"
    data = parse_cli(capsys, tagged, "--videos", "1")
    assert data["invocation"]["calls"][0]["args"] == {
        "text": "the dog",
        "video": "$video0",
        "region": {"box": [0.0, 0.0, 32.0, 24.0]},
    }
    untagged = "<module>E</module><instruction>video segmentation: the dog</instruction>"
    data = parse_cli(capsys, untagged, "--images", "1", "--videos", "1", "--region", "0")
    assert data["invocation"]["calls"][0]["args"] == {
        "text": "the dog",
        "video": "$video0",
        "region": "$region0",
    }

    frames = frames_of(image)
    box = Box(0, 0, 32, 24)
    for reply, regions in ((tagged, []), (untagged, [Region(box, 0)])):
        assistant = Assistant(
            model, registry, tmp_path / str(len(regions)), scripted_replies=[reply, "Done."]
        )
        turn = assistant.chat("track the dog", images=[frames[0]], videos=[frames], regions=regions)
        (outcome,) = turn.outcomes[0]
        assert outcome.status == "ok", outcome.summary
        masks = [m.numpy() for m in outcome.outputs["masks"].value]
        inside = region_mask_at(box, 48, 64).numpy()
        assert masks[0].any() and not masks[0][~inside].any()  # the first frame: the region
        free = registry.specialist("segment_video").segment(frames[0], "the dog", None, None)[0]
        assert free.numpy()[~inside].any()  # without the region the mask would leak out
        margin = registry.specialist("segment_video").options.track_margin
        allowed = inside
        for mask in masks:  # each frame stays within the previous mask's box grown by the margin
            assert not mask[~allowed].any()
            if mask.any():
                ys, xs = np.nonzero(mask)
                dy, dx = round(margin * 48), round(margin * 64)
                allowed = np.zeros_like(mask)
                allowed[
                    max(0, ys.min() - dy) : ys.max() + 1 + dy,
                    max(0, xs.min() - dx) : xs.max() + 1 + dx,
                ] = True
        assert sum(int(m.any()) for m in masks) >= 2, "the object is tracked beyond frame 0"


# ------------------------------------------------------------- end markers and placeholders


def test_end_markers_removed_from_the_answer(model, registry, tmp_path, capsys):
    reply = "A dog on grass.<SP>None</SP></s>"
    assert parse_reply(reply).text == "A dog on grass."
    assert (
        parse_cli(capsys, "It is a dog. <SP> None </SP> Nothing to run.")["text"]
        == "It is a dog. Nothing to run."
    )
    assistant = Assistant(model, registry, tmp_path, scripted_replies=[reply])
    turn = assistant.chat("what is it?")
    assert turn.answer == "A dog on grass." and assistant.messages[-1].text == "A dog on grass."


@pytest.mark.parametrize(
    "reply",
    [
        "The dog is in <region> there.",
        "<image>\nA dog.",
        "A dog <video>.",
        "See <image> and <region>.",
    ],
)
def test_placeholders_in_prose_are_shown_as_written(model, registry, tmp_path, capsys, reply):
    parsed = parse_reply(reply)
    assert (parsed.text, parsed.invocation, parsed.grammar) == (reply.strip(), None, "none")
    assert parse_cli(capsys, reply)["text"] == reply.strip()
    assistant = Assistant(model, registry, tmp_path, scripted_replies=[reply])
    turn = assistant.chat("where is the dog?")
    assert (turn.answer, turn.parse_error) == (reply.strip(), None)
    assert assistant.messages[-1].text == reply.strip()


def test_prose_region_beside_a_region_tag_stays_and_the_tag_is_parsed():
    parsed = parse_reply(
        "See <region>. <module>B</module><instruction>d</instruction><region>1 2 3 4</region>"
    )
    assert parsed.text == "See <region>." and parsed.grammar == "tags"
    assert parsed.invocation.calls[0].args["region"] == {"box": (1.0, 2.0, 3.0, 4.0)}


@pytest.mark.parametrize(
    ("instruction", "label"),
    [
        ("image generation:", "image generation"),
        (" Image Generation :  ", "Image Generation"),
        ("generation:", "generation"),
        ("segmentation:", "segmentation"),  # a label of another module (B) on A
    ],
)
def test_label_only_instruction_is_refused(model, registry, tmp_path, capsys, instruction, label):
    reply = f"<module>A</module><instruction>{instruction}</instruction>"
    message = (
        f"<instruction> at character 18: instruction {instruction.strip()!r} is only the task "
        f"label {label!r}; write what to do after the colon ('{label}: a red car')"
    )
    with pytest.raises(InvocationError) as caught:
        parse_reply(reply)
    assert str(caught.value) == message
    assert main(["parse", reply]) == 2
    assert capsys.readouterr().err == f"vitron parse: error: REPLY does not parse: {message}\n"
    assistant = Assistant(model, registry, tmp_path, scripted_replies=[reply])
    turn = assistant.chat("draw")
    assert turn.parse_error == message and turn.invocations == []
    # a label followed by text still splits, a colon without a known label is text
    assert split_instruction("image generation: a red car", "A") == (
        "image generation",
        "a red car",
    )
    assert split_instruction("a sign saying: ", "A") == (None, "a sign saying:")


# ------------------------------------------------------------- "$" in literal text


def _generate(text):
    return {"version": 1, "calls": [{"id": "g", "task": "generate_image", "args": {"text": text}}]}


@pytest.mark.parametrize(
    ("written", "literal"),
    [
        ("$5 off sign", "$5 off sign"),
        ("$ 20 bill", "$ 20 bill"),
        ("$$seg.mask", "$seg.mask"),
        ("$$$image0", "$$image0"),
        ("price: $$", "price: $$"),
    ],
)
def test_dollar_in_literal_text_is_not_a_reference(written, literal, capsys):
    inv = parse_invocation(_generate(written))
    assert inv.calls[0].args["text"] == literal
    again = parse_invocation(inv.to_dict())  # the rendered form reads back the same
    assert again.calls[0].args["text"] == literal
    data = parse_cli(capsys, f"<invoke>{json.dumps(_generate(written))}</invoke>")
    assert parse_invocation(data["invocation"]).calls[0].args["text"] == literal


def test_reference_in_literal_text_is_an_error_with_the_escape():
    for text in ("$seg.mask", "$image0"):
        with pytest.raises(
            InvocationError,
            match=r"calls\[0\]\.args\.text: text takes a literal text, not a reference .*write \$\$",
        ):
            parse_invocation(_generate(text))
    with pytest.raises(
        InvocationError, match=r"classes: classes takes a literal text_list, not a reference"
    ):
        parse_invocation(
            {
                "version": 1,
                "calls": [
                    {
                        "id": "s",
                        "task": "segment_image",
                        "args": {"image": "$image0", "text": "dog", "classes": ["$image0"]},
                    }
                ],
            }
        )
    ok = parse_invocation(
        {
            "version": 1,
            "calls": [
                {
                    "id": "s",
                    "task": "segment_image",
                    "args": {"image": "$image0", "text": "dog", "classes": ["$$image0", "$5 note"]},
                }
            ],
        }
    )
    assert ok.calls[0].args["classes"] == ("$image0", "$5 note")
    assert ok.calls[0].args["image"] == Ref("image", "0")  # references still work where allowed
    assert ok.to_dict()["calls"][0]["args"]["classes"] == ["$$image0", "$5 note"]
