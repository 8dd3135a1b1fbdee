"""Batches of image files: walking folders, where results go, inputs never replaced, bad files,
resuming."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common_kernels.runtime.batch import (
    BatchRun,
    MissingImages,
    find_images,
    output_paths,
    resume_command,
    survey,
)
from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.files import ImageReadError, read_image

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c63600000000200015d8a26c70000000049454e44ae426082"
)


def touch(path: Path, data: bytes = PNG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """photos/{b.png, a.JPG, notes.txt, .hidden.png, sub/c.png, sub/deeper/d.png, .cache/e.png}"""
    root = tmp_path / "photos"
    for name in ("b.png", "a.JPG", "sub/c.png", "sub/deeper/d.png", ".hidden.png", ".cache/e.png"):
        touch(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def test_a_folder_gives_its_images_in_name_order_and_counts_the_subfolders_left_out(
    tree: Path,
) -> None:
    listing = find_images([tree])
    assert [image.relative for image in listing.images] == [Path("a.JPG"), Path("b.png")]
    assert (listing.left_out, listing.left_out_folders) == (2, 2)
    assert listing.left_out_note("--recursive") == (
        "left out 2 image(s) in 2 subfolder(s) of the input folder(s); --recursive takes "
        "them too, in the same subfolders"
    )
    assert listing.left_out_note(verb="segments").endswith("recursive=True segments them too, "
                                                           "in the same subfolders")  # fmt: skip


def test_recursive_walks_subfolders_and_keeps_their_place(tree: Path) -> None:
    listing = find_images(tree, recursive=True)
    assert [str(image.relative) for image in listing.images] == [
        "a.JPG", "b.png", "sub/c.png", "sub/deeper/d.png",
    ]  # fmt: skip
    assert listing.left_out == 0 and listing.left_out_note() is None


def test_an_excluded_folder_is_not_walked(tree: Path) -> None:
    listing = find_images(tree, recursive=True, exclude=[tree / "sub" / "deeper"])
    assert [str(image.relative) for image in listing.images] == ["a.JPG", "b.png", "sub/c.png"]


def test_files_are_taken_as_given_and_once(tree: Path) -> None:
    listing = find_images([tree / "b.png", tree, tree / "b.png"])
    assert [image.path.name for image in listing.images] == ["b.png", "a.JPG"]


def test_bad_inputs_name_the_argument(tree: Path) -> None:
    with pytest.raises(MissingImages, match=r"^inputs: no such file or folder: .*nope$") as gone:
        find_images([tree / "nope"])
    assert isinstance(gone.value, FileNotFoundError) and isinstance(gone.value, ValueError)
    with pytest.raises(InvalidArgument, match=r"notes.txt is not an image file \(expected "):
        find_images([tree / "notes.txt"])
    touch(tree / "only_subfolders" / "inner" / "x.png")
    with pytest.raises(InvalidArgument) as empty:
        find_images([tree / "only_subfolders"])
    assert empty.value.message.endswith("(1 more in subfolders: recursive=True walks them)")
    assert empty.value.for_flags({"inputs": "IN", "recursive": "--recursive"}).startswith(
        "IN: no images (.png"
    )
    assert "--recursive walks them" in empty.value.for_flags({"recursive": "--recursive"})


def test_results_mirror_the_input_folders(tree: Path, tmp_path: Path) -> None:
    listing = find_images(tree, recursive=True)
    targets = output_paths(listing, tmp_path / "out", suffix=".png")
    assert [t.relative_to(tmp_path / "out").as_posix() for t in targets] == [
        "a.png", "b.png", "sub/c.png", "sub/deeper/d.png",
    ]  # fmt: skip


def test_one_input_may_go_to_a_file_several_may_not(tree: Path, tmp_path: Path) -> None:
    one = find_images(tree / "b.png")
    assert output_paths(one, tmp_path / "x.png") == [tmp_path / "x.png"]
    with pytest.raises(InvalidArgument, match=r"^output: .*x.png: 2 images cannot go into one"):
        output_paths(find_images(tree), tmp_path / "x.png")
    with pytest.raises(InvalidArgument, match=r"'.txt' is not an image suffix"):
        output_paths(find_images(tree), tmp_path / "x.txt")


def test_two_inputs_for_one_result_are_refused(tmp_path: Path) -> None:
    first, second = touch(tmp_path / "a" / "x.png"), touch(tmp_path / "b" / "x.png")
    with pytest.raises(InvalidArgument, match=r"a/x.png and .*b/x.png would both be written to"):
        output_paths(find_images([first, second]), tmp_path / "out")


def test_an_output_that_is_an_input_is_refused_naming_both(tree: Path) -> None:
    image = tree / "b.png"
    with pytest.raises(InvalidArgument) as error:
        output_paths(find_images(image), image)
    assert error.value.argument == "output"
    assert error.value.message == (
        f"{image} would replace the input {image}; choose another output, or pass "
        "in_place=True to replace the inputs (atomically)"
    )
    assert error.value.for_flags({"output": "-o/--output", "in_place": "--in-place"}) == (
        f"-o/--output: {image} would replace the input {image}; choose another output, or "
        "pass --in-place to replace the inputs (atomically)"
    )
    assert output_paths(find_images(image), image, in_place=True) == [image]


def test_the_same_file_under_another_name_is_an_input(tree: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.png"
    os.symlink(tree / "b.png", link)
    with pytest.raises(InvalidArgument, match=r"link.png would replace the input .*b.png"):
        output_paths(find_images(tree / "b.png"), link)


def test_an_output_folder_that_is_an_input_folder_is_refused(tree: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"is the input folder .*photos: its images would"):
        output_paths(find_images(tree), tree / ".")


def test_survey_stops_at_a_bad_file_or_sets_it_aside(tmp_path: Path) -> None:
    good = touch(tmp_path / "good.png")
    bad = touch(tmp_path / "bad.png", PNG[:40])

    def channels(path: Path) -> int:
        return int(read_image(path).shape[0])

    with pytest.raises(ImageReadError, match=r"bad.png as an image"):
        survey([good, bad], channels)
    seen = []
    found = survey([bad, good], channels, keep_going=True, on_unreadable=seen.append)
    assert found.readable == {good: 1}
    assert [item.path for item in found.unreadable] == [bad] == [item.path for item in seen]
    assert found.unreadable[0].reason.startswith("cannot identify image file")


def test_batch_run_says_how_far_it_got_and_how_to_resume() -> None:
    run = BatchRun(5, resume_command("semanir restore", ["in dir", "-o", "out"]))
    run.done()
    run.done()
    assert run.interrupt_hint() == (
        " after 2 of 5 image(s); resume with: semanir restore 'in dir' -o out --skip-existing"
    )
    run.skip(Path("x.png"), "truncated")
    assert run.skipped_summary() == "skipped 1 input(s) that could not be read:\n  x.png: truncated"
    assert resume_command("p", ["a", "--skip-existing"]) == "p a --skip-existing"
