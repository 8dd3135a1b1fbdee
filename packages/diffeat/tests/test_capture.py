"""Hooked activations equal manual recomputations; recording changes nothing; early exit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from diffeat import ActivationRecorder, MissingActivationsError, build_catalogue, layer_infos
from diffeat.configs import unet_config

LATENT = (2, 4, 16, 24)  # non-square latent: 128 x 192 pixels


def unet_inputs(pipe, kind: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(LATENT, generator=generator)
    context = torch.randn(2, 16, pipe.unet.config.cross_attention_dim, generator=generator)
    kwargs = {}
    if kind == "sdxl":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, 16, generator=generator),
            "time_ids": torch.tensor([[128.0, 192, 0, 0, 128, 192]] * 2),
        }
    return sample, torch.tensor(50), context, kwargs


def run(unet, names, inputs, **options):
    sample, timestep, context, kwargs = inputs
    recorder = ActivationRecorder(unet, names, **options)
    out = None  # stays None when the recorder stops the pass early
    with torch.no_grad(), recorder:
        out = unet(sample, timestep, context, return_dict=False, **kwargs)[0]
    return recorder, out


def plain_output(unet, inputs):
    sample, timestep, context, kwargs = inputs
    with torch.no_grad():
        return unet(sample, timestep, context, return_dict=False, **kwargs)[0]


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_every_name_fires_with_the_meta_shape_and_nothing_changes(pipes, kind):
    unet = pipes[kind].unet
    inputs = unet_inputs(pipes[kind], kind)
    names = [s.name for s in build_catalogue(unet)]
    recorder, out = run(unet, names, inputs, early_exit=False)
    assert list(recorder.features) != [] and recorder.missing() == []
    expected = {i.name: i.shape for i in layer_infos(unet, (128, 192), text_tokens=16)}
    for name in names:
        assert tuple(recorder.features[name].shape) == (2, *expected[name]), name
    # recording every activation (q/k/v/maps included) leaves the U-Net output bit-identical
    assert torch.equal(out, plain_output(unet, inputs))
    assert torch.equal(recorder.features["unet-out"], out)
    assert torch.equal(recorder.features["unet-in"], inputs[0])
    # everything is restored: no hooks left, original processors back
    for module in unet.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        if isinstance(module, Attention):
            assert isinstance(module.processor, AttnProcessor2_0)


def capture_module_io(module, store: dict, key: str):
    def hook(mod, args, kwargs, output):
        store[key] = (args, kwargs, output)

    return module.register_forward_hook(hook, with_kwargs=True)


def tokens(x, height, width):
    """(B, C, h, w) -> (B, h*w, C), the reference's own layout change."""
    return x.flatten(2).transpose(1, 2)


