"""SemanIR's transformer layer and stage against an independent fp64 restatement.

The oracle below is written from the model's documented maths, not from its code: it shares
no helper with the package (no ``relative_positions``, no ``knn_graph``, no ``knn_attention``,
no ``window_partition``). One layer, with the weights of a package layer copied in:

    q, k, v = split(x W_qkv + b_qkv) per head
    logits_hij = exp(min(s_h, log 100)) * (q_hi / |q_hi|) . (k_hj / |k_hj|)      (cosine)
    bias_hij = MLP(((y_i - y_j), (x_i - x_j)) / (w - 1))_h        (continuous position bias)
    a_hi = softmax over j in dict(i) of (logits_hij + bias_hij),  o_i = sum_j a_hij v_hj
    post-norm:  y = x + LN1(o W_o + b_o),  out = y + LN2(MLP(y))
    pre-norm:   y = x + (LN1(x) -> attention),  out = y + MLP(LN2(y))

and one stage: windows of w x w tokens in raster order, each window's dictionary the K tokens
of highest cosine similarity of the stage input (ties to the lower index), L layers sharing it,
windows back in place, a 3x3 convolution, the stage residual. Forward and every gradient (of
the input and of every parameter) are compared in fp64 within 1e-6 (relative to the largest
magnitude; the model keeps its relative coordinates in fp32). A transposed bias, unnormalised
keys or a missing clamp change the output by more than 1e-3 and fail these tests.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from common_kernels import KNNDictionary, knn_graph
from semanir.models import semanir as semanir_module
from semanir.models.semanir import (
    AttentionOptions,
    KeySemanticLayer,
    SemanIRStage,
    relative_positions,
)

TOL = 1e-6  # the model holds its relative coordinates in fp32 (1/3 to 6e-8)


def relative_offsets(window: int) -> torch.Tensor:
    """(N, N, 2) fp64 offsets (y_i - y_j, x_i - x_j) / (w - 1) of the tokens of a window in
    raster order."""
    yx = torch.tensor([(i // window, i % window) for i in range(window * window)])
    return (yx[:, None, :] - yx[None, :, :]).double() / max(window - 1, 1)


def oracle_layer(
    layer: KeySemanticLayer, x: torch.Tensor, idx: torch.Tensor, window: int, clamp: bool = True
):
    """fp64 restatement of ``layer`` on (B', N, C) tokens with (B', N, K) neighbour lists;
    reads only the layer's parameters (``clamp=False`` drops the scale's clamp at 100)."""
    attn = layer.attn
    heads = attn.heads
    batch, n, dim = x.shape
    d = dim // heads

    def attention(tokens: torch.Tensor) -> torch.Tensor:
        qkv = tokens @ attn.qkv.weight.T + attn.qkv.bias  # (B', N, 3C)
        q, k, v = qkv.split(dim, dim=-1)
        q, k, v = (t.view(batch, n, heads, d) for t in (q, k, v))  # (B', N, h, d)
        q = q / q.norm(dim=-1, keepdim=True)
        k = k / k.norm(dim=-1, keepdim=True)
        log_scale = attn.logit_scale.view(heads)
        if clamp:
            log_scale = torch.minimum(log_scale, torch.tensor(math.log(100)))
        scale = torch.exp(log_scale)
        hidden = torch.relu(relative_offsets(window) @ attn.position_mlp[0].weight.T
                            + attn.position_mlp[0].bias)  # (N, N, hidden)  # fmt: skip
        bias = hidden @ attn.position_mlp[2].weight.T  # (N, N, h): bias[i, j, h]
        out = torch.zeros(batch, n, heads, d, dtype=x.dtype)
        for b in range(batch):
            for i in range(n):
                nbrs = idx[b, i]  # (K,)
                logits = scale[:, None] * (k[b, nbrs] * q[b, i]).sum(-1).T  # (h, K)
                logits = logits + bias[i, nbrs].T  # (h, K)
                weights = logits.softmax(dim=-1)  # (h, K)
                out[b, i] = torch.einsum("hk,khd->hd", weights, v[b, nbrs])
        return out.reshape(batch, n, dim) @ attn.proj.weight.T + attn.proj.bias

    def mlp(tokens: torch.Tensor) -> torch.Tensor:
        first, second = layer.mlp[0], layer.mlp[2]
        return F.gelu(tokens @ first.weight.T + first.bias) @ second.weight.T + second.bias

    def norm(module, tokens):
        mean = tokens.mean(-1, keepdim=True)
        var = tokens.var(-1, unbiased=False, keepdim=True)
        return (tokens - mean) / torch.sqrt(var + module.eps) * module.weight + module.bias

    if layer.pre_norm:
        y = x + attention(norm(layer.norm1, x))
        return y + mlp(norm(layer.norm2, y))
    y = x + norm(layer.norm1, attention(x))
    return y + norm(layer.norm2, mlp(y))


def oracle_neighbours(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """(B', N, K): each token's K most cosine-similar tokens, ties to the lower index."""
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    sim = unit @ unit.transpose(-1, -2)  # (B', N, N)
    order = [
        sorted(range(sim.shape[-1]), key=lambda j, row=row: (-row[j].item(), j))[:k]
        for row in sim.reshape(-1, sim.shape[-1])
    ]
    return torch.tensor(order).view(*sim.shape[:2], k)


def oracle_stage(stage: SemanIRStage, x: torch.Tensor, k: int) -> torch.Tensor:
    """fp64 restatement of a stage on (B, C, H, W) features."""
    w = stage.window_size
    batch, channels, height, width = x.shape
    windows = []
    for b in range(batch):
        for top in range(0, height, w):
            for left in range(0, width, w):
                patch = x[b, :, top : top + w, left : left + w]  # (C, w, w)
                windows.append(patch.permute(1, 2, 0).reshape(w * w, channels))
    tokens = torch.stack(windows)  # (B', N, C)
    idx = oracle_neighbours(tokens.detach(), k)
    for layer in stage.layers:
        tokens = oracle_layer(layer, tokens, idx, w)
    out = torch.empty_like(x)
    position = 0
    for b in range(batch):
        for top in range(0, height, w):
            for left in range(0, width, w):
                window = tokens[position].reshape(w, w, channels).permute(2, 0, 1)
                out[b, :, top : top + w, left : left + w] = window
                position += 1
    return x + F.conv2d(out, stage.conv.weight, stage.conv.bias, padding=1)


def make_layer(norm: str, seed: int = 0) -> KeySemanticLayer:
    torch.manual_seed(seed)
    options = AttentionOptions(position_bias_hidden=8, backend="reference")
    layer = KeySemanticLayer(12, 3, mlp_ratio=2.0, norm=norm, attention=options).double()
    with torch.no_grad():  # spread the scales so that the clamp is exercised on one head
        layer.attn.logit_scale.copy_(torch.tensor([0.5, 2.0, 6.0]).view(3, 1, 1))
        for p in layer.parameters():
            if p.ndim == 1 and p is not layer.attn.logit_scale:
                p.add_(0.1 * torch.randn_like(p))  # non-trivial norms and biases
    return layer


def grads(out: torch.Tensor, leaves: list[torch.Tensor], seed: int = 3) -> list[torch.Tensor]:
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * weights).sum(), leaves)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    atol = TOL * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, atol=atol, rtol=TOL, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("force_self", [False, True], ids=["topk", "force_self"])
def test_layer_matches_the_restated_block_forward_and_backward(norm, force_self) -> None:
    layer = make_layer(norm)
    window = 4
    x = torch.randn(2, window * window, 12, dtype=torch.float64, requires_grad=True)
    idx = knn_graph(x.detach(), 6, similarity="cosine", force_self=force_self)  # (B', N, 6)
    coords, index = relative_positions(window)
    out = layer(x, KNNDictionary.from_unique(idx), (coords.double(), index))
    expected = oracle_layer(layer, x, idx, window)
    assert_close(out, expected, "output")
    leaves = [x, *layer.parameters()]
    names = ["x", *(name for name, _ in layer.named_parameters())]
    for name, got, ref in zip(names, grads(out, leaves), grads(expected, leaves), strict=True):
        assert_close(got, ref, f"d{name}")


def test_the_cases_exercise_the_clamp_and_the_bias_orientation() -> None:
    """The layer's output differs from the oracle without the clamp at 100 (head 2's scale is
    exp(6)) and from the oracle with a transposed position bias, so both would be caught."""
    layer = make_layer("post")
    x = torch.randn(2, 16, 12, dtype=torch.float64)
    idx = knn_graph(x, 6, similarity="cosine")
    coords, index = relative_positions(4)
    with torch.no_grad():
        out = layer(x, KNNDictionary.from_unique(idx), (coords.double(), index))
        unclamped = oracle_layer(layer, x, idx, 4, clamp=False)
        transposed = layer(x, KNNDictionary.from_unique(idx), (coords.double(), index.T))
    assert (out - unclamped).abs().max() > 1e-3
    assert (out - transposed).abs().max() > 1e-3


def test_stage_matches_the_restated_stage(monkeypatch) -> None:
    torch.manual_seed(1)
    options = AttentionOptions(position_bias_hidden=8, backend="reference")
    stage = SemanIRStage(8, 2, 2, window_size=4, attention=options).double()
    x = torch.randn(1, 8, 8, 12, dtype=torch.float64, requires_grad=True)
    out = stage(x, 5)
    expected = oracle_stage(stage, x, 5)
    assert_close(out, expected, "stage output")
    leaves = [x, *stage.parameters()]
    names = ["x", *(name for name, _ in stage.named_parameters())]
    for name, got, ref in zip(names, grads(out, leaves), grads(expected, leaves), strict=True):
        assert_close(got, ref, f"d{name}")


@pytest.mark.parametrize("backend", ["auto", "mask", "reference", "gather"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_inference_stage_matches_the_restated_stage(monkeypatch, backend, norm) -> None:
    """Without autograd a stage runs its inference path (windows in groups, the dictionary of
    each group built just before its layers, residuals in place): the restated stage's maths,
    whatever the grouping (here 3 windows per group, the last one short)."""
    monkeypatch.setattr(semanir_module, "INFERENCE_GROUP_BYTES", 3 * 2 * 16 * 16 * 8)
    torch.manual_seed(2)
    options = AttentionOptions(position_bias_hidden=8, backend=backend)
    stage = SemanIRStage(8, 2, 2, window_size=4, norm=norm, attention=options).double()
    x = torch.randn(2, 8, 8, 12, dtype=torch.float64)  # 2 x 6 windows: 4 groups of 3
    before = x.clone()
    expected = oracle_stage(stage, x, 5)
    with torch.inference_mode():
        out = stage(x, 5)
    assert_close(out, expected, "inference stage output")
    assert torch.equal(x, before)  # in place inside, never on the input


def oracle_pixel_shuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C f^2, H, W) -> (B, C, H f, W f): out[c, hf + i, wf + j] = in[c f^2 + i f + j, h, w]."""
    batch, channels, height, width = x.shape
    out = torch.empty(batch, channels // factor**2, height * factor, width * factor, dtype=x.dtype)
    for c in range(channels // factor**2):
        for i in range(factor):
            for j in range(factor):
                out[:, c, i::factor, j::factor] = x[:, c * factor**2 + i * factor + j]
    return out


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(5, 7), (9, 11)])
def test_upsampler_is_convs_and_pixel_shuffles_as_documented(scale: int, size) -> None:
    """conv 3x3 to the width + LeakyReLU(0.01), then conv 3x3 + pixel shuffle per factor (x4 as
    two x2 steps), then conv 3x3 to the output channels (5x7: below the composed tail's minimum
    side, the chain runs; 9x11: the composed conv 5x5 and the border strips)."""
    from semanir.models.upsampler import PixelShuffleUpsampler

    torch.manual_seed(scale)
    upsampler = PixelShuffleUpsampler(6, 3, scale, 4).double()
    convs = [m for m in upsampler if isinstance(m, torch.nn.Conv2d)]
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    y = F.leaky_relu(F.conv2d(x, convs[0].weight, convs[0].bias, padding=1), 0.01)
    for conv, factor in zip(convs[1:-1], (2, 2) if scale == 4 else (scale,), strict=True):
        y = oracle_pixel_shuffle(F.conv2d(y, conv.weight, conv.bias, padding=1), factor)
    expected = F.conv2d(y, convs[-1].weight, convs[-1].bias, padding=1)
    out = upsampler(x)
    assert out.shape == (2, 3, size[0] * scale, size[1] * scale)
    assert_close(out, expected, f"x{scale} upsampler")


