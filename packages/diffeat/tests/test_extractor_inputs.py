"""0.2 extractor inputs and outputs: vae-out, latents, string selections, head counts, no text
stack, NaN/Inf and range checks."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from diffeat import (
    PRESETS,
    VAE_OUT,
    ActivationRecorder,
    ExtractorConfig,
    FeatureExtractor,
    Features,
    MultiModelExtractor,
    PromptEmbeddings,
)
from diffeat.cli import main
from diffeat.io import load_features

SELECTIONS = (
    "['all', 'diffeat-flux', 'diffeat-pixart-sigma', 'diffeat-sd3', 'legacy-v1.5', 'legacy-xl', "
    "'ours-v1.5', 'ours-xl']"
)


def spy(module):
    """Inputs of every forward call of ``module``; returns (list, handle)."""
    seen = []

    def hook(mod, args):
        seen.append(args[0].clone())

    return seen, module.register_forward_pre_hook(hook)


# -- vae-out ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("latent", ["sample", "mean"])
def test_vae_out_is_the_scaled_posterior_draw(make_extractor, images, kind, latent):
    extractor = make_extractor(kind, layers=[VAE_OUT, "unet-in"], latent=latent)
    features = extractor(images, "a photo", torch.Generator().manual_seed(5))
    vae = extractor.vae
    # by hand: encoder -> quant_conv -> (mean, logvar); sample = mean + exp(logvar / 2) * eps
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(images * 2 - 1)).double()  # (B, 8, h, w)
    mean, logvar = moments.chunk(2, dim=1)
    z = mean
    generator = torch.Generator().manual_seed(5)
    if latent == "sample":
        eps = randn_tensor(mean.shape, generator=generator, dtype=torch.float32).double()
        z = mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * eps
    expected = z * vae.config.scaling_factor  # no shift_factor on SD/SDXL VAEs
    assert vae.config.get("shift_factor") is None
    assert features[VAE_OUT].shape == (2, 4, 16, 24) and features[VAE_OUT].dtype == torch.float32
    torch.testing.assert_close(features[VAE_OUT].double(), expected, atol=1e-5, rtol=1e-5)
    assert features[VAE_OUT].abs().max() > 0.05  # a generic latent, not zeros
    # vae-out is exactly the latent that is noised: unet-in = sqrt(abar) z + sqrt(1 - abar) eps
    abar = extractor.scheduler.alphas_cumprod[50].double()
    noise = randn_tensor(mean.shape, generator=generator, dtype=torch.float32).double()
    torch.testing.assert_close(
        features["unet-in"].double(),
        abar.sqrt() * features[VAE_OUT].double() + (1 - abar).sqrt() * noise,
        atol=1e-6,
        rtol=1e-6,
    )


def test_vae_out_alone_skips_the_unet_and_the_prompts(make_extractor, images):
    extractor = make_extractor("sd15", layers=[VAE_OUT], latent="mean")
    seen, handle = spy(extractor.unet.conv_in)
    try:
        features = extractor(images)
    finally:
        handle.remove()
    assert seen == [] and list(features) == [VAE_OUT]
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(features[VAE_OUT], extractor.encode_images(images, generator))
    info = extractor.layer_infos((128, 192))
    assert info[0].name == VAE_OUT and info[0].shape == (4, 16, 24) and info[0].heads is None
    assert len(info) == 198 and info[1].name == "unet-in"
    with pytest.raises(ValueError, match="layers: the configured layers hold only 'vae-out'"):
        extractor.forward_unet(
            torch.zeros(1, 4, 8, 8), PromptEmbeddings(torch.zeros(1, 16, 16)), (64, 64)
        )
    with pytest.raises(ValueError, match="layers: 'vae-out' is the VAE latent, not a U-Net"):
        extractor.forward_unet(
            torch.zeros(1, 4, 8, 8), PromptEmbeddings(torch.zeros(1, 16, 16)), (64, 64), [VAE_OUT]
        )


# -- latents ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("latent", ["sample", "mean"])
def test_latents_give_bit_identical_features(make_extractor, images, kind, latent):
    preset = "ours-xl" if kind == "sdxl" else "ours-v1.5"
    names = [VAE_OUT, *PRESETS[preset].layers, "up-level1-repeat0-vit-block0-cross-map"]
    extractor = make_extractor(kind, layers=names, latent=latent)
    from_images = extractor(images, ["a horse", "a cat"], torch.Generator().manual_seed(11))
    generator = torch.Generator().manual_seed(11)
    latents = extractor.encode_images(images, generator)  # leaves the generator after the sample
    from_latents = extractor(latents=latents, prompts=["a horse", "a cat"], generator=generator)
    assert list(from_latents) == names
    for name in names:
        assert torch.equal(from_latents[name], from_images[name]), name
    assert from_latents.heads == from_images.heads
    assert from_latents[VAE_OUT] is not latents and torch.equal(from_latents[VAE_OUT], latents)


def test_sdxl_size_conditioning_with_latents(make_extractor, images):
    name = "up-level1-repeat0-vit-block0-out"
    extractor = make_extractor("sdxl", layers=[name], latent="mean")
    latents = extractor.encode_images(images, torch.Generator())  # (2, 4, 16, 24)
    seen, handle = spy(extractor.unet.add_time_proj)
    try:
        default = extractor(latents=latents)[name]
        given = extractor(latents=latents, original_size=(256, 384), target_size=64)[name]
        from_images = extractor(images)[name]
    finally:
        handle.remove()
    # time ids (original H, W, crop top, left, target H, W); default: latent size x 8
    assert seen[0].reshape(2, 6)[0].tolist() == [128, 192, 0, 0, 128, 192]
    assert seen[1].reshape(2, 6)[1].tolist() == [256, 384, 0, 0, 64, 64]
    assert seen[2].reshape(2, 6)[0].tolist() == [128, 192, 0, 0, 128, 192]
    assert torch.equal(default, from_images) and not torch.allclose(default, given)
    sd15 = make_extractor("sd15", layers=["unet-out"])
    with pytest.raises(
        ValueError, match=r"original_size: only SDXL-style U-Nets \(text_time conditioning\) take"
    ):
        sd15(images, original_size=(128, 192))
    with pytest.raises(ValueError, match="target_size: only SDXL-style U-Nets"):
        sd15(images, target_size=128)


def test_latent_input_errors(make_extractor, images):
    extractor = make_extractor("sd15", layers=["unet-out"])
    latents = torch.randn(2, 4, 16, 24)
    with pytest.raises(
        ValueError, match=r"images/latents: pass images or latents=\.\.\., exactly one"
    ):
        extractor(images, latents=latents)
    with pytest.raises(
        ValueError, match=r"images/latents: pass images or latents=\.\.\., exactly one"
    ):
        extractor()
    with pytest.raises(
        ValueError,
        match=re.escape(
            "latents: expected a (B, 4, h, w) tensor (the U-Net's in_channels); got (2, 3, 16, 24)"
        ),
    ):
        extractor(latents=latents[:, :3])
    with pytest.raises(
        ValueError, match=r"latents: expected a \(B, 4, h, w\) tensor.*\(4, 16, 24\)"
    ):
        extractor(latents=latents[0])
    with pytest.raises(ValueError, match=r"latents: tensors must be float; got torch\.int64"):
        extractor(latents=latents.long())
    bad = latents.clone()
    bad[0, 0, 0, 0], bad[1, 2, 3, 4] = float("nan"), float("-inf")
    with pytest.raises(
        ValueError, match=r"latents: values must be finite; got 2 NaN/Inf value\(s\)"
    ):
        extractor(latents=bad)
    with pytest.raises(
        ValueError,
        match=r"latents: height and width must be multiples of 8 for this U-Net \(x8 "
        r"downsampling\); got 12x24",
    ):
        extractor(latents=latents[:, :, :12])
    with pytest.raises(ValueError, match="prompts: 3 prompts for 2 latents"):
        extractor(latents=latents, prompts=["a", "b", "c"])


# -- NaN/Inf and range checks of image tensors -----------------------------------------------
def test_image_tensors_must_be_finite_and_in_range(make_extractor, images):
    extractor = make_extractor("sd15", layers=[VAE_OUT])
    nan = images.clone()
    nan[1, 2, 5, 7] = float("nan")
    with pytest.raises(
        ValueError,
        match=re.escape("images: values must be finite and lie in [0, 1]; got 1 NaN/Inf value(s)"),
    ):
        extractor(nan)
    inf = images.clone()
    inf[0, 0, :2, 0] = float("inf")
    with pytest.raises(ValueError, match=re.escape("images: values must be finite and lie in")):
        extractor(inf)
    with pytest.raises(
        ValueError, match=re.escape("images: values must lie in [0, 1]; got [0, 1.5]")
    ):
        extractor(images * 1.5)
    generator = torch.Generator()
    with pytest.raises(
        ValueError, match=re.escape("pixels: values must lie in [0, 1]; got [-1, 1]")
    ):
        extractor.encode_images(images * 2 - 1, generator)
    with pytest.raises(ValueError, match=re.escape("pixels: values must be finite and lie in")):
        extractor.encode_images(nan, generator)
    with pytest.raises(ValueError, match=re.escape("images: empty tensor (0, 3, 128, 192)")):
        extractor(images[:0])


# -- string selections -----------------------------------------------------------------------
def test_all_and_preset_strings_are_accepted_everywhere(pipes, make_extractor, images):
    assert ExtractorConfig(layers="all").layers == ("all",)  # was ("a", "l", "l")
    config = ExtractorConfig(layers="ours-xl")
    assert config.layers == PRESETS["ours-xl"].layers and config.preset == "ours-xl"
    assert ExtractorConfig(layers="ours-xl", preset="mine").preset == "mine"
    message = re.escape(f"layers: a string must be one of {SELECTIONS}; got 'al' (pass activation")
    with pytest.raises(ValueError, match=message):
        ExtractorConfig(layers="al")
    pipe = pipes["sd15"]
    direct = FeatureExtractor(
        pipe.unet, pipe.vae, pipe.scheduler, [pipe.tokenizer], [pipe.text_encoder],
        ExtractorConfig(layers="all"),
    )  # fmt: skip
    assert len(direct.layers) == 198 and direct.layers[:2] == (VAE_OUT, "unet-in")
    by_string = make_extractor("sd15", layers="legacy-v1.5")
    assert by_string.config.preset == "legacy-v1.5"
    assert by_string.layers == PRESETS["legacy-v1.5"].layers
    reference = make_extractor("sd15", preset="legacy-v1.5")(images)
    per_call = make_extractor("sd15", layers=["unet-out"])(images, layers="legacy-v1.5")
    assert list(per_call) == list(reference)
    assert all(torch.equal(per_call[n], reference[n]) for n in reference)
    with pytest.raises(
        ValueError, match=re.escape(f"layers: a string must be one of {SELECTIONS}")
    ):
        by_string(images, layers="unet-out")
    # forward_unet: "all" is the U-Net catalogue (vae-out is not a U-Net activation)
    latents = torch.zeros(1, 4, 8, 8)
    embeddings = by_string.encode_prompts("")
    unet_all = by_string.forward_unet(latents, embeddings, (64, 64), "all")
    assert len(unet_all) == 197 and VAE_OUT not in unet_all
    preset = by_string.forward_unet(latents, embeddings, (64, 64), "ours-v1.5")
    assert list(preset) == list(PRESETS["ours-v1.5"].layers)
    assert all(torch.equal(preset[n], unet_all[n]) for n in preset)
    # the recorder takes the same strings
    recorder = ActivationRecorder(pipe.unet, "all")
    assert len(recorder.specs) == 197
    assert [s.name for s in ActivationRecorder(pipe.unet, "ours-v1.5").specs] == list(
        PRESETS["ours-v1.5"].layers
    )
    with pytest.raises(ValueError, match=re.escape(f"names: a string must be one of {SELECTIONS}")):
        ActivationRecorder(pipe.unet, "unet-out")


def test_cli_layers_accepts_all_and_preset_names(model_dirs, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "img.png"
    Image.new("RGB", (64, 64), (30, 120, 200)).save(image)
    out = tmp_path / "all.safetensors"
    base = ["extract", str(image), "--model", str(model_dirs["sd15"]), "--image-size", "64"]
    assert main([*base, "--layers", "all", "-o", str(out)]) == 0
    features, meta = load_features(out)
    assert len(features) == 198 and next(iter(features)) == VAE_OUT
    name = "up-level3-repeat0-vit-block0-self-map"
    assert meta["heads"][name] == 2 and features[name].shape == (1, 2 * 64, 8, 8)
    assert (
        meta["heads"]["up-level3-repeat0-vit-block0-self-k"] == 2 and VAE_OUT not in meta["heads"]
    )
    out = tmp_path / "preset.safetensors"
    assert main([*base, "--layers", "ours-v1.5", "-o", str(out)]) == 0
    features, meta = load_features(out)
    assert meta["preset"] == "ours-v1.5" and meta["image_size"] == [64, 64]
    assert list(features) == list(PRESETS["ours-v1.5"].layers) and meta["heads"] == {
        "up-level1-repeat1-vit-block0-cross-q": 2,
        "up-level2-repeat1-vit-block0-cross-q": 2,
        "up-level3-repeat0-vit-block0-self-k": 2,
    }
    capsys.readouterr()
    assert main([*base, "--layers", "everything", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "--layers: unknown activation name(s) for this U-Net: 'everything'" in (
        capsys.readouterr().err
    )


# -- attention head counts -------------------------------------------------------------------
def test_attention_maps_carry_their_head_count(make_extractor, images):
    names = [
        "up-level3-repeat0-vit-block0-self-map",
        "up-level1-repeat1-vit-block0-cross-map",
        "up-level1-repeat1-vit-block0-cross-q",
        "up-level1-repeat1-res-out",
    ]
    extractor = make_extractor("sd15", layers=names)
    features = extractor(images, "a photo")
    assert isinstance(features, Features) and isinstance(features, dict)
    infos = {i.name: i for i in extractor.layer_infos((128, 192), text_tokens=16)}
    assert features.heads == {n: infos[n].heads for n in names[:3]} and set(features.heads) == set(
        names[:3]
    )
    for name, (height, width, keys) in zip(names[:2], [(16, 24, 16 * 24), (4, 6, 16)], strict=True):
        heads = features.heads[name]
        stored = features[name]
        assert stored.shape == (2, heads * keys, height, width)
        maps = features.attention_map(name)
        assert maps.shape == (2, heads, height * width, keys)
        torch.testing.assert_close(maps.sum(-1), torch.ones(2, heads, height * width))
        # back to the stored layout, bit for bit; and the documented channel order
        back = maps.transpose(2, 3).reshape(2, heads * keys, height, width)
        assert torch.equal(back, stored)
        assert torch.equal(maps[1, heads - 1, 5, 3], stored[1, (heads - 1) * keys + 3].flatten()[5])
    with pytest.raises(ValueError, match="name: 'up-level1-repeat1-vit-block0-cross-q' is not an"):
        features.attention_map("up-level1-repeat1-vit-block0-cross-q")
    with pytest.raises(KeyError, match="'unet-out' is not among the returned features"):
        features.attention_map("unet-out")
    ensemble = MultiModelExtractor({"a": extractor})(images, "a photo")
    assert ensemble.heads == {f"a/{n}": h for n, h in features.heads.items()}
    assert torch.equal(ensemble.attention_map(f"a/{names[1]}"), features.attention_map(names[1]))


# -- optional text stack ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_text_stack_is_optional_with_precomputed_embeddings(pipes, make_extractor, images, kind):
    pipe = pipes[kind]
    full = make_extractor(kind)
    embeddings = full.encode_prompts(["a horse", "a cat"])
    bare = FeatureExtractor(pipe.unet, pipe.vae, pipe.scheduler)
    assert bare.prompt_encoder is None and bare.text_encoders == []
    assert bare.config.preset == full.config.preset and bare.layers == full.layers
    ours, reference = bare(images, embeddings=embeddings), full(images, embeddings=embeddings)
    assert all(torch.equal(ours[n], reference[n]) for n in full.layers)
    message = (
        "prompts: this extractor has no tokenizers/text encoders (built with None); pass "
        "precomputed embeddings=PromptEmbeddings(...)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        bare(images, "a horse")
    with pytest.raises(ValueError, match=re.escape(message)):
        bare.encode_prompts("a horse")
    width = pipe.unet.config.cross_attention_dim
    with pytest.raises(
        ValueError, match=re.escape(f"embeddings: embeds must be (B, L, {width}) (the U-Net's")
    ):
        bare(images, embeddings=PromptEmbeddings(torch.zeros(2, 16, width + 1)))
    with pytest.raises(ValueError, match="tokenizers/text_encoders: give both"):
        FeatureExtractor(pipe.unet, pipe.vae, pipe.scheduler, tokenizers=[pipe.tokenizer])


def test_from_pretrained_without_the_text_stack(model_dirs, make_extractor, images):
    bare = FeatureExtractor.from_pretrained(model_dirs["sdxl"], text_stack=False)
    assert bare.prompt_encoder is None and bare.config.preset == "ours-xl"
    full = make_extractor("sdxl", preset="ours-xl")
    embeddings = full.encode_prompts("a photo")
    ours, reference = bare(images, embeddings=embeddings), full(images, "a photo")
    assert all(torch.equal(ours[n], reference[n]) for n in PRESETS["ours-xl"].layers)
    assert bare.layer_infos(64)[-1].shape == (4, 8, 8)  # unet-out; 77 text tokens assumed
