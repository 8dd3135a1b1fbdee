"""The pixel-shuffle upsampler's composed tail: the same output and gradients as the chain of
convs and pixel shuffles it replaces (SwinIR's upsampler, layer by layer), fewer operations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from semanir import load_model
from semanir.models.upsampler import (
    PixelShuffleUpsampler,
    compose_linear_tail,
    compose_row_convs,
    flip_steps,
    row_placement,
    side_correction,
    transpose_steps,
)

# sizes of the feature map: square, odd, one side at the strips' minimum (6), below it (chain)
SIZES = [(6, 6), (7, 9), (16, 11), (12, 6), (5, 20), (1, 3)]


def upsampler(scale: int, dtype: torch.dtype = torch.float64) -> PixelShuffleUpsampler:
    """Width 12 from 16 features to RGB, random weights and biases of unit-ish scale."""
    torch.manual_seed(scale)
    module = PixelShuffleUpsampler(16, 3, scale, 12).to(dtype)
    for parameter in module.parameters():
        nn.init.normal_(parameter, std=0.2)
    return module


def chain(module: PixelShuffleUpsampler, x: torch.Tensor) -> torch.Tensor:
    """The upsampler as its layers compute it one after the other (the definition)."""
    for layer in module:
        x = layer(x)
    return x


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", SIZES)
def test_the_composed_tail_equals_the_chain_forward_and_backward(scale, size) -> None:
    """fp64: output, input gradient and every weight's and bias's gradient within 1e-10."""
    module = upsampler(scale)
    x = torch.randn(2, 16, *size, dtype=torch.float64, requires_grad=True)
    expected, out = chain(module, x), module(x)
    assert out.shape == (2, 3, size[0] * scale, size[1] * scale)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    grad = torch.randn_like(out)
    inputs = [x, *module.parameters()]
    for got, want in zip(
        torch.autograd.grad(out, inputs, grad),
        torch.autograd.grad(expected, inputs, grad),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("scale", "share"), [(2, 0.04), (3, 0.05), (4, 0.07)])
def test_the_border_costs_a_fraction_of_the_composed_conv(scale, share) -> None:
    """FLOPs at 32x32, the composition kept (no_grad): the border (one composed conv per side,
    the chain on the corner patches) adds 3.7% / 4.6% / 6.6% to the first conv and the composed
    conv; 0.4.10's sides as rows of the chain's convs added 4.5% / 4.6% / 14.6%, 0.4.6's 3-pixel
    strips of the chain 31% / 38% / 41%."""
    module = upsampler(scale, torch.float32)
    x = torch.randn(2, 16, 32, 32)

    def flops(function) -> int:
        with FlopCounterMode(display=False) as counter:
            function()
        return counter.get_total_flops()

    with torch.no_grad():
        features = module[1](module[0](x))
        weight, bias, radius = module.composed_tail()
        composed = flops(lambda: module[0](x)) + flops(
            lambda: F.conv2d(features, weight, bias, padding=2)
        )
        total = flops(lambda: module(x))
    assert radius == 2
    assert composed < total <= (1 + share) * composed


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_the_composed_conv_is_5x5_with_a_bias_per_sub_pixel(scale) -> None:
    """One conv 5x5 to out_channels * scale**2: 2*25*12*3*s^2 multiply-adds per input pixel,
    against the chain's 2*9*12*12*s^2 (x2: + 4*2*9*12*3; x4: + 4x that and 16*2*9*12*3)."""
    module = upsampler(scale)
    weight, bias, radius = module.composed_tail()
    assert radius == 2
    assert weight.shape == (3 * scale**2, 12, 5, 5)
    assert bias.shape == (3 * scale**2,)


def test_the_composed_bias_is_the_chain_on_zeros_away_from_the_border() -> None:
    """Zero features: the chain's output in the interior is the composed bias, per sub-pixel."""
    module = upsampler(4)
    _, bias, _ = module.composed_tail()
    zeros = torch.zeros(1, 12, 7, 7, dtype=torch.float64)
    interior = chain(nn.Sequential(*list(module)[2:]), zeros)[..., 12:16, 12:16]  # pixel (3, 3)
    torch.testing.assert_close(F.pixel_unshuffle(interior, 4).flatten(), bias)


