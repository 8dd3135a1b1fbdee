"""The ITACLIP encoder against a plain re-implementation written here from the method's text."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from itaclip.models import (
    ITACLIPEncoderConfig,
    ITACLIPVisionEncoder,
    default_mid_layers,
    interpolate_pos_embed,
    self_self_attention_map,
)


def reference_encoder(visual, pixels, mid_layers, mid_weight=0.5, drop_mlp=True):
    """Per-head loops, explicit softmax maps, the open_clip block math spelled out."""
    x = visual.conv1(pixels)
    b, d, h, w = x.shape
    x = x.reshape(b, d, h * w).permute(0, 2, 1)
    cls = visual.class_embedding.reshape(1, 1, d).repeat(b, 1, 1)
    x = torch.cat([cls, x], 1)
    pos = visual.positional_embedding
    grid = visual.grid_size
    if (h, w) != tuple(grid):
        patch = pos[1:].reshape(grid[0], grid[1], d).permute(2, 0, 1)[None]
        patch = F.interpolate(patch, size=(h, w), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], patch[0].permute(1, 2, 0).reshape(h * w, d)])
    x = visual.ln_pre(x + pos)
    blocks = visual.transformer.resblocks

    def maps(block, x):
        y = block.ln_1(x)
        wq, wk, _ = block.attn.in_proj_weight.chunk(3)
        bq, bk, _ = block.attn.in_proj_bias.chunk(3)
        heads = block.attn.num_heads
        hd = d // heads
        q, k = y @ wq.T + bq, y @ wk.T + bk
        out = []
        for head in range(heads):
            qh, kh = q[..., head * hd : (head + 1) * hd], k[..., head * hd : (head + 1) * hd]
            sq = torch.softmax(qh @ qh.transpose(1, 2) / hd**0.5, -1)
            sk = torch.softmax(kh @ kh.transpose(1, 2) / hd**0.5, -1)
            out.append(sq + sk)
        return out  # per head (B, N, N)

    mids = []
    for i, block in enumerate(blocks[:-1], start=1):
        if i in mid_layers:
            mids.append(maps(block, x))
        a = block.ln_1(x)
        x = x + block.attn(a, a, a, need_weights=False)[0]
        x = x + block.mlp(block.ln_2(x))
    last = blocks[-1]
    a_last = maps(last, x)
    y = last.ln_1(x)
    _, _, wv = last.attn.in_proj_weight.chunk(3)
    _, _, bv = last.attn.in_proj_bias.chunk(3)
    v = y @ wv.T + bv
    heads = last.attn.num_heads
    hd = d // heads
    outs = []
    for head in range(heads):
        attn = a_last[head]
        if mids:
            mid = sum(m[head] for m in mids) / len(mids)
            attn = (1 - mid_weight) * attn + mid_weight * mid
        outs.append(attn @ v[..., head * hd : (head + 1) * hd])
    x = x + last.attn.out_proj(torch.cat(outs, -1))
    if not drop_mlp:
        x = x + last.mlp(last.ln_2(x))
    x = visual.ln_post(x) @ visual.proj
    x = x[:, 1:] / x[:, 1:].norm(dim=-1, keepdim=True)
    return x.reshape(b, h, w, -1)


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_encoder_matches_plain_reference(tiny_clip, backend, size):
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, *size)
    enc = ITACLIPVisionEncoder(tiny_clip.visual, ITACLIPEncoderConfig(attention_backend=backend))
    assert enc.mid_layers == (2, 3)  # 7, 8, 10 of 12 scaled to 4 blocks
    with torch.no_grad():
        out = enc(pixels)
        ref = reference_encoder(tiny_clip.visual, pixels, (2, 3))
    assert out.shape == (2, size[0] // 16, size[1] // 16, 16)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(out.shape[:-1]))


def test_custom_mid_layers_and_no_fusion(tiny_clip):
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for layers in [(1,), (1, 3), ()]:
            enc = ITACLIPVisionEncoder(tiny_clip.visual, ITACLIPEncoderConfig(mid_layers=layers))
            ref = reference_encoder(tiny_clip.visual, pixels, layers)
            torch.testing.assert_close(enc(pixels), ref, atol=2e-5, rtol=1e-4)
        fused = ITACLIPVisionEncoder(tiny_clip.visual)(pixels)
        plain = ITACLIPVisionEncoder(tiny_clip.visual, ITACLIPEncoderConfig(mid_layers=()))(pixels)
    assert (fused - plain).abs().max() > 1e-4  # the intermediate maps matter


def test_self_self_rows_sum_to_two():
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    attn = self_self_attention_map(q, k, 8**-0.5)
    torch.testing.assert_close(attn.sum(-1), torch.full((2, 3, 5), 2.0))
    expected = torch.softmax(q @ q.transpose(-1, -2) / 8**0.5, -1)
    expected = expected + torch.softmax(k @ k.transpose(-1, -2) / 8**0.5, -1)
    torch.testing.assert_close(attn, expected)


def test_last_block_mlp_is_dropped(tiny_clip):
    pixels = torch.randn(1, 3, 64, 64)
    model = copy.deepcopy(tiny_clip)
    enc = ITACLIPVisionEncoder(model.visual)
    with torch.no_grad():
        before = enc(pixels)
        model.visual.transformer.resblocks[-1].mlp.c_fc.weight.mul_(3.0)
        torch.testing.assert_close(enc(pixels), before)  # last MLP unused
        model.visual.transformer.resblocks[0].mlp.c_fc.weight.mul_(3.0)
        assert (enc(pixels) - before).abs().max() > 1e-4  # intermediate MLPs run
        with_mlp = reference_encoder(model.visual, pixels, (2, 3), drop_mlp=False)
    assert (with_mlp - enc(pixels)).abs().max() > 1e-4


def test_normal_clip_unchanged_in_same_process(tiny_clip):
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = tiny_clip.encode_image(pixels)
        state = {k: v.clone() for k, v in tiny_clip.state_dict().items()}
        ITACLIPVisionEncoder(tiny_clip.visual)(pixels)
        after = tiny_clip.encode_image(pixels)
        # an independent plain ViT forward: the standard CLIP image embedding
        v = tiny_clip.visual
        x = v.conv1(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(2, 1, -1), x], 1) + v.positional_embedding
        x = v.transformer(v.ln_pre(x))
        plain = v.ln_post(x[:, 0]) @ v.proj
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    torch.testing.assert_close(after, plain, atol=1e-5, rtol=1e-5)
    for key, value in tiny_clip.state_dict().items():
        assert torch.equal(value, state[key])


def test_pos_embed_interpolated_only_when_grid_differs():
    table = torch.randn(1 + 16, 8)
    assert interpolate_pos_embed(table, (4, 4), (4, 4)) is table
    resized = interpolate_pos_embed(table, (4, 4), (2, 6))
    assert resized.shape == (13, 8)
    torch.testing.assert_close(resized[0], table[0])


def test_default_mid_layers():
    assert default_mid_layers(12) == (7, 8, 10)
    assert default_mid_layers(24) == (14, 16, 20)
    assert default_mid_layers(4) == (2, 3)
    assert default_mid_layers(2) == (1,)
    assert default_mid_layers(1) == ()


def test_encoder_input_errors(tiny_clip):
    with pytest.raises(ValueError, match=r"mid_layers must be 1-based block indices in \[1, 3\]"):
        ITACLIPVisionEncoder(tiny_clip.visual, ITACLIPEncoderConfig(mid_layers=(4,)))
    with pytest.raises(ValueError, match="attention_backend"):
        ITACLIPVisionEncoder(tiny_clip.visual, ITACLIPEncoderConfig(attention_backend="flash"))
    with pytest.raises(TypeError, match="open_clip VisionTransformer"):
        ITACLIPVisionEncoder(torch.nn.Linear(2, 2))
    enc = ITACLIPVisionEncoder(tiny_clip.visual)
    with pytest.raises(ValueError, match="at least one patch"):
        enc(torch.randn(1, 3, 8, 64))
