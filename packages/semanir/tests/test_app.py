"""``semanir app``: the page's logic without a browser, its API through ``gradio_client``, and
the page in Debian's Chromium (skipped, saying why, without it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from common_kernels.runtime import browser as web
from common_kernels.runtime.photos import read_photo
from common_kernels.runtime.testing import refusal
from semanir import load_model, psnr
from semanir.app import AUTO, RestoreApp, build_app
from semanir.batch import restore_photo
from semanir.cli import main
from semanir.io import to_uint8_array


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A 16-bit gray 48x64 noisy photo, its clean original and a colour 40x40 photo."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    clean = np.tile(np.linspace(0, 65535, 64), (48, 1))
    noisy = clean + rng.normal(0, 25 * 257, clean.shape)
    Image.fromarray(clean.astype(np.uint16)).save(folder / "clean.png")
    Image.fromarray(noisy.clip(0, 65535).astype(np.uint16)).save(folder / "noisy.png")
    colour = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(colour).save(folder / "colour.png")
    return folder


@pytest.fixture
def app(tmp_path):
    return RestoreApp(tmp_path / "out", device=torch.device("cpu"))


def test_restore_writes_the_full_bit_depth_result_with_psnr_and_tile_progress(app, photos):
    tiles = []
    done = app.restore(
        photos / "noisy.png", "denoise", AUTO, photos / "clean.png", tile=32,
        on_tiles=lambda *report: tiles.append(report),
    )  # fmt: skip
    assert done.model == "semanir_tiny_denoise_gray"
    assert done.path == app.output / "001_noisy_denoise.png"
    assert tiles == [(i, 6) for i in range(7)]  # 6 tiles of 32 px (overlap 8) on 48x64
    written = read_photo(done.path)
    expected = restore_photo(
        load_model("semanir_tiny_denoise_gray"), read_photo(photos / "noisy.png"), tile=32,
        tile_overlap=8,
    )  # fmt: skip
    assert written.bit_depth == 16 and written.size == (48, 64)
    assert torch.allclose(written.pixels, expected.pixels, atol=0.5 / 65535)
    clean = read_photo(photos / "clean.png").pixels
    assert done.psnr == pytest.approx(float(psnr(written.pixels, clean)), abs=1e-3)
    assert done.psnr > float(psnr(read_photo(photos / "noisy.png").pixels, clean)) + 3
    assert done.after.shape == (48, 64) and done.after.dtype == np.uint8
    assert done.summary() == (
        f"64x48 -> 64x48 px with `semanir_tiny_denoise_gray`, PSNR {done.psnr:.2f} dB against "
        f"the reference; written to `{done.path}`"
    )


def test_sr_upscales_a_colour_photo_without_a_reference(app, photos):
    done = app.restore(photos / "colour.png", "sr", AUTO, None, tile=0)
    assert (done.model, done.psnr) == ("semanir_tiny_sr_x4", None)
    assert done.before.shape == (40, 40, 3) and done.after.shape == (160, 160, 3)
    assert read_photo(done.path).size == (160, 160)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"image": None}, "image: none given: upload an image to restore"),
        ({"task": "demosaic"}, "task: must be one of denoise, jpeg, sr, got 'demosaic'"),
        ({"reference": "colour.png"},
         "reference: is 40x40 px; a clean reference has the restored image's size, 64x48 px"),
        ({"model": "semanir_tiny_sr_x4"},
         "the model upscales x4, which does not fit task='denoise'"),
        ({"model": "someone/else"},
         "model: must be one of auto, semanir_tiny_denoise_gray, semanir_tiny_denoise_color, "
         "got 'someone/else'"),
        ({"tile": 4},
         "tile: must be an int >= the model's window size 8 (pixels), got 4"),
    ],
)  # fmt: skip
def test_a_bad_input_says_so_in_one_line_and_writes_nothing(app, photos, inputs, message):
    from common_kernels.runtime.app import error_text

    arguments = {"image": photos / "noisy.png", "task": "denoise", "model": AUTO,
                 "reference": None, "tile": 32, **inputs}  # fmt: skip
    if isinstance(arguments["reference"], str):
        arguments["reference"] = photos / arguments["reference"]
    with pytest.raises(ValueError) as caught:
        app.restore(**arguments)
    assert error_text(caught.value) == message
    assert not app.output.exists() and app.loaded == {}


def test_offline_the_page_offers_the_bundled_models_and_names_the_hub_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    app = RestoreApp(tmp_path / "out", models=["someone/semanir-large"])
    assert app.model_names("jpeg") == [AUTO, "semanir_tiny_jpeg_gray"]
    note = app.note().split("\n\n")
    assert note[0] == (
        "Models: the bundled `semanir_tiny_denoise_gray`, `semanir_tiny_jpeg_gray`, "
        "`semanir_tiny_denoise_color`, `semanir_tiny_sr_x4`."
    )
    assert note[1].startswith("Not offered: the hub model `someone/semanir-large` (someone/")
    assert "HF_HUB_OFFLINE is set" in note[1]


def test_the_command_refuses_a_bad_port(tmp_path):
    line = refusal(main, ["app", "-o", str(tmp_path / "out"), "--port", "70000"])
    assert line.rstrip() == "semanir app: error: --port: must be in [1, 65535], got 70000"
    assert not (tmp_path / "out").exists()


def test_the_command_refuses_an_output_file(tmp_path):
    (tmp_path / "taken").write_text("")
    line = refusal(main, ["app", "-o", str(tmp_path / "taken")])
    assert (
        line.rstrip("\n")
        == f"semanir app: error: -o/--output {tmp_path / 'taken'} is a file, not a folder"
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(URL, app) of one page, shared by the API and browser tests."""
    output = tmp_path_factory.mktemp("served") / "out"
    app = RestoreApp(output, device=torch.device("cpu"))
    with web.serve_app(build_app(app), allowed_paths=[output.parent]) as url:
        yield url, app


