"""``itaclip app``: the page's logic without a browser, its API through ``gradio_client``, and
the page in Debian's Chromium (skipped, saying why, without it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from common_kernels.runtime.app import error_text
from common_kernels.runtime.browser import (
    chromium,
    keep_screenshot,
    page_error,
    page_image,
    serve_app,
)
from common_kernels.runtime.testing import refusal
from itaclip import Segmenter, SegmenterConfig
from itaclip.app import CUSTOM, TINY_SETTINGS, SegmentApp, build_app, open_app
from itaclip.cli import main
from itaclip.io import to_rgb_tensor
from itaclip.viz import overlay, palette

FAST = {"short_side": None, "crop": 64, "stride": 32, "batch_size": 8}  # the 64 px test model
NOTE = "Model: a tiny random open_clip ViT (the tests' own): its masks are noise."


@pytest.fixture(scope="module")
def app(tiny_clip, tiny_tokenizer) -> SegmentApp:
    return SegmentApp(Segmenter(tiny_clip, tiny_tokenizer, SegmenterConfig()), NOTE, FAST)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 48x80 RGB noise photo."""
    path = tmp_path_factory.mktemp("photos") / "photo.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_overlay_legend_and_shares_of_named_classes(app, photo):
    done = app.segment(photo, "cat, dog|puppy, sky")
    rgb = to_rgb_tensor(Image.open(photo))
    expected = app.segmenter(rgb, [["cat"], ["dog", "puppy"], ["sky"]])
    assert torch.equal(done.labels, expected.labels)
    assert np.array_equal(
        done.overlay, np.asarray(overlay(rgb, expected.labels, expected.class_names))
    )
    counts = torch.bincount(expected.labels.flatten(), minlength=3)
    assert [s.name for s in done.shares] == [
        ["cat", "dog", "sky"][i] for i in counts.argsort(descending=True) if counts[i] > 0
    ]
    assert sum(s.share for s in done.shares) == pytest.approx(1.0)
    colours = palette(3)
    for share in done.shares:
        index = ["cat", "dog", "sky"].index(share.name)
        assert share.colour == "#{:02x}{:02x}{:02x}".format(*colours[index])
        assert share.share == pytest.approx(float(counts[index]) / (48 * 80))
        assert f"<td>{share.name}</td><td>{100 * share.share:.1f}%</td>" in done.table()


def test_a_preset_brings_its_classes_and_background(app, photo):
    done = app.segment(photo, "ignored", "voc21")
    assert done.overlay.shape[0] >= 48 and done.labels.shape == (48, 80)
    assert {s.name for s in done.shares} <= {"background", "aeroplane", "bicycle", "bird",
        "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table", "dog", "horse",
        "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor"}  # fmt: skip
    assert int(done.labels.max()) < 21


@pytest.mark.parametrize(
    ("image", "classes", "preset", "message"),
    [
        (None, "cat", CUSTOM, "image: none given: upload an image to segment"),
        ("photo", "  ", CUSTOM, "classes: none given: name them, e.g. cat, dog, sky"),
        ("photo", "cat,,dog", CUSTOM, "classes 'cat,,dog': class 1 (['']) has an empty name"),
        ("photo", "cat", "voc99", "preset: must be one of (your classes), coco_stuff, "
         "coco_object, voc21, context60, cityscapes, voc20, context59, ade20k, got 'voc99'"),
        ("missing", "cat", CUSTOM, "FILE does not exist"),
    ],
)  # fmt: skip
def test_a_bad_input_says_so_in_one_line(app, photo, image, classes, preset, message):
    path = {"photo": photo, "missing": photo.parent / "missing.png", None: None}[image]
    with pytest.raises((ValueError, OSError)) as caught:
        app.segment(path, classes, preset)
    assert error_text(caught.value) == message.replace("FILE", str(path))


def test_offline_the_app_runs_the_tiny_model_and_names_the_hub_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    offline = open_app(device="cpu")
    assert offline.note.startswith(
        "Offline: the hub model open_clip ViT-B-16-quickgelu (pretrained 'openai') cannot be "
        "loaded now (cannot load ViT-B-16-quickgelu (pretrained 'openai'): "
        "timm/vit_base_patch16_clip_224.openai is not in the local hub cache"
    )
    assert offline.note.endswith("Running the tiny random model instead: its masks are noise.")
    assert offline.settings == TINY_SETTINGS
    assert offline.segmenter.encoder.visual.conv1.weight.shape[0] == 32  # the tiny tower


def test_the_command_refuses_a_bad_device_or_port():
    line = refusal(main, ["app", "--device", "tpu"])
    assert line.startswith("itaclip app: error: --device tpu: expected cpu, cuda, cuda:N or mps")
    line = refusal(main, ["app", "--port", "0"])
    assert line.rstrip() == "itaclip app: error: --port: must be in [1, 65535], got 0"


@pytest.fixture(scope="module")
def served(app):
    with serve_app(build_app(app)) as url:
        yield url


def test_the_api_segments_through_gradio_client(served, app, photo):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    painted, table = client.predict(
        handle_file(str(photo)), "cat, dog, sky", CUSTOM, api_name="/segment"
    )
    expected = app.segment(photo, "cat, dog, sky")
    with Image.open(painted) as shown:
        assert np.array_equal(np.asarray(shown.convert("RGB")), expected.overlay)
    assert table == expected.table()


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def test_the_page_segments_an_upload_and_shows_the_overlay(served, browser, app, photo):
    page = browser.new_page(viewport={"width": 1200, "height": 760})
    page.goto(served)
    page.get_by_role("button", name="segment", exact=True).click()
    assert page_error(page) == "image: none given: upload an image to segment"
    page.get_by_test_id("toast-close").click()
    page.locator("#image input[type=file]").set_input_files(str(photo))
    page.locator("#image img").wait_for()
    page.get_by_role("textbox", name="classes").fill("cat, dog, sky")
    page.get_by_role("button", name="segment", exact=True).click()
    shown = page_image(page, "#overlay")
    expected = app.segment(photo, "cat, dog, sky")
    assert np.array_equal(np.asarray(shown.convert("RGB")), expected.overlay)
    rows = page.locator("#shares tr")
    rows.nth(len(expected.shares)).wait_for()
    first = expected.shares[0]
    assert rows.nth(1).inner_text().split() == [first.name, f"{100 * first.share:.1f}%"]
    keep_screenshot(page, "itaclip-app")
