"""Issue 49: every size-like option is bounded by an estimate made before any work (item 2),
and every API argument error reaches the command line under the flag typed (item 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import itaclip.memory
from itaclip.cli import FLAGS, main
from itaclip.config import make_config
from itaclip.inputs import check_classes
from itaclip.segmenter import check_from_pretrained, check_plan_memory

GIB = 2**30


@pytest.fixture
def files(tmp_path: Path, monkeypatch, no_model_work) -> Path:
    """The cwd: an image, a file in the way, a folder whose image is in a subfolder, an input
    folder; 1 GiB of memory available; no model work (conftest.py), no CUDA."""
    for path in ("img.png", "photos/sub/a.png", "in/a.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(tmp_path / path)
    (tmp_path / "file.txt").write_text("in the way")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(itaclip.memory, "available_bytes", lambda device: GIB)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return tmp_path


def listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


ALLOW = {"api": "allow_large=True", "cli": "--allow-large"}
WINDOWS = (
    "{short_side} 2048 and {stride} 1: img.png (40x56 px) makes 2,263,000 windows (1240x1825 on "
    "the 1463x2048 px resized image, 11,315,000 ViT crop images), more than the 65,536 allowed "
    "per image (16x the 4,489 of a 2048x2048 px resize at stride 28); give a smaller "
    "{short_side} or a larger {stride}, or {allow} to run anyway"
)
BOUNDS = {  # settings (API), flags (CLI), the line with {argument}s
    "output_size": (
        {"output_size": (100000, 100000)},
        ["--output-size", "100000x100000"],
        "{output_size} 100000x100000: 2 query and 2 class maps of 100000x100000 px: segmenting "
        "img.png (40x56 px) needs an estimated 5,960.68 GiB (6,400,234,109,640 bytes; this part "
        "5,960.46 GiB), more than the 1.00 GiB available on cpu; give a smaller {output_size}, "
        "or {allow} to run anyway",
    ),
    "short_side_cap": (
        {"short_side": 100000},
        ["--short-side", "100000"],
        "{short_side} must be <= max_long_side = 2048 px (the resized long side is capped there, "
        "so a larger short side changes nothing), got 100000",
    ),
    "windows": (
        {"short_side": 2048, "stride": 1},
        ["--short-side", "2048", "--stride", "1"],
        WINDOWS,
    ),
    "batch_size": (
        {"short_side": 2048, "batch_size": 100000},
        ["--short-side", "2048", "--batch-size", "100000"],
        "{batch_size} 100000: 15,410 crop images per ViT pass: segmenting img.png (40x56 px) "
        "needs an estimated 28.80 GiB (30,923,462,672 bytes; this part 28.79 GiB), more than "
        "the 1.00 GiB available on cpu; give a smaller {batch_size}, or {allow} to run anyway",
    ),
}


def api_error(settings: dict, tiny_dir: Path) -> str:
    """The API's message for ``settings``: the plan's checks, then the image's estimate."""
    settings = dict(settings)
    output_size = settings.pop("output_size", None)
    with pytest.raises(ValueError) as info:
        plan = check_from_pretrained(str(tiny_dir), None, None, "cpu", "cache", **settings)
        classes = check_classes([["cat"], ["dog"]])
        check_plan_memory(plan, {"img.png": (40, 56)}, classes, output_size)
    return str(info.value)


@pytest.mark.parametrize("case", sorted(BOUNDS))
def test_a_size_beyond_its_estimate_is_refused_before_any_work(case, files, tiny_dir, capsys):
    settings, extra, template = BOUNDS[case]
    names = {name: name for name in FLAGS}
    assert api_error(settings, tiny_dir) == template.format(**names, allow=ALLOW["api"])
    argv = ["segment", "img.png", "--classes", "cat,dog", "-o", "out", "--model", str(tiny_dir),
            "--cache-dir", "cache", *extra]  # fmt: skip
    assert main(argv) == 2  # no_model_work: a model load would raise instead
    captured = capsys.readouterr()
    expected = template.format(**FLAGS, allow=ALLOW["cli"])
    assert captured.err == f"itaclip segment: error: {expected}\n"
    assert captured.out == ""
    assert listing(files) == ["file.txt", "img.png", "in", "in/a.png", "photos", "photos/sub",
                              "photos/sub/a.png"]  # fmt: skip