def test_compose_linear_tail_matches_a_direct_sum_over_the_taps() -> None:
    """An independent statement of one composed weight: x2, a conv 3x3 to 4 phases then a conv
    3x3, written as explicit sums over the chain's taps for one output sub-pixel."""
    torch.manual_seed(0)
    first, last = nn.Conv2d(2, 8, 3, padding=1).double(), nn.Conv2d(2, 1, 3, padding=1).double()
    weight, _, radius = compose_linear_tail([(first, 2), (last, 1)])
    a, b = 1, 0  # the output sub-pixel (row phase, column phase)
    expected = torch.zeros(2, 2 * radius + 1, 2 * radius + 1, dtype=torch.float64)
    for u in range(3):  # the last conv's taps, at the x2 grid
        for v in range(3):
            row, col = 2 * 10 + a + u - 1, 2 * 10 + b + v - 1  # near input pixel (10, 10)
            for c in range(2):  # the last conv's input channel = the shuffled channel
                channel = 4 * c + 2 * (row % 2) + col % 2
                for p in range(3):  # the first conv's taps, at the input grid
                    for q in range(3):
                        dy, dx = row // 2 + p - 1 - 10, col // 2 + q - 1 - 10
                        expected[:, dy + radius, dx + radius] += (
                            last.weight[0, c, u, v] * first.weight[channel, :, p, q]
                        ).detach()
    torch.testing.assert_close(weight[2 * a + b], expected, rtol=0, atol=1e-12)


