"""SDXL LoRAs: a tiny PEFT LoRA saved with diffusers' helper and loaded back changes exactly
the targeted layers, acts on every stage, and a LoRA of another model is one error."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from safetensors.torch import load_file, save_file

from pixelsmith import PixelsmithConfig, PixelsmithPipeline, generate_cascade
from pixelsmith.cli import main
from pixelsmith.lora import load_loras
from pixelsmith.tiny import TINY_UNET_CONFIG

PROMPT = "a cat"
TARGETS = ("to_q", "to_v")
FILE = "pytorch_lora_weights.safetensors"


def save_lora(unet: UNet2DConditionModel, folder, targets=TARGETS, seed: int = 1) -> dict:
    """A rank-2 LoRA on ``targets`` of a copy of ``unet`` (random A and B), saved with
    diffusers' ``save_lora_weights``; returns the saved state dict (diffusers' keys)."""
    torch.manual_seed(seed)
    model = copy.deepcopy(unet)
    model.add_adapter(
        LoraConfig(r=2, lora_alpha=2, target_modules=list(targets), init_lora_weights=False)
    )
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=layers)
    return load_file(folder / FILE)


def unet_output(pipe, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 8, 8, generator=gen)
    hidden = torch.randn(1, 5, 32, generator=gen)
    added = {"text_embeds": torch.randn(1, 16, generator=gen), "time_ids": torch.ones(1, 6)}
    with torch.no_grad():
        return pipe.unet(sample, 10, hidden, added_cond_kwargs=added).sample


def test_lora_changes_exactly_the_targeted_layers(make_pipe, components, tmp_path):
    saved = save_lora(components["unet"], tmp_path / "lora")
    pipe = make_pipe()
    pipe.unet = copy.deepcopy(components["unet"])
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    plain = unet_output(pipe)
    pipe.load_lora_weights(tmp_path / "lora", adapter_name="style")
    wrapped = {n for n, m in pipe.unet.named_modules() if isinstance(m, BaseTunerLayer)}
    targeted = {name for name, _ in components["unet"].named_modules() if name.endswith(TARGETS)}
    assert wrapped == targeted and len(targeted) == 16  # 4 blocks x 2 attentions x 2
    # the base weights are untouched; only the LoRA matrices were added
    after = {k.replace(".base_layer", ""): v for k, v in pipe.unet.state_dict().items()}
    assert all(torch.equal(after[k], v) for k, v in before.items())
    # each targeted layer is W x + (alpha / r) B A x with the file's matrices
    name = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
    x = torch.randn(3, 16)
    down, up = saved[f"unet.{name}.lora.down.weight"], saved[f"unet.{name}.lora.up.weight"]
    layer = pipe.unet.get_submodule(name)
    with torch.no_grad():
        expected = layer.base_layer(x) + (2 / 2) * (x @ down.T @ up.T)
        torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(unet_output(pipe), plain)
    pipe.set_adapters(["style"], adapter_weights=[0.0])
    assert torch.equal(unet_output(pipe), plain)
    assert pipe.get_list_adapters() == {"unet": ["style"]}


def test_lora_acts_on_every_stage_and_is_part_of_the_run(
    make_pipe, components, small_config, tmp_path
):
    save_lora(components["unet"], tmp_path / "lora")
    options = dict(num_inference_steps=2, seed=0, config=small_config, progress=False)
    plain_pipe = make_pipe()
    plain_pipe.unet = copy.deepcopy(components["unet"])
    latents = {}

    def record(name):
        return lambda stage, step, current, plan: latents.setdefault(name, []).append(
            current.clone()
        )

    plain = generate_cascade(
        plain_pipe, PROMPT, [64, 128], [1], callback=record("plain"), **options
    )
    pipe = make_pipe()
    pipe.unet = copy.deepcopy(components["unet"])
    assert load_loras(pipe, [tmp_path / "lora"], [0.0]) == ["lora_0"]
    off = generate_cascade(pipe, PROMPT, [64, 128], [1], callback=record("off"), **options)
    # scale 0 is the plain model: the UNet output is equal exactly (test above); through the
    # cascade PEFT's wrapped layers change float rounding, so latents agree to float precision
    # and the 8-bit image to one level
    for got, expected in zip(latents["off"], latents["plain"], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert np.abs(np.asarray(off).astype(int) - np.asarray(plain)).max() <= 1
    pipe.set_adapters(["lora_0"], adapter_weights=[1.0])
    out = tmp_path / "out.png"
    generate_cascade(
        pipe, PROMPT, [64, 128], [1], output=out, keep_checkpoint=True, callback=record("lora"),
        **options,
    )  # fmt: skip
    # the base stage differs already (its latent starts the stage's first step)
    assert not torch.allclose(latents["lora"][0], latents["plain"][0])
    # a checkpoint made with one LoRA scale is not resumed with another
    pipe.set_adapters(["lora_0"], adapter_weights=[0.5])
    with pytest.raises(ValueError, match=r"belongs to a run with other settings \(model differ\)"):
        generate_cascade(pipe, PROMPT, [64, 128], [1], output=out, **options)


def test_text_encoder_lora_changes_the_prompt_embeddings(make_pipe, components, tmp_path):
    """A LoRA on the second text encoder's q_proj (made with PEFT itself: transformers 5.24's
    `add_adapter` wants peft>=0.22, which pixelsmith's load path does not need), saved with
    diffusers' helper: exactly those layers are wrapped, the embeddings change, scale 0 is the
    plain encoder."""
    encoder = copy.deepcopy(components["text_encoder_2"])
    torch.manual_seed(2)
    lora = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    encoder = inject_adapter_in_model(lora, encoder)
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path / "te_lora", text_encoder_2_lora_layers=get_peft_model_state_dict(encoder)
    )
    pipe = make_pipe()
    pipe.text_encoder_2 = copy.deepcopy(components["text_encoder_2"])
    plain = pipe.encode_text(PROMPT, guidance_scale=7.5)
    load_loras(pipe, [tmp_path / "te_lora"])
    wrapped = {n for n, m in pipe.text_encoder_2.named_modules() if isinstance(m, BaseTunerLayer)}
    assert wrapped == {f"text_model.encoder.layers.{i}.self_attn.q_proj" for i in range(2)}
    assert pipe.get_list_adapters() == {"text_encoder_2": ["lora_0"]}
    changed = pipe.encode_text(PROMPT, guidance_scale=7.5)
    assert not torch.allclose(changed.pooled, plain.pooled)
    pipe.set_adapters(["lora_0"], adapter_weights=[0.0])
    off = pipe.encode_text(PROMPT, guidance_scale=7.5)
    assert torch.equal(off.prompt_embeds, plain.prompt_embeds)
    assert torch.equal(off.pooled, plain.pooled)


def test_lora_of_another_model_is_one_error_before_loading(make_pipe, components, tmp_path):
    wide = dict(TINY_UNET_CONFIG, block_out_channels=(8, 16, 32))
    torch.manual_seed(0)
    save_lora(UNet2DConditionModel(**wide), tmp_path / "wide", targets=("to_q",))
    save_file({"foo.lora_A.weight": torch.zeros(2, 2)}, tmp_path / "junk.safetensors")
    pipe = make_pipe()
    pipe.unet = copy.deepcopy(components["unet"])
    with pytest.raises(ValueError) as error:
        pipe.load_lora_weights(tmp_path / "wide")
    key = "unet.down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight"
    assert str(error.value) == (
        f"lora {tmp_path / 'wide'}: does not match the model: {key}: "
        "unet.down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q has 16 input features, "
        "the file's down matrix (2, 32) expects 32 (and 15 more tensors); is it a LoRA for "
        "another base model than this SDXL one?"
    )
    with pytest.raises(ValueError, match=r"holds no LoRA matrix of an SDXL UNet or text encoder"):
        load_loras(pipe, [tmp_path / "junk.safetensors"])
    with pytest.raises(FileNotFoundError, match=r"^loras: no LoRA file or folder \./nope/lora"):
        load_loras(pipe, ["./nope/lora"])
    with pytest.raises(ValueError, match=r"lora_scales takes one scale for all LoRAs or one per"):
        load_loras(pipe, [tmp_path / "wide"], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"lora_scales must be finite numbers, got nan"):
        load_loras(pipe, [tmp_path / "wide"], [float("nan")])
    assert pipe.get_list_adapters() == {}  # nothing was loaded
    assert not any(isinstance(m, BaseTunerLayer) for m in pipe.unet.modules())


def test_cli_lora_equals_api_and_bad_lora_exits_2(components, tmp_path, capsys):
    model = tmp_path / "tiny"
    assert main(["tiny-model", str(model)]) == 0
    pipe = PixelsmithPipeline.from_pretrained(model)
    save_lora(pipe.unet, tmp_path / "lora")
    save_file({"foo.lora_A.weight": torch.zeros(2, 2)}, tmp_path / "junk.safetensors")
    common = ["--model", str(model), "--sizes", "64", "--steps", "2", "--quiet"]
    png = tmp_path / "cat.png"
    argv = ["generate", "a cat", "-o", str(png), *common, "--lora", str(tmp_path / "lora")]
    assert main([*argv, "--lora-scale", "0.5"]) == 0
    pipe.set_progress_bar_config(disable=True)
    load_loras(pipe, [tmp_path / "lora"], [0.5])
    expected = generate_cascade(
        pipe, "a cat", [64], [], num_inference_steps=2, seed=0, progress=False,
        config=PixelsmithConfig(),
    )  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(expected))
    capsys.readouterr()
    junk = tmp_path / "junk.safetensors"
    bad = ["generate", "a cat", "-o", str(tmp_path / "x.png"), *common, "--lora", str(junk)]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err == (
        f"pixelsmith generate: error: --lora: lora {junk}: holds no LoRA matrix of an SDXL UNet "
        "or text encoder (keys such as 'foo.lora_A.weight'); expected an SDXL LoRA in "
        "diffusers, PEFT or kohya format\n"
    )
    assert main([*argv, "--lora-scale", "1", "2"]) == 2
    assert capsys.readouterr().err == (
        "pixelsmith generate: error: --lora-scale takes one scale for all LoRAs or one per "
        "LoRA (1), got 2\n"
    )
    assert not (tmp_path / "x.png").exists()
