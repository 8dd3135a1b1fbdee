"""The shared app plumbing (``common_kernels.runtime.app``) and the browser test helpers
(``common_kernels.runtime.browser``), the latter against a tiny Gradio page in real Chromium."""

from __future__ import annotations

import contextlib
import gc
import inspect
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from common_kernels.runtime import browser
from common_kernels.runtime.app import (
    check_port,
    error_text,
    import_gradio,
    launch_blocks,
    page,
    shows_bad_input,
)
from common_kernels.runtime.cli import Terminated
from common_kernels.runtime.errors import InvalidArgument, InvalidValue
from common_kernels.runtime.imports import runs_in_fresh_interpreter


@pytest.mark.parametrize("module", ["common_kernels.runtime.app", "common_kernels.runtime.browser"])
def test_importing_the_runtime_app_leaves_gradio_and_playwright_unimported(module: str) -> None:
    run = runs_in_fresh_interpreter(module, [], ["gradio", "playwright", "pytest"])
    assert run["import"].loaded == []


def test_import_gradio_says_how_to_install_it(monkeypatch) -> None:
    assert import_gradio("semanir[app]").__name__ == "gradio"
    monkeypatch.setitem(sys.modules, "gradio", None)  # what an uninstalled module looks like
    with pytest.raises(ImportError) as caught:
        import_gradio("semanir[app]")
    assert str(caught.value) == "needs gradio: pip install 'semanir[app]'"


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (
            InvalidArgument("image", "must be RGB, got mode CMYK"),
            "image: must be RGB, got mode CMYK",
        ),
        (InvalidValue("seed", "{seed} must be >= 0, got -1"), "seed must be >= 0, got -1"),
        (ValueError("  first line\n  Traceback (most recent call last):\n"), "first line"),
        (KeyError(), "KeyError"),
    ],
)
def test_error_text_is_one_line(error: BaseException, text: str) -> None:
    assert error_text(error) == text


class FakePage:
    """Records what ``launch_blocks`` does with a page; ``launch`` raises ``stop`` if given."""

    def __init__(self, calls: list, stop: BaseException | None = None) -> None:
        self.calls, self.stop, self.server = calls, stop, FakeServer()

    def launch(self, **options) -> tuple:
        self.calls.append(("launch", options))
        if self.stop is not None:
            raise self.stop
        public = "https://x.gradio.live" if options["share"] else None
        return None, f"http://{options['server_name']}:{options['server_port']}/", public

    def close(self) -> None:
        self.calls.append(("close", {"force_exit": self.server.force_exit}))


class FakeServer:
    """uvicorn's ``Server`` as far as ``launch_blocks`` touches it."""

    force_exit = False


@pytest.mark.parametrize("stop", [None, KeyboardInterrupt(), Terminated()], ids=repr)
def test_launch_blocks_serves_then_closes_and_freezes_the_heap(tmp_path, monkeypatch, stop):
    """The page's options reach ``launch``; however serving ends (returned, Ctrl-C, SIGTERM),
    the server is closed without waiting for open connections (``force_exit``) and the heap
    frozen out of the exit's garbage collection, and the signal's exception goes on to
    ``run_main``."""
    calls: list = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(("freeze", {})))
    page = FakePage(calls, stop)
    with pytest.raises(type(stop)) if stop is not None else contextlib.nullcontext():
        launch_blocks(page, host="0.0.0.0", port=7861, share=False, allowed_paths=[tmp_path])
    options = {"server_name": "0.0.0.0", "server_port": 7861, "share": False,
               "allowed_paths": [str(tmp_path.resolve())], "quiet": True,
               "prevent_thread_lock": True}  # fmt: skip
    assert calls == [("launch", options), ("close", {"force_exit": True}), ("freeze", {})]


@pytest.mark.parametrize("share", [False, True])
def test_launch_blocks_speaks_of_the_command_flag_not_of_gradio_python(share, capsys):
    """Gradio's own lines are off (they say ``set share=True in launch()``): the address, then
    the public one or the command's flag for it."""
    launch_blocks(FakePage([]), host="127.0.0.1", port=7862, share=share, share_flag="--public")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Running on local URL:  http://127.0.0.1:7862/"
    assert out[1] == (
        "Running on public URL: https://x.gradio.live" if share else "For a public link: --public"
    )


SERVED_PAGE = """
import atexit, gc, socket, sys
from common_kernels.runtime.app import launch_blocks, page
from common_kernels.runtime.cli import run_main

port = int(sys.argv[1])

def report():  # after run_main: is the port still served, how many objects are frozen
    with socket.socket() as sock:
        served = sock.connect_ex(("127.0.0.1", port)) == 0
    print(f"served={served} frozen={gc.get_freeze_count() > 1000}", flush=True)

def serve():
    import gradio as gr

    with page("demo", "a page") as blocks:
        gr.Textbox("x")
    blocks.analytics_enabled = False
    atexit.register(report)
    launch_blocks(blocks, host="127.0.0.1", port=port, share=False)

sys.exit(run_main("demo app", serve))
"""


