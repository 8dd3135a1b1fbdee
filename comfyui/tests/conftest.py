"""The session's ComfyUI server (:mod:`harness`), stopped by its PID when the session ends;
skipped with the reason when ComfyUI's source is not at hand."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # harness.py: the tests' and the benchmark's
from harness import TARBALL, Comfy, start, stop

DATA = Path(os.environ.get("SHARED_DATA", Path(__file__).parents[3] / "shared" / "data"))


@pytest.fixture(scope="session")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Comfy]:
    if "COMFYUI_DIR" not in os.environ and not TARBALL.is_file():
        pytest.skip(f"no ComfyUI source: {TARBALL} is absent and COMFYUI_DIR is not set")
    server = start(tmp_path_factory.mktemp("comfyui"))
    try:
        yield server
    finally:
        stop(server.process)


@pytest.fixture(scope="session")
def example(comfy: Comfy, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A 40x56 crop of Set14's comic, uploaded as ComfyUI's page uploads: its name there and
    the file."""
    from PIL import Image

    source = DATA / "set14" / "comic.bmp"
    if not source.is_file():
        pytest.skip(f"no test image: {source} is absent (set SHARED_DATA)")
    path = tmp_path_factory.mktemp("input") / "example.png"
    Image.open(source).convert("RGB").crop((60, 40, 116, 80)).save(path)
    return comfy.upload(path), path
