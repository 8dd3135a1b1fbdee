"""The API owns the checks (issue 25, item 5): ``Segmenter.from_pretrained``, the segmenter's
call, ``check_evaluation`` and the LLM generator refuse a bad input with the message that
``itaclip`` prints for the same input, the argument spelled as each caller spells it, before any
model work; the package has no import cycle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from common_kernels.runtime.imports import find_cycle, import_graph
from itaclip import Segmenter
from itaclip.cli import FLAGS, main
from itaclip.evaluate import check_evaluation
from itaclip.generate import SamplingConfig, make_sampling
from itaclip.sources import supported_models

API_NAMES = {name: name for name in FLAGS}
SOURCE = Path(__file__).parents[1] / "src" / "itaclip"


@pytest.fixture
def no_model_work(no_model_work, monkeypatch):
    """No model work (conftest.py) on a machine without CUDA: the messages are the CPU's."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def files(tmp_path: Path, monkeypatch) -> Path:
    """An image, an `itaclip aux` JSON for other classes, a file in the way; the cwd."""
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "other.json").write_text(json.dumps({"classes": ["cow"], "texts": ["a cow"]}))
    (tmp_path / "file.txt").write_text("in the way")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fill(template: str, names: dict[str, str], tmp: Path) -> str:
    tags = ", ".join(open_clip.list_pretrained_tags_by_model("ViT-B-16-quickgelu"))
    known = ", ".join(supported_models())
    return template.format_map({**names, "t": tmp, "tags": tags, "known": known})


