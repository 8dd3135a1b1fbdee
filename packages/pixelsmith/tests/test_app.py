"""``pixelsmith app``: the page's logic directly, its API through gradio_client, and the page in
Chromium (skipped, saying why, where Chromium or Playwright is absent)."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from common_kernels.runtime import browser
from pixelsmith import PixelsmithConfig, PixelsmithPipeline, generate_cascade
from pixelsmith.app import (
    TINY_CONFIG,
    TINY_DEFAULTS,
    CascadePage,
    PageDefaults,
    build_app,
    choose_model,
    open_page,
)
from pixelsmith.cli import main
from pixelsmith.pipelines.pixelsmith import ddim_from_config
from pixelsmith.sources import RANDOM_WEIGHTS
from pixelsmith.tiny import SDXL_SCHEDULER_CONFIG

SMALL = PixelsmithConfig(patch_size=8, band=2, vae_tile=8, vae_overlap=2)  # conftest's
DEFAULTS = PageDefaults(sizes="64 128", sliders="2", steps=3)
PROMPT = "a cat"
RANDOM_NOTE = (
    "Its weights are random (written by `pixelsmith tiny-model --seed 0`), so its images are noise."
)


@contextlib.contextmanager
def chromium_tab(url: str) -> Iterator[Any]:
    """The page at ``url`` in a 1100x700 Chromium tab."""
    with browser.chromium() as chromium:
        tab = chromium.new_page(viewport={"width": 1100, "height": 700})
        tab.goto(url)
        yield tab


@pytest.fixture(scope="module")
def pipe(components) -> PixelsmithPipeline:
    parts = {**components, "scheduler": ddim_from_config(dict(SDXL_SCHEDULER_CONFIG))}
    pipe = PixelsmithPipeline(**parts, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cascade(pipe, sizes, sliders) -> np.ndarray:
    """The image ``generate_cascade`` makes with the page's settings (seed 0)."""
    image = generate_cascade(
        pipe, PROMPT, sizes, sliders, num_inference_steps=3, seed=0, config=SMALL, progress=False
    )
    return np.asarray(image)


@pytest.fixture(scope="module")
def expected(pipe) -> np.ndarray:
    """The final image of the page's default cascade, 64 then 128 px."""
    return cascade(pipe, [64, 128], [2])


def png_pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_run_shows_each_stage_as_it_finishes_then_writes_the_png(pipe, expected, tmp_path):
    page = CascadePage(pipe, tmp_path, config=SMALL, defaults=DEFAULTS)
    updates = list(page.run(PROMPT, "64, 128", "2", 3, 7.5, 0))
    assert [[label for _, label in shown] for shown, _ in updates] == [
        ["stage 0: 64x64"],
        ["stage 0: 64x64", "final: 128x128"],
    ]
    first = str(tmp_path / "pixelsmith_0001.png")
    assert [path for _, path in updates] == [None, first]
    (stage, _), (final, _) = updates[-1][0]
    plain = cascade(pipe, [64], [])  # the first stage is plain SDXL
    assert np.array_equal(np.asarray(stage), plain)
    assert np.array_equal(np.asarray(final), expected)
    assert np.array_equal(png_pixels(first), expected)  # lossless
    ((shown, second),) = page.run(PROMPT, "64", "", 3, 7.5, 0)  # one stage: the final image
    assert shown[0][1] == "final: 64x64" and np.array_equal(png_pixels(second), plain)
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(p).name for p in (first, second)]


@pytest.mark.parametrize(
    ("sizes", "sliders", "steps", "message"),
    [
        ("60 128", "2", 3, "sizes[0] must be multiples of the VAE scale factor 8, got 60x60"),
        ("", "", 3, "sizes must be a non-empty list of stage sizes, got []"),
        ("64 128", "9", 3, "sliders[0] must be an int in [1, 3], got 9"),
        ("64 128", "2", 0, "num_inference_steps must be an int in [1, 1000] (the scheduler's"),
    ],
)
def test_bad_input_gets_the_api_message_and_writes_nothing(
    pipe, tmp_path, sizes, sliders, steps, message
):
    page = CascadePage(pipe, tmp_path, config=SMALL, defaults=DEFAULTS)
    with pytest.raises(ValueError) as caught:
        next(page.run(PROMPT, sizes, sliders, steps, 7.5, 0))
    assert str(caught.value).startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_offline_it_runs_the_tiny_model_and_names_the_hub_models(monkeypatch, tmp_path, tiny_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))  # SDXL is not cached
    plan, note = choose_model(tiny_dir)
    assert plan.model == tiny_dir and note == f"Model: `{tiny_dir}`. {RANDOM_NOTE}"
    page = open_page(tmp_path / "out")
    assert page.note.startswith("Offline (cannot load the model stabilityai/stable-diffusion-xl")
    assert page.note.endswith(
        "with the hub in reach it runs `stabilityai/stable-diffusion-xl-base-1.0` with the VAE "
        "`madebyollin/sdxl-vae-fp16-fix`."
    )
    assert (page.defaults, page.config) == (TINY_DEFAULTS, TINY_CONFIG)
    plan = page.plan(TINY_DEFAULTS.sizes, TINY_DEFAULTS.sliders, TINY_DEFAULTS.steps, 7.5, 0)
    assert plan.sizes == [(128, 128), (256, 256)] and (tmp_path / "out").is_dir()


