"""``itaclip segment`` on files and folders (issue 33): folders walked as every package walks
them (``--recursive`` mirrors subfolders, else the left-out images are counted), every input
decoded before the model loads, ``--keep-going``, ``--skip-existing``, the interrupt line with
the command that resumes, outputs that never replace inputs unless ``--in-place``, and
overlays of upright photos (EXIF orientation applied once, ICC profile kept)."""

from __future__ import annotations

import io
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.photos import Photo, read_photo, write_photo
from common_kernels.runtime.testing import interrupted_run
from itaclip import Segmenter
from itaclip.cli import main
from itaclip.folders import plan_segment_batch
from itaclip.viz import LEGEND_ROW, LEGEND_WIDTH

IMAGE_SUFFIXES = ".png, .jpg, .jpeg, .bmp, .webp, .tif, .tiff"


def save(path: Path, height: int = 40, width: int = 56, seed: int = 0) -> Path:
    """A random RGB image (any suffix PIL writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def truncated(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


@pytest.fixture
def options(tmp_path, tiny_dir) -> list[str]:
    """The tiny model, one window per image, no PAMR, a cache in tmp_path, no progress."""
    cache = str(tmp_path / "cache")
    return ["--classes", "cat,dog|puppy,sky", "--model", str(tiny_dir), "--stride", "224",
            "--short-side", "64", "--no-pamr", "--cache-dir", cache, "-q"]  # fmt: skip


@pytest.fixture
def tree(tmp_path) -> Path:
    """photos/{a.png, b.jpg, notes.txt, sub/c.png, sub/deeper/d.png}"""
    root = tmp_path / "photos"
    save(root / "a.png", 40, 56, 0)
    save(root / "b.jpg", 30, 30, 1)
    save(root / "sub" / "c.png", 32, 48, 2)
    save(root / "sub" / "deeper" / "d.png", 48, 32, 3)
    (root / "notes.txt").write_text("not an image")
    return root


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def labels_of(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_recursive_mirrors_the_subfolders_under_the_output_folder(tree, tmp_path, options, capsys):
    extra = save(tmp_path / "e.png", 24, 36, 4)
    out = tmp_path / "out"
    status, stdout, err = run(["segment", str(tree), str(extra), "-o", str(out), "--recursive",
                               *options], capsys)  # fmt: skip
    assert status == 0 and err == ""
    names = ["a", "b", "e", "sub/c", "sub/deeper/d"]
    assert files_under(out) == sorted(
        f"{n}_{kind}.png" for n in names for kind in ("labels", "overlay")
    )
    inputs = {"a": tree / "a.png", "b": tree / "b.jpg", "sub/c": tree / "sub/c.png",
              "sub/deeper/d": tree / "sub/deeper/d.png", "e": extra}  # fmt: skip
    assert stdout.splitlines() == [
        f"{inputs[n]} -> {out / f'{n}_overlay.png'}"
        for n in ("a", "b", "sub/c", "sub/deeper/d", "e")
    ]
    for name, source in inputs.items():
        with Image.open(source) as image:
            width, height = image.size
        assert labels_of(out / f"{name}_labels.png").shape == (height, width)
        with Image.open(out / f"{name}_overlay.png") as overlay:
            assert overlay.size[0] == width + LEGEND_WIDTH and overlay.size[1] >= height
    seg = Segmenter.from_pretrained(options[3], None, preset=None, stride=224, short_side=64,
                                    pamr=False, cache_dir=tmp_path / "cache")  # fmt: skip
    expected = seg(read_photo(tree / "sub/deeper/d.png"), [["cat"], ["dog", "puppy"], ["sky"]])
    assert np.array_equal(labels_of(out / "sub/deeper/d_labels.png"), expected.labels.numpy())


def test_without_recursive_the_images_left_out_are_counted(tree, tmp_path, options, capsys):
    out = tmp_path / "out"
    status, _, err = run(["segment", str(tree), "-o", str(out), *options], capsys)
    assert status == 0
    assert err == (
        "itaclip segment: left out 2 image(s) in 2 subfolder(s) of the input folder(s); "
        "--recursive segments them too, into the same subfolders of the output folder\n"
    )
    assert files_under(out) == ["a_labels.png", "a_overlay.png", "b_labels.png", "b_overlay.png"]


def test_an_output_folder_inside_the_input_folder_is_not_walked(tree, options, capsys):
    out = tree / "masks"
    assert run(["segment", str(tree), "-o", str(out), "--recursive", *options], capsys)[0] == 0
    assert run(["segment", str(tree), "-o", str(out), "--recursive", *options], capsys)[0] == 0
    assert not (out / "masks").exists()  # the first run's outputs were not taken as inputs
    assert len(files_under(out)) == 8


def test_an_output_that_would_replace_an_input_is_refused_naming_both(
    tree, options, capsys, no_model_work
):
    old = save(tree / "a_overlay.png", 8, 8)
    before = {path: path.read_bytes() for path in tree.rglob("*") if path.is_file()}
    argv = ["segment", str(tree / "a.png"), str(old), "-o", str(tree), *options]
    status, stdout, err = run(argv, capsys)
    assert status == 2 and stdout == ""
    assert err == (
        f"itaclip segment: error: -o/--output: {old} would replace the input {old}; choose "
        "another output, or pass --in-place to replace the inputs (atomically)\n"
    )
    status, stdout, err = run(["segment", str(tree), "-o", str(tree), *options], capsys)
    assert status == 2 and err == (
        f"itaclip segment: error: -o/--output: {tree} is the input folder {tree}: its images "
        "would be replaced; choose another output, or pass --in-place to replace the inputs "
        "(atomically)\n"
    )
    after = {path: path.read_bytes() for path in tree.rglob("*") if path.is_file()}
    assert after == before


def test_in_place_writes_beside_the_inputs_and_a_rerun_leaves_its_outputs_out(
    tree, options, capsys
):
    photos = {path: path.read_bytes() for path in tree.iterdir() if path.is_file()}
    argv = ["segment", str(tree), "-o", str(tree), "--in-place", *options]
    status, _, err = run(argv, capsys)
    assert status == 0 and err.startswith("itaclip segment: left out 2 image(s) in 2 subfolder")
    written = ["a_labels.png", "a_overlay.png", "b_labels.png", "b_overlay.png"]
    assert sorted(p.name for p in tree.iterdir() if p.is_file()) == sorted(
        [*written, "a.png", "b.jpg", "notes.txt"]
    )
    assert all(path.read_bytes() == data for path, data in photos.items())  # inputs untouched
    status, stdout, err = run(argv, capsys)  # the same run again: the outputs are no inputs
    assert status == 0 and len(stdout.splitlines()) == 2
    own = ", ".join(str(tree / name) for name in written[:3]) + ", ..."
    assert f"itaclip segment: left out 4 input(s) that are outputs of this run ({own})\n" in err
    assert sorted(p.name for p in tree.iterdir() if p.is_file()) == sorted(
        [*written, "a.png", "b.jpg", "notes.txt"]
    )


def test_no_output_replaces_the_aux_file_even_in_place(tmp_path, options, capsys, no_model_work):
    image = save(tmp_path / "img.png")
    aux = tmp_path / "out" / "img_labels.png"  # an official-format text file, oddly named
    aux.parent.mkdir()
    aux.write_text("cat >= a pet\npuppy >= a young dog\nsky >= the air above\n")
    for extra in ([], ["--in-place"]):
        argv = ["segment", str(image), "-o", str(aux.parent), "--aux-file", str(aux), *options]
        status, _, err = run([*argv, *extra], capsys)
        assert status == 2 and err == (
            f"itaclip segment: error: -o/--output: {aux} would replace the input {aux} (the "
            "--aux-file); choose another file\n"
        )
    assert aux.read_text().startswith("cat >= a pet")


def test_every_image_is_decoded_before_the_model_loads(
    tree, tmp_path, options, capsys, monkeypatch
):
    truncated(tree / "c_cut.png")
    loaded = []
    monkeypatch.setattr(Segmenter, "load", lambda plan: loaded.append(plan))
    status, stdout, err = run(["segment", str(tree), "-o", str(tmp_path / "out"), *options], capsys)
    assert status == 2 and stdout == "" and loaded == []
    assert err.endswith(
        f"error: {tree / 'c_cut.png'} is not a readable image (image file is truncated)\n"
    )
    assert not (tmp_path / "out").exists()


def test_keep_going_skips_a_bad_file_with_one_line_and_exits_1_with_the_list(
    tree, tmp_path, options, capsys
):
    (tree / "b_bad.png").write_text("not an image")
    truncated(tree / "c_cut.png")
    out = tmp_path / "out"
    status, stdout, err = run(["segment", str(tree), "-o", str(out), "--keep-going", *options],
                              capsys)  # fmt: skip
    assert status == 1
    bad = f"not a readable image (cannot identify image file '{tree / 'b_bad.png'}')"
    cut = "not a readable image (image file is truncated)"
    assert err.splitlines() == [
        f"itaclip segment: skipped {tree / 'b_bad.png'}: {bad}",
        f"itaclip segment: skipped {tree / 'c_cut.png'}: {cut}",
        "itaclip segment: left out 2 image(s) in 2 subfolder(s) of the input folder(s); "
        "--recursive segments them too, into the same subfolders of the output folder",
        "itaclip segment: skipped 2 input(s) that could not be read:",
        f"  {tree / 'b_bad.png'}: {bad}",
        f"  {tree / 'c_cut.png'}: {cut}",
    ]
    assert files_under(out) == ["a_labels.png", "a_overlay.png", "b_labels.png", "b_overlay.png"]
    assert len(stdout.splitlines()) == 2


def test_keep_going_also_skips_an_image_the_segmenter_refuses(
    tmp_path, tiny_dir, capsys, monkeypatch
):
    save(tmp_path / "in" / "big.png", 40, 40)
    save(tmp_path / "in" / "tiny.png", 8, 40)  # without a resize: less than a 16 px patch high
    load = Segmenter.load
    monkeypatch.setattr(Segmenter, "load", lambda plan: load(plan).with_config(short_side=None))
    argv = ["segment", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--classes", "a,b",
            "--model", str(tiny_dir), "--stride", "224", "--no-pamr", "--keep-going", "-q",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    status, stdout, err = run(argv, capsys)
    assert status == 1
    assert stdout == f"{tmp_path / 'in' / 'big.png'} -> {tmp_path / 'out' / 'big_overlay.png'}\n"
    reason = (
        "images must be at least one patch (16x16 px) after the resize, got 8x40 px resized to 8x40"
    )
    assert err.splitlines() == [
        f"itaclip segment: skipped {tmp_path / 'in' / 'tiny.png'}: {reason}",
        "itaclip segment: skipped 1 input(s) that could not be read:",
        f"  {tmp_path / 'in' / 'tiny.png'}: {reason}",
    ]
    assert files_under(tmp_path / "out") == ["big_labels.png", "big_overlay.png"]
    monkeypatch.setattr(Segmenter, "load", lambda plan: load(plan).with_config(short_side=None))
    status, _, err = run([arg for arg in argv if arg != "--keep-going"], capsys)
    assert status == 2 and err == f"itaclip segment: error: {reason}\n"


def test_skip_existing_resumes_a_folder_run(tree, tmp_path, options, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["segment", str(tree), "-o", str(out), "--recursive", *options]
    assert run(argv, capsys)[0] == 0
    (out / "sub" / "c_labels.png").unlink()
    kept = {path: path.stat().st_mtime_ns for path in out.rglob("*.png")}
    status, stdout, err = run([*argv, "--skip-existing"], capsys)
    assert status == 0
    assert stdout == f"{tree / 'sub' / 'c.png'} -> {out / 'sub' / 'c_overlay.png'}\n"
    assert err == "itaclip segment: left out 3 image(s) whose outputs exist (--skip-existing)\n"
    assert all(
        path.stat().st_mtime_ns == time for path, time in kept.items() if path.stem != "c_overlay"
    )
    assert (out / "sub" / "c_labels.png").is_file()

    def fail(plan):
        raise AssertionError("the model was loaded with nothing to do")

    monkeypatch.setattr(Segmenter, "load", fail)
    status, stdout, err = run([*argv, "--skip-existing"], capsys)
    assert status == 0 and stdout == ""
    assert err == "itaclip segment: left out 4 image(s) whose outputs exist (--skip-existing)\n"


def test_the_interrupt_line_says_how_far_and_how_to_resume(tree, tmp_path, options, capsys):
    out = tmp_path / "out dir"  # a space: the resume command is quoted for the shell
    argv = ["segment", str(tree), "-o", str(out), "--recursive", *options]
    target = "itaclip.segmenter:Segmenter.query_logits"
    done = interrupted_run("itaclip.cli", target, argv, at_call=2)  # on the second image
    assert done.returncode == 130, done.stderr
    resume = shlex.join(["itaclip", *argv, "--skip-existing"])
    assert (
        done.stderr
        == f"itaclip segment: interrupted after 1 of 4 image(s); resume with: {resume}\n"
    )
    assert files_under(out) == ["a_labels.png", "a_overlay.png"]  # nothing half-written
    words = shlex.split(done.stderr.split("resume with: ")[1])
    status, stdout, err = run(words[1:], capsys)
    assert status == 0
    assert err == "itaclip segment: left out 1 image(s) whose outputs exist (--skip-existing)\n"
    assert len(stdout.splitlines()) == 3 and len(files_under(out)) == 8


def test_the_overlay_of_a_rotated_photo_is_upright_and_keeps_its_profile(tmp_path, options, capsys):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 high x 60 wide, shown turned 90 degrees clockwise
    exif[0x010F] = "a camera"
    rng = np.random.default_rng(5)
    stored = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    photo = tmp_path / "turned.jpg"
    stored.save(photo, exif=exif.tobytes(), icc_profile=icc, quality=95)
    out = tmp_path / "out"
    assert run(["segment", str(photo), "-o", str(out), *options], capsys)[0] == 0
    labels = labels_of(out / "turned_labels.png")
    assert labels.shape == (60, 40)  # upright
    with Image.open(photo) as image:
        upright = ImageOps.exif_transpose(image)
        seg = Segmenter.from_pretrained(options[3], None, preset=None, stride=224, short_side=64,
                                        pamr=False, cache_dir=tmp_path / "cache")  # fmt: skip
        expected = seg(upright, [["cat"], ["dog", "puppy"], ["sky"]]).labels.numpy()
    assert np.array_equal(labels, expected)
    with Image.open(out / "turned_overlay.png") as overlay:
        assert overlay.size == (
            40 + LEGEND_WIDTH,
            max(60, LEGEND_ROW * (len(np.unique(labels)) + 1)),
        )
        assert overlay.info.get("icc_profile") == icc
        tags = overlay.getexif()
        assert tags.get(0x010F) == "a camera" and 0x0112 not in tags  # turned once, not twice


def test_a_16_bit_colour_photo_is_segmented_at_full_precision(tmp_path, options, capsys):
    rng = np.random.default_rng(6)
    pixels = torch.from_numpy(rng.random((3, 36, 44), dtype=np.float32))
    path = tmp_path / "deep.png"
    assert write_photo(path, Photo(pixels, bit_depth=16)) == []
    photo = read_photo(path)
    assert photo.bit_depth == 16
    assert run(["segment", str(path), "-o", str(tmp_path / "out"), *options], capsys)[0] == 0
    seg = Segmenter.from_pretrained(options[3], None, preset=None, stride=224, short_side=64,
                                    pamr=False, cache_dir=tmp_path / "cache")  # fmt: skip
    expected = seg(photo.pixels, [["cat"], ["dog", "puppy"], ["sky"]]).labels.numpy()
    assert np.array_equal(labels_of(tmp_path / "out" / "deep_labels.png"), expected)


def test_the_api_names_its_arguments(tree, tmp_path):
    with pytest.raises(InvalidArgument) as info:
        plan_segment_batch(tree, tree)
    assert str(info.value) == (
        f"output: {tree} is the input folder {tree}: its images would be replaced; choose "
        "another output, or pass in_place=True to replace the inputs (atomically)"
    )
    with pytest.raises(InvalidArgument) as info:
        plan_segment_batch(tmp_path / "nope", tmp_path / "out")
    assert str(info.value) == f"images: no such file or folder: {tmp_path / 'nope'}"
    save(tmp_path / "only" / "inner" / "x.png")
    with pytest.raises(InvalidArgument) as info:
        plan_segment_batch(tmp_path / "only", tmp_path / "out")
    assert str(info.value) == (
        f"images: no images ({IMAGE_SUFFIXES}) found in {tmp_path / 'only'} (1 more in "
        "subfolders: recursive=True walks them)"
    )
    batch = plan_segment_batch(tree, tmp_path / "out", recursive=True)
    assert [job.labels.relative_to(tmp_path / "out").as_posix() for job in batch.jobs] == [
        "a_labels.png", "b_labels.png", "sub/c_labels.png", "sub/deeper/d_labels.png",
    ]  # fmt: skip
    assert batch.left_out == 0 and batch.left_out_note() is None
    flat = plan_segment_batch(tree, tmp_path / "out")
    assert flat.left_out_note() == (
        "left out 2 image(s) in 2 subfolder(s) of the input folder(s); recursive=True segments "
        "them too, into the same subfolders of the output folder"
    )


def test_segmentation_saves_its_overlay_and_labels(make_segmenter, tmp_path):
    seg = make_segmenter()
    image = Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 64, 3), np.uint8))
    result = seg(image, ["cat", "dog"], output_size=(24, 32))
    assert result.save_overlay(tmp_path / "o.png", image) == []
    assert result.save_labels(tmp_path / "l.png") == []
    assert np.array_equal(labels_of(tmp_path / "l.png"), result.labels.numpy())
    present = len(result.labels.unique())
    with Image.open(tmp_path / "o.png") as overlay:
        assert overlay.size == (32 + LEGEND_WIDTH, max(24, LEGEND_ROW * (present + 1)))
        assert overlay.mode == "RGB"
    with pytest.raises(InvalidArgument) as info:
        result.save_labels(tmp_path / "l.jpg")
    assert str(info.value) == (
        f"path: {tmp_path / 'l.jpg'}: a label map needs a lossless format (.png, .tif, .tiff), "
        "got '.jpg'"
    )
    many = type(result)(torch.tensor([[0, 299], [256, 7]]), torch.zeros(300, 2, 2),
                        tuple(f"c{i}" for i in range(300)))  # fmt: skip
    assert many.save_labels(tmp_path / "many.png") == []
    assert read_photo(tmp_path / "many.png").bit_depth == 16
    assert labels_of(tmp_path / "many.png").tolist() == [[0, 299], [256, 7]]
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))  # no temporary left
