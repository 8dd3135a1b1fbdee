"""Tiny random components shared by the tests (built from configs, seeded, no downloads)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vitron.tiny import tiny_model, write_tiny_specialists

# seg -> edit -> fix: segment the dog, repaint it as a cat, restore the result
SEGMENT_THEN_EDIT = json.loads((Path(__file__).parent / "segment_then_edit.json").read_text())


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


def _write_noise_images(folder: Path, names: list[str], height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / name)


@pytest.fixture
def write_noise_images():
    """``write(folder, names, height, width)``: a (height, width) noise PNG per name in
    ``folder``, drawn one after the other from one generator seeded 0."""
    return _write_noise_images


@torch.no_grad()
def clip_template_embedding(folder: str, text: str) -> torch.Tensor:
    """itaclip's text target restated on open_clip alone: the 80 ImageNet templates filled with
    ``text``, each prompt's embedding L2-normalised, averaged, normalised again. (C,) fp32."""
    import open_clip

    from itaclip.text import imagenet_templates  # the template strings (data)

    model = open_clip.create_model(folder, pretrained=None).eval()
    tokens = open_clip.get_tokenizer(folder)([t.format(text) for t in imagenet_templates()])
    per_prompt = F.normalize(model.encode_text(tokens).float(), dim=-1)  # (80, C)
    return F.normalize(per_prompt.mean(0), dim=0)


@torch.no_grad()
def end_of_text_state(pipeline_dir: str, text: str) -> torch.Tensor:
    """A diffusion pipeline's text target restated on transformers alone: the text encoder's
    last hidden state at the end-of-text token of ``text`` (unpadded: CLIP's causal mask keeps
    padding after it from changing that row). (D,) fp32."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(Path(pipeline_dir) / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(Path(pipeline_dir) / "text_encoder").eval()
    ids = tokenizer(text).input_ids
    assert ids[-1] == tokenizer.eos_token_id
    return encoder(torch.tensor([ids])).last_hidden_state[0, -1].float()


@pytest.fixture(scope="session")
def expected_target(specialist_options: dict) -> Callable[[str, str], torch.Tensor]:
    """``expected(task, text)``: the stage-3 target of a call, computed from the tiny
    specialists' saved files without the adapters (``conditioning_target``) or the registry."""
    folders = {
        "segment_image": specialist_options["itaclip"]["model"],
        "generate_image": specialist_options["diffusers-image"]["model"],
        "edit_image": specialist_options["diffusers-inpaint"]["model"],
    }

    def expected(task: str, text: str) -> torch.Tensor:
        if task == "segment_image":
            return clip_template_embedding(folders[task], text)
        return end_of_text_state(folders[task], text)

    return expected
