"""The Gradio app in Debian's Chromium: a message and an image typed in and sent, the answer,
the user's image in the conversation and the restored image checked as the page shows them, and
the page's notice that its model is random (skipped, saying why, without Chromium)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from common_kernels.runtime.browser import chromium, keep_screenshot, page_image, serve_app
from vitron import Assistant, SpecialistRegistry
from vitron.app import RANDOM_NOTE, ChatSession, build_app

RESTORE = {"version": 1, "calls": [
    {"id": "fix", "task": "restore_image", "args": {"image": "$image0"}}]}  # fmt: skip
GALLERY = ".block:has-text('images written by the specialists')"


@pytest.fixture(scope="module")
def served(model, specialist_options, tmp_path_factory):
    """(page URL, browser, output folder) of one conversation scripted to restore its image."""
    output = tmp_path_factory.mktemp("app")
    reply = f"Restoring it. <invoke>{json.dumps(RESTORE)}</invoke><signal></s>"
    assistant = Assistant(
        model, SpecialistRegistry(specialist_options), output, scripted_replies=(reply,),
        max_new_tokens=4,
    )  # fmt: skip
    with chromium() as browser, serve_app(build_app(ChatSession(assistant, output))) as url:
        yield url, browser, output


def test_a_sent_message_shows_the_answer_and_the_restored_image(served, image, tmp_path):
    url, browser, output = served
    upload = tmp_path / "photo.png"
    image.save(upload)
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(url)
    page.get_by_role("textbox", name="message").fill("clean this photo")
    page.locator(".block:has-text('joins your next message') input[type=file]").set_input_files(
        str(upload)
    )
    page.locator(".block:has-text('joins your next message') img").wait_for()
    page.get_by_role("button", name="send", exact=True).click()
    shown = page_image(page, GALLERY)
    # the conversation shows the image the user attached, pixel for pixel, before the message
    attached = page_image(page, "[data-testid='user']")
    assert attached.size == image.size
    assert np.array_equal(np.asarray(attached.convert("RGB")), np.asarray(image.convert("RGB")))
    assert page.locator("[data-testid='user']").nth(1).inner_text().strip() == "clean this photo"
    answer = page.locator("[data-testid='bot']").first
    assert (
        answer.inner_text()
        .splitlines()[-1]
        .startswith("fix restore_image: restored the 64x48 image to 64x48 (mean change ")
    )
    with Image.open(output / "fix_image.png") as written:
        assert shown.size == written.size == image.size
        assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(written))
    assert page.get_by_role("textbox", name="message").input_value() == ""  # the inputs are cleared
    # the tiny model's weights are random, and the page says so
    notice = RANDOM_NOTE.replace("**", "").replace("`", "")
    assert notice in " ".join(page.locator("body").inner_text().split())
    keep_screenshot(page, "vitron-app")
