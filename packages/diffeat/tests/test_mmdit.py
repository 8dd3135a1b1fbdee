"""FLUX.1 (FluxTransformer2DModel) and SD3/SD3.5 (SD3Transformer2DModel): catalogues and shapes,
every activation against an independent fp64 re-statement of its block's forward from the
block's weights, the flow-matching noise at an exact sigma, packing, the text paths against
the diffusers pipelines, early exit, gradients, dtypes and bad input; on tiny random pipelines
with FLUX.1-dev's and SD3.5-Medium's topologies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers import FluxPipeline
from diffusers.utils.torch_utils import randn_tensor

from common_kernels.runtime.errors import InvalidArgument
from diffeat import (
    PRESETS,
    ExtractorConfig,
    FluxFeatureExtractor,
    MissingActivationsError,
    PromptEmbeddings,
    SD3FeatureExtractor,
    attention_map_view,
)
from diffeat.backbones import FLUX, SD3, backbone_of
from diffeat.backbones.mmdit import (
    flux_image_ids,
    flux_name_of_official,
    official_flux_name,
    pack_latents,
    unpack_latents,
)
from diffeat.configs import (
    FLUX_DEV_TRANSFORMER,
    SD35_MEDIUM_TRANSFORMER,
    tiny_flux_pipeline,
    tiny_sd3_pipeline,
)
from diffeat.presets import family_of

TOKENS = 24  # the tiny pipelines' T5 length (FLUX.1-dev: 512, SD3: 256)
SIGMA = 0.3
TOL = 1e-5  # fp32 features against fp64 re-statements


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def flux(perturb):
    pipe = tiny_flux_pipeline(seed=0, max_length=TOKENS)
    perturb(pipe.transformer, 1)
    return pipe


@pytest.fixture(scope="module")
def sd3(perturb):
    pipe = tiny_sd3_pipeline(seed=0, max_length=TOKENS)
    perturb(pipe.transformer, 2)
    return pipe


def images() -> torch.Tensor:
    """Two smooth non-square images (2, 3, 32, 48) in [0, 1]."""
    ys, xs = torch.linspace(0, 1, 32)[:, None], torch.linspace(0, 1, 48)[None, :]
    first = torch.stack([ys * xs, (1 - ys) * xs, 0.5 + 0.4 * torch.sin(8 * xs + 3 * ys)])
    second = torch.stack([xs.expand(32, 48), ys.expand(32, 48), 0.5 * (xs + ys)])
    return torch.stack([first, second]).clamp(0, 1)


def with_kwargs_of(module: torch.nn.Module, run: Callable[[], Any]) -> tuple[Any, dict]:
    """``run()``'s result and the keyword arguments ``module`` was called with in it (a block's
    true inputs in the pass), kept by a pre-hook."""
    seen = {}

    def hook(mod, args, kwargs):
        seen["kwargs"] = dict(kwargs)

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        result = run()
    finally:
        handle.remove()
    return result, seen["kwargs"]


# -- independent re-statements (fp64) -------------------------------------------------------
def d(t):
    return t.detach().double()


def lin(x, layer):
    return x @ d(layer.weight).T + (0 if layer.bias is None else d(layer.bias))


def ln(x, eps=1e-6):  # LayerNorm without affine
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def rms(x, norm):  # per-head RMSNorm with a weight, over the last dim
    if norm is None:
        return x
    return x / torch.sqrt((x**2).mean(-1, keepdim=True) + norm.eps) * d(norm.weight)


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))


def rope(x, cos, sin):  # x (B, S, H, d); pairs (2i, 2i+1) rotated, as FLUX's real-valued rotary
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos[None, :, None] + rotated * sin[None, :, None]


def heads(x, n):
    return x.reshape(x.shape[0], x.shape[1], n, -1)  # (B, L, heads, d)


def attention(q, k, v):  # (B, S, H, d) -> probs (B, H, S, S), out (B, S, H*d)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    probs = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
    out = probs @ v
    return probs, out.transpose(1, 2).flatten(2)


def as_map(tokens, grid):  # (B, L, C) raster tokens -> (B, C, h, w), by index arithmetic
    batch, length, channels = tokens.shape
    out = tokens.new_zeros(batch, channels, *grid)
    for index in range(length):
        out[:, :, index // grid[1], index % grid[1]] = tokens[:, index]
    return out


def flux_double(block, x, c, temb, cos, sin):
    """FluxTransformerBlock: image activations of one pass, restated."""
    shift, scale, gate, shift2, scale2, gate2 = lin(F.silu(temb), block.norm1.linear).chunk(6, 1)
    cshift, cscale, *_ = lin(F.silu(temb), block.norm1_context.linear).chunk(6, 1)
    nx = ln(x) * (1 + scale[:, None]) + shift[:, None]
    nc = ln(c) * (1 + cscale[:, None]) + cshift[:, None]
    attn, n = block.attn, block.attn.heads
    q, k, v = (lin(nx, getattr(attn, f"to_{p}")) for p in "qkv")
    tq, tk, tv = (lin(nc, getattr(attn, f"add_{p}_proj")) for p in "qkv")
    qs = torch.cat([rms(heads(tq, n), attn.norm_added_q), rms(heads(q, n), attn.norm_q)], 1)
    ks = torch.cat([rms(heads(tk, n), attn.norm_added_k), rms(heads(k, n), attn.norm_k)], 1)
    vs = torch.cat([heads(tv, n), heads(v, n)], 1)
    probs, out = attention(rope(qs, cos, sin), rope(ks, cos, sin), vs)
    text = c.shape[1]
    h = x + gate[:, None] * lin(out[:, text:], attn.to_out[0])
    n2 = ln(h) * (1 + scale2[:, None]) + shift2[:, None]
    inner = gelu_tanh(lin(n2, block.ff.net[0].proj))
    h = h + gate2[:, None] * lin(inner, block.ff.net[2])
    return {"q": q, "k": k, "v": v, "self-map": probs[:, :, text:, text:],
            "cross-map": probs[:, :, text:, :text], "ffn-inner": inner, "out": h}  # fmt: skip


def flux_single(block, x, c, temb, cos, sin):
    """FluxSingleTransformerBlock: image activations, restated (text tokens first)."""
    text = c.shape[1]
    xs = torch.cat([c, x], 1)
    shift, scale, gate = lin(F.silu(temb), block.norm.linear).chunk(3, 1)
    nx = ln(xs) * (1 + scale[:, None]) + shift[:, None]
    inner = gelu_tanh(lin(nx, block.proj_mlp))
    attn, n = block.attn, block.attn.heads
    q, k, v = (lin(nx, getattr(attn, f"to_{p}")) for p in "qkv")
    qs, ks = rms(heads(q, n), attn.norm_q), rms(heads(k, n), attn.norm_k)
    probs, out = attention(rope(qs, cos, sin), rope(ks, cos, sin), heads(v, n))
    h = xs + gate[:, None] * lin(torch.cat([out, inner], -1), block.proj_out)
    image = slice(text, None)
    return {"q": q[:, image], "k": k[:, image], "v": v[:, image],
            "self-map": probs[:, :, image, image], "cross-map": probs[:, :, image, :text],
            "ffn-inner": inner[:, image], "out": h[:, image]}  # fmt: skip


def sd3_block(block, x, c, temb):
    """JointTransformerBlock (SD3/SD3.5): image activations, restated (image tokens first)."""
    chunks = lin(F.silu(temb), block.norm1.linear).chunk(9 if block.attn2 is not None else 6, 1)
    shift, scale, gate, shift2, scale2, gate2 = chunks[:6]
    nx = ln(x) * (1 + scale[:, None]) + shift[:, None]
    if block.context_pre_only:  # AdaLayerNormContinuous: scale first, then shift
        cscale, cshift = lin(F.silu(temb), block.norm1_context.linear).chunk(2, 1)
    else:
        cshift, cscale, *_ = lin(F.silu(temb), block.norm1_context.linear).chunk(6, 1)
    nc = ln(c) * (1 + cscale[:, None]) + cshift[:, None]
    attn, n, image = block.attn, block.attn.heads, x.shape[1]
    q, k, v = (lin(nx, getattr(attn, f"to_{p}")) for p in "qkv")
    tq, tk, tv = (lin(nc, getattr(attn, f"add_{p}_proj")) for p in "qkv")
    qs = torch.cat([rms(heads(q, n), attn.norm_q), rms(heads(tq, n), attn.norm_added_q)], 1)
    ks = torch.cat([rms(heads(k, n), attn.norm_k), rms(heads(tk, n), attn.norm_added_k)], 1)
    probs, out = attention(qs, ks, torch.cat([heads(v, n), heads(tv, n)], 1))
    h = x + gate[:, None] * lin(out[:, :image], attn.to_out[0])
    found = {"q": q, "k": k, "v": v, "self-map": probs[:, :, :image, :image],
             "cross-map": probs[:, :, :image, image:]}  # fmt: skip
    if block.attn2 is not None:
        shift_a, scale_a, gate_a = chunks[6:]
        nx2 = ln(x) * (1 + scale_a[:, None]) + shift_a[:, None]
        a2 = block.attn2
        q2, k2, v2 = (lin(nx2, getattr(a2, f"to_{p}")) for p in "qkv")
        probs2, out2 = attention(rms(heads(q2, n), a2.norm_q), rms(heads(k2, n), a2.norm_k),
                                 heads(v2, n))  # fmt: skip
        h = h + gate_a[:, None] * lin(out2, a2.to_out[0])
        found.update({"attn2-q": q2, "attn2-k": k2, "attn2-v": v2, "attn2-map": probs2})
    n2 = ln(h) * (1 + scale2[:, None]) + shift2[:, None]
    inner = gelu_tanh(lin(n2, block.ff.net[0].proj))
    found.update({"ffn-inner": inner, "out": h + gate2[:, None] * lin(inner, block.ff.net[2])})
    return found


def check_block(features, heads_of, prefix, restated, grid):
    for kind, value in restated.items():
        name = f"{prefix}-{kind}"
        got = features[name].double()
        if kind.endswith("map"):
            want = value  # (B, heads, L_img, keys)
            got = attention_map_view(got, heads_of[name])  # (B, heads, L_img, keys)
        else:
            want = as_map(value, grid)
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, atol=TOL, rtol=TOL, msg=name)


# -- catalogue and shapes -------------------------------------------------------------------
def test_real_catalogues_and_shapes():
    flux = {i.name: i for i in FLUX.layer_infos(FLUX_DEV_TRANSFORMER, (1024, 768), 512, 8)}
    assert len(flux) == 3 + 7 * (19 + 38) == 402
    names = list(flux)
    assert names[:3] == ["flux-in", "flux-after-embed", "flux-double0-q"]
    assert names[-2:] == ["flux-single37-out", "flux-out"]
    assert flux["flux-in"].shape == (16, 128, 96)  # the unpacked latent grid
    assert flux["flux-double3-q"].shape == (3072, 64, 48)  # the 2x2-packed token grid
    assert flux["flux-single5-self-map"].shape == (24 * 64 * 48, 64, 48)
    assert flux["flux-single5-cross-map"].shape == (24 * 512, 64, 48)  # 512 T5 tokens
    assert flux["flux-double0-ffn-inner"].shape == (4 * 3072, 64, 48)
    assert flux["flux-double0-k"].heads == 24 and flux["flux-double0-out"].heads is None
    sd3 = {i.name: i for i in SD3.layer_infos(SD35_MEDIUM_TRANSFORMER, (1024, 1024), 333, 8)}
    assert len(sd3) == 3 + 7 * 24 + 4 * 13 == 223  # 13 dual-attention blocks
    assert "sd3-block12-attn2-map" in sd3 and "sd3-block13-attn2-q" not in sd3
    assert sd3["sd3-block0-cross-map"].shape == (24 * 333, 64, 64)  # 77 CLIP + 256 T5 tokens
    assert sd3["sd3-out"].shape == (16, 128, 128)
    assert backbone_of(FLUX_DEV_TRANSFORMER) is FLUX and backbone_of(SD35_MEDIUM_TRANSFORMER) is SD3
    for preset, infos, family in (("diffeat-flux", flux, "flux"), ("diffeat-sd3", sd3, "sd3")):
        chosen = PRESETS[preset]
        assert set(chosen.layers) <= set(infos) and chosen.family == family
        assert sum(infos[n].shape[0] for n in chosen.layers) == chosen.channels
    assert family_of(FLUX_DEV_TRANSFORMER) == "flux" and family_of(SD35_MEDIUM_TRANSFORMER) == "sd3"


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_every_name_fires_with_its_listed_shape_on_a_non_square_input(kind, flux, sd3):
    cls, pipe = (FluxFeatureExtractor, flux) if kind == "flux" else (SD3FeatureExtractor, sd3)
    extractor = cls.from_pipeline(pipe, layers="all", max_sequence_length=TOKENS)
    features = extractor(images(), ["a horse", "a dog"])
    infos = {info.name: info for info in extractor.layer_infos((32, 48))}
    assert list(features) == list(infos)  # vae-out and the catalogue, in execution order
    for name, value in features.items():
        assert tuple(value.shape) == (2, *infos[name].shape), name
        assert features.heads.get(name) == infos[name].heads, name


# -- packing and noise ----------------------------------------------------------------------
def test_packing_matches_the_flux_pipeline():
    latents = torch.randn(2, 4, 6, 10)
    packed = FluxPipeline._pack_latents(latents, 2, 4, 6, 10)
    assert torch.equal(pack_latents(latents), packed)
    assert torch.equal(unpack_latents(packed, 6, 10), latents)
    unpacked = FluxPipeline._unpack_latents(packed, 48, 80, 8)  # px, VAE x8
    assert torch.equal(unpack_latents(packed, 6, 10), unpacked)
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32)
    assert torch.equal(flux_image_ids(3, 5), ids)


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_noise_at_an_exact_sigma_and_the_transformer_inputs(kind, flux, sd3):
    cls, pipe = (FluxFeatureExtractor, flux) if kind == "flux" else (SD3FeatureExtractor, sd3)
    extractor = cls.from_pipeline(
        pipe, layers=[f"{kind}-in"], sigma=SIGMA, max_sequence_length=TOKENS,
        **({"guidance_scale": 3.5} if kind == "flux" else {}),
    )  # fmt: skip
    latents = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(7)
    got, call = with_kwargs_of(
        pipe.transformer, lambda: extractor(latents=latents, prompts="a cat", generator=generator)
    )
    noise = randn_tensor(latents.shape, generator=torch.Generator().manual_seed(7))
    want = (1 - SIGMA) * latents + SIGMA * noise  # x_t = (1 - sigma) x_0 + sigma eps
    torch.testing.assert_close(got[f"{kind}-in"], want, atol=1e-6, rtol=0)
    if kind == "flux":  # FluxPipeline's convention: timestep / 1000 = sigma; -dev's guidance
        assert call["timestep"].tolist() == pytest.approx([SIGMA])
        assert call["guidance"].tolist() == [3.5]
        assert call["img_ids"].shape == (2 * 3, 3) and not call["txt_ids"].any()
    else:
        assert call["timestep"].tolist() == pytest.approx([1000 * SIGMA])
    # the default sigma is timestep / 1000 and flux-dev's default guidance 1.0 (official)
    plain = cls.from_pipeline(pipe, layers=[f"{kind}-in"], max_sequence_length=TOKENS)
    assert plain.plan.noise == pytest.approx(0.05) and plain.plan.signal == pytest.approx(0.95)


def test_input_embedding_and_output_against_the_model(flux):
    extractor = FluxFeatureExtractor.from_pipeline(
        flux, layers=["flux-in", "flux-after-embed", "flux-out"], max_sequence_length=TOKENS,
        early_exit=False,
    )  # fmt: skip
    features = extractor(images(), "a horse")
    x_t = features["flux-in"].double()  # (B, 4, 4, 6)
    tokens = lin(pack_latents(x_t), flux.transformer.x_embedder)  # (B, 6, 16)
    torch.testing.assert_close(features["flux-after-embed"].double(), as_map(tokens, (2, 3)))
    embeddings = extractor.encode_prompts(["a horse"] * 2)
    with torch.no_grad():
        raw = flux.transformer(
            hidden_states=pack_latents(features["flux-in"]),
            encoder_hidden_states=embeddings.embeds,
            pooled_projections=embeddings.pooled, timestep=torch.full((2,), 0.05),
            img_ids=flux_image_ids(2, 3), txt_ids=torch.zeros(TOKENS, 3),
            guidance=torch.ones(2), return_dict=False,
        )[0]  # fmt: skip
    want = FluxPipeline._unpack_latents(raw, 32, 48, 8)
    torch.testing.assert_close(features["flux-out"], want, atol=TOL, rtol=TOL)


# -- parity: each block's activations against its forward restated ---------------------------
@pytest.mark.parametrize(
    "stage, index", [("double", 0), ("double", 18), ("single", 0), ("single", 37)]
)
def test_flux_blocks_equal_their_restated_forward(flux, stage, index):
    transformer = flux.transformer
    blocks = (
        transformer.transformer_blocks
        if stage == "double"
        else transformer.single_transformer_blocks
    )
    prefix = f"flux-{stage}{index}"
    kinds = ("q", "k", "v", "self-map", "cross-map", "ffn-inner", "out")
    extractor = FluxFeatureExtractor.from_pipeline(
        flux, layers=[f"{prefix}-{k}" for k in kinds], max_sequence_length=TOKENS, sigma=SIGMA
    )
    features, kwargs = with_kwargs_of(
        blocks[index], lambda: extractor(images(), ["a horse", "a dog"])
    )
    x, c, temb = d(kwargs["hidden_states"]), d(kwargs["encoder_hidden_states"]), d(kwargs["temb"])
    cos, sin = (d(t) for t in kwargs["image_rotary_emb"])
    restate = flux_double if stage == "double" else flux_single
    with torch.no_grad():
        restated = restate(blocks[index], x, c, temb, cos, sin)
    check_block(features, features.heads, prefix, restated, (2, 3))


@pytest.mark.parametrize("index", [0, 12, 13, 23])  # dual attention, the last dual, plain, last
def test_sd3_blocks_equal_their_restated_forward(sd3, index):
    block = sd3.transformer.transformer_blocks[index]
    kinds = ["q", "k", "v", "self-map", "cross-map", "ffn-inner", "out"]
    if block.attn2 is not None:
        kinds += ["attn2-q", "attn2-k", "attn2-v", "attn2-map"]
    prefix = f"sd3-block{index}"
    extractor = SD3FeatureExtractor.from_pipeline(
        sd3, layers=[f"{prefix}-{k}" for k in kinds], max_sequence_length=TOKENS, sigma=SIGMA
    )
    features, kwargs = with_kwargs_of(block, lambda: extractor(images(), ["a horse", "a dog"]))
    x, c, temb = d(kwargs["hidden_states"]), d(kwargs["encoder_hidden_states"]), d(kwargs["temb"])
    with torch.no_grad():
        restated = sd3_block(block, x, c, temb)
    assert set(restated) == set(kinds)
    check_block(features, features.heads, prefix, restated, (2, 3))


# -- text ------------------------------------------------------------------------------------
def test_prompts_match_the_pipelines(flux, sd3):
    prompts = ["a photo of a horse", "a dog"]
    extractor = FluxFeatureExtractor.from_pipeline(
        flux, layers=["flux-in"], max_sequence_length=TOKENS
    )
    got = extractor.encode_prompts(prompts)
    embeds, pooled, _ = flux.encode_prompt(prompts, None, max_sequence_length=TOKENS)
    # the cache encodes distinct prompts in sorted order: the same rows, another batch order
    torch.testing.assert_close(got.embeds, embeds, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got.pooled, pooled, atol=1e-6, rtol=1e-6)
    extractor = SD3FeatureExtractor.from_pipeline(
        sd3, layers=["sd3-in"], max_sequence_length=TOKENS
    )
    got = extractor.encode_prompts(prompts)
    embeds, _, pooled, _ = sd3.encode_prompt(
        prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=TOKENS
    )
    assert got.embeds.shape == (2, 16 + TOKENS, 32)  # CLIP tokens (padded to T5's width), T5's
    torch.testing.assert_close(got.embeds, embeds, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got.pooled, pooled, atol=1e-6, rtol=1e-6)


def test_precomputed_embeddings_equal_prompts_and_are_checked(sd3):
    extractor = SD3FeatureExtractor.from_pipeline(
        sd3, layers=["sd3-block2-out"], max_sequence_length=TOKENS
    )
    embeddings = extractor.encode_prompts(["a horse"])
    by_prompt = extractor(images()[:1], "a horse")
    by_embeds = extractor(images()[:1], embeddings=embeddings)
    assert torch.equal(by_prompt["sd3-block2-out"], by_embeds["sd3-block2-out"])
    with pytest.raises(ValueError, match=r"^embeddings: pooled must be \(B, 32\) \(the"):
        extractor(images()[:1], embeddings=PromptEmbeddings(embeddings.embeds))


# -- early exit, gradients, dtypes -----------------------------------------------------------
def test_early_exit_skips_the_rest_and_changes_nothing(flux):
    layers = ["flux-double3-out", "flux-single2-q"]
    calls = []
    last = flux.transformer.single_transformer_blocks[3]
    handle = last.register_forward_hook(lambda *args: calls.append(1))
    try:
        early = FluxFeatureExtractor.from_pipeline(flux, layers=layers, max_sequence_length=TOKENS)
        fast = early(images(), "a horse")
        assert calls == []  # single block 3 never ran
        full = FluxFeatureExtractor.from_pipeline(
            flux, layers=layers, max_sequence_length=TOKENS, early_exit=False
        )(images(), "a horse")
    finally:
        handle.remove()
    assert calls == [1]
    for name in layers:
        assert torch.equal(fast[name], full[name])


def test_gradients_reach_the_blocks_before_the_exit(sd3):
    transformer = sd3.transformer
    extractor = SD3FeatureExtractor.from_pipeline(
        sd3, layers=["sd3-block4-out"], max_sequence_length=TOKENS, requires_grad=True
    )
    transformer.zero_grad(set_to_none=True)
    features = extractor(images()[:1], "a horse")
    features["sd3-block4-out"].square().sum().backward()
    assert transformer.transformer_blocks[4].ff.net[2].weight.grad.abs().sum() > 0
    assert transformer.transformer_blocks[0].attn.to_q.weight.grad.abs().sum() > 0
    assert transformer.transformer_blocks[5].attn.to_q.weight.grad is None  # never ran
    transformer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precisions_follow_fp32(dtype):
    pipe = tiny_flux_pipeline(seed=0, max_length=TOKENS)
    layers = ["flux-double2-out", "flux-single1-self-map"]
    want = FluxFeatureExtractor.from_pipeline(pipe, layers=layers, max_sequence_length=TOKENS)(
        images(), "a horse"
    )
    pipe.transformer.to(dtype)
    got = FluxFeatureExtractor.from_pipeline(pipe, layers=layers, max_sequence_length=TOKENS)(
        images(), "a horse"
    )
    for name in layers:
        assert got[name].dtype == dtype
        scale = want[name].abs().max()
        assert (got[name].float() - want[name]).abs().max() < 0.05 * scale, name


# -- bad input -------------------------------------------------------------------------------
def test_bad_input_is_refused_naming_the_argument(flux, sd3, pipes):
    with pytest.raises(InvalidArgument, match=r"^sigma: must be a number in \[0, 1\]; got 1.5$"):
        ExtractorConfig(layers=["flux-in"], sigma=1.5)
    with pytest.raises(ValueError, match=r"^sigma: applies to flow-matching models"):
        from diffeat import FeatureExtractor

        FeatureExtractor.from_pipeline(pipes["sd15"], layers=["unet-in"], sigma=0.5)
    with pytest.raises(ValueError, match=r"^guidance_scale: applies to FLUX transformers"):
        SD3FeatureExtractor.from_pipeline(sd3, layers=["sd3-in"], guidance_scale=2.0)
    with pytest.raises(
        ValueError, match=r"'dit-block3-out' \(a PixArt name; this model is a FLUX\)"
    ):
        FluxFeatureExtractor.from_pipeline(flux, layers=["dit-block3-out"])
    with pytest.raises(
        ValueError, match=r"'up-level1-repeat0-vit-out' \(a U-Net name; this model is a SD3\)"
    ):
        SD3FeatureExtractor.from_pipeline(sd3, layers=["up-level1-repeat0-vit-out"])
    with pytest.raises(
        ValueError, match=r"^transformer: SD3Transformer2DModel has no 'x_embedder'"
    ):
        FluxFeatureExtractor(sd3.transformer, sd3.vae, sd3.scheduler)
    with pytest.raises(ValueError, match=r"^scheduler: PNDMScheduler is not a flow-matching"):
        FluxFeatureExtractor(flux.transformer, flux.vae, pipes["sd15"].scheduler)
    vae = type(sd3.vae)(latent_channels=8, block_out_channels=[8], norm_num_groups=4)
    with pytest.raises(ValueError, match=r"^vae: its 8 latent channels do not fit the transformer"):
        SD3FeatureExtractor(sd3.transformer, vae, sd3.scheduler)


class Skipping:
    """An attention processor that never calls the layer's projections (so their hooks, and
    the names recorded there, never fire)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):  # fmt: skip
        return torch.zeros_like(hidden_states)


