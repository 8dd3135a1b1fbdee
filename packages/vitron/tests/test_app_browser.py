"""The Gradio app in Debian's Chromium (skipped, saying why, without it): a message and a real
photo typed in and sent, the planner's calls run, and what the page then shows checked as it
shows it: the photo in the conversation, the planner's reply growing while it is generated, the
answer's call line, the restored image in the conversation and the gallery (pixel for pixel
against the file written), and the page's note on its model.

The photo is a BSDS500 image from the repository's shared data folder (``$VITRON_DATA`` or
``../shared/data``; its README), made small at test time so that the bundled restorer takes a
second; without the folder, a generated landscape (the docs' screenshot is made so:
``VITRON_DATA=/none SCREENSHOT_DIR=packages/vitron/docs RUN_SLOW=1``)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common_kernels.runtime.browser import chromium, keep_screenshot, page_image, serve_app
from vitron import Assistant, SpecialistRegistry
from vitron.app import RANDOM_NOTE, ChatSession, build_app, served_folders
from vitron.specialists.restoration import SemanirRestorer

DATA = Path(
    os.environ.get("VITRON_DATA", Path(__file__).resolve().parents[3].parent / "shared/data")
)
PHOTO = "bsds400/100075.jpg"  # two bears at a river (BSDS500, train split)
PHOTO_SIZE = (72, 48)  # a sixth of 481x321: the restore takes a second on a CPU
RESTORE = {"version": 1, "calls": [
    {"id": "c0", "task": "restore_image", "args": {"image": "$image0"}}]}  # fmt: skip
GALLERY = ".block:has-text('images written by the specialists')"
UPLOAD = ".block:has-text('joins your next message')"
# every text the assistant's chat messages take, recorded as the page changes them
RECORD_BOT_TEXTS = """() => {
  window.botTexts = [];
  new MutationObserver(() => {
    for (const el of document.querySelectorAll("[data-testid='bot']"))
      window.botTexts.push(el.innerText);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


WRITING = """() => [...document.querySelectorAll("[data-testid='bot']")]
  .some(el => el.innerText.includes('{"version": 1, "calls": [{"id": "c0", "task": "'))"""


@pytest.fixture(scope="module")
def browser():
    with chromium() as opened:
        yield opened


@pytest.fixture
def photo(tmp_path) -> Path:
    """A real photo, copied small into the test's folder (the data never enters the repo); a
    generated landscape of the same size where the data folder is absent."""
    source = DATA / PHOTO
    if not source.is_file():
        generated_landscape(PHOTO_SIZE).save(tmp_path / "landscape.png")
        return tmp_path / "landscape.png"
    with Image.open(source) as image:
        small = image.convert("RGB").resize(PHOTO_SIZE, Image.Resampling.LANCZOS)
    small.save(tmp_path / "bears.png")
    return tmp_path / "bears.png"


def generated_landscape(size: tuple[int, int]) -> Image.Image:
    """A photo-like RGB image (sky, sun, two hills, grain), seeded: smooth regions and edges,
    as a photo has, where noise has none."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(size)  # (H, W) each
    sky = np.stack([0.45 + 0.3 * y, 0.65 + 0.2 * y, 0.95 - 0.1 * y], -1)  # (H, W, 3)
    sun = (x - 0.75) ** 2 + (y - 0.15) ** 2 < 0.01
    sky[sun] = (1.0, 0.9, 0.55)
    far = y > 0.35 + 0.06 * np.sin(9 * x)
    near = y > 0.48 + 0.05 * np.cos(6 * x + 1)
    sky[far] = (0.35, 0.5, 0.35)
    sky[near] = np.stack([0.25 + 0.2 * y, 0.45 + 0.1 * y, 0.15 + 0.0 * y], -1)[near]
    grain = np.random.default_rng(0).normal(0, 0.02, sky.shape)
    return Image.fromarray(np.uint8(np.clip(sky + grain, 0, 1) * 255 + 0.5))


def send(page, text: str, upload: Path) -> None:
    """Type ``text``, attach ``upload`` and send them."""
    page.get_by_role("textbox", name="message").fill(text)
    page.locator(f"{UPLOAD} input[type=file]").set_input_files(str(upload))
    page.locator(f"{UPLOAD} img").wait_for()
    page.get_by_role("button", name="send", exact=True).click()


def pixels(image: Image.Image | Path) -> np.ndarray:
    with Image.open(image) if isinstance(image, Path) else image as opened:
        return np.asarray(opened.convert("RGB"))


def check_the_conversation(page, photo: Path, restored: Path) -> str:
    """The photo and the restored image as the page shows them, in the conversation and the
    gallery, equal to the files; returns the answer's text."""
    shown = page_image(page, GALLERY)
    assert np.array_equal(pixels(shown), pixels(restored))
    assert np.array_equal(pixels(page_image(page, "[data-testid='user']")), pixels(photo))
    assert np.array_equal(pixels(page_image(page, "[data-testid='bot']")), pixels(restored))
    assert page.locator("[data-testid='user']").nth(1).inner_text().strip() == "clean this photo"
    assert page.get_by_role("textbox", name="message").input_value() == ""  # inputs cleared
    return page.locator("[data-testid='bot']").first.inner_text()


def restore_line(size: tuple[int, int]) -> str:
    return f"c0 restore_image: restored the {size[0]}x{size[1]} image to {size[0]}x{size[1]} "


def planner_assistant(planner, output: Path, **options) -> object:
    from vitron.planners import GrammarLimits, PlannerAssistant

    registry = SpecialistRegistry(adapters=(SemanirRestorer,))
    limits = GrammarLimits(max_calls=1, max_answer=16, optional_args=False)
    return PlannerAssistant(planner, registry, output, limits=limits, **options)


@pytest.mark.slow  # 10-30 s here: a planner's replies, the restore, the page
def test_without_a_real_planner_the_page_says_what_to_get_and_runs_a_fixed_reply(
    browser, photo, tmp_path, monkeypatch
):
    """What ``vitron app`` serves here (no hub model in the cache): the default planner's note
    names the hub model and the command; the tiny random planner's first reply is fixed (as
    ``--reply-file`` fixes it), so the bundled restorer runs on the photo."""
    pytest.importorskip("xgrammar")
    from vitron.planners.default import choose_default_planner, open_default_planner

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("VITRON_CACHE", str(tmp_path / "empty-vitron-cache"))  # no GGUF fetched
    choice = choose_default_planner()
    output = tmp_path / "out"
    assistant = planner_assistant(
        open_default_planner(choice), output, scripted_replies=[json.dumps(RESTORE)]
    )
    session = ChatSession(assistant, output, choice.note)
    with serve_app(build_app(session), allowed_paths=served_folders(session)) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        send(page, "clean this photo", photo)
        answer = check_the_conversation(page, photo, output / "c0_image.png")
        body = " ".join(page.locator("body").inner_text().split())
        keep_screenshot(page, "vitron-app")
    record = json.loads((output / "turn_001.json").read_text())
    assert [r["scripted"] for r in record["replies"]] == [True, False]
    assert answer.splitlines()[0] == record["answer"]  # the tiny planner's answer (noise)
    assert answer.splitlines()[-1].startswith(restore_line(PHOTO_SIZE))
    assert choice.repo_id is None
    for said in (
        "No real planner is installed",
        "The page would use Qwen/Qwen2.5-VL-3B-Instruct (7.5 GB): get it with "
        "hf download Qwen/Qwen2.5-VL-3B-Instruct and start the page again.",
        "Until then a tiny random planner answers",
    ):
        assert said in body


@pytest.mark.slow  # 10-30 s here: a planner's replies, the restore, the page
def test_a_planner_folder_streams_its_reply_and_its_call_runs(browser, photo, tmp_path):
    """``vitron app --planner DIR`` on a tiny random chat model the test writes: its replies,
    held to the grammar (here: it must call, and only the restorer is offered), appear in the
    page while they are generated, and the call it wrote runs."""
    pytest.importorskip("xgrammar")
    from vitron.cli import assistant_options, build_parser
    from vitron.planner_cli import open_page_assistant
    from vitron.planners.tiny import write_tiny_planner

    folder = write_tiny_planner(tmp_path / "planner", "llama")
    argv = ["app", "--planner", str(folder), "-o", str(tmp_path / "out"), "--device", "cpu"]
    args = build_parser().parse_args(argv)
    assistant, output, note = open_page_assistant(assistant_options(args), args)
    assert note == f"Planner: `{folder}`, its replies held to the calls' grammar."
    assistant = planner_assistant(assistant.planner, output, require_calls=True)
    session = ChatSession(assistant, output, note)
    told = session._told

    def at_a_models_pace(events, k: int, piece: str) -> None:
        # the tiny model writes a token in milliseconds, faster than the page redraws (it then
        # shows the pieces together); a real model on a CPU writes tens of tokens a second
        time.sleep(0.025)
        told(events, k, piece)

    session._told = at_a_models_pace
    with serve_app(build_app(session), allowed_paths=served_folders(session)) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(url)
        page.evaluate(RECORD_BOT_TEXTS)
        send(page, "clean this photo", photo)
        page.wait_for_function(WRITING, timeout=60_000)  # the reply shows as it is written
        keep_screenshot(page, "vitron-app-streaming")
        answer = check_the_conversation(page, photo, output / "c0_image.png")
        seen = page.evaluate("window.botTexts")
        body = " ".join(page.locator("body").inner_text().split())
    record = json.loads((output / "turn_001.json").read_text())
    calls = record["replies"][0]["text"]
    assert json.loads(calls)["calls"][0]["task"] == "restore_image"  # the model wrote it
    # the page showed the calls' reply part-written, at several lengths, before it was whole
    parts = {longest_prefix_in(calls, text) for text in seen}
    partial = sorted(k for k in parts if 0 < k < len(calls))
    assert len(partial) >= 3, (partial, len(calls))
    assert len(calls) in parts  # and whole
    assert answer.splitlines()[0] == record["answer"]
    assert answer.splitlines()[-1].startswith(restore_line(PHOTO_SIZE))
    assert f"Planner: {folder}, its replies held to the calls' grammar." in body


def longest_prefix_in(reply: str, text: str) -> int:
    """The length of the longest start of ``reply`` that ``text`` holds (binary search: a text
    holding a start of the reply holds every shorter start)."""
    low, high = 0, len(reply)
    while low < high:
        middle = (low + high + 1) // 2
        if reply[:middle] in text:
            low = middle
        else:
            high = middle - 1
    return low


def test_a_vitron_model_page_says_its_weights_are_random(
    browser, model, specialist_options, image, tmp_path
):
    """``vitron app --model`` on the tiny random Vitron with a fixed first reply: the answer
    lists the call, the restored image shows, and the page says the weights are random."""
    output = tmp_path / "out"
    reply = f"Restoring it. <invoke>{json.dumps(RESTORE)}</invoke><signal></s>"
    assistant = Assistant(
        model, SpecialistRegistry(specialist_options), output, scripted_replies=(reply,),
        max_new_tokens=4,
    )  # fmt: skip
    upload = tmp_path / "noise.png"
    image.save(upload)
    with serve_app(build_app(ChatSession(assistant, output))) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(url)
        send(page, "clean this photo", upload)
        answer = check_the_conversation(page, upload, output / "c0_image.png")
        body = " ".join(page.locator("body").inner_text().split())
    assert answer.splitlines()[-1].startswith(restore_line(image.size))
    assert RANDOM_NOTE.replace("**", "").replace("`", "") in body
