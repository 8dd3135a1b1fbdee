"""Tiny random open_clip ViT CLIP registered from a config written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from itaclip import Segmenter, SegmenterConfig

TINY_NAME = "itaclip-test-tiny-vit"
TINY_CONFIG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("configs") / f"{TINY_NAME}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(path)
    return path


@pytest.fixture(scope="session")
def tiny_clip(tiny_config_file: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_NAME, pretrained=None)
    with torch.no_grad():  # non-trivial LayerNorm affine params and biases
        for name, param in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_config_file: Path):
    return open_clip.get_tokenizer(TINY_NAME)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, tiny_clip: torch.nn.Module) -> Path:
    """A ``local-dir:`` folder holding the tiny model's config and weights."""
    folder = tmp_path_factory.mktemp("tiny_model")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    state = {k: v.contiguous() for k, v in tiny_clip.state_dict().items()}
    save_file(state, folder / "open_clip_model.safetensors")
    return folder


@pytest.fixture
def make_segmenter(tiny_clip, tiny_tokenizer):
    """Segmenter factory on the tiny model; small crops so tests take milliseconds."""

    def make(**overrides) -> Segmenter:
        settings = {"short_side": None, "crop": 64, "stride": 32, "batch_size": 8}
        settings.update(overrides)
        preset = settings.pop("preset", None)
        return Segmenter(tiny_clip, tiny_tokenizer, SegmenterConfig(**settings), preset=preset)

    return make