def test_transformer_block_activations_equal_manual_recomputation(pipes, vit_block_names):
    unet = pipes["sd15"].unet
    inputs = unet_inputs(pipes["sd15"], "sd15")
    prefix = "up-level2-repeat1-vit-block0"
    block = unet.up_blocks[2].attentions[1].transformer_blocks[0]
    names = vit_block_names(prefix)
    seen: dict = {}
    handles = [
        capture_module_io(block.norm1, seen, "norm1"),
        capture_module_io(block.norm2, seen, "norm2"),
        capture_module_io(block.norm3, seen, "norm3"),
        capture_module_io(block, seen, "block"),
    ]
    try:
        recorder, _ = run(unet, names, inputs, early_exit=False)
    finally:
        for h in handles:
            h.remove()
    f = {k.removeprefix(prefix + "-"): v for k, v in recorder.features.items()}
    height, width = 8, 12  # up level 2 of a 16 x 24 latent
    n1, n2, n3 = (seen[k][2].double() for k in ("norm1", "norm2", "norm3"))
    attn1, attn2 = block.attn1, block.attn2

    def linear(layer, x):
        bias = None if layer.bias is None else layer.bias.double()
        return F.linear(x, layer.weight.double(), bias)

    q, k, v = linear(attn1.to_q, n1), linear(attn1.to_k, n1), linear(attn1.to_v, n1)
    for name, ref in (("self-q", q), ("self-k", k), ("self-v", v)):
        torch.testing.assert_close(
            tokens(f[name].double(), height, width), ref, atol=1e-5, rtol=1e-5
        )
    heads = attn1.heads

    def attention_probs(query, key):  # (B, L, C), (B, S, C) -> (B, heads, L, S), fp64
        b, length, c = query.shape
        qh = query.reshape(b, length, heads, c // heads).transpose(1, 2)
        kh = key.reshape(b, key.shape[1], heads, c // heads).transpose(1, 2)
        return (qh @ kh.transpose(-1, -2) / (c // heads) ** 0.5).softmax(-1)

    self_map = attention_probs(q, k)  # (B, heads, L, L)
    got = f["self-map"].double().reshape(2, heads, height * width, height * width).transpose(2, 3)
    torch.testing.assert_close(got, self_map, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        got.sum(-1), torch.ones(2, heads, height * width, dtype=torch.float64)
    )
    context = inputs[2].double()
    cq = linear(attn2.to_q, n2)
    torch.testing.assert_close(
        tokens(f["cross-q"].double(), height, width), cq, atol=1e-5, rtol=1e-5
    )
    cross_map = attention_probs(cq, linear(attn2.to_k, context))  # (B, heads, L, 16)
    got = f["cross-map"].double().reshape(2, heads, 16, height * width).transpose(2, 3)
    torch.testing.assert_close(got, cross_map, atol=1e-5, rtol=1e-4)
    hidden, gate = linear(block.ff.net[0].proj, n3).chunk(2, dim=-1)
    geglu = hidden * F.gelu(gate)  # (B, L, 4C)
    assert f["ffn-inner"].shape[1] == 4 * block.norm3.normalized_shape[0]
    torch.testing.assert_close(
        tokens(f["ffn-inner"].double(), height, width), geglu, atol=1e-5, rtol=1e-5
    )
    block_out = seen["block"][2]
    torch.testing.assert_close(tokens(f["out"], height, width), block_out, atol=0, rtol=0)


def test_resnet_transformer_sampler_and_unet_activations_equal_recomputation(pipes):
    unet = pipes["sd15"].unet
    inputs = unet_inputs(pipes["sd15"], "sd15")
    resnet = unet.down_blocks[1].resnets[0]  # has a conv shortcut (8 -> 16 channels)
    transformer = unet.up_blocks[1].attentions[2]
    down = unet.down_blocks[0].downsamplers[0]
    up = unet.up_blocks[0].upsamplers[0]
    seen: dict = {}
    handles = [
        capture_module_io(resnet, seen, "resnet"),
        capture_module_io(transformer, seen, "transformer"),
        capture_module_io(down, seen, "down"),
        capture_module_io(up, seen, "up"),
        capture_module_io(unet.conv_in, seen, "conv_in"),
    ]
    names = [
        "down-level1-repeat0-res-increment",
        "down-level1-repeat0-res-out",
        "up-level1-repeat2-vit-out",
        "down-level0-downsampler-out",
        "up-level0-upsampler-out",
        "unet-after-conv-in",
    ]
    try:
        recorder, _ = run(unet, names, inputs, early_exit=False)
    finally:
        for h in handles:
            h.remove()
    f = recorder.features
    (res_in, _temb), _, res_out = seen["resnet"]
    assert resnet.conv_shortcut is not None and resnet.output_scale_factor == 1.0
    torch.testing.assert_close(f["down-level1-repeat0-res-out"], res_out, atol=0, rtol=0)
    with torch.no_grad():
        residual = resnet.conv_shortcut(res_in)
    torch.testing.assert_close(
        f["down-level1-repeat0-res-increment"], res_out - residual, atol=1e-6, rtol=1e-6
    )
    with torch.no_grad():
        again = transformer(*seen["transformer"][0], **seen["transformer"][1])[0]
        down_again = down(*seen["down"][0], **seen["down"][1])
        up_again = up(*seen["up"][0], **seen["up"][1])
        conv_in = unet.conv_in(inputs[0])
    torch.testing.assert_close(f["up-level1-repeat2-vit-out"], again, atol=0, rtol=0)
    torch.testing.assert_close(f["down-level0-downsampler-out"], down_again, atol=0, rtol=0)
    torch.testing.assert_close(f["up-level0-upsampler-out"], up_again, atol=0, rtol=0)
    torch.testing.assert_close(f["unet-after-conv-in"], conv_in, atol=0, rtol=0)


class CallCounter:
    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, *args):
        self.calls += 1


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_early_exit_gives_identical_features_and_skips_the_rest(pipes, kind):
    from diffeat import PRESETS

    unet = pipes[kind].unet
    inputs = unet_inputs(pipes[kind], kind, seed=3)
    names = list(PRESETS["ours-xl" if kind == "sdxl" else "ours-v1.5"].layers)
    full, _ = run(unet, names, inputs, early_exit=False)
    conv_out = CallCounter(unet.conv_out)
    first_last = CallCounter(unet.up_blocks[-1].resnets[0])
    last_last = CallCounter(unet.up_blocks[-1].resnets[-1])
    try:
        early, out = run(unet, names, inputs, early_exit=True)
    finally:
        for counter in (conv_out, first_last, last_last):
            counter.handle.remove()
    assert out is None  # the recorder stopped the pass and swallowed the stop signal
    assert set(early.features) == set(names)
    for name in names:
        assert torch.equal(early.features[name], full.features[name]), name
    assert conv_out.calls == 0 and last_last.calls == 0
    # Ours-v1.5 ends in the last up block's first repeat; Ours-XL never reaches that block
    assert first_last.calls == (1 if kind == "sd15" else 0)


def test_faithful_mode_plain_attention_and_square_tokens(pipes):
    unet = pipes["sd15"].unet
    sample, timestep, context, kwargs = unet_inputs(pipes["sd15"], "sd15")
    square = (sample[..., :16], timestep, context, kwargs)  # 16 x 16 latent
    name = "up-level3-repeat0-vit-block0-self-map"
    processors = []

    def spy(module, args, kwargs):
        processors.append(
            type(unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.processor)
        )

    handle = unet.conv_in.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        faithful, _ = run(
            unet, [name, "unet-out"], square, square_tokens=True, plain_attention=True
        )
        exact, _ = run(unet, [name, "unet-out"], square)
    finally:
        handle.remove()
    assert processors == [AttnProcessor, AttnProcessor2_0]  # every layer plain only when faithful
    torch.testing.assert_close(faithful.features[name], exact.features[name], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        faithful.features["unet-out"], exact.features["unet-out"], atol=1e-4, rtol=1e-4
    )
    with pytest.raises(ValueError, match=r"h = w = sqrt\(L\).*L = 384 tokens.*faithful=False"):
        run(unet, [name], (sample, timestep, context, kwargs), square_tokens=True)


def test_names_that_never_fire_raise_naming_them(pipes):
    unet = UNet2DConditionModel(**unet_config("tiny-sd15")).eval()
    inputs = unet_inputs(pipes["sd15"], "sd15")
    transformer = unet.up_blocks[3].attentions[0]
    transformer.forward = lambda hidden_states, *args, **kwargs: (hidden_states,)  # bypassed
    names = ["up-level3-repeat0-vit-block0-out", "up-level3-repeat0-vit-out", "unet-out"]
    recorder = ActivationRecorder(unet, names)
    sample, timestep, context, kwargs = inputs
    with (
        pytest.raises(
            MissingActivationsError, match=r"never fired.*\['up-level3-repeat0-vit-block0-out'\]"
        ),
        torch.no_grad(),
        recorder,
    ):
        unet(sample, timestep, context, return_dict=False, **kwargs)
    assert recorder.missing() == ["up-level3-repeat0-vit-block0-out"]
    assert set(recorder.features) == {"up-level3-repeat0-vit-out", "unet-out"}
    assert not recorder._handles and not recorder._processors  # the U-Net is restored


def test_unsupported_attention_variants_raise(pipes):
    unet = UNet2DConditionModel(**unet_config("tiny-sd15")).eval()
    unet.fuse_qkv_projections()
    inputs = unet_inputs(pipes["sd15"], "sd15")
    with pytest.raises(ValueError, match=r"attn1: cannot record.*fused q/k/v projections"):
        run(unet, ["down-level0-repeat0-vit-block0-self-q"], inputs)
    # non-attention names still work on the fused U-Net, and its processors are untouched
    recorder, _ = run(unet, ["down-level0-repeat0-res-out"], inputs)
    assert recorder.features["down-level0-repeat0-res-out"].shape == (2, 8, 16, 24)
    assert all(
        type(m.processor).__name__ == "FusedAttnProcessor2_0"
        for m in unet.modules()
        if isinstance(m, Attention)
    )
