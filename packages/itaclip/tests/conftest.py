"""Tiny random open_clip ViT CLIP registered from a config written by the tests; a one-image VOC
folder; a tiny random GPT-2 language model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
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


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """A one-image VOC folder, ``tmp_path / "voc"``."""
    root = tmp_path / "voc"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("a\n")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "JPEGImages/a.jpg")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "SegmentationClass/a.png")
    return root


@pytest.fixture(scope="session")
def make_tiny_lm():
    """Makes a tiny random GPT-2 (torch seed 0) and a word-level tokenizer of the given words
    (plus ``[UNK]`` and ``[EOS]``, the end and padding token), as ``(model, tokenizer)``."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")

    def make(words: str):
        vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(words.split())}}
        backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
        backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
        backend.decoder = tokenizers.decoders.WordPiece()
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_object=backend, unk_token="[UNK]", eos_token="[EOS]", pad_token="[EOS]"
        )
        torch.manual_seed(0)
        config = transformers.GPT2Config(
            vocab_size=len(vocab), n_positions=128, n_embd=16, n_layer=1, n_head=2,
            bos_token_id=1, eos_token_id=1,
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(config), tokenizer

    return make


@pytest.fixture
def no_model_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model load (open_clip, ``Segmenter.load``, the LLM), text embedding or ViT pass
    fails the test: the checks must come first."""
    from itaclip.generate import AuxTextGenerator

    def fail(*args, **kwargs):
        raise AssertionError("model work started before the inputs were checked")

    monkeypatch.setattr(open_clip, "create_model", fail)
    for name in ("load", "embed", "encode_images"):
        monkeypatch.setattr(Segmenter, name, fail)
    monkeypatch.setattr(AuxTextGenerator, "from_pretrained", fail)
