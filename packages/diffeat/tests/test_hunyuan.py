"""HunyuanDiT (diffusers HunyuanDiT2DModel): catalogue and meta shapes, every activation equal
to a restatement of its block's forward from the weights, DDPM noising, the two text encoders,
early exit, gradients, dtypes, one-line refusals, and the CLI on a tiny model folder."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common_kernels.runtime.errors import InvalidArgument
from diffeat import ExtractorConfig, FeatureExtractor, HunyuanDiTFeatureExtractor
from diffeat.backbones import HUNYUAN, backbone_of, backbone_of_model
from diffeat.backbones.hunyuan import (
    build_hunyuan_catalogue,
    hunyuan_conditioning,
    hunyuan_layer_infos,
)
from diffeat.cli import main
from diffeat.configs import TINY_HUNYUAN_TRANSFORMER, tiny_hunyuan_pipeline
from diffeat.io import load_features

# Tencent-Hunyuan/HunyuanDiT-Diffusers transformer/config.json (v1.x)
HUNYUAN_DIT = {
    "_class_name": "HunyuanDiT2DModel", "num_attention_heads": 16, "attention_head_dim": 88,
    "in_channels": 4, "patch_size": 2, "sample_size": 128, "hidden_size": 1408,
    "num_layers": 40, "mlp_ratio": 4.3637, "learn_sigma": True, "cross_attention_dim": 1024,
    "cross_attention_dim_t5": 2048, "pooled_projection_dim": 1024, "text_len": 77,
    "text_len_t5": 256, "activation_fn": "gelu-approximate",
}  # fmt: skip
TINY = TINY_HUNYUAN_TRANSFORMER
LAYERS = ["hunyuan-in", "hunyuan-block1-out"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_pipeline():
    pipe = tiny_hunyuan_pipeline()
    with torch.no_grad():  # non-zero biases and norms (zeros hide bugs)
        for name, param in pipe.transformer.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn(param.shape))
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def folder(pipe, tmp_path_factory) -> Path:
    """A saved tiny pipeline (``model_index.json`` names ``HunyuanDiT2DModel``)."""
    path = tmp_path_factory.mktemp("models") / "hunyuan"
    pipe.save_pretrained(path)
    return path


def make(pipe, layers, **options) -> HunyuanDiTFeatureExtractor:
    return HunyuanDiTFeatureExtractor.from_pipeline(pipe, layers=layers, **options)


def test_catalogue_names_and_real_shapes():
    from diffusers import HunyuanDiT2DModel

    with torch.device("meta"):
        names = [s.name for s in build_hunyuan_catalogue(HunyuanDiT2DModel(**HUNYUAN_DIT))]
    assert len(names) == 3 + 8 * 40 + 19 == 342  # blocks 21-39 merge a long skip
    assert names[:3] == ["hunyuan-in", "hunyuan-after-patch-embed", "hunyuan-block0-self-q"]
    assert "hunyuan-block20-skip-out" not in names and "hunyuan-block21-skip-out" in names
    assert names[-2:] == ["hunyuan-block39-out", "hunyuan-out"]
    # the real widths on 6 blocks (the meta pass of 40 takes ~10 s on CPU)
    infos = hunyuan_layer_infos({**HUNYUAN_DIT, "num_layers": 6}, (1024, 768))
    shapes = {info.name: info.shape for info in infos}
    assert shapes["hunyuan-in"] == (4, 128, 96)
    assert shapes["hunyuan-block4-skip-out"] == (1408, 64, 48)  # patch 2
    assert shapes["hunyuan-block1-self-map"] == (16 * 64 * 48, 64, 48)
    assert shapes["hunyuan-block1-cross-map"] == (16 * 333, 64, 48)  # 77 + 256 text tokens
    assert shapes["hunyuan-block1-ffn-inner"] == (6144, 64, 48)  # mlp_ratio 4.3637
    assert shapes["hunyuan-out"] == (8, 128, 96)  # noise and variance
    assert {i.name: i.heads for i in infos}["hunyuan-block0-cross-q"] == 16
    assert backbone_of(HUNYUAN_DIT) is HUNYUAN
    assert backbone_of({k: v for k, v in HUNYUAN_DIT.items() if k != "_class_name"}) is HUNYUAN


def _linear(module, x):
    return x @ module.weight.T + module.bias


def _norm(module, x):
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    return F.layer_norm(x.float(), x.shape[-1:], weight, bias, module.eps)


def _rotate(x, cos, sin):
    """Rotary embedding on (B, heads, L, d): pairs (x0, x1) -> (x0 cos - x1 sin, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], -1).flatten(-2)
    return x * cos + rotated * sin