def test_allow_large_lets_the_same_run_reach_the_model(files, tiny_dir, capsys):
    argv = ["segment", "img.png", "--classes", "cat,dog", "-o", "out", "--model", str(tiny_dir),
            "--cache-dir", "cache", "--output-size", "100000x100000", "--allow-large"]  # fmt: skip
    with pytest.raises(AssertionError, match="model work started"):
        main(argv)  # the checks passed: the (patched) model load is reached


def test_eval_refuses_too_many_windows_before_the_model_loads(files, voc_root, tiny_dir, capsys):
    argv = ["eval", "--dataset", "voc21", "--root", str(voc_root), "--model", str(tiny_dir),
            "--cache-dir", "cache", "--short-side", "2048", "--stride", "2"]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "itaclip eval: error: --short-side 2048 and --stride 2: an image resized to 2048x2048 px "
        "makes 833,569 windows (913x913 on the 2048x2048 px resized image, 4,167,845 ViT crop "
        "images), more than the 65,536 allowed per image (16x the 4,489 of a 2048x2048 px "
        "resize at stride 28); give a smaller --short-side or a larger --stride, or "
        "--allow-large to run anyway\n"
    )


def test_the_segmenter_call_checks_its_image_estimate(make_segmenter, monkeypatch, no_model_work):
    monkeypatch.setattr(itaclip.memory, "available_bytes", lambda device: GIB)
    segmenter = make_segmenter()  # crop 64, stride 32, batch 8, no resize
    with pytest.raises(ValueError) as info:
        segmenter(torch.rand(3, 64, 64), ["cat", "dog"], output_size=(100000, 100000))
    assert str(info.value).startswith(
        "output_size 100000x100000: 2 query and 2 class maps of 100000x100000 px: segmenting "
        "image (64x64 px) needs an estimated "
    )
    assert str(info.value).endswith(
        "more than the 1.00 GiB available on cpu; give a smaller output_size, or "
        "allow_large=True to run anyway"
    )
    assert make_config(allow_large=True).allow_large


def test_the_output_estimate_follows_its_formula():
    """Per output px: PIXEL_BYTES and 4 bytes per fp32 map (6 per query, 2 per class, 2 per
    PAMR chunk channel); measured +1,274 MiB of peak RSS for 1500x1500 over 256x256 px
    (2 classes, the tiny model), estimated +1,333 MiB (CHANGELOG 0.4.2)."""
    config = make_config(short_side=None)
    vision = itaclip.memory.VisionShape(patch=16, width=32, heads=2, fused=2)
    parts = itaclip.memory.image_parts((64, 64), (1000, 2000), config, 5, vision, 3, 2, "o")
    assert parts[-1].nbytes == 1000 * 2000 * (512 + 4 * (6 * 3 + 2 * 2 + 2 * 8))


SEGMENT = ["segment", "img.png", "--classes", "cat,dog", "-o", "out", "--cache-dir", "cache"]
EVAL = ["eval", "--dataset", "voc21", "--root", "voc", "--cache-dir", "cache"]
STRIDE = ("--stride must be in [1, crop] = [1, 224] px (a larger stride leaves pixels that no "
          "window covers), got 0")  # fmt: skip