def test_only_a_folder_marked_random_is_called_random(tmp_path, tiny_dir):
    """The note comes from the entry ``pixelsmith tiny-model`` writes in model_index.json (the
    weights alone cannot tell): the same folder without it is named plainly."""
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index[RANDOM_WEIGHTS] == {"writer": "pixelsmith tiny-model", "seed": 0}
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    del index[RANDOM_WEIGHTS]
    (copy / "model_index.json").write_text(json.dumps(index))
    assert choose_model(copy)[1] == f"Model: `{copy}`."
    assert choose_model(tiny_dir, vae=copy / "vae")[1] == (
        f"Model: `{tiny_dir}` with the VAE `{copy / 'vae'}`. {RANDOM_NOTE}"
    )


def test_page_in_chromium_says_its_model_is_random(tmp_path, tiny_dir):
    page = open_page(tmp_path / "out", model=tiny_dir, device="cpu")
    with browser.serve_app(build_app(page)) as url, chromium_tab(url) as tab:
        shown = tab.locator("p", has_text="Its weights are random").first
        assert shown.inner_text() == f"Model: {tiny_dir}. {RANDOM_NOTE.replace('`', '')}"


def test_cli_app_refuses_a_bad_option_before_any_model_loads(capsys, tmp_path, no_model_load):
    assert main(["app", "--model", str(tmp_path / "none"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pixelsmith app: error: --model: no model folder {tmp_path / 'none'}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--port", "0"], "--port: must be in [1, 65535], got 0"),
        (["--device", "tpu"], "--device tpu: expected cpu, cuda, cuda:N or mps (available: cpu"),
        (["--vae", "./nope"], "--vae: no VAE folder ./nope (nothing at "),  # without --model
    ],
)
def test_cli_app_checks_port_and_device_before_any_model_loads(
    capsys, tmp_path, no_model_load, options, message
):
    if options[0] == "--device" and torch.cuda.is_available():
        pytest.skip("the message lists this machine's CUDA devices")
    assert main(["app", "-o", str(tmp_path / "out"), *options]) == 2
    assert capsys.readouterr().err.startswith(f"pixelsmith app: error: {message}")
    assert not (tmp_path / "out").exists()


def test_open_page_names_its_own_arguments(tmp_path, no_model_load):
    from common_kernels.runtime.errors import InvalidArgument

    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgument) as caught:
        open_page(tmp_path / "file" / "out")
    assert caught.value.argument == "output_dir"
    with pytest.raises(InvalidArgument) as caught:
        open_page(tmp_path / "out", device="tpu")
    assert caught.value.argument == "device" and str(caught.value).startswith("device tpu:")


def test_cli_app_serves_the_page_and_its_folder(monkeypatch, tmp_path, tiny_dir):
    served = {}
    monkeypatch.setattr(
        "pixelsmith.app.launch_blocks", lambda blocks, **options: served.update(options)
    )
    argv = ["app", "--model", str(tiny_dir), "-o", str(tmp_path / "out"), "--port", "7999"]
    assert main(argv) == 0
    assert served == {
        "host": "127.0.0.1", "port": 7999, "share": False, "allowed_paths": [tmp_path / "out"]
    }  # fmt: skip


@pytest.fixture(scope="module")
def served(pipe, tmp_path_factory):
    """(URL, output folder) of the page over the tiny pipeline."""
    folder = tmp_path_factory.mktemp("app_out")
    page = CascadePage(pipe, folder, config=SMALL, defaults=DEFAULTS)
    with browser.serve_app(build_app(page), allowed_paths=[folder]) as url:
        yield url, folder


def test_gradio_client_runs_the_page_api(served, expected, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client

    url, _ = served
    client = Client(url, verbose=False)
    job = client.submit(PROMPT, "64 128", "2", 3, 7.5, 0, "", api_name="/generate")
    stages, final = job.result()
    assert [item["caption"] for item in stages] == ["stage 0: 64x64", "final: 128x128"]
    assert np.array_equal(png_pixels(final), expected)
    first, _ = job.outputs()[0]  # the stage came before the final image
    assert [item["caption"] for item in first] == ["stage 0: 64x64"]


def test_page_in_chromium_generates_and_shows_the_api_message(served, expected):
    url, folder = served
    with chromium_tab(url) as tab:
        tab.locator("#prompt textarea").fill(PROMPT)
        tab.get_by_role("button", name="generate", exact=True).click()
        tab.locator("#final a").first.wait_for()
        shown = browser.page_image(tab, "#stages", index=1)
        assert np.array_equal(np.asarray(shown.convert("RGB")), expected)
        assert tab.locator("#stages").get_by_text("final: 128x128").count() >= 1
        browser.keep_screenshot(tab, "pixelsmith-app")
        written = sorted(folder.iterdir())
        tab.locator("#sizes textarea").fill("60 128")
        tab.get_by_role("button", name="generate", exact=True).click()
        message = "sizes[0] must be multiples of the VAE scale factor 8, got 60x60"
        assert browser.page_error(tab) == message
        assert sorted(folder.iterdir()) == written  # nothing more was written
