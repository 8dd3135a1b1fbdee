"""The CLI's LoRA and ControlNet options: same features as the API, bad inputs exit 2 first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from diffeat import FeatureExtractor
from diffeat.cli import main
from diffeat.configs import TINY_SD15_UNET
from diffeat.io import load_features, load_image

TARGET = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"


@pytest.fixture(scope="module")
def adapter_files(pipes, tmp_path_factory) -> dict[str, Path]:
    from diffusers.utils import convert_state_dict_to_diffusers

    folder = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(3)
    unet = UNet2DConditionModel(**TINY_SD15_UNET)
    unet.add_adapter(
        LoraConfig(r=2, lora_alpha=2, target_modules=[TARGET], init_lora_weights=False)
    )
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(folder / "lora", unet_lora_layers=layers)
    bad = {k.replace("up_blocks.1", "up_blocks.7"): v for k, v in layers.items()}
    StableDiffusionPipeline.save_lora_weights(folder / "bad_lora", unet_lora_layers=bad)
    ControlNetModel.from_unet(pipes["sd15"].unet).save_pretrained(folder / "control")
    ControlNetModel.from_unet(pipes["sdxl"].unet).save_pretrained(folder / "control_xl")
    rng = np.random.default_rng(0)
    for name in ("img", "cond"):
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return {
        "lora": folder / "lora" / "pytorch_lora_weights.safetensors",
        "bad_lora": folder / "bad_lora" / "pytorch_lora_weights.safetensors",
        "control": folder / "control",
        "control_xl": folder / "control_xl",
        "img": folder / "img.png",
        "cond": folder / "cond.png",
        "folder": folder,
    }


def test_extract_with_lora_and_controlnet_matches_the_api(model_dirs, adapter_files, capsys):
    f = adapter_files
    out = f["folder"] / "feats.safetensors"
    names = ["up-level1-repeat0-vit-block0-self-q", "control-residual3", "unet-out"]
    argv = ["extract", str(f["img"]), "--model", str(model_dirs["sd15"]), "--layers",
            ",".join(names), "--lora", str(f["lora"]), "--lora-scale", "0.5",
            "--controlnet", str(f["control"]), "--control-image", str(f["cond"]),
            "--control-scale", "0.8", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    features, meta = load_features(out)
    assert list(features) == names and meta["lora"] == [str(f["lora"])]
    assert meta["controlnet"] == str(f["control"])
    extractor = FeatureExtractor.from_pretrained(
        model_dirs["sd15"],
        layers=names,
        lora=str(f["lora"]),
        lora_scale=0.5,
        controlnet=str(f["control"]),
        control_scale=0.8,
    )
    assert extractor.loras == {"lora0": 0.5} and extractor.control_scale == 0.8
    reference = extractor(
        [load_image(f["img"])], control_image=load_image(f["cond"]), generator=extractor.generator()
    )
    for name in names:
        assert torch.equal(features[name], reference[name]), name


CASES = {
    "lora_mismatch": (
        ["--lora", "{bad_lora}"],
        "--lora {bad_lora}: 'unet.up_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q."
        "lora_A.weight' targets unet.up_blocks.7.attentions.0.transformer_blocks.0.attn1."
        "to_q, which this model does not have; the LoRA was made for another model",
    ),
    "lora_missing": (
        ["--lora", "{folder}/nope.safetensors"],
        "--lora: no LoRA file or folder {folder}/nope.safetensors (nothing at "
        "{folder}/nope.safetensors)",
    ),
    "fuse_without_lora": (["--fuse-lora"], "--fuse-lora: needs --lora PATH"),
    "controlnet_without_image": (
        ["--controlnet", "{control}"],
        "--controlnet: needs --control-image PATH",
    ),
    "image_without_controlnet": (
        ["--control-image", "{cond}"],
        "--control-image: needs --controlnet PATH",
    ),
    "controlnet_of_sdxl": (
        ["--controlnet", "{control_xl}", "--control-image", "{cond}"],
        "--controlnet: it does not fit this U-Net: block_out_channels [8, 16, 16] (U-Net: [8, "
        "16, 16, 16]); down_block_types",
    ),
    "lora_scale_nan": (["--lora-scale", "nan"], "--lora-scale: must be a finite number; got nan"),
    "control_image_unreadable": (
        ["--controlnet", "{control}", "--control-image", "{lora}"],
        "--control-image {lora} is not a readable image",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_adapter_options_exit_2_before_any_model_load(
    case, model_dirs, adapter_files, capsys, monkeypatch
):
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(FeatureExtractor, "from_pretrained", fail)
    monkeypatch.setattr(ControlNetModel, "from_pretrained", fail)
    extra, message = CASES[case]
    paths = {k: str(v) for k, v in adapter_files.items()}
    out = adapter_files["folder"] / f"{case}.safetensors"
    argv = ["extract", paths["img"], "--model", str(model_dirs["sd15"]), "--layers", "unet-out",
            *(arg.format(**paths) for arg in extra), "-o", str(out)]  # fmt: skip
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert captured.err.startswith(f"diffeat extract: error: {message.format(**paths)}")
    assert captured.err.count("\n") == 1 and not out.exists()