def test_a_served_page_ends_on_sigterm_with_one_line_and_its_port_closed() -> None:
    """A real page under ``run_main``: SIGTERM ends it with exit 143 and one line, the port
    closed and the heap frozen before the interpreter exits (the exit's time is measured in
    the CHANGELOG: 5.2 s before the freeze, 0.7 s after, on a 2-core machine)."""
    port = browser.free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVED_PAGE, str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        while True:  # until the page answers (or the command ended: then it failed)
            assert process.poll() is None, process.communicate()[1][-2000:]
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, err[-2000:]
    assert err.splitlines()[-1] == "demo app: terminated"
    assert out.splitlines()[-1] == "served=False frozen=True"


@pytest.mark.parametrize("port", [0, 65536, "80", True])
def test_launch_blocks_refuses_a_port_before_serving(port) -> None:
    with pytest.raises(InvalidArgument) as caught:
        launch_blocks(None, host="127.0.0.1", port=port, share=False)
    assert str(caught.value) == f"port: must be in [1, 65535], got {port!r}"
    assert check_port(65535) == 65535


def test_chromium_skips_saying_what_is_missing(monkeypatch) -> None:
    monkeypatch.setenv("CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(pytest.skip.Exception) as caught, browser.chromium():
        pass
    assert str(caught.value) == (
        "no Chromium at /nonexistent/chromium (install it: apt-get install -y chromium, "
        "or set CHROMIUM)"
    )


def paint(text: str) -> np.ndarray:
    """The colour ``R,G,B`` as a 6x10 image; anything else is a bad input."""
    colour = [int(v) for v in text.split(",")]
    if len(colour) != 3:
        raise InvalidArgument("colour", f"must be three numbers R,G,B, got {text!r}")
    return np.broadcast_to(np.array(colour, np.uint8), (6, 10, 3)).copy()


def test_shows_bad_input_turns_bad_inputs_into_one_page_line() -> None:
    gr = import_gradio("common-kernels[app]")
    handler = shows_bad_input(paint)
    assert handler.__name__ == "paint" and handler("1,2,3").shape == (6, 10, 3)
    with pytest.raises(gr.Error) as caught:
        handler("1,2")
    assert caught.value.message == "colour: must be three numbers R,G,B, got '1,2'"
    with pytest.raises(KeyError):  # not a bad input: raised as it is
        shows_bad_input(lambda: {}["x"])()


def test_shows_bad_input_keeps_a_generator_a_generator() -> None:
    gr = import_gradio("common-kernels[app]")

    def stages(count: int):
        yield from range(count)
        raise ValueError("stage budget spent\nTraceback ...")

    handler = shows_bad_input(stages)
    assert inspect.isgeneratorfunction(handler)
    steps = handler(2)
    assert [next(steps), next(steps)] == [0, 1]
    with pytest.raises(gr.Error) as caught:
        next(steps)
    assert caught.value.message == "stage budget spent"


def _tiny_page():
    """A page that paints the colour typed into its box, or shows an error for a bad one."""
    gr = import_gradio("common-kernels[app]")
    with page("Painter", "Type a colour.", "No model.") as blocks:
        box = gr.Textbox(label="colour", elem_id="colour")
        button = gr.Button("paint")
        picture = gr.Image(label="picture", elem_id="picture", format="png")
        button.click(shows_bad_input(paint), box, picture, api_name="paint")
    return blocks


@pytest.fixture(scope="module")
def served():
    """(URL, Chromium browser) of the tiny page, shared by this module's browser tests."""
    with browser.chromium() as chromium, browser.serve_app(_tiny_page()) as url:
        yield url, chromium


def test_page_image_reads_the_pixels_the_page_shows(served, monkeypatch, tmp_path) -> None:
    url, chromium = served
    tab = chromium.new_page()
    tab.goto(url)
    from playwright.sync_api import expect

    expect(tab).to_have_title("Painter")  # Gradio sets it once the page has loaded
    expect(tab.get_by_role("heading", name="Painter")).to_be_visible()
    expect(tab.get_by_text("Type a colour.")).to_be_visible()
    expect(tab.get_by_text("No model.")).to_be_visible()
    tab.locator("#colour textarea").fill("10,200,30")
    tab.get_by_role("button", name="paint", exact=True).click()
    picture = browser.page_image(tab, "#picture")
    assert picture.size == (10, 6)
    assert np.array_equal(np.asarray(picture.convert("RGB")), np.full((6, 10, 3), [10, 200, 30]))
    monkeypatch.setenv("SCREENSHOT_DIR", str(tmp_path / "shots"))
    shot = browser.keep_screenshot(tab, "tiny")
    assert shot == tmp_path / "shots" / "tiny.png"
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_page_error_shows_the_api_message(served) -> None:
    url, chromium = served
    tab = chromium.new_page()
    tab.goto(url)
    tab.locator("#colour textarea").fill("1,2")
    tab.get_by_role("button", name="paint", exact=True).click()
    assert browser.page_error(tab) == "colour: must be three numbers R,G,B, got '1,2'"
