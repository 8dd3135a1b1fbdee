"""``diffeat app``: the page's logic directly, its API through gradio_client, and the page in
Chromium (skipped, saying why, where Chromium or Playwright is absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from common_kernels.runtime import browser
from diffeat import FeatureExtractor
from diffeat.app import HUB_MODEL, PcaPage, build_app, choose_model, open_page
from diffeat.cli import main
from diffeat.configs import RANDOM_WEIGHTS
from diffeat.viz import pca_rgb

SIZE = 128  # the tiny SD 1.5 model's features are 8x8 at 128 px (16x16 latents)
LAYERS = ["up-level1-repeat1-vit-block0-cross-q", "down-level0-repeat0-res-out"]


@pytest.fixture(scope="module")
def page(pipes) -> PcaPage:
    extractor = FeatureExtractor.from_pipeline(pipes["sd15"], image_size=SIZE, output_device="cpu")
    return PcaPage(extractor, "Model: the tiny test model.")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> tuple[Image.Image, str]:
    """A smooth 96x160 colour image (fed at 128x128) and its PNG file."""
    ys, xs = np.mgrid[0:96, 0:160]
    rgb = np.stack([xs * 255 // 159, ys * 255 // 95, (xs + ys) % 256], -1).astype(np.uint8)
    path = tmp_path_factory.mktemp("upload") / "photo.png"
    Image.fromarray(rgb).save(path)
    return Image.fromarray(rgb), str(path)


def expected(page: PcaPage, image: Image.Image, name: str) -> np.ndarray:
    """What the page shows for ``name``: ``diffeat pca``'s colouring of the layer."""
    feature = page.extractor(image.convert("RGB"), "", layers=[name])[name]
    return pca_rgb(feature, (SIZE, SIZE))[0]


def test_run_shows_the_pca_of_each_layer_labelled(page, photo):
    shown = page.run(photo[0], LAYERS)
    assert [label for _, label in shown] == [
        "up-level1-repeat1-vit-block0-cross-q: 16 channels at 4x4",
        "down-level0-repeat0-res-out: 8 channels at 16x16",
    ]
    for (image, _), name in zip(shown, LAYERS, strict=True):
        assert image.size == (SIZE, SIZE) and image.mode == "RGB"
        assert np.array_equal(np.asarray(image), expected(page, photo[0], name))
    assert len(np.unique(np.asarray(shown[1][0]).reshape(-1, 3), axis=0)) > 16  # not flat


def test_choices_are_the_catalogue_and_the_selection_is_the_models(page):
    assert page.choices[:2] == ["vae-out", "unet-in"] and len(page.choices) == 198
    assert page.default_layers == list(page.extractor.layers[:2])


@pytest.mark.parametrize(
    ("image", "layers", "message"),
    [
        (None, LAYERS, "image: no image given: upload one"),
        ("photo", [], "layers: empty; request at least one activation name"),
        ("photo", ["up-level9"], "unknown activation name(s) for this U-Net: 'up-level9'"),
    ],
)
def test_bad_input_gets_the_api_message(page, photo, image, layers, message):
    with pytest.raises(ValueError) as caught:
        page.run(photo[0] if image else None, layers)
    assert str(caught.value).startswith(message)