def test_the_api_restores_through_gradio_client(served, photos):
    from gradio_client import Client, handle_file

    url, _ = served
    client = Client(url, verbose=False)
    _, after, download, summary = client.predict(
        handle_file(str(photos / "noisy.png")), "denoise", AUTO,
        handle_file(str(photos / "clean.png")), 32, api_name="/restore",
    )  # fmt: skip
    written = read_photo(download)
    assert written.bit_depth == 16 and written.size == (48, 64)
    with Image.open(after) as shown:  # 8-bit for the page, from the 16-bit result
        difference = np.asarray(shown).astype(int) - to_uint8_array(written.pixels)
        assert np.abs(difference).max() <= 1
    assert "PSNR" in summary and summary.startswith("64x48 -> 64x48 px")


@pytest.fixture(scope="module")
def browser():
    with web.chromium() as launched:
        yield launched


def test_the_page_restores_an_upload_and_shows_it(served, browser, photos):
    url, app = served
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(url)
    page.get_by_role("button", name="restore", exact=True).click()
    assert web.page_error(page) == "image: none given: upload an image to restore"
    page.get_by_test_id("toast-close").click()
    for name, upload in (("image", "noisy.png"), ("reference", "clean.png")):
        page.locator(f"#{name} input[type=file]").set_input_files(str(photos / upload))
        page.locator(f"#{name} img").wait_for()
    page.get_by_role("button", name="restore", exact=True).click()
    shown = web.page_image(page, "#after")
    summary = page.locator("#summary").get_by_text("written to")
    summary.wait_for()
    written = read_photo(sorted(app.output.glob("*_noisy_denoise.png"))[-1])
    assert shown.size == (64, 48) and written.size == (48, 64)
    difference = np.asarray(shown.convert("L")).astype(int) - to_uint8_array(written.pixels)
    assert np.abs(difference).max() <= 1  # 8-bit on the page, 16-bit in the file
    assert "dB against the reference" in summary.inner_text()
    assert web.page_image(page, "#before").size == (64, 48)
    web.keep_screenshot(page, "semanir-app")