def _attention(attn, x, context, rope):
    heads = attn.heads
    q, k, v = _linear(attn.to_q, x), _linear(attn.to_k, context), _linear(attn.to_v, context)
    split = [t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v)]
    qh, kh = _norm(attn.norm_q, split[0]), _norm(attn.norm_k, split[1])
    qh = _rotate(qh, *rope)
    if context is x:
        kh = _rotate(kh, *rope)
    probs = (qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])).softmax(-1)
    out = (probs @ split[2]).transpose(1, 2).flatten(2)
    return q, k, v, probs, _linear(attn.to_out[0], out)


def _maps(tokens, grid):
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


def test_every_activation_equals_a_restatement_of_its_block(pipe):
    extractor = make(pipe, "all")
    net = pipe.transformer
    sample = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(1))
    emb = extractor.encode_prompts(["a cat", "un chat"])
    got = extractor.forward_unet(sample, emb, (32, 48), layers="all")
    grid = (2, 3)
    with torch.no_grad():
        extra = hunyuan_conditioning(net, 2, (32, 48), "cpu", torch.float32)
        t = torch.full((2,), 50.0)
        temb = net.time_extra_emb(t, emb.embeds_2, extra["image_meta_size"], extra["style"],
                                  hidden_dtype=t.dtype)  # fmt: skip
        t5 = net.text_embedder(emb.embeds_2)
        text = torch.cat([emb.embeds, t5], 1)
        keep = torch.cat([emb.mask, emb.mask_2], 1)[..., None].bool()
        text = torch.where(keep, text, net.text_embedding_padding)
        rope = extra["image_rotary_emb"]
        patches = F.conv2d(sample, net.pos_embed.proj.weight, net.pos_embed.proj.bias, stride=2)
        want = {"hunyuan-in": sample, "hunyuan-after-patch-embed": patches}
        outputs = []
        for k, block in enumerate(net.blocks):
            prefix = f"hunyuan-block{k}-"
            x = got[f"hunyuan-block{k - 1}-out"] if k else patches  # the recorded chain
            x = x.flatten(2).transpose(1, 2)
            if block.skip_linear is not None:
                skip = outputs[len(net.blocks) - 1 - k]  # block 3 <- block 0
                x = _linear(block.skip_linear, _norm(block.skip_norm, torch.cat([x, skip], -1)))
                want[prefix + "skip-out"] = _maps(x, grid)
            shift = _linear(block.norm1.linear, F.silu(temb))
            normed = _norm(block.norm1.norm, x) + shift[:, None]
            q, k_, v, probs, out = _attention(block.attn1, normed, normed, rope)
            x = x + out
            want.update({prefix + "self-q": _maps(q, grid), prefix + "self-k": _maps(k_, grid),
                         prefix + "self-v": _maps(v, grid)})  # fmt: skip
            want[prefix + "self-map"] = probs.transpose(2, 3).flatten(1, 2).unflatten(-1, grid)
            q, _, _, probs, out = _attention(block.attn2, _norm(block.norm2, x), text, rope)
            x = x + out
            want[prefix + "cross-q"] = _maps(q, grid)
            want[prefix + "cross-map"] = probs.transpose(2, 3).flatten(1, 2).unflatten(-1, grid)
            inner = F.gelu(_linear(block.ff.net[0].proj, _norm(block.norm3, x)), approximate="tanh")
            x = x + _linear(block.ff.net[2], inner)
            want[prefix + "ffn-inner"] = _maps(inner, grid)
            want[prefix + "out"] = _maps(x, grid)
            outputs.append(x)
        scale, shift = _linear(net.norm_out.linear, F.silu(temb)).chunk(2, dim=1)
        final = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
        final = _linear(net.proj_out, final).reshape(2, 2, 3, 2, 2, 8)
        want["hunyuan-out"] = torch.einsum("nhwpqc->nchpwq", final).reshape(2, 8, 4, 6)
    assert list(got) == [s.name for s in extractor.catalogue] and set(want) == set(got)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-5, msg=name)
    assert got.heads["hunyuan-block3-cross-map"] == 2
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import get_resize_crop_region_for_grid

    for grid in ((2, 3), (3, 2), (64, 48)):  # the pipeline's rotary embedding (base 512 px)
        crops = get_resize_crop_region_for_grid(grid, 512 // 8 // 2)
        for ours, theirs in zip(hunyuan_conditioning(net, 1, (16 * grid[0], 16 * grid[1]), "cpu",
                                                     torch.float32)["image_rotary_emb"],
                                get_2d_rotary_pos_embed(8, crops, grid), strict=True):  # fmt: skip
            assert torch.equal(ours, theirs)


def test_ddpm_noise_prompts_early_exit_and_grad(pipe):
    extractor = make(pipe, ["hunyuan-in", "hunyuan-block1-self-q"], timestep=200)
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    feats = extractor(latents=latents, prompts="a cat", generator=torch.Generator().manual_seed(3))
    seeded = {"prompts": "a cat", "generator": torch.Generator().manual_seed(3)}
    same = extractor(latents=latents, original_size=1024, **seeded)  # the pipeline's default
    assert torch.equal(same["hunyuan-block1-self-q"], feats["hunyuan-block1-self-q"])
    seeded["generator"] = torch.Generator().manual_seed(3)
    other = extractor(latents=latents, original_size=(512, 256), **seeded)
    assert not torch.equal(other["hunyuan-block1-self-q"], feats["hunyuan-block1-self-q"])
    abar = pipe.scheduler.alphas_cumprod[200]
    eps = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(feats["hunyuan-in"], abar.sqrt() * latents + (1 - abar).sqrt() * eps)
    tokens = pipe.tokenizer(["a cat"], padding="max_length", max_length=8, return_tensors="pt")
    bert = pipe.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    emb = extractor.encode_prompts("a cat")
    torch.testing.assert_close(emb.embeds, bert)
    assert torch.equal(emb.mask, tokens.attention_mask)
    calls = []
    handles = [b.register_forward_hook(lambda *a, i=i: calls.append(i))
               for i, b in enumerate(pipe.transformer.blocks)]  # fmt: skip
    try:
        extractor(latents=latents, prompts="a cat")
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [0]  # block 1 stops at its q: no block finishes after block 0
    grads = make(pipe, ["hunyuan-block3-out"], requires_grad=True)
    out = grads(latents=latents, prompts="a cat")["hunyuan-block3-out"]
    out.square().mean().backward()
    assert pipe.transformer.blocks[0].attn1.to_q.weight.grad.abs().sum() > 0
    pipe.transformer.zero_grad(set_to_none=True)


def test_one_step_ddim_inversion_uses_the_v_prediction(pipe):
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(6))
    inverted = make(pipe, ["hunyuan-in"], timestep=100, noising="ddim-inversion",
                    inversion_steps=1)(latents=latents, prompts="a cat")["hunyuan-in"]  # fmt: skip
    at_zero = make(pipe, ["hunyuan-out"], timestep=0)
    emb = at_zero.encode_prompts("a cat")
    v = at_zero.forward_unet(latents, emb, (32, 32))["hunyuan-out"][:, :4].double()
    abar = pipe.scheduler.alphas_cumprod[100].double()
    want = abar.sqrt() * latents.double() + (1 - abar).sqrt() * v  # abar_0 = 1: eps = v
    torch.testing.assert_close(inverted, want.float(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_fp32(pipe, dtype):
    latents = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(4))
    want = make(pipe, LAYERS)(latents=latents, prompts="a cat")
    half = tiny_pipeline().to(dtype=dtype)
    got = make(half, LAYERS)(latents=latents, prompts="a cat")
    for name in LAYERS:
        assert got[name].dtype == dtype
        torch.testing.assert_close(got[name].float(), want[name], atol=0.05, rtol=0.05)


def test_bad_names_and_embeddings_are_one_line_errors(pipe):
    with pytest.raises(ValueError) as error:
        make(pipe, ["dit-block0-out"])
    assert str(error.value) == (
        "unknown activation name(s) for this HunyuanDiT: 'dit-block0-out' (a PixArt name; this "
        "model is a HunyuanDiT); the catalogue has 37 names (diffeat.list_layers(unet) or "
        "`diffeat layers --model ...`)"
    )
    with pytest.raises(ValueError, match=r"'hunyuan-block0-skip-out' \(did you mean"):
        make(pipe, ["hunyuan-block0-skip-out"])
    extractor = make(pipe, LAYERS)
    emb = extractor.encode_prompts("a cat")
    emb.mask_2 = emb.mask_2[:, :5]
    with pytest.raises(ValueError) as error:
        extractor(latents=torch.zeros(1, 4, 4, 4), embeddings=emb)
    assert str(error.value) == (
        "embeddings: mask_2 must be (1, 12) (the transformer's text_len 8, text_len_t5 12); "
        "got (1, 5)"
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """A 32 x 48 PNG and its pixels (B, 3, H, W) in [0, 1]."""
    from PIL import Image

    pixels = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(5))
    pixels = (pixels * 255).round() / 255  # what the PNG holds
    path = tmp_path_factory.mktemp("images") / "a.png"
    Image.fromarray((pixels[0].permute(1, 2, 0) * 255).round().byte().numpy()).save(path)
    return path, pixels


def test_folder_loads_and_the_cli_lists_it(folder, capsys):
    assert backbone_of_model(folder) is HUNYUAN
    assert main(["layers", "--model", str(folder), "--image-size", "32x48"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "36 of 36 activations"
    assert any("hunyuan-block3-cross-map" in line and "40 x 2 x 3  (2 heads)" in line
               for line in out)  # fmt: skip
    assert main(["layers", "--model", str(folder), "--image-size", "32x40"]) == 2
    assert "32x40" in capsys.readouterr().err


def test_cli_extract_equals_the_api(folder, image, tmp_path, capsys):
    with pytest.raises(InvalidArgument) as error:
        FeatureExtractor.from_pretrained(folder, layers=LAYERS, max_sequence_length=64)
    assert str(error.value) == (
        "max_sequence_length: applies to DiTs (T5 prompts: PixArt, FLUX, SD3) only"
    )
    loaded = FeatureExtractor.from_pretrained(folder, layers=LAYERS)
    assert type(loaded) is HunyuanDiTFeatureExtractor
    want = loaded(image[1], "a cat")
    target = tmp_path / "f.safetensors"
    args = ["extract", str(image[0]), "--model", str(folder), "--layers", ",".join(LAYERS),
            "--prompt", "a cat", "-o", str(target)]  # fmt: skip
    assert main(args) == 0
    feats, _ = load_features(target)
    for name in LAYERS:
        torch.testing.assert_close(feats[name], want[name], atol=1e-5, rtol=1e-5)
    assert main([*args[:4], "--layers", "flux-in", "-o", str(target)]) == 2
    assert "'flux-in' (a FLUX name; this model is a HunyuanDiT)" in capsys.readouterr().err


def test_cli_probe(folder, image, capsys):
    probe = ["probe", str(image[0]), "--model", str(folder), "--layers", "hunyuan-block0-self-q",
             "--probes", "noise,locality"]  # fmt: skip
    assert main(probe) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[0] == "hunyuan-block0-self-q" and len(table[1].split()) == 3


def test_cli_pca(folder, image, tmp_path):
    pca = ["pca", str(image[0]), "--model", str(folder), "--layers", "hunyuan-out",
           "-o", str(tmp_path / "pca")]  # fmt: skip
    assert main(pca) == 0
    assert sorted(p.name for p in (tmp_path / "pca").iterdir()) == ["a__hunyuan-out.png"]
    from PIL import Image

    assert Image.open(tmp_path / "pca" / "a__hunyuan-out.png").size == (48, 32)


def test_config_none_generation_and_meta_size(pipe):
    from diffeat import generate_with_features

    with pytest.raises(ValueError) as error:
        generate_with_features(pipe, LAYERS, [0], prompt="a cat")
    assert str(error.value) == "pipe: recording while HunyuanDiT generates is not supported"
    extra = hunyuan_conditioning(pipe.transformer, 1, (32, 48), "cpu", torch.float32)
    assert extra["image_meta_size"].tolist() == [[1024, 1024, 32, 48, 0, 0]]  # the pipeline's
    extra = hunyuan_conditioning(pipe.transformer, 1, (32, 48), "cpu", torch.float32, (64, 80),
                                 (16, 16))  # fmt: skip
    assert extra["image_meta_size"].tolist() == [[64, 80, 16, 16, 0, 0]]
    assert extra["style"].tolist() == [0]
    with pytest.raises(ValueError, match=r"^config: HunyuanDiT has no preset"):
        HunyuanDiTFeatureExtractor(pipe.transformer, pipe.vae, pipe.scheduler)
    assert ExtractorConfig(layers=LAYERS).layers == tuple(LAYERS)


def test_the_tiny_model_on_the_page(tiny_page, page_pca):
    """``diffeat tiny-model --kind hunyuan``'s folder on the page: the catalogue offered, its
    first two names selected (no preset), the PCA of a layer, the random-weights line."""
    page = tiny_page("hunyuan")
    catalogue = [spec.name for spec in HUNYUAN.catalogue(page.extractor.transformer)]
    assert page.choices == ["vae-out", *catalogue] and len(catalogue) == 36
    labels, _ = page_pca(page, "hunyuan-block1-out")
    assert labels == ["hunyuan-block1-out: 16 channels at 2x3"]