def test_tiled_restoration_equals_whole_image_where_the_receptive_field_fits() -> None:
    """A real model (a 4-layer DnCNN: each output pixel sees 4 pixels around it) restored in
    32 px tiles overlapping by 16 px: every pixel that one tile alone covers, and that lies more
    than 4 px from that tile's edges inside the image, equals the whole-image result."""
    from common_kernels import tile_grid
    from semanir.inference import restore
    from semanir.models import build_model

    torch.manual_seed(0)
    model = build_model("dncnn_test_tiny").eval()
    with torch.no_grad():
        model.body[-1].weight.mul_(100)  # undo the near-identity start: a visible correction
    x = torch.rand(1, 1, 64, 80, generator=torch.Generator().manual_seed(1))
    whole = restore(model, x)
    tiled = restore(model, x, tile=32, tile_overlap=16)
    radius = 4
    cover = torch.zeros(64, 80, dtype=torch.int64)
    exact = torch.zeros(64, 80, dtype=torch.bool)
    for t in tile_grid(64, 80, 32, 16):
        cover[t.top : t.top + t.height, t.left : t.left + t.width] += 1
    for t in tile_grid(64, 80, 32, 16):
        top = t.top + (radius if t.top > 0 else 0)
        left = t.left + (radius if t.left > 0 else 0)
        bottom = t.top + t.height - (radius if t.top + t.height < 64 else 0)
        right = t.left + t.width - (radius if t.left + t.width < 80 else 0)
        exact[top:bottom, left:right] = True
    exact &= cover == 1
    assert exact.sum() > 500  # a real share of the image
    torch.testing.assert_close(tiled[0, 0][exact], whole[0, 0][exact], atol=1e-6, rtol=0)
    assert (tiled - whole).abs().max() > 1e-4  # the seams do differ: the check is not vacuous