def test_names_that_never_fire_raise(flux):
    attn = flux.transformer.single_transformer_blocks[37].attn
    extractor = FluxFeatureExtractor.from_pipeline(
        flux, layers=["flux-single36-out", "flux-single37-q"], max_sequence_length=TOKENS
    )
    processor, attn.processor = attn.processor, Skipping()
    try:
        with pytest.raises(MissingActivationsError, match=r"never fired.*\['flux-single37-q'\]"):
            extractor(images()[:1], "a horse")
    finally:
        attn.processor = processor
    assert set(extractor(images()[:1], "a horse")) == {"flux-single36-out", "flux-single37-q"}


# -- the official code's FLUX names ---------------------------------------------------------
def test_official_flux_names_both_ways():
    names = [i.name for i in FLUX.layer_infos(FLUX_DEV_TRANSFORMER, (512, 512), 512, 8)]
    mapped = {}
    for name in names:
        try:
            mapped[name] = official_flux_name(name)
        except ValueError:
            continue
    # q/k/v/maps of all 57 blocks, ffn-inner of the 19 double, out of the 38 single blocks
    assert len(mapped) == len(set(mapped.values())) == 5 * 57 + 19 + 38
    assert all(flux_name_of_official(official) == name for name, official in mapped.items())
    assert mapped["flux-double0-q"] == "vit-block0-q"
    assert mapped["flux-single0-cross-map"] == "vit-block19-cross-map"
    assert mapped["flux-double18-ffn-inner"] == "vit-block18-ffn-inner"
    assert mapped["flux-single37-out"] == "vit-block56-out"
    unmapped = {"flux-in", "flux-after-embed", "flux-out"}
    unmapped |= {f"flux-double{k}-out" for k in range(19)}
    unmapped |= {f"flux-single{j}-ffn-inner" for j in range(38)}
    assert set(names) - set(mapped) == unmapped
    with pytest.raises(ValueError, match=r"^official: 'vit-block3-out' has no diffeat FLUX name"):
        flux_name_of_official("vit-block3-out")  # a double block's: its normalised FFN input
    for official in ("vit-block57-q", "vit-block30-attn-out", "vit-block2-norm-out"):
        with pytest.raises(ValueError, match=rf"^official: '{official}'"):
            flux_name_of_official(official)
    with pytest.raises(ValueError, match=r"^name: 'flux-double3-out' has no official FLUX name"):
        official_flux_name("flux-double3-out")