def test_offline_it_runs_the_tiny_model_and_names_the_hub_model(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # SD 1.5 is not cached
    assert choose_model("./my-model") == ("./my-model", "Model: `./my-model`.")
    opened = open_page(image_size=64)
    assert opened.note.startswith(f"Offline ({HUB_MODEL} is not in the local hub cache")
    assert opened.note.endswith(f"with the hub in reach it runs `{HUB_MODEL}`.")
    assert opened.extractor.config.image_size == (64, 64) and len(opened.choices) == 198
    assert [label for _, label in opened.run(Image.new("RGB", (64, 64)), ["unet-in"])] == [
        "unet-in: 4 channels at 8x8"
    ]


RANDOM_NOTE = (
    "Its weights are random (written by `diffeat tiny-model --kind sd15 --seed 0`), so its "
    "features are noise."
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A folder written by ``diffeat tiny-model`` (marked random in its model_index.json)."""
    folder = tmp_path_factory.mktemp("tiny") / "sd15"
    assert main(["tiny-model", str(folder), "--kind", "sd15"]) == 0
    return folder


def test_only_a_folder_marked_random_is_called_random(tiny_dir, model_dirs):
    """The note comes from the entry ``diffeat tiny-model`` writes in model_index.json (the
    weights alone cannot tell): a folder saved without it is named plainly."""
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index[RANDOM_WEIGHTS] == {"writer": "diffeat tiny-model --kind sd15", "seed": 0}
    assert choose_model(tiny_dir) == (tiny_dir, f"Model: `{tiny_dir}`. {RANDOM_NOTE}")
    assert choose_model(model_dirs["sd15"])[1] == f"Model: `{model_dirs['sd15']}`."


def test_page_in_chromium_says_its_model_is_random(tiny_dir):
    page = open_page(tiny_dir, image_size=64, device="cpu")
    with browser.serve_app(build_app(page)) as address, browser.chromium() as chromium:
        tab = chromium.new_page(viewport={"width": 1100, "height": 640})
        tab.goto(address)
        shown = tab.locator("p", has_text="Its weights are random").first
        assert shown.inner_text() == f"Model: {tiny_dir}. {RANDOM_NOTE.replace('`', '')}"


def test_cli_app_refuses_a_bad_option_before_any_model_loads(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(FeatureExtractor, "from_plan", pytest.fail)
    assert main(["app", "--model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffeat app: error: --model: no model folder {tmp_path / 'none'}")


def test_cli_app_checks_the_port_before_any_model_loads(capsys, monkeypatch):
    monkeypatch.setattr(FeatureExtractor, "from_plan", pytest.fail)
    monkeypatch.setattr(FeatureExtractor, "from_pipeline", pytest.fail)
    assert main(["app", "--port", "0"]) == 2
    assert capsys.readouterr().err == "diffeat app: error: --port: must be in [1, 65535], got 0\n"


def test_cli_app_serves_the_page(monkeypatch, model_dirs):
    served = {}
    monkeypatch.setattr(
        "diffeat.app.launch_blocks", lambda blocks, **options: served.update(options)
    )
    argv = ["app", "--model", str(model_dirs["sd15"]), "--image-size", "64", "--port", "7999"]
    assert main(argv) == 0
    assert served == {"host": "127.0.0.1", "port": 7999, "share": False}


@pytest.fixture(scope="module")
def url(page):
    with browser.serve_app(build_app(page)) as address:
        yield address


def test_gradio_client_runs_the_page_api(url, page, photo, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    gallery = client.predict(handle_file(photo[1]), LAYERS[:1], "", api_name="/pca")
    (item,) = gallery
    assert item["caption"] == "up-level1-repeat1-vit-block0-cross-q: 16 channels at 4x4"
    served = item["image"]  # a path (gradio 6) or a file dict (gradio 5)
    with Image.open(served["path"] if isinstance(served, dict) else served) as got:
        assert np.array_equal(np.asarray(got.convert("RGB")), expected(page, photo[0], LAYERS[0]))


def test_page_in_chromium_shows_the_pca_and_the_api_message(url, page, photo):
    with browser.chromium() as chromium:
        tab = chromium.new_page(viewport={"width": 1100, "height": 640})
        tab.goto(url)
        tab.locator("#image input[type=file]").set_input_files(photo[1])
        tab.locator("#image img").first.wait_for()
        tab.get_by_role("button", name="show", exact=True).click()
        shown = browser.page_image(tab, "#pca")
        first = page.default_layers[0]
        assert np.array_equal(np.asarray(shown.convert("RGB")), expected(page, photo[0], first))
        tab.locator("#pca").get_by_text(first).first.wait_for()
        browser.keep_screenshot(tab, "diffeat-app")
        tab.locator("#layers [title='Clear']").click()  # no activation selected
        tab.get_by_role("button", name="show", exact=True).click()
        assert browser.page_error(tab) == "layers: empty; request at least one activation name"
