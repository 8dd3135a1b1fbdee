"""Inputs are never overwritten (issue 33): an output that is the condition image (the only
image a run reads) is refused before any work, naming both, unless ``in_place`` / ``--in-place``;
an intermediate image or a checkpoint folder that would replace or delete it is refused even
then. API and CLI give the same message, each in its own names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common_kernels.runtime.errors import InvalidArgument
from pixelsmith import generate_cascade
from pixelsmith.cli import main
from pixelsmith.tiny import tiny_controlnet

PREFIX = "pixelsmith generate: error: "
SMALL = ["--patch-size", "8", "--band", "2", "--vae-tile", "8", "--vae-overlap", "2"]


def condition(path: Path, seed: int = 0) -> bytes:
    """A random 128x128 condition image at ``path``; its bytes."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


@pytest.fixture
def run_options(small_config) -> dict:
    return dict(num_inference_steps=2, seed=0, config=small_config, progress=False)


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny model and the tiny (zero-initialised) ControlNet, saved."""
    folder = tmp_path_factory.mktemp("inputs_kept")
    assert main(["tiny-model", str(folder / "tiny")]) == 0
    tiny_controlnet(seed=0).save_pretrained(folder / "controlnet")
    return folder / "tiny", folder / "controlnet"


def test_an_output_that_is_the_condition_image_is_refused(make_pipe, tmp_path, run_options):
    cond = tmp_path / "cond.png"
    original = condition(cond)
    os.link(cond, tmp_path / "linked.png")  # the same file under another name
    pipe, controlnet = make_pipe(), tiny_controlnet(seed=0)
    for output in (cond, tmp_path / "linked.png"):
        with pytest.raises(InvalidArgument) as info:
            generate_cascade(pipe, "a cat", [64, 128], [1], output=output, controlnet=controlnet,
                             control_image=cond, **run_options)  # fmt: skip
        assert info.value.argument == "output"
        assert str(info.value) == (
            f"output: {output} would replace the input {cond}; choose another output, or pass "
            "in_place=True to replace the inputs (atomically)"
        )
    assert cond.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cond.png", "linked.png"]  # no work


def test_in_place_replaces_the_condition_image_with_the_result(make_pipe, tmp_path, run_options):
    cond = tmp_path / "cond.png"
    condition(cond)
    pipe, controlnet = make_pipe(), tiny_controlnet(seed=0)
    control = dict(controlnet=controlnet, control_image=cond, **run_options)
    expected = generate_cascade(pipe, "a cat", [64, 128], [1], output=tmp_path / "o.png", **control)
    result = generate_cascade(pipe, "a cat", [64, 128], [1], output=cond, in_place=True, **control)
    assert result == cond
    assert np.array_equal(np.asarray(Image.open(cond)), np.asarray(Image.open(expected)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cond.png", "o.png"]


def test_an_intermediate_image_never_replaces_the_condition_image(make_pipe, tmp_path, run_options):
    cond = tmp_path / "out_64x64.png"  # what save_intermediate writes for the 64 px stage
    original = condition(cond)
    pipe, controlnet = make_pipe(), tiny_controlnet(seed=0)
    for in_place in (False, True):
        with pytest.raises(InvalidArgument) as info:
            generate_cascade(pipe, "a cat", [64, 128], [1], output=tmp_path / "out.png",
                             save_intermediate=True, in_place=in_place, controlnet=controlnet,
                             control_image=cond, **run_options)  # fmt: skip
        assert str(info.value) == (
            f"save_intermediate: the intermediate image {cond} would replace the input {cond} "
            "(control_image), which later stages still read; choose another output name"
        )
    assert cond.read_bytes() == original and sorted(tmp_path.iterdir()) == [cond]


def test_a_condition_image_in_the_checkpoint_folder_is_refused(make_pipe, tmp_path, run_options):
    folder = tmp_path / "out.png.pixelsmith"  # a checkpoint folder of an earlier run
    folder.mkdir()
    (folder / "run.json").write_text("{}")
    cond = folder / "cond.png"
    condition(cond)
    pipe, controlnet = make_pipe(), tiny_controlnet(seed=0)
    with pytest.raises(InvalidArgument) as info:
        generate_cascade(pipe, "a cat", [64, 128], [1], output=tmp_path / "out.png",
                         in_place=True, controlnet=controlnet, control_image=cond,
                         **run_options)  # fmt: skip
    assert str(info.value) == (
        f"checkpoint_dir: {folder} holds the input {cond} (control_image), and the checkpoint "
        "folder is deleted when the run ends; move the input or choose another checkpoint_dir"
    )
    assert cond.is_file()


def test_cli_refuses_before_loading_naming_its_flags(cli_model, tmp_path, capsys, no_model_load):
    model, controlnet = cli_model
    cond = tmp_path / "out_64x64.png"
    original = condition(cond)
    common = ["generate", "a cat", "--model", str(model), "--sizes", "64", "128", "--slider",
              "1", "--steps", "2", "--controlnet", str(controlnet), "--control-image", str(cond),
              "--quiet", "--device", "cpu", *SMALL]  # fmt: skip
    cases = [
        (
            ["-o", str(cond)],
            f"-o/--output: {cond} would replace the input {cond}; choose another output, or "
            "pass --in-place to replace the inputs (atomically)",
        ),
        (
            ["-o", str(tmp_path / "out.png"), "--save-intermediate", "--in-place"],
            f"--save-intermediate: the intermediate image {cond} would replace the input {cond} "
            "(--control-image), which later stages still read; choose another -o/--output name",
        ),
    ]
    for extra, message in cases:
        assert main([*common, *extra]) == 2
        captured = capsys.readouterr()
        assert captured.err == f"{PREFIX}{message}\n" and captured.out == ""
    assert cond.read_bytes() == original and sorted(tmp_path.iterdir()) == [cond]


def test_cli_in_place_writes_over_the_condition_image(cli_model, tmp_path, capsys):
    model, controlnet = cli_model
    cond = tmp_path / "cond.png"
    original = condition(cond)
    argv = ["generate", "a cat", "--model", str(model), "--sizes", "64", "128", "--slider", "1",
            "--steps", "2", "--controlnet", str(controlnet), "--control-image", str(cond),
            "--quiet", "--device", "cpu", *SMALL, "-o", str(cond), "--in-place"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out == f"wrote {cond}\n"
    assert cond.read_bytes() != original
    assert Image.open(cond).size == (128, 128)
    assert sorted(tmp_path.iterdir()) == [cond]  # no checkpoint, no temporary file left