def cli_error(argv: list[str], capsys) -> str:
    """The one line of a CLI run that must exit 2 with nothing on stdout."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    return captured.err


STRIDE = (
    "{stride} must be in [1, crop] = [1, 224] px (a larger stride leaves pixels that no window "
    "covers), got 0"
)
LOAD_CASES = {
    "stride": ({"stride": 0}, ["--stride", "0"], STRIDE),
    "short_side": (
        {"short_side": 0},
        ["--short-side", "0"],
        "{short_side} must be >= 1 px or None (no resize), got 0",
    ),
    "batch_size": ({"batch_size": 0}, ["--batch-size", "0"], "{batch_size} must be >= 1, got 0"),
    "alpha": ({"alpha": 1.5}, ["--alpha", "1.5"], "{alpha} must be in [0, 1], got 1.5"),
    "unknown_model": (
        {"model_name": "ViT-Z-99"},
        ["--model", "ViT-Z-99"],
        "{model_name}: unknown model 'ViT-Z-99': known names: {known}; a local folder starts "
        "with ./ or / (or exists), a hub id is owner/name",
    ),
    "missing_model_folder": (
        {"model_name": "./nope_dir"},
        ["--model", "./nope_dir"],
        "{model_name}: no model folder ./nope_dir (nothing at {t}/nope_dir)",
    ),
    "model_is_a_file": (
        {"model_name": "file.txt"},
        ["--model", "file.txt"],
        "{model_name} file.txt is a file; expected an open_clip model name, hf-hub:org/repo or a "
        "folder holding open_clip_config.json",
    ),
    "unknown_tag": (
        {"pretrained": "laion9b"},
        ["--pretrained", "laion9b"],
        "{pretrained} 'laion9b' is neither a weights tag of ViT-B-16-quickgelu ({tags}) nor an "
        "existing file ('' = random weights)",
    ),
    "missing_weights_file": (
        {"pretrained": "./w.bin"},
        ["--pretrained", "./w.bin"],
        "{pretrained}: no weights file ./w.bin (nothing at {t}/w.bin)",
    ),
    "device": (
        {"device": "tpu"},
        ["--device", "tpu"],
        "{device} tpu: expected cpu, cuda, cuda:N or mps (available: cpu)",
    ),
    "cache_dir_is_a_file": (
        {"cache_dir": "file.txt"},
        ["--cache-dir", "file.txt"],
        "{cache_dir} file.txt is a file, not a folder",
    ),
}


@pytest.mark.parametrize("case", sorted(LOAD_CASES))
def test_from_pretrained_and_segment_give_the_same_message(case, files, capsys, no_model_work):
    kwargs, extra, template = LOAD_CASES[case]
    settings = {"preset": None, "cache_dir": files / "cache", **kwargs}
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        Segmenter.from_pretrained(**settings)
    assert str(info.value) == fill(template, API_NAMES, files)
    argv = ["segment", "img.png", "--classes", "cat,dog", "-o", "out", "--cache-dir", "cache"]
    expected = fill(template, FLAGS, files)
    assert cli_error([*argv, *extra], capsys) == f"itaclip segment: error: {expected}\n"
    assert sorted(path.name for path in files.iterdir()) == ["file.txt", "img.png", "other.json"]


CALL_CASES = {
    "background_name": (
        {"background": "sky"},
        ["--background", "sky"],
        "{background} 'sky' names none of the classes ['cat', 'dog']",
    ),
    "background_index": (
        {"background": 2},
        ["--background", "2"],
        "{background} 2 is not a class index in [0, 2)",
    ),
    "aux_file_missing": (
        {"aux_file": "nowhere.txt"},
        ["--aux-file", "nowhere.txt"],
        "{aux_file} nowhere.txt does not exist",
    ),
    "aux_file_for_other_classes": (
        {"aux_file": "other.json"},
        ["--aux-file", "other.json"],
        "{aux_file} other.json holds auxiliary texts for ['cow'], but {classes} names "
        "['cat', 'dog']",
    ),
}


@pytest.mark.parametrize("case", sorted(CALL_CASES))
def test_the_segmenter_call_and_segment_give_the_same_message(
    case, files, capsys, make_segmenter, tiny_dir, no_model_work
):
    kwargs, extra, template = CALL_CASES[case]
    segmenter = make_segmenter()
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        segmenter(torch.rand(3, 64, 64), [["cat"], ["dog"]], **kwargs)
    assert str(info.value) == fill(template, API_NAMES, files)
    argv = ["segment", "img.png", "--classes", "cat,dog", "-o", "out", "--model", str(tiny_dir),
            "--cache-dir", "cache"]  # fmt: skip
    expected = fill(template, FLAGS, files)
    assert cli_error([*argv, *extra], capsys) == f"itaclip segment: error: {expected}\n"


EVAL_CASES = {
    "limit": (
        {"limit": 0},
        ["--limit", "0"],
        "{limit} must be >= 1 (or left out for all images), got 0",
    ),
    "processes": ({"processes": 0}, ["--nproc", "0"], "{processes} must be >= 1, got 0"),
    "root_missing": ({"root": "nowhere"}, ["--root", "nowhere"], "{root} nowhere does not exist"),
    "root_is_a_file": (
        {"root": "file.txt"},
        ["--root", "file.txt"],
        "{root} file.txt is a file, not a folder",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_check_evaluation_and_eval_give_the_same_message(
    case, files, voc_root, capsys, no_model_work
):
    kwargs, extra, template = EVAL_CASES[case]
    with pytest.raises((ValueError, OSError)) as info:
        check_evaluation(**{"dataset": "voc21", "root": "voc", **kwargs})
    assert str(info.value) == fill(template, API_NAMES, voc_root.parent)
    argv = ["eval", "--dataset", "voc21", "--root", "voc", "--pretrained", "", "--cache-dir", "c"]
    expected = fill(template, FLAGS, voc_root.parent)
    assert cli_error([*argv, *extra], capsys) == f"itaclip eval: error: {expected}\n"


LM_CASES = {
    "file": ("file.txt", "{lm} file.txt is a file; expected a hub id or a model folder"),
    "missing": ("./no_lm", "{lm}: no model folder ./no_lm (nothing at {t}/no_lm)"),
}


@pytest.mark.parametrize("case", sorted(LM_CASES))
def test_the_generator_and_aux_give_the_same_message(case, files, capsys, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from itaclip.generate import AuxTextGenerator

    def fail(*args, **kwargs):
        raise AssertionError("a language model was loaded before the inputs were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fail)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail)
    lm, template = LM_CASES[case]
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        AuxTextGenerator.from_pretrained(lm)
    assert str(info.value) == fill(template, {"lm": "name"}, files)  # the API's argument
    argv = ["aux", "--lm", lm, "--classes", "cat,dog", "-o", "aux.json"]
    expected = fill(template, {"lm": "--lm"}, files)
    assert cli_error(argv, capsys) == f"itaclip aux: error: {expected}\n"


def test_sampling_settings_and_aux_give_the_same_message(files, capsys):
    pytest.importorskip("transformers")  # aux checks for it first
    message = "max_new_tokens must be >= 1, got 0"
    for make in (lambda: SamplingConfig(max_new_tokens=0), lambda: make_sampling(max_new_tokens=0)):
        with pytest.raises(ValueError, match=f"^{message}$"):
            make()
    argv = ["aux", "--lm", "org/lm", "--classes", "cat,dog", "-o", "aux.json"]
    error = cli_error([*argv, "--max-new-tokens", "0"], capsys)
    assert error == "itaclip aux: error: --max-new-tokens must be >= 1, got 0\n"


def test_a_batch_is_checked_before_any_model_work(make_segmenter, no_model_work):
    segmenter = make_segmenter()  # no resize, crop 64, patch 16
    layout = (
        "tensor images must be float (3, H, W) or batches (B, 3, H, W), RGB in [0, 1] with B >= 1"
    )
    bad = {
        "empty": (
            torch.rand(0, 3, 64, 64),
            "image: an empty batch of shape (0, 3, 64, 64): give at least one image",
        ),
        "no_pixels": (
            torch.rand(2, 3, 0, 64),
            "image: an empty image of shape (2, 3, 0, 64): an image needs at least one pixel "
            "(height and width >= 1)",
        ),
        "gray": (torch.rand(2, 1, 64, 64), f"{layout}, got torch.float32 (2, 1, 64, 64)"),
        "uint8": (
            torch.zeros(2, 3, 64, 64, dtype=torch.uint8),
            f"{layout}, got torch.uint8 (2, 3, 64, 64)",
        ),
        "range": (
            torch.cat([torch.zeros(1, 3, 64, 64), torch.full((1, 3, 64, 64), 2.0)]),
            "float images must lie in [0, 1], got range [2, 2] (divide 0-255 values by 255, or "
            "pass uint8)",
        ),
        "small": (
            torch.rand(2, 3, 10, 40),
            "images must be at least one patch (16x16 px) after the resize, got 10x40 px "
            "resized to 10x40",
        ),
    }  # fmt: skip
    for batch, message in bad.values():
        with pytest.raises(ValueError) as info:
            segmenter(batch, ["cat", "dog"])
        assert str(info.value) == message


def test_the_package_has_no_import_cycle():
    graph = import_graph(SOURCE)
    assert {"itaclip.cli", "itaclip.segmenter", "itaclip.config", "itaclip.sources"} <= set(graph)
    assert find_cycle(graph) is None
    assert "itaclip.cli" not in set().union(*graph.values())  # nothing imports the CLI


@pytest.mark.parametrize(
    "imports", ["from itaclip import Segmenter, pamr", "from itaclip import pamr"]
)
def test_pamr_is_the_function_whatever_was_imported_first(imports):
    """``from itaclip import Segmenter, pamr`` gave the module itaclip.pamr: importing the
    segmenter imported the module of that name, which shadowed the lazy name (issue 59)."""
    script = f"{imports}\nimport inspect\nprint(inspect.isfunction(pamr), pamr.__module__)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.split() == ["True", "itaclip.refinement"], done.stderr
