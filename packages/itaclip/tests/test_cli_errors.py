"""The CLI's error contract: one line ``itaclip COMMAND: error: ...`` naming the flag, exit 2,
found before any model is loaded and before anything is written; failures while working exit
1; Ctrl-C exits 130 with one line; progress bars; the ``tiny-model`` round trip."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from itaclip import Segmenter
from itaclip.cli import main
from itaclip.datasets import SegmentationDataset
from itaclip.evaluate import evaluate
from itaclip.sources import supported_models
from itaclip.tiny import CONFIG_FILE, TINY_CONFIG, WEIGHTS_FILE

PREFIX = {command: f"itaclip {command}: error: " for command in ("segment", "eval", "aux")}


@pytest.fixture
def files(tmp_path) -> Path:
    """An image, broken images, a folder, aux files and a file in the way of outputs."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "notes.png").write_text("not an image")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "photos").mkdir()
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / sub / "x.png")
    (tmp_path / "file.txt").write_text("in the way")
    (tmp_path / "defs.txt").write_text("cat >= a pet\ndog a pet\n")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"classes": ["cow"], "texts": ["a cow"]}))
    (tmp_path / "model_no_config").mkdir()
    return tmp_path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def segment_args(tmp: Path, *extra: str, image: str = "img.png") -> list[str]:
    return ["segment", str(tmp / image), "--classes", "cat,dog", "-o", str(tmp / "out"), *extra]