FLAG_CASES = {  # API argument -> (argv, the line after "itaclip COMMAND: error: ")
    "model_name": ([*SEGMENT, "--model", "./nope"], "--model: no model folder ./nope (nothing "
                   "at {t}/nope)"),
    "pretrained": ([*SEGMENT, "--pretrained", "./w.bin"], "--pretrained: no weights file "
                   "./w.bin (nothing at {t}/w.bin)"),
    "stride": ([*SEGMENT, "--stride", "0"], STRIDE),
    "short_side": ([*SEGMENT, "--short-side", "0"], "--short-side must be >= 1 px or None (no "
                   "resize), got 0"),
    "batch_size": ([*SEGMENT, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    "alpha": ([*SEGMENT, "--alpha", "1.5"], "--alpha must be in [0, 1], got 1.5"),
    "device": ([*SEGMENT, "--device", "tpu"], "--device tpu: expected cpu, cuda, cuda:N or mps "
               "(available: cpu)"),
    "cache_dir": ([*SEGMENT, "--cache-dir", "file.txt"], "--cache-dir file.txt is a file, not "
                  "a folder"),
    "classes": (["segment", "img.png", "--classes", "cat,cat", "-o", "out"], "--classes "
                "'cat,cat': duplicate class name 'cat': used by class 0 and class 1"),
    "background": ([*SEGMENT, "--background", "2"], "--background 2 is not a class index in "
                   "[0, 2)"),
    "aux_file": ([*SEGMENT, "--aux-file", "no.txt"], "--aux-file no.txt does not exist"),
    "root": ([*EVAL[:4], "nowhere"], "--root nowhere does not exist"),
    "limit": ([*EVAL, "--limit", "0"], "--limit must be >= 1 (or left out for all images), "
              "got 0"),
    "processes": ([*EVAL, "--nproc", "0"], "--nproc must be >= 1, got 0"),
    "max_new_tokens": (["aux", "--lm", "org/lm", "--classes", "cat", "-o", "a.json",
                        "--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    "name": (["aux", "--lm", "./no_lm", "--classes", "cat", "-o", "a.json"], "--lm: no model "
             "folder ./no_lm (nothing at {t}/no_lm)"),
    "seed": (["tiny-model", "t", "--seed", "-1"], "--seed must be an integer in [0, 2**64 - "
             "1], got -1"),
    "directory": (["tiny-model", "file.txt"], "DIR file.txt is a file, not a folder"),
    "images": (["segment", "no.png", "--classes", "cat", "-o", "out"], "IMG: no such file or "
               "folder: no.png"),
    "output": (["segment", "img.png", "--classes", "cat", "-o", "file.txt"], "-o/--output "
               "file.txt is a file, not a folder"),
    "report": ([*EVAL, "--model", "{model}", "--json", "{model}/open_clip_config.json"],
               "--json: {model}/open_clip_config.json would replace the input "
               "{model}/open_clip_config.json (a file of the model); choose another file"),
    "recursive": (["segment", "photos", "--classes", "cat", "-o", "out"], "IMG: no images "
                  "(.png, .jpg, .jpeg, .bmp, .webp, .tif, .tiff) found in photos (1 more in "
                  "subfolders: --recursive walks them)"),
    "in_place": (["segment", "in", "--classes", "cat", "-o", "in"], "-o/--output: in is the "
                 "input folder in: its images would be replaced; choose another output, or "
                 "pass --in-place to replace the inputs (atomically)"),
    "port": (["app", "--port", "0"], "--port: must be in [1, 65535], got 0"),
    "shard": ([*SEGMENT, "--model", "{model}", "--shard", "2/2"], "--shard: the shard index "
              "must be an int in [0, 1] (0-based), got 2"),
    "ray_workers": ([*SEGMENT, "--model", "{model}", "--ray", "--ray-workers", "0"],
                    "--ray-workers: must be an int >= 1, got 0"),
    "ray_batch_size": ([*SEGMENT, "--model", "{model}", "--ray", "--ray-batch", "0"],
                       "--ray-batch: must be an int >= 1, got 0"),
    "ray_gpus_per_worker": ([*SEGMENT, "--model", "{model}", "--ray", "--ray-gpus", "-1"],
                            "--ray-gpus: must be a number >= 0, got -1.0"),
    "output_size": ([*SEGMENT, "--model", "{model}", "--output-size", "100000x100000"],
                    BOUNDS["output_size"][2].format(**FLAGS, allow="--allow-large")),
    "allow_large": ([*SEGMENT, "--model", "{model}", "--short-side", "2048", "--stride", "1"],
                    WINDOWS.format(**FLAGS, allow="--allow-large")),
}  # fmt: skip


def test_every_argument_of_the_flag_table_has_a_case():
    assert sorted(FLAG_CASES) == sorted(FLAGS)


@pytest.mark.parametrize("argument", sorted(FLAG_CASES))
def test_an_api_argument_error_names_the_flag_typed(argument, files, voc_root, tiny_dir, capsys):
    """Issue 49, item 3: each API argument that ``itaclip`` maps reaches the user under its
    flag: one line, exit 2, nothing on stdout."""
    if argument == "port":
        pytest.importorskip("gradio")  # app checks for it first
    if argument in ("max_new_tokens", "name"):
        pytest.importorskip("transformers")  # aux checks for it first
    argv, line = FLAG_CASES[argument]
    argv = [arg.format(model=tiny_dir) for arg in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    expected = line.format(t=files, model=tiny_dir) if "{" in line else line
    assert captured.err == f"itaclip {argv[0]}: error: {expected}\n"
    assert captured.out == ""
    assert FLAGS[argument] in expected
