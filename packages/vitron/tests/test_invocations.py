# ruff: noqa: E501
"""The typed schema (round trips, strict errors) and the official tag grammar without its faults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitron.invocations import (
    InputCounts,
    InvocationError,
    Ref,
    parse_invocation,
    parse_reply,
    parse_tags,
    split_instruction,
)

# seg -> edit -> fix: segment the dog, repaint it as a cat, restore the result
SEGMENT_THEN_EDIT = json.loads((Path(__file__).parent / "segment_then_edit.json").read_text())


def test_schema_round_trip_and_dependency_order():
    inv = parse_invocation(SEGMENT_THEN_EDIT, InputCounts(images=1))
    assert [c.id for c in inv.calls] == ["seg", "edit", "fix"]
    assert inv["edit"].args["mask"] == Ref("seg", "mask")
    assert inv["edit"].depends_on == ("seg",)
    assert inv.to_dict() == SEGMENT_THEN_EDIT
    again = parse_invocation(inv.to_json())
    assert again == inv
    # forward references run in dependency order, ties in written order
    shuffled = {"version": 1, "calls": list(reversed(SEGMENT_THEN_EDIT["calls"]))}
    assert [c.id for c in parse_invocation(shuffled).order()] == ["seg", "edit", "fix"]


def test_literals_regions_and_after_round_trip():
    data = {
        "version": 1,
        "calls": [
            {
                "id": "g",
                "task": "generate_image",
                "args": {"text": "a cat", "width": 64, "seed": 3},
            },
            {
                "id": "s",
                "task": "segment_image",
                "args": {"image": "$g.image", "text": "cat", "classes": ["sky", "grass"]},
                "after": ["g"],
            },
            {
                "id": "e",
                "task": "edit_image",
                "args": {"image": "$image0", "text": "a hat", "region": {"box": [1, 2, 30, 40]}},
            },
        ],
    }
    inv = parse_invocation(json.dumps(data), InputCounts(images=1))
    assert inv["s"].args["classes"] == ("sky", "grass")
    assert inv["e"].args["region"] == {"box": (1.0, 2.0, 30.0, 40.0)}
    assert parse_invocation(inv.to_dict()).to_dict() == inv.to_dict()
    assert json.loads(inv.to_json())["calls"][1]["after"] == ["g"]


def _with(call_changes: dict, index: int = 1) -> dict:
    data = json.loads(json.dumps(SEGMENT_THEN_EDIT))
    data["calls"][index].update(call_changes)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", r"^invocation is not valid JSON: Expecting property name"),
        ([], r"^invocation must be a JSON object, got list"),
        ({"calls": []}, r"^version: missing \(this parser reads version 1\)"),
        ({"version": 2, "calls": []}, r"^version: unsupported schema version 2 \(this parser reads 1\)"),
        ({"version": True, "calls": []}, r"^version: unsupported schema version True"),
        ({"version": 1.0, "calls": []}, r"^version: unsupported schema version 1\.0"),
        ({"version": 1, "calls": []}, r"^calls: must be a non-empty list of calls"),
        ({"version": 1, "calls": [], "x": 1}, r"unknown keys \['x'\] \(allowed: version, calls\)"),
        (_with({"task": "segmnt_image"}, 0), r"^calls\[0\]\.task: unknown task 'segmnt_image' .*did you mean 'segment_image'\?"),
        (_with({"id": "seg"}), r"^calls\[1\]\.id: duplicate id 'seg' \(also calls\[0\]\)"),
        (_with({"id": "image0"}), r"^calls\[1\]\.id: 'image0' is reserved for inputs"),
        (_with({"id": "9x"}), r"^calls\[1\]\.id: must be an identifier"),
        (_with({"colour": 1}), r"^calls\[1\]: unknown keys \['colour'\] \(allowed: id, task, args, after\)"),
        (_with({"args": {"image": "$image0", "text": "x", "strength": 2}}), r"^calls\[1\]\.args\.strength: edit_image has no argument 'strength' \(allowed: image, text, mask, target, region, seed\)"),
        (_with({"args": {"image": "$image0"}}), r"^calls\[1\]\.args: edit_image requires text"),
        (_with({"args": {"image": "$image0", "text": ""}}), r"^calls\[1\]\.args\.text: expected a non-empty string, got ''"),
        (_with({"args": {"image": "$image0", "text": "x", "seed": "ten"}}), r"^calls\[1\]\.args\.seed: expected an integer, got 'ten'"),
        (_with({"args": {"image": "$image0", "text": "x", "seed": True}}), r"^calls\[1\]\.args\.seed: expected an integer, got True"),
        (_with({"args": {"image": "image0", "text": "x"}}), r"^calls\[1\]\.args\.image: expected a reference to an image \(e\.g\. \$image0\), got 'image0'"),
        (_with({"args": {"image": "$image3", "text": "x"}}), r"^calls\[1\]\.args\.image: \$image3 does not exist: the conversation has 1 image\(s\)"),
        (_with({"args": {"image": "$video0", "text": "x"}}), r"^calls\[1\]\.args\.image: expected an image, but \$video0 is an input video"),
        (_with({"args": {"image": "$seg.mask", "text": "x"}}), r"^calls\[1\]\.args\.image: expected an image, but \$seg\.mask is a mask"),
        (_with({"args": {"image": "$image0", "text": "x", "mask": "$seg.maks"}}), r"^calls\[1\]\.args\.mask: \$seg\.maks: segment_image has no output 'maks' \(outputs: mask, overlay, labels\)"),
        (_with({"args": {"image": "$image0", "text": "x", "mask": "$nope.mask"}}), r"^calls\[1\]\.args\.mask: \$nope\.mask: no call has id 'nope'"),
        (_with({"args": {"image": "$edit.image", "text": "x"}}), r"^calls\[1\]\.args\.image: \$edit\.image refers to the call itself"),
        (_with({"args": {"image": "$image0", "text": "x", "mask": "$seg.mask.x"}}), r"^calls\[1\]\.args\.mask: malformed reference '\$seg\.mask\.x'"),
        (_with({"args": {"image": "$image0", "text": "$seg.mask"}}), r"^calls\[1\]\.args\.text: text takes a literal text, not a reference"),
        (_with({"after": ["ghost"]}), r"^calls\[1\]\.after: no call has id 'ghost'"),
        (_with({"after": "seg"}), r"^calls\[1\]\.after: must be a list of call ids"),
        (_with({"after": ["fix"]}), r"^calls: the calls form a cycle: edit -> fix -> edit"),
        (_with({"args": {"image": "$image0", "text": "x", "region": {"box": [5, 5, 1, 9]}}}), r"box must satisfy x1 < x2 and y1 < y2, got \[5, 5, 1, 9\]"),
        (_with({"args": {"image": "$image0", "text": "x", "region": {"points": [["a", "b"]]}}}), r"region: each point must be \[x, y\] numbers, got \['a', 'b'\]"),
        (_with({"args": {"image": "$image0", "text": "x", "region": {"points": [[None, 1]]}}}), r"region: each point must be \[x, y\] numbers, got \[None, 1\]"),
        (_with({"args": {"image": "$image0", "text": "x", "region": {"points": [[1, 2]], "width": -3}}}), r"region: width must be a number > 0 \(brush px\), got -3"),
        (_with({"args": {"image": "$image0", "text": "x", "region": {"points": [[1, 2]], "width": "x"}}}), r"region: width must be a number > 0 \(brush px\), got 'x'"),
    ],
)  # fmt: skip
def test_strict_parser_errors(data, message):
    with pytest.raises(InvocationError, match=message):
        parse_invocation(data, InputCounts(images=1, videos=0))


def test_error_carries_path():
    with pytest.raises(InvocationError) as info:
        parse_invocation(_with({"args": {"image": "$image0"}}))
    assert info.value.path == "calls[1].args"
    assert info.value.message == "edit_image requires text"


# ----------------------------------------------------------------------- official grammar


def test_colon_inside_instruction_kept():
    text = "<module>C</module><instruction>image editing: add a sign saying Note: closed</instruction><region>[1, 2, 30, 40]</region>"
    _, inv = parse_tags(text, InputCounts(images=1))
    assert inv.calls[0].args["text"] == "add a sign saying Note: closed"  # official: "closed"
    assert split_instruction("add a sign saying Note: closed", "C") == (
        None,
        "add a sign saying Note: closed",
    )
    assert split_instruction("Segmentation :  the dog", "B") == ("segmentation", "the dog")


def test_several_modules_and_instructions_all_kept():
    text = (
        "Here you go.<module>B</module><instruction>segmentation: the dog</instruction>"
        "<module>C</module><instruction>a cat</instruction>"
        "<module>A</module><instruction>a red car</instruction><instruction>a blue car</instruction>"
    )
    free, inv = parse_tags(text, InputCounts(images=1))
    assert free == "Here you go."
    assert [(c.id, c.task) for c in inv.calls] == [
        ("c1", "segment_image"), ("c2", "edit_image"), ("c3", "generate_image"), ("c4", "generate_image"),
    ]  # fmt: skip
    assert inv["c2"].args == {
        "text": "a cat",
        "image": Ref("image", "0"),
        "mask": Ref("c1", "mask"),
    }
    assert inv["c2"].depends_on == ("c1",)
    assert [inv["c3"].args["text"], inv["c4"].args["text"]] == ["a red car", "a blue car"]


def test_whitespace_and_case_around_module_letters():
    for letter in ("<module> B </module>", "<module>\nb\t</module>", "< module >B</ module >"):
        free, inv = parse_tags(
            f"ok {letter}<instruction>the dog</instruction>", InputCounts(images=1)
        )
        assert inv.calls[0].task == "segment_image" and free == "ok"


def test_stray_end_of_sequence_tokens_removed():
    reply = "Done.</s> <module>A</module><instruction>a cat</s></instruction></s><|endoftext|>"
    parsed = parse_reply(reply)
    assert parsed.text == "Done."
    assert parsed.invocation.calls[0].args == {"text": "a cat"}
    assert parse_reply("Just text.</s></s>").text == "Just text."


def test_text_between_unrelated_tags_kept():
    reply = "The <b>brown</b> dog <i>sits</i>. <module>B</module><instruction>the dog</instruction> Bye."
    parsed = parse_reply(reply, counts=InputCounts(images=1))
    assert parsed.text == "The <b>brown</b> dog <i>sits</i>. Bye."
    assert parsed.grammar == "tags"


@pytest.mark.parametrize(
    "block",
    [
        "<module>A</module><instruction>a cat</instruction>",
        '<invoke>{"version": 1, "calls": [{"id": "c1", "task": "generate_image", "args": {"text": "a cat"}}]}</invoke>',
    ],
)
def test_free_text_keeps_its_own_whitespace(block):
    """Only the joins where a block was removed are tidied; indentation and line breaks stay."""
    reply = f"Here:\n    x  =  1\n\tdone. {block}   Bye.\nEnd."
    assert parse_reply(reply).text == "Here:\n    x  =  1\n\tdone. Bye.\nEnd."
    assert parse_reply(f"Made it.\n{block}\nBye.").text == "Made it.\n\nBye."
    assert parse_reply(f"  {block}  Bye.").text == "Bye."


def test_video_editing_two_instructions():
    _, inv = parse_tags(
        "<module>F</module><instruction>background: a beach</instruction>"
        "<instruction>foreground: a robot</instruction>",
        InputCounts(videos=1),
    )
    assert inv.calls[0].args == {
        "video": Ref("video", "0"),
        "text": "a robot",
        "background": "a beach",
    }


def test_modules_work_on_media_made_earlier_in_the_reply_else_the_newest_input():
    _, inv = parse_tags(
        "<module>A</module><instruction>image generation: a cat</instruction>"
        "<module>G</module><instruction>image-to-video: make it walk</instruction>"
        "<module>E</module><instruction>video segmentation: the cat</instruction>"
        "<module>B</module><instruction>the cat</instruction>",
        InputCounts(images=0),
    )
    assert [c.task for c in inv.calls] == [
        "generate_image", "image_to_video", "segment_video", "segment_image",
    ]  # fmt: skip
    assert inv.calls[1].args["image"] == Ref("c1", "image")  # animate the generated image
    assert inv.calls[2].args["video"] == Ref("c2", "video")
    assert inv.calls[3].args["image"] == Ref("c1", "image")
    assert [c.id for c in inv.order()] == ["c1", "c2", "c3", "c4"]
    _, inv = parse_tags(
        "<module>B</module><instruction>the dog</instruction>", InputCounts(images=3)
    )
    assert inv.calls[0].args["image"] == Ref("image", "2")  # the newest input image
    _, inv = parse_tags("<module>B</module><instruction>the dog</instruction>")
    assert inv.calls[0].args["image"] == Ref("image", "0")  # unchecked counts: the first


@pytest.mark.parametrize(
    ("text", "counts", "message"),
    [
        ("<module>H</module><instruction>x</instruction>", None, r"unknown module 'H' \(letters: A, B, C, D, E, F, G\)"),
        ("<module>D</module><instruction>a cat</instruction><region>1 2 3 4</region>", None, r"generate_video takes no <region>"),
        ("<module>B</module>", InputCounts(images=1), r"has no <instruction>"),
        ("<instruction>x</instruction>", None, r"<instruction> comes before any <module>"),
        ("<module>A</module><instruction>x", None, r"<instruction> is never closed"),
        ("<module>A</module><instruction>x</region>", None, r"<instruction> must be closed by </instruction> before </region>"),
        ("</module>", None, r"closing </module> without an opening tag"),
        ("<module>A</module><instruction> </instruction>", None, r"empty instruction"),
        ("<module>B</module><instruction>dog</instruction>", InputCounts(images=0), r"needs an input image, but the conversation has none"),
        ("<module>F</module><instruction>a robot</instruction>", InputCounts(videos=1), r"video editing needs two instructions \(foreground, background\), got 1"),
        ("<module>B</module><instruction>d</instruction><region>1 2 3</region>", InputCounts(images=1), r"region must be \[x1, y1, x2, y2\]"),
        ("<module>B</module><instruction>d</instruction><region>a b c d</region>", InputCounts(images=1), r"region must be four numbers, got 'a b c d'"),
    ],
)  # fmt: skip
def test_tag_grammar_errors(text, counts, message):
    with pytest.raises(InvocationError, match=message):
        parse_tags(text, counts)


def test_reply_parser_json_block_and_signals():
    block = json.dumps(SEGMENT_THEN_EDIT)
    parsed = parse_reply(
        f"Sure. <invoke>{block}</invoke><signal><signal><signal></s>", counts=InputCounts(images=1)
    )
    assert parsed.grammar == "json" and parsed.text == "Sure." and parsed.num_signals == 3
    assert parsed.invocation.to_dict() == SEGMENT_THEN_EDIT
    assert parse_reply(f"<invoke>{block}</invoke>").num_signals == 0
    plain = parse_reply("A cat on a mat.")
    assert (plain.invocation, plain.grammar, plain.text) == (None, "none", "A cat on a mat.")


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("<invoke>{}</invoke><invoke>{}</invoke>", r"exactly one <invoke>...</invoke> block \(found 2 opening and 2 closing tags\)"),
        ("<invoke>{\"version\": 1", r"exactly one <invoke>...</invoke> block \(found 1 opening and 0 closing tags\)"),
        ("</invoke>x<invoke>", r"</invoke> comes before <invoke>"),
        ("<invoke>{}</invoke> <module>A</module>", r"mixes an <invoke> block and official tags"),
        ("<invoke>" + json.dumps(SEGMENT_THEN_EDIT) + "</invoke><signal>", r"1 signal tokens for 3 calls"),
    ],
)  # fmt: skip
def test_reply_parser_errors(reply, message):
    with pytest.raises(InvocationError, match=message):
        parse_reply(reply)


def test_grammar_choice():
    tags = "<module>A</module><instruction>a cat</instruction>"
    assert parse_reply(tags, grammar="json").invocation is None  # tags ignored when json asked
    assert parse_reply(tags, grammar="tags").invocation.calls[0].task == "generate_image"
    with pytest.raises(
        ValueError, match=r"grammar must be one of \('auto', 'json', 'tags'\), got 'xml'"
    ):
        parse_reply(tags, grammar="xml")
