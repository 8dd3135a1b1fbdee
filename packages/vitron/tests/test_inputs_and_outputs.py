"""Issue 33 in vitron: inputs are never changed by an output (refused before any work unless
``--in-place``), tiny images are segmented at their own size, empty inputs are named by the
API, ``--version``, and third-party chatter only with ``--verbose``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitron
from common_kernels.runtime.cli import version_line
from common_kernels.runtime.errors import InvalidArgument
from vitron import Assistant, Mask, SpecialistRegistry
from vitron.cli import build_parser, main
from vitron.options import check_outputs
from vitron.specialists.base import CallInputs
from vitron.specialists.segmentation import ItaclipSegmenter, SegmentationOptions, enlarged
from vitron.tiny import tiny_model

IN_PLACE_ADVICE = "choose another output, or pass {} to replace the inputs (atomically)"


def noise(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def reply_file(folder: Path, calls: list[dict]) -> Path:
    """A scripted first reply dispatching ``calls`` (one signal each)."""
    block = json.dumps({"version": 1, "calls": calls})
    path = folder / "reply.txt"
    path.write_text(f"On it. <invoke>{block}</invoke>" + "<signal>" * len(calls) + "</s>")
    return path


# -- an output never changes an input ------------------------------------------------------


def test_output_folder_that_is_a_video_frame_folder_is_refused(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    noise(8, 8).save(frames / "0.png")
    with pytest.raises(InvalidArgument) as caught:
        check_outputs(frames, videos=[frames])
    assert caught.value.argument == "output"
    assert str(caught.value) == (
        f"output: {frames} is the frame folder of video {frames}: the outputs would join its "
        "frames; choose another output folder, or pass in_place=True to write into it"
    )
    check_outputs(frames, videos=[frames], in_place=True)  # allowed
    check_outputs(tmp_path / "out", videos=[frames])  # another folder


def test_a_fixed_output_name_that_is_an_input_is_refused(tmp_path):
    (tmp_path / "turn.json").write_text("On it.</s>")
    noise(8, 8).save(tmp_path / "mask.png")
    with pytest.raises(InvalidArgument) as caught:
        check_outputs(tmp_path, files=[tmp_path / "turn.json", None], written=["turn.json"])
    turn = tmp_path / "turn.json"
    assert str(caught.value) == (
        f"output: {turn} would replace the input {turn}; " + IN_PLACE_ADVICE.format("in_place=True")
    )
    with pytest.raises(InvalidArgument, match=r"mask\.png would replace the input"):
        check_outputs(tmp_path, masks=[f"{tmp_path / 'mask.png'}@0"], written=["mask.png"])
    check_outputs(tmp_path, files=[turn], written=["turn.json"], in_place=True)
    check_outputs(tmp_path, images=[tmp_path / "mask.png"], written=["turn.json"])


def test_in_place_writes_into_the_frame_folder_and_keeps_every_frame(model_dir, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(2):
        noise(16, 16, seed=k).save(frames / f"{k}.png")
    before = {p.name: p.read_bytes() for p in frames.iterdir()}
    (tmp_path / "reply.txt").write_text("It is a short video.</s>")
    argv = ["run", "x", "--model", str(model_dir), "--video", str(frames), "-o", str(frames),
            "--reply-file", str(tmp_path / "reply.txt")]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"vitron run: error: -o/--output: {frames} is the frame folder of --video {frames}: the "
        "outputs would join its frames; choose another output folder, or pass --in-place to "
        "write into it\n"
    )
    assert {p.name for p in frames.iterdir()} == set(before)  # nothing written
    assert main([*argv, "--in-place"]) == 0
    assert json.loads((frames / "turn.json").read_text())["user"].startswith("<video>")
    assert {p.name: p.read_bytes() for p in frames.glob("*.png")} == before


def test_calls_never_replace_a_file_in_the_output_folder(model_dir, specialists_file, tmp_path):
    """An input that a call's output name would take is kept: the output takes ``_2``."""
    image = tmp_path / "seg_mask.png"
    noise(16, 16).save(image)
    before = image.read_bytes()
    calls = [{"id": "seg", "task": "segment_image", "args": {"image": "$image0", "text": "dog"}}]
    argv = ["run", "x", "--model", str(model_dir), "--image", str(image), "-o", str(tmp_path),
            "--specialists", str(specialists_file),
            "--reply-file", str(reply_file(tmp_path, calls))]  # fmt: skip
    assert main(argv) == 0
    assert image.read_bytes() == before
    assert Image.open(tmp_path / "seg_mask_2.png").size == (16, 16)


# -- tiny images ---------------------------------------------------------------------------


def test_enlarged_keeps_the_aspect_and_leaves_big_images_alone():
    small = torch.rand(3, 3, 6)
    assert tuple(enlarged(small, 16).shape) == (3, 16, 32)
    assert tuple(enlarged(torch.rand(3, 5, 3), 16).shape) == (3, 27, 16)
    big = torch.rand(3, 16, 20)
    assert enlarged(big, 16) is big