SEGMENT_CASES = {
    "not_an_image": (
        segment_args(Path("{t}"), image="notes.png"),
        "{t}/notes.png is not a readable image (cannot identify image file '{t}/notes.png')",
    ),
    "truncated": (
        segment_args(Path("{t}"), image="cut.png"),
        "{t}/cut.png is not a readable image (image file is truncated)",
    ),
    "missing": (
        segment_args(Path("{t}"), image="missing.png"),
        "IMG: no such file or folder: {t}/missing.png",
    ),
    "folder_without_images": (
        segment_args(Path("{t}"), image="photos"),
        "IMG: no images (.png, .jpg, .jpeg, .bmp, .webp, .tif, .tiff) found in {t}/photos",
    ),
    "not_an_image_suffix": (
        segment_args(Path("{t}"), image="file.txt"),
        "IMG: {t}/file.txt is not an image file (expected .png, .jpg, .jpeg, .bmp, .webp, .tif, "
        ".tiff)",
    ),
    "same_stem": (
        ["segment", "{t}/a/x.png", "{t}/b/x.png", "--classes", "cat", "-o", "{t}/out"],
        "-o/--output: {t}/a/x.png and {t}/b/x.png would both be written to {t}/out/x_overlay.png",
    ),
    "output_is_the_input_folder": (
        ["segment", "{t}/a", "--classes", "cat", "-o", "{t}/a"],
        "-o/--output: {t}/a is the input folder {t}/a: its images would be replaced; choose "
        "another output, or pass --in-place to replace the inputs (atomically)",
    ),
    "a_bad_image_after_good_ones": (
        ["segment", "{t}/img.png", "{t}/a", "{t}/cut.png", "--classes", "cat", "-o", "{t}/out"],
        "{t}/cut.png is not a readable image (image file is truncated)",
    ),
    "stride_0": (
        segment_args(Path("{t}"), "--stride", "0"),
        "--stride must be in [1, crop] = [1, 224] px (a larger stride leaves pixels that no "
        "window covers), got 0",
    ),
    "stride_above_crop": (
        segment_args(Path("{t}"), "--stride", "225"),
        "--stride must be in [1, crop] = [1, 224] px (a larger stride leaves pixels that no "
        "window covers), got 225",
    ),
    "stride_not_int": (
        segment_args(Path("{t}"), "--stride", "x"),
        "argument --stride: invalid int value: 'x'",
    ),
    "short_side_0": (
        segment_args(Path("{t}"), "--short-side", "0"),
        "--short-side must be >= 1 px or None (no resize), got 0",
    ),
    "batch_size_0": (
        segment_args(Path("{t}"), "--batch-size", "0"),
        "--batch-size must be >= 1, got 0",
    ),
    "alpha": (segment_args(Path("{t}"), "--alpha", "1.5"), "--alpha must be in [0, 1], got 1.5"),
    "output_size": (
        segment_args(Path("{t}"), "--output-size", "0x5"),
        "argument --output-size: expected S or HxW (height x width) in pixels, positive "
        "integers, got '0x5'",
    ),
    "output_named_like_a_file": (
        segment_args(Path("{t}"), "-o", "{t}/labels.png"),
        "-o/--output {t}/labels.png: the outputs go into a folder, and a new folder's name must "
        "have no suffix (got '.png')",
    ),
    "preset": (
        segment_args(Path("{t}"), "--preset", "voc"),
        "argument --preset: invalid choice: 'voc' (choose from 'ade20k', 'cityscapes', "
        "'coco_object', 'coco_stuff', 'context59', 'context60', 'voc20', 'voc21')",
    ),
    "empty_class": (
        ["segment", "{t}/img.png", "--classes", "cat,,dog", "-o", "{t}/out"],
        "--classes 'cat,,dog': class 1 (['']) has an empty name",
    ),
    "duplicate_class": (
        ["segment", "{t}/img.png", "--classes", "cat,dog|cat", "-o", "{t}/out"],
        "--classes 'cat,dog|cat': duplicate class name 'cat': used by class 0 and class 1",
    ),
    "background_name": (
        segment_args(Path("{t}"), "--background", "sky"),
        "--background 'sky' names none of the classes ['cat', 'dog']",
    ),
    "unknown_model": (
        segment_args(Path("{t}"), "--model", "ViT-Z-99"),
        "--model: unknown model 'ViT-Z-99': known names: {known}; a local folder starts with ./ "
        "or / (or exists), a hub id is owner/name",
    ),
    "model_without_a_vit": (
        segment_args(Path("{t}"), "--model", "RN50"),
        "--model: 'RN50' is an open_clip model without a ViT image tower (itaclip wraps "
        "open_clip's VisionTransformer); use a ViT, e.g. ViT-B-16-quickgelu",
    ),
    "model_is_a_file": (
        segment_args(Path("{t}"), "--model", "{t}/file.txt"),
        "--model {t}/file.txt is a file; expected an open_clip model name, hf-hub:org/repo or "
        "a folder holding open_clip_config.json",
    ),
    "model_folder_missing": (
        segment_args(Path("{t}"), "--model", "local-dir:{t}/nowhere"),
        "--model: no model folder {t}/nowhere (nothing at {t}/nowhere)",
    ),
    "model_folder_without_config": (
        segment_args(Path("{t}"), "--model", "{t}/model_no_config"),
        "--model {t}/model_no_config: {t}/model_no_config/open_clip_config.json is missing or "
        'is not an open_clip config (a JSON object with "model_cfg"; `itaclip tiny-model DIR` '
        "writes one)",
    ),
    "unknown_weights_tag": (
        segment_args(Path("{t}"), "--pretrained", "laion9b"),
        "--pretrained 'laion9b' is neither a weights tag of ViT-B-16-quickgelu ({tags}) nor an "
        "existing file ('' = random weights)",
    ),
    "device_cuda_without_gpu": (
        segment_args(Path("{t}"), "--device", "cuda"),
        "--device cuda: no CUDA device is available (available: cpu)",
    ),
    "device_not_a_device": (
        segment_args(Path("{t}"), "--device", "cuda:x"),
        "--device cuda:x: expected cpu, cuda, cuda:N or mps (available: cpu)",
    ),
    "device_unknown": (
        segment_args(Path("{t}"), "--device", "tpu"),
        "--device tpu: expected cpu, cuda, cuda:N or mps (available: cpu)",
    ),
    "output_is_a_file": (
        ["segment", "{t}/img.png", "--classes", "cat", "-o", "{t}/file.txt"],
        "-o/--output {t}/file.txt is a file, not a folder",
    ),
    "output_below_a_file": (
        ["segment", "{t}/img.png", "--classes", "cat", "-o", "{t}/file.txt/out"],
        "-o/--output {t}/file.txt/out: cannot create it, {t}/file.txt is a file",
    ),
    "cache_dir_is_a_file": (
        segment_args(Path("{t}"), "--cache-dir", "{t}/file.txt"),
        "--cache-dir {t}/file.txt is a file, not a folder",
    ),
    "aux_missing": (
        segment_args(Path("{t}"), "--aux-file", "{t}/nowhere.txt"),
        "--aux-file {t}/nowhere.txt does not exist",
    ),
    "aux_folder": (
        segment_args(Path("{t}"), "--aux-file", "{t}/photos"),
        "--aux-file {t}/photos is a folder, not a file",
    ),
    "aux_malformed_line": (
        segment_args(Path("{t}"), "--aux-file", "{t}/defs.txt"),
        "--aux-file: {t}/defs.txt:2: expected 'name >=text' (a class name, '>=', its auxiliary "
        "text), found no '>=' in 'dog a pet'",
    ),
    "aux_bad_json": (
        segment_args(Path("{t}"), "--aux-file", "{t}/bad.json"),
        "--aux-file {t}/bad.json: not readable JSON (Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1))",
    ),
    "aux_json_other_classes": (
        segment_args(Path("{t}"), "--aux-file", "{t}/other.json"),
        "--aux-file {t}/other.json holds auxiliary texts for ['cow'], but --classes names "
        "['cat', 'dog']",
    ),
    "classes_missing": (
        ["segment", "{t}/img.png", "-o", "{t}/out"],
        "the following arguments are required: --classes",
    ),
}


