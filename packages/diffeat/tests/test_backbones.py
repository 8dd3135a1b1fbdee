"""Backbones (issue 32 item 4): the backbone is picked from the model's config (diffusers
``_class_name``), ``FeatureExtractor.from_pretrained`` and the CLI serve a PixArt (DiT) folder
as they serve U-Net folders, on tiny randomly initialised models built from configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffeat import DiTFeatureExtractor, FeatureExtractor
from diffeat.backbones import DIT, UNET, backbone_of, backbone_of_model
from diffeat.cli import main
from diffeat.configs import (
    PIXART_SIGMA_TRANSFORMER,
    TINY_PIXART_TRANSFORMER,
    TINY_SD15_UNET,
    tiny_pixart_pipeline,
    unet_config,
)
from diffeat.extractor import check_from_pretrained

TOKENS = 24  # the tiny PixArt tokenizer's length


@pytest.fixture(scope="module")
def pixart_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_pixart")
    tiny_pixart_pipeline(seed=0).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.png"
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_the_backbone_comes_from_the_config_class_name():
    assert backbone_of({"_class_name": "UNet2DConditionModel"}) is UNET
    assert backbone_of({"_class_name": "PixArtTransformer2DModel"}) is DIT
    assert backbone_of({"_class_name": "Transformer2DModel"}) is DIT  # older diffusers saves
    assert backbone_of(TINY_SD15_UNET) is UNET and backbone_of(PIXART_SIGMA_TRANSFORMER) is DIT
    assert backbone_of(unet_config("sdxl")) is UNET
    assert UNET.size_multiple(unet_config("sd15"), 8) == 64
    assert DIT.size_multiple(TINY_PIXART_TRANSFORMER, 8) == 16
    assert DIT.factors(TINY_PIXART_TRANSFORMER, 8) == "VAE x8, patch 2"


def test_the_backbone_of_a_saved_model(pixart_dir, model_dirs, tmp_path):
    index = json.loads((pixart_dir / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "PixArtTransformer2DModel"]
    assert backbone_of_model(pixart_dir) is DIT
    assert backbone_of_model(model_dirs["sd15"]) is UNET
    assert backbone_of_model(tmp_path) is UNET  # no model_index.json: the U-Net's checks say so
    plan = check_from_pretrained(pixart_dir, layers=["dit-block3-out"], max_sequence_length=4)
    assert plan.backbone is DIT and plan.configs.size_multiple == 16
    assert [info.shape for info in plan.infos if info.name == "dit-block3-cross-map"] == [
        (2 * 4, 4, 4)
    ]  # 2 heads x 4 T5 tokens, the 64 px native size in patches


def test_feature_extractor_from_pretrained_loads_a_pixart_folder(pixart_dir):
    pipe = tiny_pixart_pipeline(seed=0)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    loaded = FeatureExtractor.from_pretrained(
        pixart_dir, layers=["dit-block3-out", "dit-out"], max_sequence_length=TOKENS
    )
    assert type(loaded) is DiTFeatureExtractor and loaded.backbone is DIT
    wrapped = DiTFeatureExtractor.from_pipeline(
        pipe, layers=["dit-block3-out", "dit-out"], max_sequence_length=TOKENS
    )
    ours, theirs = loaded(images, "a cat"), wrapped(images, "a cat")
    for name in ("dit-block3-out", "dit-out"):
        # same weights, config and prompt embeddings; the loaded copy's weights sit elsewhere in
        # memory, which can move a float32 matmul's rounding (measured up to 4.8e-7)
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-5)


def test_a_backbone_refuses_the_other_kind_and_u_net_options(pixart_dir, model_dirs):
    with pytest.raises(ValueError) as info:
        DiTFeatureExtractor.from_pretrained(model_dirs["sd15"], text_stack=False)
    assert str(info.value) == (
        f"model_id_or_dir {model_dirs['sd15']} has no transformer/config.json, so it is no "
        "PixArt folder; it holds a U-Net: use FeatureExtractor.from_pretrained"
    )
    with pytest.raises(ValueError, match=r"^lora: LoRA and ControlNet are supported for U-Nets"):
        check_from_pretrained(pixart_dir, lora="x.safetensors")
    with pytest.raises(ValueError, match=r"^max_sequence_length: applies to DiTs"):
        check_from_pretrained(model_dirs["sd15"], max_sequence_length=8)
    with pytest.raises(ValueError, match=r"^max_sequence_length must be >= 1, got 0"):
        check_from_pretrained(pixart_dir, max_sequence_length=0)


def test_cli_extracts_from_a_tiny_pixart_folder(pixart_dir, image, tmp_path, capsys):
    out = tmp_path / "feats.safetensors"
    argv = ["extract", str(image), "--model", str(pixart_dir), "--layers",
            "dit-block3-out,dit-out", "--prompt", "a cat", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [
        "dit-block3-out: (1, 16, 4, 4)",
        "dit-out: (1, 8, 8, 8)",
        f"wrote 2 features of 1 images to {out}",
    ]
    features = load_file(out)
    extractor = FeatureExtractor.from_pretrained(
        pixart_dir, layers=["dit-block3-out", "dit-out"], output_device="cpu"
    )
    expected = extractor(Image.open(image), "a cat")
    for name in ("dit-block3-out", "dit-out"):
        assert torch.equal(features[name], expected[name])


def test_cli_serves_pixart_like_u_nets(pixart_dir, image, tmp_path, capsys):
    assert main(["layers", "--model", str(pixart_dir), "--contains", "block27-cross"]) == 0
    out = capsys.readouterr().out
    assert " 222  dit-block27-cross-q    16 x 4 x 4  (2 heads)" in out
    assert " 223  dit-block27-cross-map  600 x 4 x 4  (2 heads)" in out  # 300 T5 tokens
    argv = [
        "extract",
        str(image),
        "--model",
        str(pixart_dir),
        "-o",
        str(tmp_path / "o.safetensors"),
    ]
    cases = {
        ("--image-size", "72"): "--image-size 72x72: height and width must be multiples of 16 "
        "for this model (VAE x8, patch 2)",
        ("--lora", str(image)): "--lora: LoRA and ControlNet are supported for U-Nets only",
        ("--faithful",): "--faithful: the official code's path is restated for U-Nets only, not "
        "for PixArt models",
    }  # fmt: skip
    for extra, message in cases.items():
        assert main([*argv, *extra]) == 2
        assert capsys.readouterr().err == f"diffeat extract: error: {message}\n"
    assert main(["probe", str(image), "--model", str(pixart_dir), "--layers", "dit-out"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("dit-out ")
