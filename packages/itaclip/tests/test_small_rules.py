"""The small rules of issue 33, item 6: ``--version``; third-party notices silenced unless
``--verbose``; one unknown-model rule (``common_kernels.runtime.hub.resolve_model_name``) for
``--model`` and ``aux --lm``; empty tensors refused with the API's message naming the argument;
``eval --json`` and ``aux -o`` never replace a file they read (item 1)."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from importlib import metadata

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import itaclip
from common_kernels.runtime.errors import InvalidArgument
from itaclip import Segmenter
from itaclip.cli import main
from itaclip.datasets import SegmentationDataset
from itaclip.evaluate import check_report_file
from itaclip.generate import AuxTextGenerator, check_aux_output
from itaclip.sources import resolve_model, supported_models


def test_version_names_the_package_common_kernels_torch_and_python(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    python = ".".join(map(str, sys.version_info[:3]))
    assert out == (
        f"itaclip {metadata.version('itaclip')} (common-kernels "
        f"{metadata.version('common-kernels')}, torch {torch.__version__}, Python {python})\n"
    )
    assert metadata.version("itaclip") == itaclip.__version__


@pytest.mark.parametrize("verbose", [False, True])
def test_library_notices_are_off_unless_verbose(tmp_path, tiny_dir, monkeypatch, caplog, verbose):
    load = Segmenter.load

    def chatty(plan):
        warnings.warn("old argument", FutureWarning, stacklevel=1)
        logging.getLogger("transformers").warning("a tip")
        record = logging.makeLogRecord({
            "name": "root", "levelno": logging.WARNING, "levelname": "WARNING",
            "pathname": open_clip.factory.__file__, "msg": "No pretrained weights loaded",
        })  # fmt: skip
        logging.getLogger().handle(record)  # open_clip logs on the root logger
        return load(plan)

    monkeypatch.setattr(Segmenter, "load", chatty)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    argv = ["segment", str(tmp_path / "x.png"), "--classes", "a,b", "-o", str(tmp_path / "out"),
            "--model", str(tiny_dir), "--stride", "224", "--no-pamr", "-q",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    caplog.set_level(logging.INFO)
    level = logging.getLogger("transformers").level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*argv, *(["--verbose"] if verbose else [])]) == 0
    shown = [str(w.message) for w in caught if w.category is FutureWarning]
    logged = [record.getMessage() for record in caplog.records]
    if verbose:
        assert shown == ["old argument"]
        assert {"a tip", "No pretrained weights loaded"} <= set(logged)
    else:  # open_clip's info lines ("Parsing model identifier ...") are gone too
        assert shown == [] and logged == []
    assert logging.getLogger("transformers").level == level  # restored
    assert logging.getLogger().filters == []


def test_unknown_models_are_refused_at_once_by_the_one_rule(tmp_path, monkeypatch, capsys):
    asked = []
    monkeypatch.setattr("common_kernels.runtime.hub.check_hub", lambda *a, **k: asked.append(a))
    monkeypatch.chdir(tmp_path)
    rule = "a local folder starts with ./ or / (or exists), a hub id is owner/name"
    with pytest.raises(InvalidArgument) as info:
        resolve_model("ViT-Z-99", "openai")
    assert info.value.argument == "model_name"
    assert str(info.value) == (
        f"model_name: unknown model 'ViT-Z-99': known names: {', '.join(supported_models())}; "
        f"{rule}"
    )
    assert {"ViT-B-16-quickgelu", "ViT-L-14", "ViT-B-32"} <= set(supported_models())
    assert not {"RN50", "EVA02-B-16", "ViT-B-16-SigLIP"} & set(supported_models())
    with pytest.raises(InvalidArgument) as info:
        Segmenter.from_pretrained("RN50", "")
    assert str(info.value) == (
        "model_name: 'RN50' is an open_clip model without a ViT image tower (itaclip wraps "
        "open_clip's VisionTransformer); use a ViT, e.g. ViT-B-16-quickgelu"
    )
    with pytest.raises(InvalidArgument) as info:
        AuxTextGenerator.from_pretrained("gpt2")
    assert str(info.value) == f"name: unknown model 'gpt2': {rule}"
    argv = ["aux", "--lm", "gpt2", "--classes", "cat", "-o", "aux.json"]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"itaclip aux: error: --lm: unknown model 'gpt2': {rule}\n"
    assert asked == [] and not (tmp_path / "aux.json").exists()


def test_empty_tensors_get_the_apis_message_naming_the_argument(make_segmenter):
    seg = make_segmenter()
    pixels = "an image needs at least one pixel (height and width >= 1)"
    cases = {
        "tensor": (torch.rand(3, 0, 5), f"image: an empty image of shape (3, 0, 5): {pixels}"),
        "array": (
            np.zeros((0, 4, 3), np.uint8),
            f"image: an empty image of shape (0, 4, 3): {pixels}",
        ),
        "pil": (Image.new("RGB", (0, 7)), f"image: an empty image of shape (7, 0, 3): {pixels}"),
        "batch": (
            torch.rand(0, 3, 8, 8),
            "image: an empty batch of shape (0, 3, 8, 8): give at least one image",
        ),
    }
    for image, message in cases.values():
        with pytest.raises(InvalidArgument) as info:
            seg(image, ["cat", "dog"])
        assert info.value.argument == "image" and str(info.value) == message
    with pytest.raises(InvalidArgument) as info:
        seg.query_logits(torch.rand(3, 0, 64), torch.rand(2, 16))
    assert str(info.value) == f"image: an empty image of shape (3, 0, 64): {pixels}"
    with pytest.raises(InvalidArgument) as info:
        seg.query_logits(torch.rand(3, 64, 64), torch.rand(0, 16))
    assert str(info.value) == (
        "text: query features must be (Q, C) with Q, C >= 1, got shape (0, 16) "
        "(Segmenter.text_features gives them)"
    )


def test_eval_json_never_replaces_a_file_of_the_dataset_or_the_model(
    voc_root, tmp_path, tiny_dir, capsys
):
    model = tmp_path / "model"
    model.mkdir()
    for file in tiny_dir.iterdir():
        (model / file.name).write_bytes(file.read_bytes())
    config = model / "open_clip_config.json"
    before = config.read_bytes()
    dataset = SegmentationDataset("voc21", voc_root)
    plan_source = resolve_model(str(model), None)
    with pytest.raises(InvalidArgument) as info:
        check_report_file(config, dataset, plan_source)
    assert str(info.value) == (
        f"report: {config} would replace the input {config} (a file of the model); choose "
        "another file"
    )
    image = voc_root / "JPEGImages" / "a.jpg"
    with pytest.raises(InvalidArgument, match=r"\(an image of voc21\); choose another file$"):
        check_report_file(image, dataset)
    assert check_report_file(tmp_path / "new" / "r.json", dataset, plan_source) == (
        tmp_path / "new" / "r.json"
    )
    argv = ["eval", "--dataset", "voc21", "--root", str(voc_root), "--model", str(model),
            "--json", str(config)]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"itaclip eval: error: --json: {config} would replace the input {config} (a file of the "
        "model); choose another file\n"
    )
    assert config.read_bytes() == before


def test_aux_output_never_replaces_a_file_of_the_language_model(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    target = lm / "config.json"
    with pytest.raises(InvalidArgument) as info:
        check_aux_output(target, lm)
    assert str(info.value) == (
        f"output: {target} would replace the input {target} (a file of the language model); "
        "choose another file"
    )

    def fail(*args, **kwargs):
        raise AssertionError("the language model was loaded")

    monkeypatch.setattr(AuxTextGenerator, "from_pretrained", fail)
    argv = ["aux", "--lm", str(lm), "--classes", "cat", "-o", str(target)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"itaclip aux: error: -o/--output: {target} would replace the input {target} (a file of "
        "the language model); choose another file\n"
    )
    assert json.loads(target.read_text()) == {"model_type": "gpt2"}