def test_the_composition_is_kept_under_no_grad_until_a_weight_changes() -> None:
    module = upsampler(4)
    x = torch.randn(1, 16, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        first = module.composed_tail()
        assert module.composed_tail()[0] is first[0]
        module[4].weight.mul_(2)  # in place: the cache key sees the version counter
        assert module.composed_tail()[0] is not first[0]
        torch.testing.assert_close(module(x), chain(module, x), rtol=0, atol=1e-10)
    assert module.composed_tail()[0].requires_grad  # with autograd: composed afresh, in the graph
    with torch.no_grad():
        cached = module.composed_tail()[0]
        module.float()  # converted weights: composed afresh, in their dtype
        assert module.composed_tail()[0].dtype == torch.float32
        torch.testing.assert_close(module.composed_tail()[0], cached.float())


def test_autocast_composes_in_the_weights_dtype() -> None:
    """bf16 autocast rounds the convolution's operands, never the composition of the weights."""
    module = upsampler(4, torch.float32)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        weight, bias, _ = module.composed_tail()
        out = module(x)
        expected = chain(module, x)
    assert weight.dtype == bias.dtype == torch.float32
    assert out.dtype == torch.bfloat16
    scale = expected.float().abs().max()
    assert (out.float() - expected.float()).abs().max() < 0.05 * scale


def test_the_bundled_x4_model_gives_the_chain_output_within_fp32_rounding() -> None:
    """The shipped weights: the composed upsampler's image equals the layer-by-layer one within
    1e-5 (values in [0, 1]) on a feature map of the model's own body."""
    model = load_model("semanir_tiny_sr_x4")
    x = torch.rand(1, 3, 40, 32, generator=torch.Generator().manual_seed(0))
    captured = []
    model.reconstruct.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    with torch.inference_mode():
        model(x)
        body = captured[0]
        out = model.reconstruct(body)
        expected = chain(model.reconstruct, body)
    assert out.shape == (1, 3, 160, 128)
    assert (out - expected).abs().max() < 1e-5


def apply_row_conv(kernel: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 1-D sub-pixel conv by its definition, one output at a time:
    out[o, f t + j] = sum_{c, d} K[o, j, c, d] x[c, t + d - (taps - 1) // 2], zeros outside."""
    c_out, factor, _, taps = kernel.shape
    length = x.shape[-1]
    out = torch.zeros(c_out, factor * length, dtype=x.dtype)
    for t in range(length):
        for j in range(factor):
            for d in range(taps):
                source = t + d - (taps - 1) // 2
                if 0 <= source < length:
                    out[:, factor * t + j] += kernel[:, j, :, d] @ x[:, source]
    return out


@pytest.mark.parametrize(("f1", "f2"), [(2, 2), (3, 1), (2, 1)])
def test_compose_row_convs_equals_the_two_convs_in_turn(f1, f2) -> None:
    """Away from the row's ends (where the first conv's outputs beyond the row would be read
    as zeros), the composed kernel gives what the two sub-pixel convs give one after the
    other."""
    torch.manual_seed(0)
    first = torch.randn(1, 4, f1, 3, 3, dtype=torch.float64)  # 3 -> 4 channels, x f1
    second = torch.randn(1, 2, f2, 4, 3, dtype=torch.float64)  # 4 -> 2 channels, x f2
    x = torch.randn(3, 12, dtype=torch.float64)
    composed = compose_row_convs(first, second, row_placement(f1, 3, 3).double())
    middle = apply_row_conv(first[0], x)  # (4, 12 f1)
    expected = apply_row_conv(second[0], middle)  # (2, 12 f1 f2)
    got = apply_row_conv(composed[0], x)
    inner = slice(2 * f1 * f2, -2 * f1 * f2)
    torch.testing.assert_close(got[:, inner], expected[:, inner], rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_each_side_correction_is_the_composed_conv_minus_the_chain_there(scale) -> None:
    """Along each side, corners excluded, the side's correction equals the composed conv's
    output minus the chain's (both before the pixel shuffle), computed whole."""
    module = upsampler(scale)
    x = torch.randn(2, 12, 9, 11, dtype=torch.float64)
    composed = module.composition()
    full = F.conv2d(x, composed.weight, composed.bias, padding=composed.radius)
    difference = full - F.pixel_unshuffle(module.tail(x), scale)  # (2, 3 s^2, 9, 11)
    (top, bottom, left, right), r = composed.sides, composed.sides[0][0].shape[-2]
    columns = x.transpose(-1, -2)  # the columns as rows
    got = {
        "top": side_correction(x[:, :, :r], *top),
        "bottom": side_correction(x[:, :, -r:], *bottom),
        "left": side_correction(columns[:, :, :r], *left),
        "right": side_correction(columns[:, :, -r:], *right),
    }
    expected = {
        "top": difference[..., 0, :],
        "bottom": difference[..., -1, :],
        "left": difference[..., :, 0],
        "right": difference[..., :, -1],
    }
    for side, value in got.items():
        torch.testing.assert_close(value[..., 1:-1], expected[side][..., 1:-1], atol=1e-12, rtol=0)
    assert difference[..., 1:-1, 1:-1].abs().max() < 1e-12  # only the outermost ring differs


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_flipped_and_transposed_tails_compute_the_chain_of_flipped_and_transposed_images(
    scale,
) -> None:
    module = upsampler(scale)
    steps = module.tail_steps()
    x = torch.randn(1, 12, 5, 7, dtype=torch.float64)

    def run(steps, x):
        for weight, bias, factor in steps:
            x = F.conv2d(x, weight, bias, padding=1)
            x = F.pixel_shuffle(x, factor) if factor > 1 else x
        return x

    expected = run(steps, x)
    torch.testing.assert_close(run(flip_steps(steps, 2), x.flip(-2)), expected.flip(-2))
    torch.testing.assert_close(run(flip_steps(steps, 3), x.flip(-1)), expected.flip(-1))
    transposed = run(transpose_steps(steps), x.transpose(-1, -2))
    torch.testing.assert_close(transposed, expected.transpose(-1, -2))


def test_the_border_plan_is_derived_from_the_shapes_and_never_saved() -> None:
    """The index and the placements are non-persistent buffers: the state dict holds the
    convs' weights and biases only, and a conversion keeps the index's integers."""
    module = upsampler(4)
    assert all(key.endswith(("weight", "bias")) for key in module.state_dict())
    fresh = PixelShuffleUpsampler(16, 3, 4, 12).double()
    fresh.load_state_dict(module.state_dict())
    x = torch.randn(1, 16, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(fresh(x), chain(module, x), rtol=0, atol=1e-10)
    module.float()
    assert module.border_index.dtype == torch.int32
    assert module.placement0.dtype == torch.float32


@pytest.mark.parametrize("scale", [1, 8])
def test_scales_other_than_2_3_4_are_refused(scale) -> None:
    with pytest.raises(ValueError, match=f"scale must be 2, 3 or 4, got {scale}"):
        PixelShuffleUpsampler(16, 3, scale, 12)