def fill(text: str, tmp: Path) -> str:
    tags = ", ".join(open_clip.list_pretrained_tags_by_model("ViT-B-16-quickgelu"))
    known = ", ".join(supported_models())
    return text.replace("{t}", str(tmp)).replace("{tags}", tags).replace("{known}", known)


def assert_refused(argv: list[str], message: str, tmp: Path, capsys) -> None:
    """``main(argv)`` ({t} = ``tmp`` in ``argv`` and ``message``) exits 2 with the one line
    ``itaclip COMMAND: error: MESSAGE``, prints nothing on stdout and writes nothing in ``tmp``."""
    before = sorted(tmp.rglob("*"))
    status, out, err = run([fill(arg, tmp) for arg in argv], capsys)
    assert status == 2
    assert err == f"{PREFIX[argv[0]]}{fill(message, tmp)}\n"
    assert out == ""
    assert sorted(tmp.rglob("*")) == before  # nothing written, no output folder made


@pytest.mark.parametrize("case", sorted(SEGMENT_CASES))
def test_segment_bad_input_one_line_exit_2_before_model_load(
    case, files, capsys, monkeypatch, no_model_work
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv, message = SEGMENT_CASES[case]
    assert_refused(argv, message, files, capsys)


@pytest.fixture
def voc_root(voc_root: Path, tmp_path: Path) -> Path:
    """The one-image VOC folder (conftest.py) beside a file and the broken dataset folders the
    eval cases name."""
    (tmp_path / "file.txt").write_text("in the way")
    (tmp_path / "empty/ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "empty/ImageSets/Segmentation/val.txt").write_text("\n")
    (tmp_path / "no_images/ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "no_images/ImageSets/Segmentation/val.txt").write_text("b\n")
    (tmp_path / "ade_empty/images/validation").mkdir(parents=True)
    (tmp_path / "ade_no_label/images/validation").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(
        tmp_path / "ade_no_label/images/validation/x.jpg"
    )
    return voc_root


def eval_args(*extra: str) -> list[str]:
    """``itaclip eval`` of random weights on the one-image VOC folder {t}/voc, then ``extra``."""
    return ["eval", "--dataset", "voc21", "--root", "{t}/voc", "--pretrained", "", *extra]


VOC_LAYOUT = (
    "JPEGImages/ID.jpg, SegmentationClass/ID.png and ImageSets/Segmentation/val.txt listing the IDs"
)
ADE20K_LAYOUT = "images/validation/X.jpg and annotations/validation/X.png"
EVAL_CASES = {
    "limit_negative": (
        eval_args("--limit", "-1"),
        "--limit must be >= 1 (or left out for all images), got -1",
    ),
    "limit_0": (
        eval_args("--limit", "0"),
        "--limit must be >= 1 (or left out for all images), got 0",
    ),
    "nproc_0": (eval_args("--nproc", "0"), "--nproc must be >= 1, got 0"),
    "stride_0": (
        eval_args("--stride", "0"),
        "--stride must be in [1, crop] = [1, 224] px (a larger stride leaves pixels that no "
        "window covers), got 0",
    ),
    "json_is_a_folder": (eval_args("--json", "{t}"), "--json {t} is a folder, not a file"),
    "json_below_a_file": (
        eval_args("--json", "{t}/file.txt/r.json"),
        "--json {t}/file.txt/r.json: cannot create its folder, {t}/file.txt is a file",
    ),
    "root_missing": (eval_args("--root", "{t}/nowhere"), "--root {t}/nowhere does not exist"),
    "root_is_a_file": (
        eval_args("--root", "{t}/file.txt"),
        "--root {t}/file.txt is a file, not a folder",
    ),
    "root_not_voc": (
        eval_args("--root", "{t}"),
        "--root {t} is not a folder of voc21: split list not found: "
        "{t}/ImageSets/Segmentation/val.txt (expected " + VOC_LAYOUT + ")",
    ),
    "root_empty_split": (
        eval_args("--root", "{t}/empty"),
        "--root {t}/empty: no images found (expected " + VOC_LAYOUT + ")",
    ),
    "voc20_unknown_split": (
        eval_args("--dataset", "voc20", "--split", "test"),
        "--root {t}/voc is not a folder of voc20: split list not found: "
        "{t}/voc/ImageSets/Segmentation/test.txt (expected "
        + VOC_LAYOUT.replace("val.txt", "test.txt")
        + ")",
    ),
    "context59_root_is_voc": (
        eval_args("--dataset", "context59"),
        "--root {t}/voc is not a folder of context59: split list not found: "
        "{t}/voc/ImageSets/SegmentationContext/val.txt (expected JPEGImages/ID.jpg, "
        "SegmentationClassContext/ID.png and ImageSets/SegmentationContext/val.txt listing the "
        "IDs)",
    ),
    "ade20k_root_is_voc": (
        eval_args("--dataset", "ade20k"),
        "--root {t}/voc is not a folder of ade20k: image folder not found: "
        "{t}/voc/images/validation (expected " + ADE20K_LAYOUT + ")",
    ),
    "ade20k_no_images": (
        eval_args("--dataset", "ade20k", "--root", "{t}/ade_empty"),
        "--root {t}/ade_empty: no images found (expected " + ADE20K_LAYOUT + ")",
    ),
    "ade20k_label_missing": (
        eval_args("--dataset", "ade20k", "--root", "{t}/ade_no_label"),
        "--root {t}/ade_no_label: label map of x not found: "
        "{t}/ade_no_label/annotations/validation/x.png",
    ),
    "root_image_missing": (
        eval_args("--root", "{t}/no_images"),
        "--root {t}/no_images: image of b not found: {t}/no_images/JPEGImages/b.jpg",
    ),
    "device_cuda_without_gpu": (
        eval_args("--device", "cuda"),
        "--device cuda: no CUDA device is available (available: cpu)",
    ),
    "unknown_model": (
        eval_args("--model", "nope"),
        "--model: unknown model 'nope': known names: {known}; a local folder starts with ./ or / "
        "(or exists), a hub id is owner/name",
    ),
    "json_is_the_split_list": (
        eval_args("--json", "{t}/voc/ImageSets/Segmentation/val.txt"),
        "--json: {t}/voc/ImageSets/Segmentation/val.txt would replace the input "
        "{t}/voc/ImageSets/Segmentation/val.txt (the split list of voc21); choose another file",
    ),
    "json_is_a_label_map": (
        eval_args("--json", "{t}/voc/SegmentationClass/a.png"),
        "--json: {t}/voc/SegmentationClass/a.png would replace the input "
        "{t}/voc/SegmentationClass/a.png (a label map of voc21); choose another file",
    ),
    "dataset": (
        eval_args("--dataset", "voc"),
        "argument --dataset: invalid choice: 'voc' (choose from 'ade20k', 'cityscapes', "
        "'coco_object', 'coco_stuff', 'context59', 'context60', 'voc20', 'voc21')",
    ),
}


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_eval_bad_input_one_line_exit_2_before_model_load(
    case, voc_root, capsys, monkeypatch, no_model_work
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv, message = EVAL_CASES[case]
    assert_refused(argv, message, voc_root.parent, capsys)


def test_evaluate_api_rejects_limits_below_one(voc_root, make_segmenter):
    dataset = SegmentationDataset("voc21", voc_root)
    seg = make_segmenter(preset="voc21")
    for limit in (-1, 0):
        message = rf"^limit must be >= 1 \(or left out for all images\), got {limit}$"
        with pytest.raises(ValueError, match=message):
            evaluate(seg, dataset, limit=limit, progress=False)


def aux_args(*extra: str) -> list[str]:
    """``itaclip aux`` of a hub LM id for two classes into {t}/aux.json, then ``extra``."""
    return ["aux", "--lm", "org/lm", "--classes", "cat,dog", "-o", "{t}/aux.json", *extra]


AUX_CASES = {
    "output_is_a_folder": (aux_args("-o", "{t}"), "-o/--output {t} is a folder, not a file"),
    "output_below_a_file": (
        aux_args("-o", "{t}/file.txt/aux.json"),
        "-o/--output {t}/file.txt/aux.json: cannot create its folder, {t}/file.txt is a file",
    ),
    "max_new_tokens_0": (aux_args("--max-new-tokens", "0"), "--max-new-tokens must be >= 1, got 0"),
    "empty_class": (
        aux_args("--classes", "cat,"),
        "--classes 'cat,': class 1 (['']) has an empty name",
    ),
    "lm_is_a_file": (
        aux_args("--lm", "{t}/file.txt"),
        "--lm {t}/file.txt is a file; expected a hub id or a model folder",
    ),
    "lm_folder_missing": (
        aux_args("--lm", "{t}/nowhere"),
        "--lm: no model folder {t}/nowhere (nothing at {t}/nowhere)",
    ),
    "kind": (
        aux_args("--kind", "poem"),
        "argument --kind: invalid choice: 'poem' (choose from 'definition', 'synonym')",
    ),
}


@pytest.mark.parametrize("case", sorted(AUX_CASES))
def test_aux_bad_input_one_line_exit_2_before_model_load(case, files, capsys, no_model_work):
    argv, message = AUX_CASES[case]
    assert_refused(argv, message, files, capsys)


def test_tiny_model_into_a_file_is_refused(files, capsys):
    status, out, err = run(["tiny-model", str(files / "file.txt")], capsys)
    assert status == 2 and out == ""
    assert err == f"itaclip tiny-model: error: DIR {files}/file.txt is a file, not a folder\n"
    assert (files / "file.txt").read_text() == "in the way"


def test_unknown_command_one_line(capsys):
    status, out, err = run(["paint"], capsys)
    assert status == 2 and out == ""
    assert err == (
        "itaclip: error: argument command: invalid choice: 'paint' "
        "(choose from 'segment', 'eval', 'aux', 'tiny-model', 'app')\n"
    )


def test_failure_while_writing_exits_1_with_one_line(files, tiny_dir, capsys, monkeypatch):
    def disk_full(path, photo, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("itaclip.outputs.write_photo", disk_full)
    argv = segment_args(files, "--model", str(tiny_dir), "--stride", "224", "--no-pamr",
                        "--cache-dir", str(files / "cache"), "--quiet")  # fmt: skip
    status, out, err = run(argv, capsys)
    assert status == 1 and out == ""
    path = files / "out" / "img_overlay.png"
    assert err == f"itaclip segment: error: [Errno 28] No space left on device: '{path}'\n"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


WINDOWS_LINE = re.compile(r"windows: \d+/15 windows \(\d+%\), \d+ s")


def test_window_progress_bar_counts_the_windows(make_segmenter, capsys, monkeypatch):
    seg = make_segmenter(stride=16)  # crop 64 on 96x128: 3 x 5 windows
    image = torch.rand(3, 96, 128)
    text = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    quiet = seg.query_logits(image, text)
    assert capsys.readouterr().err == ""
    logged = seg.query_logits(image, text, progress=True)  # stderr is no terminal: a log
    err = capsys.readouterr().err
    assert "\r" not in err  # plain lines only, and no final line (the bar is nested)
    assert all(WINDOWS_LINE.fullmatch(line) for line in err.splitlines()), err
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    shown = seg.query_logits(image, text, progress=True)
    bar = terminal.getvalue()
    assert "windows" in bar and "0/15" in bar  # the total; refreshes are rate-limited
    assert bar.endswith("\r")  # removed when the image is done
    torch.testing.assert_close(shown, quiet, rtol=0, atol=0)
    torch.testing.assert_close(logged, quiet, rtol=0, atol=0)


@pytest.mark.parametrize("quiet", [False, True])
def test_segment_progress_on_a_terminal_unless_quiet(files, tiny_dir, monkeypatch, quiet):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = segment_args(files, "--model", str(tiny_dir), "--stride", "112", "--no-pamr",
                        "--short-side", "224", "--cache-dir", str(files / "cache"))  # fmt: skip
    assert main([*argv, *(["--quiet"] if quiet else [])]) == 0
    shown = terminal.getvalue()
    if quiet:
        assert shown == ""
    else:  # 224x314 resized image, crop 224, stride 112: 1 x 2 windows; one image
        assert "images" in shown and "1/1" in shown
        assert "windows" in shown and "0/2" in shown


def test_segment_progress_in_a_log_is_plain_lines(files, tiny_dir, capsys):
    """stderr is no terminal: no bar (no carriage returns), a line for the images at the end,
    and a windows line only every 10 s while an image takes longer."""
    argv = segment_args(files, "--model", str(tiny_dir), "--stride", "224", "--no-pamr",
                        "--cache-dir", str(files / "cache"))  # fmt: skip
    status, out, err = run(argv, capsys)
    assert status == 0 and "\r" not in err
    *windows, last = err.splitlines()
    assert re.fullmatch(r"itaclip segment: 1/1 images \(100%\), \d+ s", last), err
    # 40x56 px resized to 336x470, crop 224, stride 224: 2 x 3 windows
    line = re.compile(r"windows: \d/6 windows \(\d+%\), \d+ s")
    assert all(line.fullmatch(text) for text in windows), err
    assert out == f"{files / 'img.png'} -> {files / 'out' / 'img_overlay.png'}\n"


def test_tiny_model_round_trip(tmp_path, files, capsys):
    model = tmp_path / "models" / "tiny"
    status, out, err = run(["tiny-model", str(model), "--seed", "3"], capsys)
    assert status == 0 and err == "" and out == f"wrote {model}\n"
    assert sorted(p.name for p in model.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert json.loads((model / CONFIG_FILE).read_text()) == {"model_cfg": TINY_CONFIG}
    weights = load_file(model / WEIGHTS_FILE)
    assert weights["visual.conv1.weight"].shape == (32, 3, 16, 16)
    assert sum(w.numel() for k, w in weights.items() if k.startswith("visual.")) < 100_000
    again = tmp_path / "again"
    assert run(["tiny-model", str(again), "--seed", "3"], capsys)[0] == 0
    assert (again / WEIGHTS_FILE).read_bytes() == (model / WEIGHTS_FILE).read_bytes()  # seeded
    out_dir = tmp_path / "out"
    argv = ["segment", str(files / "img.png"), "--classes", "cat,dog|puppy,sky", "-o",
            str(out_dir), "--model", str(model), "--cache-dir", str(tmp_path / "cache"),
            "--stride", "112", "--quiet"]  # fmt: skip
    status, out, err = run(argv, capsys)
    assert status == 0 and err == ""
    assert sorted(p.name for p in out_dir.iterdir()) == ["img_labels.png", "img_overlay.png"]
    labels = np.asarray(Image.open(out_dir / "img_labels.png"))
    assert labels.shape == (40, 56) and labels.dtype == np.uint8 and labels.max() <= 2
    seg = Segmenter.from_pretrained(
        f"local-dir:{model}", None, preset=None, stride=112, cache_dir=tmp_path / "cache"
    )
    image = np.asarray(Image.open(files / "img.png"))
    expected = seg(image, [["cat"], ["dog", "puppy"], ["sky"]]).labels
    assert torch.equal(torch.from_numpy(labels.astype(np.int64)), expected)


def test_eval_progress_over_images_on_a_terminal(voc_root, tiny_dir, monkeypatch, capsys):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["eval", "--dataset", "voc21", "--root", str(voc_root), "--model", str(tiny_dir),
            "--stride", "224", "--short-side", "64", "--no-pamr", "--limit", "1",
            "--cache-dir", str(voc_root.parent / "cache")]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("voc21: mIoU ")
    shown = terminal.getvalue()
    assert "voc21" in shown and "1/1" in shown and "image" in shown
    assert "windows" in shown and "0/1" in shown  # 64x64 image, one window