@pytest.mark.parametrize("pamr", [False, True])
def test_a_3x3_image_is_segmented_at_its_size(specialist_options, tmp_path, pamr):
    options = dict(specialist_options["itaclip"])
    options["settings"] = {**options["settings"], "pamr": pamr}
    adapter = ItaclipSegmenter(SegmentationOptions(**options))
    image = noise(3, 3)
    with adapter.active():
        mask, labels, names = adapter.segment(image, "dog", None, None)
    assert mask.shape == (3, 3) and mask.dtype == torch.bool
    assert labels.shape == (3, 3) and names == ("dog", "background")
    assert torch.equal(mask, labels == 0)
    call = CallInputs("seg", "segment_image", {"image": image, "text": "dog"}, None, tmp_path, 0)
    out = adapter.run(call)
    assert Image.open(out.outputs["mask"].path).size == (3, 3)
    assert Image.open(out.outputs["overlay"].path).size == (3, 3)


def test_run_on_a_3x3_image_through_the_tiny_models(model_dir, specialists_file, tmp_path, capsys):
    """Segment, edit and restore a 3x3 image; the diffusers pipeline's loading bar and
    deprecation notices appear only with ``--verbose``."""
    noise(3, 3).save(tmp_path / "px.png")
    calls = [
        {"id": "seg", "task": "segment_image", "args": {"image": "$image0", "text": "dog"}},
        {"id": "edit", "task": "edit_image",
         "args": {"image": "$image0", "region": "$region0", "text": "a cat"}},
        {"id": "fix", "task": "restore_image", "args": {"image": "$edit.image"}},
    ]  # fmt: skip
    out = tmp_path / "out"
    argv = ["run", "x", "--model", str(model_dir), "--image", str(tmp_path / "px.png"),
            "--box", "0,0,2,2", "-o", str(out), "--specialists", str(specialists_file),
            "--reply-file", str(reply_file(tmp_path, calls))]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    for name, mode in [("seg_mask", "L"), ("seg_overlay", "RGB"), ("edit_image", "RGB"),
                       ("fix_image", "RGB")]:  # fmt: skip
        with Image.open(out / f"{name}.png") as written:
            assert (written.size, written.mode) == ((3, 3), mode), name
    assert "Loading pipeline components" not in err and "it/s" not in err
    assert main([*argv, "-o", str(tmp_path / "verbose"), "--verbose"]) == 0
    assert "Loading pipeline components" in capsys.readouterr().err


# -- empty inputs --------------------------------------------------------------------------


def test_empty_inputs_are_named_by_the_api(tmp_path):
    model = tiny_model(seed=0)
    assistant = Assistant(model, SpecialistRegistry(), tmp_path)
    cases = [
        (lambda: assistant.chat("x", images=[Image.new("RGB", (0, 0))]),
         "images[0] is empty: 0x0 pixels; an image needs at least 1x1"),
        (lambda: assistant.chat("x", videos=[[]]),
         "videos[0] has no frames; a video needs at least one"),
        (lambda: assistant.chat("x", videos=[[noise(4, 4), Image.new("RGB", (4, 0))]]),
         "videos[0][1] is empty: 4x0 pixels; an image needs at least 1x1"),
        (lambda: model.encode_images(torch.zeros(0, 3, 32, 32)),
         "pixels is empty: shape (0, 3, 32, 32); give (N, 3, S, S) images with N >= 1"),
        (lambda: model.encode_videos(torch.zeros(1, 0, 3, 32, 32)),
         "videos is empty: shape (1, 0, 3, 32, 32); give (m, T, 3, S, S) frames with m, T >= 1"),
        (lambda: Mask(torch.zeros(0, 4)),
         "values is empty: shape (0, 4); a mask is (H, W) with H, W >= 1"),
    ]  # fmt: skip
    for call, message in cases:
        with pytest.raises(ValueError) as caught:
            call()
        assert str(caught.value) == message
    assert assistant.messages == []  # no refused turn stays in the conversation


# -- --version and --verbose ---------------------------------------------------------------


def test_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out == version_line("vitron", "vitron") + "\n"
    assert out.startswith(f"vitron {vitron.__version__} (common-kernels ")


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not commands:
        return [parser]
    return [leaf for a in commands for sub in a.choices.values() for leaf in leaf_parsers(sub)]


def test_every_command_takes_verbose():
    leaves = leaf_parsers(build_parser())
    assert len(leaves) == 13  # run chat app parse specialists train build-targets tiny-model
    # tiny-specialists convert-official and eval refseg / vqa / qa
    for leaf in leaves:
        assert "--verbose" in leaf._option_string_actions, leaf.prog
