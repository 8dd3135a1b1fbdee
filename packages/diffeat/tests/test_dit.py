"""PixArt-Sigma (diffusers PixArtTransformer2DModel): catalogue, shapes, values, early exit,
presets, the T5 text path and precomputed embeddings, on a tiny pipeline with its topology."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffeat import PRESETS, PromptEmbeddings
from diffeat.configs import PIXART_SIGMA_TRANSFORMER, tiny_pixart_pipeline
from diffeat.dit import DiTFeatureExtractor, build_dit_catalogue, dit_layer_infos
from diffeat.presets import family_of

TOKENS = 24  # the tiny pipeline's T5 length (PixArt-Sigma: 300)


@pytest.fixture(scope="module")
def pixart(perturb):
    pipe = tiny_pixart_pipeline(seed=0)
    perturb(pipe.transformer, 0, "scale_shift_table")  # and the AdaLN tables
    return pipe


def make(pipe, **options) -> DiTFeatureExtractor:
    return DiTFeatureExtractor.from_pipeline(pipe, max_sequence_length=TOKENS, **options)


def test_catalogue_names_and_real_shapes():
    infos = dit_layer_infos(PIXART_SIGMA_TRANSFORMER, 1024)
    names = [info.name for info in infos]
    assert len(names) == 3 + 8 * 28 == 227
    assert names[:3] == ["dit-in", "dit-after-patch-embed", "dit-block0-self-q"]
    assert names[-2:] == ["dit-block27-out", "dit-out"]
    shapes = {info.name: info.shape for info in infos}
    assert shapes["dit-in"] == (4, 128, 128)
    assert shapes["dit-after-patch-embed"] == (1152, 64, 64)  # patch 2
    assert shapes["dit-block13-self-map"] == (16 * 64 * 64, 64, 64)
    assert shapes["dit-block13-cross-map"] == (16 * 300, 64, 64)  # 300 T5 tokens
    assert shapes["dit-block13-ffn-inner"] == (4 * 1152, 64, 64)
    assert shapes["dit-out"] == (8, 128, 128)  # noise and variance
    heads = {info.name: info.heads for info in infos}
    assert heads["dit-block0-cross-q"] == 16 and heads["dit-block0-out"] is None
    preset = PRESETS["diffeat-pixart-sigma"]
    assert family_of(PIXART_SIGMA_TRANSFORMER) == "pixart"
    assert set(preset.layers) <= set(names)
    assert sum(shapes[n][0] for n in preset.layers) == preset.channels == 4608


def test_every_name_fires_with_its_meta_shape_on_a_non_square_input(pixart):
    extractor = make(pixart, layers="all")
    assert [s.name for s in extractor.catalogue] == [
        s.name for s in build_dit_catalogue(pixart.transformer)
    ]
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    features = extractor(images, ["a Photo ", "a dog"])
    infos = extractor.layer_infos((64, 96))
    assert list(features) == [info.name for info in infos] and len(features) == 228
    for info in infos:
        assert tuple(features[info.name].shape) == (2, *info.shape), info.name
    assert features["dit-block5-self-map"].shape == (2, 2 * 24, 4, 6)
    assert features.heads["dit-block5-self-map"] == 2
    # recording everything leaves the output as an unrecorded pass gives it
    embeddings = extractor.encode_prompts(["a Photo ", "a dog"])
    with torch.no_grad():
        reference = pixart.transformer(
            features["dit-in"],
            encoder_hidden_states=embeddings.embeds,
            encoder_attention_mask=embeddings.mask,
            timestep=torch.tensor([50, 50]),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        ).sample
    assert torch.equal(features["dit-out"], reference)


def test_values_against_fp64_recomputation_from_the_block_inputs(pixart):
    """q/k/v, maps (with the T5 padding masked) and the GELU output recomputed in fp64 from
    what each attention and feed-forward received."""
    k = 7
    block = pixart.transformer.transformer_blocks[k]
    suffixes = ("self-q", "self-k", "self-v", "self-map", "cross-q", "cross-map", "ffn-inner")
    names = [f"dit-block{k}-{s}" for s in suffixes]
    extractor = make(pixart, layers=names)
    seen = {}

    def keep(key):
        def hook(module, args, kwargs):
            seen[key] = (args[0] if args else kwargs["hidden_states"]).double()
            if key == "attn2":
                seen["context"] = kwargs["encoder_hidden_states"].double()

        return hook

    handles = [
        block.attn1.register_forward_pre_hook(keep("attn1"), with_kwargs=True),
        block.attn2.register_forward_pre_hook(keep("attn2"), with_kwargs=True),
        block.ff.register_forward_pre_hook(keep("ff"), with_kwargs=True),
    ]
    images = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    try:
        features = extractor(images, "a short prompt")
    finally:
        for handle in handles:
            handle.remove()
    mask = extractor.encode_prompts(["a short prompt"]).mask  # (1, 24)
    assert 0 < int(mask.sum()) < TOKENS  # some padding to mask

    def linear(layer, x):
        return x @ layer.weight.double().T + layer.bias.double()

    def as_map(tokens):  # (1, L, C) -> (1, C, 4, 6)
        return tokens.transpose(1, 2).reshape(1, -1, 4, 6)

    def attention_map(q, key, bias=None):  # (1, L, C), (1, S, C) -> (1, heads * S, 4, 6)
        heads = 2
        q4 = q.view(1, -1, heads, 8).transpose(1, 2)
        k4 = key.view(1, -1, heads, 8).transpose(1, 2)
        logits = q4 @ k4.transpose(-1, -2) / math.sqrt(8)
        if bias is not None:
            logits = logits + bias
        probs = logits.softmax(-1)  # (1, heads, L, S)
        return probs.transpose(2, 3).reshape(1, -1, 4, 6), probs

    x, context = seen["attn1"], seen["context"]
    q, key, value = (linear(getattr(block.attn1, f"to_{p}"), x) for p in "qkv")
    expected = {
        "self-q": as_map(q),
        "self-k": as_map(key),
        "self-v": as_map(value),
        "self-map": attention_map(q, key)[0],
        "cross-q": as_map(linear(block.attn2.to_q, seen["attn2"])),
        "ffn-inner": as_map(F.gelu(linear(block.ff.net[0].proj, seen["ff"]), approximate="tanh")),
    }
    bias = (1 - mask.double())[:, None, None, :] * -10000.0
    cross_map, probs = attention_map(
        linear(block.attn2.to_q, seen["attn2"]), linear(block.attn2.to_k, context), bias
    )
    expected["cross-map"] = cross_map
    for suffix, value in expected.items():
        got = features[f"dit-block{k}-{suffix}"].double()
        torch.testing.assert_close(got, value, atol=1e-5, rtol=1e-4, msg=suffix)
    # padded T5 tokens get no attention; each query's row sums to 1
    padded = ~mask[0].bool()
    assert probs[..., padded].max() < 1e-30
    rows = features.attention_map(f"dit-block{k}-cross-map").double().sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=0)


def test_early_exit_equals_the_full_pass_and_skips_the_rest(pixart):
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    early = make(pixart)  # no layers: the diffeat-pixart-sigma preset
    assert early.config.preset == "diffeat-pixart-sigma"
    assert early.layers == PRESETS["diffeat-pixart-sigma"].layers
    calls = []
    last = pixart.transformer.transformer_blocks[21]
    handle = last.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        a = early(images, "a photo")
    finally:
        handle.remove()
    assert calls == []  # block 21 never ran
    b = make(pixart, preset="diffeat-pixart-sigma", early_exit=False)(images, "a photo")
    assert list(a) == list(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_exact_timestep_and_noise(pixart):
    from diffusers.utils.torch_utils import randn_tensor

    # a block name: the pass must reach the timestep embedding
    extractor = make(pixart, layers=["dit-in", "dit-block0-self-q"], timestep=120, latent="mean")
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    seen = []
    handle = pixart.transformer.adaln_single.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].clone())
    )
    try:
        got = extractor(images, generator=torch.Generator().manual_seed(5))["dit-in"]
    finally:
        handle.remove()
    assert seen[0].tolist() == [120]
    with torch.no_grad():
        z = pixart.vae.encode(images * 2 - 1).latent_dist.mean.double() * 0.13025
    eps = randn_tensor(z.shape, generator=torch.Generator().manual_seed(5)).double()
    abar = pixart.scheduler.alphas_cumprod[120].double()
    expected = abar.sqrt() * z + (1 - abar).sqrt() * eps
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-6)


def test_t5_prompts_match_the_pipeline_and_precomputed_embeddings(pixart, tmp_path):
    extractor = make(pixart, layers=["dit-block3-out"])
    prompts = ["A Horse ", "a cat on a mat"]
    ours = extractor.encode_prompts(prompts)
    embeds, mask, _, _ = pixart.encode_prompt(
        prompts,
        do_classifier_free_guidance=False,
        device="cpu",
        clean_caption=False,
        max_sequence_length=TOKENS,
    )
    assert torch.equal(ours.mask, mask)
    # equal up to rounding (the pipeline runs T5 with autograd on: other kernels)
    torch.testing.assert_close(ours.embeds, embeds.detach(), atol=2e-6, rtol=1e-6)
    assert ours.embeds.shape == (2, TOKENS, 16) and ours.pooled is None
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    from_prompts = extractor(images, prompts)["dit-block3-out"]
    # an extractor without a text stack takes the same embeddings (and masks)
    bare = DiTFeatureExtractor(pixart.transformer, pixart.vae, pixart.scheduler)
    bare_out = bare(images, embeddings=ours, layers=["dit-block3-out"])["dit-block3-out"]
    assert torch.equal(bare_out, from_prompts)
    unmasked = bare(images, embeddings=PromptEmbeddings(ours.embeds), layers=["dit-block3-out"])
    assert not torch.allclose(unmasked["dit-block3-out"], from_prompts)  # the mask matters
    with pytest.raises(ValueError, match="prompts: this extractor has no tokenizers"):
        bare(images, "a photo")
    with pytest.raises(ValueError, match=r"embeddings: embeds must be \(B, L, 16\)"):
        bare(images, embeddings=PromptEmbeddings(torch.zeros(1, 5, 32)))
    with pytest.raises(ValueError, match=r"embeddings: mask must be \(B, L\) = \(2, 24\)"):
        bare(images, embeddings=PromptEmbeddings(ours.embeds, mask=ours.mask[:, :5]))
    # a saved folder loads with from_pretrained and gives the same features
    pixart.save_pretrained(tmp_path / "tiny_pixart", safe_serialization=True)
    loaded = DiTFeatureExtractor.from_pretrained(
        tmp_path / "tiny_pixart", layers=["dit-block3-out"], max_sequence_length=TOKENS
    )
    assert type(loaded.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert torch.equal(loaded(images, prompts)["dit-block3-out"], from_prompts)


def test_dit_features_keep_the_graph_when_asked(pixart):
    extractor = make(pixart, layers=["dit-block2-out"], requires_grad=True)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    extractor(images)["dit-block2-out"].square().mean().backward()
    transformer = pixart.transformer
    assert transformer.transformer_blocks[0].attn1.to_q.weight.grad is not None
    assert transformer.transformer_blocks[3].attn1.to_q.weight.grad is None  # never ran
    transformer.zero_grad(set_to_none=True)


def test_dit_bad_inputs(pixart):
    with pytest.raises(ValueError, match="faithful: the official code's PixArt path"):
        make(pixart, faithful=True)
    extractor = make(pixart, layers=["dit-out"])
    with pytest.raises(ValueError, match="lora: LoRA loading is supported for U-Nets only"):
        extractor.load_lora({})
    with pytest.raises(ValueError, match="controlnet: ControlNets are supported for U-Nets"):
        extractor.set_controlnet(object())
    with pytest.raises(ValueError, match=r"multiples of 16 for this model"):
        extractor(torch.rand(1, 3, 64, 72))
    with pytest.raises(ValueError, match=r"unknown activation name\(s\).*'dit-block28-out'"):
        make(pixart, layers=["dit-block28-out"])
    with pytest.raises(ValueError, match="original_size: only SDXL-style U-Nets"):
        extractor(torch.rand(1, 3, 64, 64), original_size=64)
    with pytest.raises(ValueError, match="max_sequence_length: must be an integer >= 1"):
        DiTFeatureExtractor.from_pipeline(pixart, max_sequence_length=0)


def test_layers_command_lists_the_bundled_pixart_configs(capsys):
    from diffeat.cli import main

    assert main(["layers", "--config", "pixart-sigma", "--contains", "dit-block13-cross"]) == 0
    out = capsys.readouterr().out
    assert " 110  dit-block13-cross-q    1152 x 64 x 64  (16 heads)" in out
    assert " 111  dit-block13-cross-map  4800 x 64 x 64  (16 heads)" in out  # 300 T5 tokens
    assert "2 of 227 activations" in out
    assert main(["layers", "--config", "tiny-pixart-sigma", "--image-size", "72"]) == 2
    assert capsys.readouterr().err == (
        "diffeat layers: error: --image-size 72x72: height and width must be multiples of 16 "
        "for --config tiny-pixart-sigma (VAE x8, patch 2)\n"
    )


def test_parts_and_folders_that_do_not_fit_raise_before_any_pass(pixart, model_dirs):
    # parts and folders that do not fit: one error before any pass
    from diffusers import AutoencoderKL
    from transformers import T5Config, T5EncoderModel

    from diffeat.configs import TINY_T5, TINY_VAE

    wide = T5EncoderModel(T5Config(**{**TINY_T5, "d_model": 32}))
    with pytest.raises(ValueError, match="text_encoder: its width 32 does not match the "):
        DiTFeatureExtractor(
            pixart.transformer, pixart.vae, pixart.scheduler, pixart.tokenizer, wide
        )
    vae = AutoencoderKL(**{**TINY_VAE, "latent_channels": 16})
    with pytest.raises(ValueError, match="vae: its 16 latent channels do not match"):
        DiTFeatureExtractor(pixart.transformer, vae, pixart.scheduler)
    with pytest.raises(
        ValueError, match="no PixArt folder; it holds a U-Net: use FeatureExtractor"
    ):
        DiTFeatureExtractor.from_pretrained(model_dirs["sd15"])


def test_pixart_alpha_gets_the_micro_conditions_of_its_pipeline():
    """PixArt-alpha 1024-MS (sample_size 128): resolution and aspect ratio reach the transformer
    as PixArtAlphaPipeline passes them; its prompts default to 120 T5 tokens."""
    pipe = tiny_pixart_pipeline(seed=0, alpha=True)
    assert pipe.transformer.use_additional_conditions
    extractor = DiTFeatureExtractor.from_pipeline(pipe, layers=["dit-in", "dit-block3-out"])
    assert extractor.max_sequence_length == 120
    images = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    seen = {}
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    try:
        features = extractor(images, "a horse")
    finally:
        handle.remove()
    conditions = seen["added_cond_kwargs"]
    assert conditions["resolution"].tolist() == [[32.0, 48.0]]  # (H, W) in px, as the pipeline
    assert conditions["aspect_ratio"].tolist() == [[pytest.approx(32 / 48)]]  # fp32
    # without the micro-conditions the block output differs: they are used
    embeddings = extractor.encode_prompts(["a horse"])
    block = pipe.transformer.transformer_blocks[3]
    outputs = []
    handle = block.register_forward_hook(lambda module, args, output: outputs.append(output))
    try:
        with torch.no_grad():
            for cond in (conditions, {"resolution": conditions["resolution"] * 2,
                                      "aspect_ratio": conditions["aspect_ratio"]}):  # fmt: skip
                pipe.transformer(
                    features["dit-in"], encoder_hidden_states=embeddings.embeds,
                    encoder_attention_mask=embeddings.mask, timestep=torch.tensor([50]),
                    added_cond_kwargs=cond, return_dict=False,
                )  # fmt: skip
    finally:
        handle.remove()
    recorded = features["dit-block3-out"]  # (1, C, 2, 3)
    same = outputs[0].transpose(1, 2).reshape(recorded.shape)  # (B, L, C) -> (B, C, h, w)
    torch.testing.assert_close(recorded, same, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(outputs[0], outputs[1])


def _sincos_position_embedding(width: int, grid: tuple[int, int], base: int, scale: float):
    """PixArt's 2-D sin-cos position embedding restated: cell (i, j) of an h x w grid sits at
    (i, j) * base / (h, w) / scale; the first half of the width encodes the column, the second
    the row, each as [sin, cos] of the position times 10000^(-k / (width / 4))."""
    h, w = grid
    rows = torch.arange(h, dtype=torch.float64) * base / h / scale
    cols = torch.arange(w, dtype=torch.float64) * base / w / scale
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def encode(position):  # (h, w) -> (h, w, width / 2)
        angles = position[..., None] * omega
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    row, col = torch.meshgrid(rows, cols, indexing="ij")
    return torch.cat([encode(col), encode(row)], dim=-1)  # (h, w, width)


def test_pixart_alpha_512_has_no_micro_conditions_and_its_own_position_scale():
    """PixArt-alpha 512x512 (sample_size 64): diffusers leaves the micro-conditions off and the
    position embedding at interpolation scale 1; the extractor passes no conditions, prompts
    with 120 T5 tokens, and its patch embedding equals a restatement (conv + sin-cos at scale 1)."""
    from diffeat.configs import PIXART_ALPHA_512_TRANSFORMER

    shapes = {i.name: i.shape for i in dit_layer_infos(PIXART_ALPHA_512_TRANSFORMER)}
    assert shapes["dit-in"] == (4, 64, 64)  # default size 512 px
    assert shapes["dit-block27-out"] == (1152, 32, 32)

    with pytest.raises(ValueError, match="alpha_size must be 512 or 1024, got 768"):
        tiny_pixart_pipeline(alpha=True, alpha_size=768)
    pipe = tiny_pixart_pipeline(seed=0, alpha=True, alpha_size=512)
    transformer = pipe.transformer
    assert not transformer.use_additional_conditions
    extractor = DiTFeatureExtractor.from_pipeline(
        pipe, layers=["dit-in", "dit-after-patch-embed", "dit-block3-out"]
    )
    assert extractor.max_sequence_length == 120
    images = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    seen = {}
    handle = transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    try:
        features = extractor(images, "a horse")
    finally:
        handle.remove()
    assert seen["added_cond_kwargs"] == {"resolution": None, "aspect_ratio": None}

    latent = features["dit-in"].double()  # (1, 4, 4, 6)
    proj = transformer.pos_embed.proj
    patches = F.conv2d(latent, proj.weight.double(), proj.bias.double(), stride=2)  # (1, C, 2, 3)
    width = patches.shape[1]
    base = PIXART_ALPHA_512_TRANSFORMER["sample_size"] // 2  # latent cells / patch
    position = _sincos_position_embedding(width, (2, 3), base, scale=1.0)  # (2, 3, C)
    expected = patches + position.permute(2, 0, 1)[None]  # (h, w, C) -> (1, C, h, w)
    recorded = features["dit-after-patch-embed"].double()
    torch.testing.assert_close(recorded, expected, atol=1e-5, rtol=1e-5)
    at_scale_2 = (
        patches + _sincos_position_embedding(width, (2, 3), base, 2.0).permute(2, 0, 1)[None]
    )
    assert (recorded - at_scale_2).abs().max() > 1e-2  # the 1024 models' scale would differ


@pytest.mark.slow  # 10-20 s on this machine: a pipeline saved and loaded
def test_a_saved_pixart_alpha_model_prompts_with_120_tokens(tmp_path):
    from diffeat import FeatureExtractor
    from diffeat.configs import PIXART_ALPHA_TRANSFORMER

    folder = tmp_path / "alpha"
    tiny_pixart_pipeline(seed=0, alpha=True).save_pretrained(folder)
    loaded = FeatureExtractor.from_pretrained(folder, layers=["dit-block3-out"])
    assert loaded.max_sequence_length == 120  # PixArtAlphaPipeline's model_index
    assert "use_additional_conditions" not in PIXART_ALPHA_TRANSFORMER
