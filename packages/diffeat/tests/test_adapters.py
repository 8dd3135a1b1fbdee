"""LoRA (diffusers' loaders, PEFT), ControlNet in the extraction pass, features with gradients."""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from diffeat import FeatureExtractor
from diffeat.configs import tiny_pipeline

TARGET = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
TARGET_NAME = "up-level1-repeat0-vit-block0-self-q"


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory) -> str:
    """A rank-2 LoRA on one projection of the tiny SD 1.5 U-Net, in diffusers' file format
    (as diffusers' training scripts write it: PEFT adapter -> save_lora_weights)."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers

    from diffeat.configs import TINY_SD15_UNET

    torch.manual_seed(11)
    unet = UNet2DConditionModel(**TINY_SD15_UNET)
    unet.add_adapter(
        LoraConfig(r=2, lora_alpha=2, target_modules=[TARGET], init_lora_weights=False)
    )
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers)
    return str(folder / "pytorch_lora_weights.safetensors")


def fresh(kind: str = "sd15", **options) -> FeatureExtractor:
    """An extractor on its own tiny pipeline (LoRAs and ControlNets change the U-Net)."""
    return FeatureExtractor.from_pipeline(tiny_pipeline(kind, seed=0), **options)


def test_a_lora_changes_exactly_the_layer_it_targets(lora_file, images):
    extractor = fresh(layers="all")
    base = extractor(images[:1], "a photo")
    assert extractor.load_lora(lora_file) == "lora0" and extractor.loras == {"lora0": 1.0}
    tuned = extractor(images[:1], "a photo")
    names = list(base)
    changed = [n for n in names if not torch.equal(base[n], tuned[n])]
    # everything computed before the projection is untouched, the projection itself changes
    # first, and its siblings (keys and values of the same attention) do not
    assert changed[0] == TARGET_NAME
    assert all(torch.equal(base[n], tuned[n]) for n in names[: names.index(TARGET_NAME)])
    for sibling in ("self-k", "self-v"):
        name = TARGET_NAME.replace("self-q", sibling)
        assert torch.equal(base[name], tuned[name]), name
    # the change is the LoRA's low-rank update B A x (scale alpha / r = 1)
    state = extractor.unet.get_submodule(TARGET)
    delta = (tuned[TARGET_NAME] - base[TARGET_NAME]).flatten(2).transpose(1, 2)  # (1, L, C)
    rank = torch.linalg.matrix_rank(delta[0].double(), atol=1e-5)
    assert int(rank) == 2 and state.lora_A["lora0"].weight.shape == (2, 16)


def test_lora_scale_and_fuse(lora_file, images):
    name = "up-level1-repeat0-vit-block0-out"
    base = fresh(layers=[name])(images[:1])[name]
    unfused = fresh(layers=[name])
    unfused.load_lora(lora_file, scale=0.5)
    fused = fresh(layers=[name])
    fused.load_lora(lora_file, scale=0.5, fuse=True)
    assert fused.loras == {} and fused.fused_loras == ["lora0"]
    assert not any("lora" in n for n, _ in fused.unet.named_parameters())  # a plain U-Net again
    a, b = unfused(images[:1])[name], fused(images[:1])[name]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, base, atol=1e-4)
    zero = fresh(layers=[name])
    zero.load_lora(lora_file, scale=0.0)
    assert torch.equal(zero(images[:1])[name], base)
    with pytest.raises(ValueError, match=r"fuse_lora: unfused LoRAs \['lora0'\] are loaded"):
        unfused.load_lora(lora_file, fuse=True)


def test_loras_that_do_not_fit_raise_one_error_before_loading(lora_file, images):
    from safetensors.torch import load_file

    state = load_file(lora_file)
    extractor = fresh(layers=["unet-out"])
    cases = {
        "targets unet.up_blocks.9": {
            k.replace("up_blocks.1", "up_blocks.9"): v for k, v in state.items()
        },
        "takes 5 input features but": {
            k: (v[:, :5] if "down" in k else v) for k, v in state.items()
        },
        "gives 3 output features but": {k: (v[:3] if "up." in k else v) for k, v in state.items()},
        r"addresses no component of this model \(keys must start with unet\., text_encoder\.\)": {
            k.replace("unet.", "transformer."): v for k, v in state.items()
        },
        "a Attention; LoRA applies to linear and convolution layers": {
            k.replace(".to_q.", "."): v for k, v in state.items()
        },
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message):
            extractor.load_lora(bad)
    # an SDXL LoRA into SD 1.5: its text_encoder_2 keys name no component here
    second = "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora.down.weight"
    with pytest.raises(ValueError, match=f"key {second!r} addresses no component"):
        extractor.load_lora({**state, second: torch.zeros(2, 16)})
    assert not any("lora" in n for n, _ in extractor.unet.named_parameters())  # nothing loaded
    assert extractor.loras == {}
    # an extractor without a text stack has no text_encoder component
    pipe = tiny_pipeline("sd15", seed=0)
    bare = FeatureExtractor(pipe.unet, pipe.vae, pipe.scheduler)
    text_key = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora.down.weight"
    with pytest.raises(ValueError, match=r"keys must start with unet\.\)"):
        bare.load_lora({**state, text_key: torch.zeros(2, 16)})


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_zero_initialised_controlnet_equals_the_plain_pass(kind, images):
    plain = fresh(kind, layers="all")
    controlled = fresh(kind, layers="all")
    controlled.set_controlnet(ControlNetModel.from_unet(controlled.unet), scale=0.7)
    unet_names = [s.name for s in plain.activations]
    control_names = [s.name for s in controlled.control_catalogue]
    assert len(controlled.activations) == len(unet_names) + len(control_names)
    assert control_names[:2] == ["control-after-conv-in", "control-cond-embedding-out"]
    assert control_names[-1] == "control-mid-residual"
    condition = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reference = plain(images[:, :, :64, :64], "a photo")
    features = controlled(images[:, :, :64, :64], "a photo", control_image=condition)
    assert list(features) == unet_names + control_names
    for name in unet_names:
        assert torch.equal(features[name], reference[name]), name
    for info in controlled.layer_infos(64):
        assert tuple(features[info.name].shape[1:]) == info.shape, info.name
    # zero-initialised output layers (and the conditioning embedding's last convolution)
    assert features["control-residual0"].abs().max() == 0
    assert features["control-cond-embedding-out"].abs().max() == 0
    assert features["control-after-conv-in"].abs().max() > 0


def test_controlnet_residuals_reach_the_unet(images):
    names = ["down-level3-repeat1-res-out", "mid-repeat1-res-out", "up-level0-repeat0-res-out"]
    extractor = fresh(layers=[*names, "unet-out"])
    controlnet = ControlNetModel.from_unet(extractor.unet)
    torch.manual_seed(1)
    zeroed = [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]
    with torch.no_grad():
        for block in zeroed:
            block.weight.normal_(0, 0.1)
    plain = extractor(images[:1])
    extractor.set_controlnet(controlnet)
    condition = torch.rand(1, 3, 128, 192)
    controlled = extractor(images[:1], control_image=condition)
    # the residuals are added to the skip connections and the mid block's output: the down
    # and mid blocks compute as before, the up blocks see the sums
    for name in names[:2]:
        assert torch.equal(controlled[name], plain[name]), name
    assert not torch.allclose(controlled[names[2]], plain[names[2]])
    assert not torch.allclose(controlled["unet-out"], plain["unet-out"])
    # the conditioning image matters; a PIL image or a smaller tensor is resized to the images'
    other = extractor(images[:1], control_image=torch.zeros(1, 3, 64, 96))
    assert not torch.allclose(other["unet-out"], controlled["unet-out"])
    # ControlNet names alone: the U-Net does not run
    calls = []
    handle = extractor.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        only = extractor(images[:1], control_image=condition, layers=["control-mid-residual"])
    finally:
        handle.remove()
    assert calls == [] and only["control-mid-residual"].shape == (1, 16, 2, 3)


def test_controlnet_inputs_and_mismatches_raise(images):
    extractor = fresh(layers=["unet-out"])
    with pytest.raises(ValueError, match="control_image: this extractor has no ControlNet"):
        extractor(images, control_image=images)
    sdxl_controlnet = ControlNetModel.from_unet(tiny_pipeline("sdxl", seed=0).unet)
    with pytest.raises(ValueError, match="controlnet: it does not fit this U-Net: block_out"):
        extractor.set_controlnet(sdxl_controlnet)
    assert extractor.controlnet is None and extractor.control_catalogue == []
    extractor.set_controlnet(ControlNetModel.from_unet(extractor.unet))
    with pytest.raises(ValueError, match="control_image: this extractor has a ControlNet; pass"):
        extractor(images)
    with pytest.raises(ValueError, match="control_image: 3 images for a batch of 2"):
        extractor(images, control_image=torch.rand(3, 3, 128, 192))
    with pytest.raises(ValueError, match=r"control_image: images: values must lie in \[0, 1\]"):
        extractor(images, control_image=images * 2 - 1)
    with pytest.raises(ValueError, match="control_scale: must be a number"):
        extractor.set_controlnet(extractor.controlnet, scale="high")


def test_features_keep_the_graph_when_asked_and_gradients_reach_the_unet(lora_file, images):
    default = fresh(preset="ours-v1.5")
    for value in default(images[:1]).values():
        assert not value.requires_grad and value.grad_fn is None
    extractor = fresh(preset="ours-v1.5", requires_grad=True)
    features = extractor(images[:1], "a photo")
    assert all(value.requires_grad for value in features.values())
    loss = sum(value.float().square().mean() for value in features.values())
    loss.backward()
    unet = extractor.unet
    for module in (unet.conv_in, unet.down_blocks[0], unet.mid_block, unet.up_blocks[1]):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # early exit: the last up block and conv_out never ran, so they get no gradient
    assert unet.conv_out.weight.grad is None
    assert all(p.grad is None for p in unet.up_blocks[3].resnets[2].parameters())
    # the VAE encode and the text encoder stay without gradients
    assert all(p.grad is None for p in extractor.vae.parameters())
    assert all(p.grad is None for p in extractor.text_encoders[0].parameters())
    # a LoRA's parameters are trained the same way (base weights frozen by the user)
    tuned = fresh(layers=[TARGET_NAME], requires_grad=True)
    tuned.load_lora(lora_file)
    for name, param in tuned.unet.named_parameters():
        param.requires_grad_("lora_" in name)
    tuned(images[:1])[TARGET_NAME].square().mean().backward()
    lora_a = tuned.unet.get_submodule(TARGET).lora_A["lora0"].weight
    assert lora_a.grad is not None and lora_a.grad.abs().sum() > 0


def test_gradients_through_controlnet_and_faithful_vae_out(images):
    extractor = fresh(layers=["vae-out"], faithful=True, requires_grad=True)
    extractor.set_controlnet(ControlNetModel.from_unet(extractor.unet))
    square = images[:1, :, :, :128]
    out = extractor(square, control_image=square)["vae-out"]
    assert out.shape == (1, 3, 128, 128) and out.requires_grad
    out.mean().backward()
    assert extractor.unet.conv_out.weight.grad is not None  # through the scheduler step
    assert extractor.controlnet.controlnet_mid_block.weight.grad is not None


def test_kohya_lora_network_alpha_scales_the_update(images):
    """A Kohya-format LoRA (converted by diffusers' lora_state_dict) keeps its network alpha:
    alpha 1 at rank 2 moves the targeted projection by half of what alpha 2 does."""
    torch.manual_seed(5)
    key = "lora_unet_" + TARGET.replace(".", "_")
    down, up = torch.randn(2, 16), torch.randn(16, 2)

    def kohya(alpha: float) -> dict[str, torch.Tensor]:
        return {
            f"{key}.lora_down.weight": down.clone(),
            f"{key}.lora_up.weight": up.clone(),
            f"{key}.alpha": torch.tensor(alpha),
        }

    base = fresh(layers=[TARGET_NAME])(images[:1])[TARGET_NAME]
    deltas = []
    for alpha in (1.0, 2.0):
        extractor = fresh(layers=[TARGET_NAME])
        extractor.load_lora(kohya(alpha))
        deltas.append(extractor(images[:1])[TARGET_NAME] - base)
    assert deltas[1].abs().max() > 1e-3
    torch.testing.assert_close(deltas[0], deltas[1] / 2, atol=1e-5, rtol=1e-4)
