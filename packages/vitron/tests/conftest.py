"""Tiny random components shared by the tests (built from configs, seeded, no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitron.tiny import tiny_model, write_tiny_specialists

SEGMENT_THEN_EDIT = {
    "version": 1,
    "calls": [
        {"id": "seg", "task": "segment_image", "args": {"image": "$image0", "text": "dog"}},
        {
            "id": "edit",
            "task": "edit_image",
            "args": {"image": "$image0", "mask": "$seg.mask", "text": "a cat"},
        },
        {"id": "fix", "task": "restore_image", "args": {"image": "$edit.image"}},
    ],
}


def _reply_with_calls(text: str, invocation: dict) -> str:
    block = json.dumps(invocation)
    return f"{text} <invoke>{block}</invoke>" + "<signal>" * len(invocation["calls"]) + "</s>"


@pytest.fixture
def segment_then_edit() -> dict:
    """Calls: segment the dog, repaint it as a cat, restore the result."""
    return json.loads(json.dumps(SEGMENT_THEN_EDIT))


@pytest.fixture
def reply_with_calls():
    """``make(text, invocation)``: a reply as the model writes it (calls, signals, EOS)."""
    return _reply_with_calls


@pytest.fixture(scope="session")
def model():
    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def specialists_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_specialists(tmp_path_factory.mktemp("specialists"), seed=0)


@pytest.fixture(scope="session")
def specialist_options(specialists_file: Path) -> dict:
    return json.loads(specialists_file.read_text())


@pytest.fixture
def image() -> Image.Image:
    """A 64x48 noise image whose tiny-itaclip 'dog' mask covers about a third of it."""
    rng = np.random.default_rng(4)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
