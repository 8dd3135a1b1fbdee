"""Each workflow of ``comfyui/workflows`` loads in ComfyUI's own page (its frontend package, in
Debian's Chromium through Playwright): every node of the graph appears, none of them unknown to
the page, with the inputs the file gives. ``SCREENSHOT_DIR=comfyui/docs/images`` keeps the
screenshots the guide shows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from common_kernels.runtime.browser import chromium, keep_screenshot

if TYPE_CHECKING:
    from harness import Comfy

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
NAMES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
APP_READY = "() => window.app && window.app.graph && window.LiteGraph"
# the whole graph in view, nothing selected
FIT = """() => { const canvas = window.app.canvas; canvas.selectItems();
    canvas.fitViewToSelectionAnimated({duration: 1}); canvas.deselectAll(); }"""


@pytest.fixture(scope="module")
def browser(comfy: Comfy, example: tuple[str, Path]) -> Iterator[Any]:
    # a new user's page opens on the template gallery; this user has seen it
    setting = requests.post(f"{comfy.url}/settings/Comfy.TutorialCompleted", json=True, timeout=30)
    setting.raise_for_status()
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(comfy: Comfy, browser: Any) -> Iterator[Any]:
    """ComfyUI's page in a fresh browser context: no tab or preview of an earlier graph."""
    page = browser.new_page(viewport={"width": 1500, "height": 820})
    page.goto(comfy.url)
    page.wait_for_function(APP_READY, timeout=120_000)
    yield page
    page.context.close()


@pytest.mark.parametrize("name", NAMES)
def test_the_workflow_shows_in_comfyuis_page(page: Any, name: str) -> None:
    graph = json.loads((WORKFLOWS / f"{name}.json").read_text())
    # a long graph in a wider page, so that it fits at a zoom where the page still draws text
    page.set_viewport_size({"width": max(1500, 220 * len(graph)), "height": 820})
    page.evaluate("graph => window.app.loadApiJson(graph, 'workflow.json')", graph)
    page.evaluate(FIT)
    page.wait_for_timeout(500)  # the canvas draws on the next frames
    assert page.locator(".p-dialog-mask").count() == 0  # no dialog over the graph
    shown = page.evaluate(
        "() => window.app.graph._nodes.map(n => ({type: n.type, title: n.title, "
        "known: n.type in window.LiteGraph.registered_node_types, "
        "widgets: Object.fromEntries((n.widgets || []).map(w => [w.name, w.value]))}))"
    )
    assert sorted(node["type"] for node in shown) == sorted(
        node["class_type"] for node in graph.values()
    )
    assert all(node["known"] for node in shown), [n["type"] for n in shown if not n["known"]]
    for node in graph.values():  # each widget shows the file's value (titles are unique)
        (match,) = [n for n in shown if n["title"] == node["_meta"]["title"]]
        assert match["type"] == node["class_type"]
        for key, value in node["inputs"].items():
            if not isinstance(value, list) and key in match["widgets"]:
                assert match["widgets"][key] == value, (node["class_type"], key)
    assert keep_screenshot(page, f"comfyui_{name}").stat().st_size > 10_000
