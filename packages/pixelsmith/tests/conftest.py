"""Tiny seeded SDXL-shaped components; the tokenizer is built here from a vocab in tmp_path; random
images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPTokenizer

import pixelsmith.cascade as cascade_module
import pixelsmith.memory as memory
from pixelsmith import PixelsmithConfig, PixelsmithPipeline
from pixelsmith.cli import main
from pixelsmith.pipelines.pixelsmith import ddim_from_config
from pixelsmith.tiny import SDXL_SCHEDULER_CONFIG, tiny_components

LETTERS = "abcdefghijklmnopqrstuvwxyz"
# patch 8 latent px (64 px), band 2, VAE tiles of 8 latent px overlapping by 2
SMALL = PixelsmithConfig(patch_size=8, band=2, vae_tile=8, vae_overlap=2)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vocab.json + merges.txt of a tiny CLIP BPE (letters, word-final letters, two merges)."""
    folder = tmp_path_factory.mktemp("tokenizer")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for letter in LETTERS:
            vocab[letter + suffix] = len(vocab)
    vocab["ca"] = len(vocab)
    vocab["cat</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    return folder


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=77)


@pytest.fixture(scope="session")
def components(tokenizer: CLIPTokenizer) -> dict:
    return tiny_components(seed=0, tokenizer=tokenizer)


@pytest.fixture
def make_pipe(components: dict):
    """A new pipeline over the shared tiny weights with a fresh SDXL DDIM scheduler."""

    def make(scheduler=None) -> PixelsmithPipeline:
        parts = dict(components)
        parts["scheduler"] = scheduler or ddim_from_config(dict(SDXL_SCHEDULER_CONFIG))
        pipe = PixelsmithPipeline(**parts, add_watermarker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


@pytest.fixture
def small_config() -> PixelsmithConfig:
    return SMALL


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL folder written by ``pixelsmith tiny-model`` (read only by the tests)."""
    folder = tmp_path_factory.mktemp("tiny_model") / "tiny"
    assert main(["tiny-model", str(folder)]) == 0
    return folder


@pytest.fixture
def generate_help(capsys: pytest.CaptureFixture) -> str:
    """What ``pixelsmith generate --help`` prints (exit 0), whitespace collapsed."""
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch):
    """Any model load or generation fails the test: the checks must come first. Returns the
    failing stand-in, for fixtures that refuse more."""

    def fail(*args, **kwargs):
        raise AssertionError("model work started before the inputs were checked")

    monkeypatch.setattr(PixelsmithPipeline, "from_pretrained", fail)
    monkeypatch.setattr(cascade_module, "run_cascade", fail)
    return fail


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CUDA, no MPS, 16 GiB of available memory: the same messages on every machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 16 * 2**30)


@pytest.fixture(scope="session")
def random_image():
    """Makes a random RGB image of (height, width) from a seed (default 0)."""

    def make(height: int, width: int, seed: int = 0) -> Image.Image:
        rng = np.random.default_rng(seed)
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))

    return make
