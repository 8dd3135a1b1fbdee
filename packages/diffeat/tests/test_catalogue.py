"""Catalogue names, sizes (real SD 1.5 / SDXL configs on the meta device), shapes, name checks."""

from __future__ import annotations

import functools
import io
import re

import pytest
import torch

from diffeat import PRESETS, attention_map_view, build_catalogue, expected_catalogue_size
from diffeat.capture import probs_to_map
from diffeat.catalogue import check_names
from diffeat.configs import unet_config
from diffeat.listing import list_layers
from diffeat.shapes import layer_infos, meta_unet

NAME = re.compile(
    r"^(unet-in|unet-after-conv-in|unet-out"
    r"|down-level\d+-downsampler-out|up-level\d+-upsampler-out"
    r"|(?:(?:down|up)-level\d+-repeat\d+|mid|mid-repeat\d+)"
    r"-(?:res-(?:increment|out)|vit-out"
    r"|vit-block\d+-(?:out|self-q|self-k|self-v|self-map|cross-q|cross-map|ffn-inner)))$"
)


@functools.cache
def shapes_at(config: str, resolution: int) -> dict:
    return {i.name: i for i in layer_infos(unet_config(config), resolution)}


@pytest.fixture(scope="module")
def meta_catalogues() -> dict:
    return {name: build_catalogue(meta_unet(unet_config(name))) for name in ("sd15", "sdxl")}


def test_reference_catalogue_sizes_from_real_configs(meta_catalogues):
    assert len(meta_catalogues["sd15"]) == 197
    assert len(meta_catalogues["sdxl"]) == 612
    for name in ("sd15", "sd21", "sdxl", "tiny-sd15", "tiny-sdxl"):
        config = unet_config(name)
        assert expected_catalogue_size(config) == len(build_catalogue(meta_unet(config))), name
    assert expected_catalogue_size(unet_config("sd15")) == 197
    assert expected_catalogue_size(unet_config("sdxl")) == 612


def test_names_are_unique_well_formed_and_in_execution_order(meta_catalogues, vit_block_names):
    for catalogue in meta_catalogues.values():
        names = [spec.name for spec in catalogue]
        assert len(set(names)) == len(names)
        assert all(NAME.match(n) for n in names), [n for n in names if not NAME.match(n)]
        assert names[:2] == ["unet-in", "unet-after-conv-in"] and names[-1] == "unet-out"
    sd15 = [s.name for s in meta_catalogues["sd15"]]
    block = [n for n in sd15 if n.startswith("down-level0-repeat0-vit-block0-")]
    assert block == vit_block_names("down-level0-repeat0-vit-block0")
    assert (
        sd15.index("mid-repeat0-res-out")
        < sd15.index("mid-vit-out")
        < sd15.index("mid-repeat1-res-out")
    )
    sdxl = [s.name for s in meta_catalogues["sdxl"]]
    assert "mid-vit-block9-out" in sdxl and "mid-vit-block10-out" not in sdxl
    assert "down-level2-downsampler-out" not in sdxl and "up-level2-upsampler-out" not in sdxl


@pytest.mark.parametrize(
    ("preset", "config"),
    [("ours-v1.5", "sd15"), ("legacy-v1.5", "sd15"), ("ours-xl", "sdxl"), ("legacy-xl", "sdxl")],
)
def test_paper_presets_exist_with_published_channel_totals(preset, config):
    spec = PRESETS[preset]
    infos = shapes_at(config, spec.resolution)
    assert sum(infos[n].shape[0] for n in spec.layers) == spec.channels
    assert {
        "ours-v1.5": 3520,
        "legacy-v1.5": 3520,
        "ours-xl": 3840,
        "legacy-xl": 2240,
    }[preset] == spec.channels


def test_shapes_at_native_resolution_and_non_square():
    sd15 = shapes_at("sd15", 512)  # native size
    assert sd15["up-level3-repeat0-vit-block0-self-k"].shape == (320, 64, 64)
    assert sd15["up-level3-repeat0-vit-block0-self-map"].shape == (8 * 64 * 64, 64, 64)
    assert sd15["up-level3-repeat0-vit-block0-self-map"].heads == 8
    assert sd15["up-level1-repeat1-vit-block0-cross-map"].shape == (8 * 77, 16, 16)
    assert sd15["up-level1-repeat1-vit-block0-ffn-inner"].shape == (4 * 1280, 16, 16)
    assert sd15["mid-vit-out"].shape == (1280, 8, 8)
    assert sd15["unet-out"].shape == (4, 64, 64)
    sdxl = {i.name: i for i in layer_infos(unet_config("sdxl"), (1024, 768))}
    assert sdxl["up-level0-repeat0-vit-block7-out"].shape == (1280, 32, 24)
    assert sdxl["up-level0-repeat0-vit-block7-self-q"].heads == 20
    assert sdxl["up-level1-upsampler-out"].shape == (640, 128, 96)
    assert sdxl["down-level0-downsampler-out"].shape == (320, 64, 48)


def test_list_layers_prints_every_entry_and_filters():
    out = io.StringIO()
    infos = list_layers(unet_config("tiny-sd15"), 128, text_tokens=16, file=out)
    text = out.getvalue().splitlines()
    assert len(infos) == 197 and text[-1] == "197 of 197 activations"
    assert re.search(
        r" 168  up-level3-repeat0-vit-block0-self-map\s+512 x 16 x 16  \(2 heads\)\n",
        out.getvalue(),
    )
    out = io.StringIO()
    list_layers(unet_config("tiny-sd15"), 128, 16, file=out, contains="mid-vit-out")
    assert out.getvalue().splitlines()[1].split()[1:] == ["mid-vit-out", "16", "x", "2", "x", "2"]
    assert out.getvalue().splitlines()[-1] == "1 of 197 activations"


def test_check_names_errors(meta_catalogues):
    catalogue = meta_catalogues["sd15"]
    with pytest.raises(
        ValueError,
        match=r"unknown activation name\(s\).*'up-level1-repeat1-vit-block0-crossq' "
        r"\(did you mean up-level1-repeat1-vit-block0-cross-q",
    ):
        check_names(["up-level1-repeat1-vit-block0-crossq"], catalogue)
    with pytest.raises(ValueError, match=r"'down-level9-res-out'; the catalogue has 197 names"):
        check_names(["unet-out", "down-level9-res-out"], catalogue)
    with pytest.raises(ValueError, match=r"duplicate names \['unet-out'\]"):
        check_names(["unet-out", "unet-out"], catalogue)
    with pytest.raises(ValueError, match="layers: empty"):
        check_names([], catalogue)
    assert [s.module for s in check_names(["up-level2-upsampler-out"], catalogue)] == [
        "up_blocks.2.upsamplers.0"
    ]


def test_attention_map_view_inverts_the_feature_layout():
    probs = torch.rand(2, 3, 4 * 5, 7).softmax(-1)  # (B, heads, L, S)
    feature = probs_to_map(probs, 4, 5)
    assert feature.shape == (2, 21, 4, 5)
    assert torch.equal(attention_map_view(feature, 3), probs)
    # channel head * S + key holds the attention of every query pixel to that key
    assert torch.equal(feature[1, 2 * 7 + 6].flatten(), probs[1, 2, :, 6])
    with pytest.raises(ValueError, match="heads: 4 does not divide the map's 21 channels"):
        attention_map_view(feature, 4)
