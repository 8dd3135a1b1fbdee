"""Helpers for the packages' browser tests of their Gradio pages. Standard library only at
import; pytest, playwright and Pillow are imported when used.

A test serves its page on a free local port (:func:`serve_app`), opens it in Debian's Chromium
driven by Playwright (:func:`chromium`; nothing is downloaded: ``playwright install`` is never
needed), puts an input in, runs it, and checks the output image's pixels as the page shows them
(:func:`page_image`) or the one-line message of a bad input (:func:`page_error`), keeping a
screenshot (:func:`keep_screenshot`). Without Chromium or Playwright the test is skipped with a
reason that says what to install.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
INSTALL_CHROMIUM = "apt-get install -y chromium"
INSTALL_PLAYWRIGHT = "pip install playwright"
_IMAGE_LOADED = "img => img.complete && img.naturalWidth > 0 && img.src !== ''"
_ERROR_TOAST = "[data-testid='toast-body'] [data-testid='toast-text']"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_app(
    blocks: Any, host: str = "127.0.0.1", allowed_paths: Sequence[str | Path] = ()
) -> Iterator[str]:
    """Serve a ``gradio.Blocks`` on a free local port without blocking; yields its URL.

    Args:
        blocks: the page (its analytics are turned off: the tests run offline).
        host: the address to serve on.
        allowed_paths: folders the page may serve files from (its output folders).
    """
    blocks.analytics_enabled = False
    blocks.launch(
        server_name=host, server_port=free_port(host), prevent_thread_lock=True, quiet=True,
        allowed_paths=[str(Path(p).resolve()) for p in allowed_paths],
    )  # fmt: skip
    try:
        yield blocks.local_url
    finally:
        blocks.close()


def chromium_path() -> str | None:
    """The Chromium to drive: ``$CHROMIUM`` when set, else Debian's ``/usr/bin/chromium``;
    None when it is not an executable file."""
    path = os.environ.get("CHROMIUM", CHROMIUM)
    return path if shutil.which(path) else None


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Playwright ``Browser`` on Debian's Chromium (see :func:`chromium_path`).

    Calls ``pytest.skip`` with what is missing and how to install it when Chromium or
    Playwright is absent; nothing is downloaded.
    """
    import pytest

    path = chromium_path()
    if path is None:
        where = os.environ.get("CHROMIUM", CHROMIUM)
        pytest.skip(f"no Chromium at {where} (install it: {INSTALL_CHROMIUM}, or set CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"playwright is not installed ({INSTALL_PLAYWRIGHT})")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def keep_screenshot(page: Any, name: str) -> Path:
    """Save a PNG screenshot of the whole page; returns its path.

    Args:
        page: the Playwright page.
        name: the file's name without suffix (``"app"``).

    It goes to ``$SCREENSHOT_DIR`` when set (a README's screenshot is made so), else to
    ``screenshots/`` in the system's temporary folder.
    """
    folder = Path(os.environ.get("SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def page_image(page: Any, selector: str, timeout_s: float = 60, index: int = 0) -> Any:
    """The picture an ``<img>`` inside ``selector`` shows, once it has loaded.

    Args:
        page: the Playwright page.
        selector: a Playwright selector (CSS works) of the element holding the image
            (``"#restored"``, ``".block:has-text('restored')"``).
        timeout_s: how long to wait for it.
        index: which ``<img>`` inside ``selector`` (0: the first).

    Returns:
        The decoded ``PIL.Image.Image``, fetched from its ``src`` as the page fetched it.
    """
    from PIL import Image

    timeout_ms = timeout_s * 1000
    img = page.locator(selector).locator("img").nth(index)
    handle = img.element_handle(timeout=timeout_ms)
    page.wait_for_function(_IMAGE_LOADED, arg=handle, timeout=timeout_ms)
    source = handle.evaluate("img => img.src")
    if source.startswith("data:"):
        data = base64.b64decode(source.partition(",")[2])
    else:
        response = page.request.get(source)
        if not response.ok:
            raise AssertionError(f"{source}: HTTP {response.status}")
        data = response.body()
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def page_error(page: Any, timeout_s: float = 60) -> str:
    """The text of the error a page shows (a ``gradio.Error`` raised by an event), once shown.

    Args:
        page: the Playwright page.
        timeout_s: how long to wait for it.
    """
    toast = page.locator(_ERROR_TOAST).first
    toast.wait_for(state="visible", timeout=timeout_s * 1000)
    return toast.inner_text().strip()
