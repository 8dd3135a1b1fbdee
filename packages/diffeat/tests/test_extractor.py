"""FeatureExtractor: loading, timestep/noise exactness, prompts, batching, errors, ensembles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from diffeat import PRESETS, FeatureExtractor, MultiModelExtractor, PromptEmbeddings, aggregate


def timestep_spy(unet):
    seen = []

    def hook(module, args):
        seen.append(args[0].clone())

    return seen, unet.time_proj.register_forward_pre_hook(hook)


def expected_unet_in(extractor, pixels, seed, t_noise, latent="sample"):
    """The U-Net input recomputed by hand: same draws, DDPM formula in fp64."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        posterior = extractor.vae.encode(pixels * 2 - 1).latent_dist
    z = posterior.sample(generator) if latent == "sample" else posterior.mean
    z = z.double() * extractor.vae.config.scaling_factor
    eps = randn_tensor(z.shape, generator=generator, dtype=torch.float32).double()
    abar = extractor.scheduler.alphas_cumprod[t_noise].double()
    return abar.sqrt() * z + (1 - abar).sqrt() * eps


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("latent", ["sample", "mean"])
def test_exact_timestep_and_noise(make_extractor, images, kind, latent):
    extractor = make_extractor(kind, layers=["unet-in", "unet-after-conv-in"], latent=latent)
    seen, handle = timestep_spy(extractor.unet)
    try:
        features = extractor(images, "a photo", torch.Generator().manual_seed(7))
    finally:
        handle.remove()
    assert [int(t) for t in seen[0].flatten()] == [50, 50] and not seen[0].is_floating_point()
    expected = expected_unet_in(extractor, images, 7, 50, latent)
    torch.testing.assert_close(features["unet-in"].double(), expected, atol=1e-6, rtol=1e-6)
    # the default generator is seeded with config.seed: calls are reproducible
    first, second = extractor(images), extractor(images)
    assert torch.equal(first["unet-in"], second["unet-in"])
    torch.testing.assert_close(
        first["unet-in"].double(),
        expected_unet_in(extractor, images, 0, 50, latent),
        atol=1e-6,
        rtol=1e-6,
    )


def test_faithful_timestep_quirk_sd15_pndm(make_extractor, images):
    extractor = make_extractor("sd15", layers=["unet-in", "unet-after-conv-in"], faithful=True)
    assert type(extractor.scheduler).__name__ == "PNDMScheduler"
    assert extractor.plan.timestep == 51  # t = 50 -> index 950 of a list holding 999 twice
    seen, handle = timestep_spy(extractor.unet)
    try:
        features = extractor(images[:, :, :, :128], generator=torch.Generator().manual_seed(1))
    finally:
        handle.remove()
    assert int(seen[0].flatten()[0]) == 51
    expected = expected_unet_in(extractor, images[:, :, :, :128], 1, 51)
    torch.testing.assert_close(features["unet-in"].double(), expected, atol=1e-6, rtol=1e-6)


def test_faithful_sdxl_euler_is_the_same_point_up_to_rounding(make_extractor, images):
    square = images[:, :, :, :128]
    exact = make_extractor("sdxl", layers=["unet-in"])
    faithful = make_extractor("sdxl", layers=["unet-in"], faithful=True)
    assert type(faithful.scheduler).__name__ == "EulerDiscreteScheduler"
    assert faithful.plan.timestep == 50.0 and isinstance(faithful.plan.timestep, float)
    a = exact(square, generator=torch.Generator().manual_seed(2))["unet-in"]
    b = faithful(square, generator=torch.Generator().manual_seed(2))["unet-in"]
    # (z + sigma eps) / sqrt(sigma^2 + 1) == sqrt(abar) z + sqrt(1 - abar) eps
    torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    abar = float(exact.scheduler.alphas_cumprod[50])
    sigma = math.sqrt((1 - abar) / abar)
    assert math.isclose(1 / math.sqrt(sigma**2 + 1), math.sqrt(abar), rel_tol=1e-6)


@pytest.mark.parametrize("t", [-1, 1000, 2.5, True])
def test_timestep_out_of_range(make_extractor, t):
    with pytest.raises(ValueError, match=r"timestep: must be an integer in \[0, 999\]"):
        make_extractor("sd15", layers=["unet-out"], timestep=t)


def test_bad_inputs_raise_clear_errors(make_extractor, images):
    extractor = make_extractor("sd15", layers=["unet-out"])
    with pytest.raises(
        ValueError, match=r"multiples of 64 for this model \(VAE x8, U-Net x8\); got 100x120"
    ):
        extractor(torch.rand(1, 3, 100, 120))
    sdxl = make_extractor("sdxl", layers=["unet-out"])
    with pytest.raises(
        ValueError, match=r"multiples of 32 for this model \(VAE x8, U-Net x4\); got 96x80"
    ):
        sdxl(torch.rand(1, 3, 96, 80))
    with pytest.raises(ValueError, match=r"images: values must lie in \[0, 1\]; got \[-1"):
        extractor(images * 2 - 1)
    with pytest.raises(ValueError, match="images: tensors must be float"):
        extractor((images * 255).to(torch.uint8))
    with pytest.raises(
        ValueError, match=r"expected a \(B, 3, H, W\) tensor; got \(2, 1, 128, 192\)"
    ):
        extractor(images[:, :1])
    with pytest.raises(ValueError, match="prompts: 3 prompts for 2 images"):
        extractor(images, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"images: sizes differ \(64x64, 64x128\)"):
        extractor([Image.new("RGB", (64, 64)), Image.new("RGB", (128, 64))])
    with pytest.raises(ValueError, match="pass either layers"):
        make_extractor("sd15", layers=["unet-out"], preset="ours-v1.5")
    with pytest.raises(ValueError, match=r"unknown activation name\(s\).*'mid-vit-block3-out'"):
        make_extractor("sd15", layers=["mid-vit-block3-out"])
    with pytest.raises(ValueError, match=r"preset: unknown 'ours-v2'; choose one of"):
        make_extractor("sd15", preset="ours-v2")
    with pytest.raises(ValueError, match="latent: must be one of"):
        make_extractor("sd15", layers=["unet-out"], latent="mode")
    with pytest.raises(
        ValueError,
        match=r"layers: a string must be one of \['all', 'diffeat-flux', 'diffeat-pixart-sigma', "
        r"'diffeat-sd3', 'legacy-v1.5', 'legacy-xl', 'ours-v1.5', 'ours-xl'\]; got 'unet-out' "
        r"\(pass activation names as a list\)",
    ):
        make_extractor("sd15", layers="unet-out")


def pil_bicubic_reference(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """The documented preprocessing restated with PIL alone: convert to RGB (a gray image
    repeats its one channel), then resize each channel as 32-bit float with PIL's bicubic
    filter (antialiased when shrinking), scale to [0, 1] and clip. (3, H, W) float64."""
    height, width = size
    channels = [
        np.asarray(band.convert("F").resize((width, height), Image.BICUBIC), dtype=np.float64)
        for band in image.convert("RGB").split()
    ]
    return (torch.from_numpy(np.stack(channels)) / 255.0).clamp(0.0, 1.0)


def test_image_size_resizes_pil_images_of_any_size(make_extractor, monkeypatch):
    """Odd-sized RGB (enlarged and shrunk) and gray PIL images reach the VAE as the
    independently resized and converted pixels (textured images: a flat colour would look
    the same through any filter)."""
    rng = np.random.default_rng(3)
    pil = [
        Image.fromarray(rng.integers(0, 256, (51, 97, 3), dtype=np.uint8), "RGB"),  # enlarged
        Image.fromarray(rng.integers(0, 256, (60, 40), dtype=np.uint8), "L"),  # gray
        Image.fromarray(rng.integers(0, 256, (150, 301, 3), dtype=np.uint8), "RGB"),  # shrunk
    ]
    extractor = make_extractor(
        "sd15", layers=["up-level3-repeat0-vit-block0-self-k"], image_size=(64, 128)
    )
    fed = []
    encode = extractor.encode_images

    def spy(pixels, generator):
        fed.append(pixels.clone())
        return encode(pixels, generator)

    monkeypatch.setattr(extractor, "encode_images", spy)
    features = extractor(pil)
    assert features["up-level3-repeat0-vit-block0-self-k"].shape == (3, 8, 8, 16)
    (pixels,) = fed
    assert pixels.shape == (3, 3, 64, 128) and pixels.dtype == torch.float32
    for i, image in enumerate(pil):
        expected = pil_bicubic_reference(image, (64, 128))
        torch.testing.assert_close(pixels[i].double(), expected, atol=2e-6, rtol=0)
    gray = pixels[1]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[0], gray[2])


def test_per_image_prompts_and_precomputed_embeddings(make_extractor, images):
    name = "up-level2-repeat1-vit-block0-out"  # after cross-attention: depends on the prompt
    extractor = make_extractor("sd15", layers=[name])
    mixed = extractor(images, ["a photo of a horse", "a cat"])[name]
    embeddings = extractor.encode_prompts(["a photo of a horse", "a cat"])
    assert embeddings.embeds.shape == (2, 16, 16) and embeddings.pooled is None
    assert torch.equal(extractor(images, embeddings=embeddings)[name], mixed)
    same = extractor(images, "a photo of a horse")[name]
    assert torch.equal(same[0], mixed[0]) and not torch.allclose(same[1], mixed[1])
    single = PromptEmbeddings(embeddings.embeds[:1])
    assert torch.equal(extractor(images, embeddings=single)[name], same)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_prompt_embeddings_match_the_diffusers_pipeline(pipes, make_extractor, kind):
    extractor = make_extractor(kind, layers=["unet-out"])
    prompts = ["a photo of a horse", ""]
    ours = extractor.encode_prompts(prompts)
    reference = pipes[kind].encode_prompt(
        prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    torch.testing.assert_close(ours.embeds, reference[0], atol=0, rtol=0)
    if kind == "sdxl":
        torch.testing.assert_close(ours.pooled, reference[2], atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_from_pretrained_round_trip_and_default_preset(model_dirs, make_extractor, images, kind):
    loaded = FeatureExtractor.from_pretrained(model_dirs[kind])
    preset = "ours-xl" if kind == "sdxl" else "ours-v1.5"
    assert loaded.config.preset == preset and loaded.layers == PRESETS[preset].layers
    assert type(loaded.scheduler).__name__ == (
        "EulerDiscreteScheduler" if kind == "sdxl" else "PNDMScheduler"
    )
    ours = loaded(images, "a photo of a dog")
    reference = make_extractor(kind, preset=preset)(images, "a photo of a dog")
    for name in PRESETS[preset].layers:
        assert torch.equal(ours[name], reference[name]), name
    assert tuple(ours) == PRESETS[preset].layers


def test_early_exit_equals_full_pass_through_the_extractor(make_extractor, images):
    for preset, kind in (("legacy-v1.5", "sd15"), ("legacy-xl", "sdxl"), ("ours-xl", "sdxl")):
        early = make_extractor(kind, preset=preset)(images)
        full = make_extractor(kind, preset=preset, early_exit=False)(images)
        assert all(torch.equal(early[n], full[n]) for n in PRESETS[preset].layers), preset


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(pipes, images, dtype):
    from diffeat.configs import tiny_pipeline

    pipe = tiny_pipeline("sd15", seed=0).to(dtype=dtype)
    extractor = FeatureExtractor.from_pipeline(pipe, preset="ours-v1.5")
    assert extractor.dtype == dtype
    reference = FeatureExtractor.from_pipeline(tiny_pipeline("sd15", seed=0), preset="ours-v1.5")
    half, full = extractor(images), reference(images)
    for name in PRESETS["ours-v1.5"].layers:
        assert half[name].dtype == dtype
        scale = full[name].abs().max()
        assert (half[name].float() - full[name]).abs().max() < 0.1 * scale, name


def test_all_layers_and_output_device(make_extractor, images):
    extractor = make_extractor("sdxl", layers="all", output_device="meta")
    features = extractor(images[:1])
    assert len(features) == 613 and list(features)[:2] == ["vae-out", "unet-in"]
    assert features["mid-vit-block9-self-map"].shape == (1, 4 * 4 * 6, 4, 6)
    assert {f.device.type for f in features.values()} == {"meta"}  # moved off the compute device
    # "all" for one call of an extractor configured with a preset
    preset = make_extractor("sdxl", preset="ours-xl")
    assert list(preset(images[:1], layers="all")) == list(features)
    with pytest.raises(ValueError, match=r"layers: a string must be one of .*; got 'everything'"):
        preset(images[:1], layers="everything")


def test_extractor_raises_for_names_that_never_fire(images):
    from diffeat import MissingActivationsError
    from diffeat.configs import tiny_pipeline

    pipe = tiny_pipeline("sd15", seed=0)  # its own U-Net: the shared ones stay untouched
    transformer = pipe.unet.up_blocks[3].attentions[0]
    transformer.forward = lambda hidden_states, *args, **kwargs: (hidden_states,)  # bypassed
    names = ["up-level3-repeat0-vit-block0-self-k", "unet-out"]
    extractor = FeatureExtractor.from_pipeline(pipe, layers=names)
    with pytest.raises(
        MissingActivationsError, match=r"never fired.*\['up-level3-repeat0-vit-block0-self-k'\]"
    ):
        extractor(images)


def test_chunked_feed_forward_is_refused_for_the_geglu_output(images):
    from diffeat.configs import tiny_pipeline

    pipe = tiny_pipeline("sd15", seed=0)
    block = pipe.unet.up_blocks[1].attentions[0].transformer_blocks[0]
    block.set_chunk_feed_forward(1, dim=1)
    name = "up-level1-repeat0-vit-block0-ffn-inner"
    extractor = FeatureExtractor.from_pipeline(pipe, layers=[name])
    with pytest.raises(ValueError, match=f"{name}: cannot record the GEGLU output while"):
        extractor(images)
    block.set_chunk_feed_forward(None)
    assert extractor(images)[name].shape[1] == 4 * pipe.unet.config.block_out_channels[-2]


def test_aggregate_resizes_concatenates_and_pools():
    features = {"a": torch.rand(2, 3, 4, 6), "b": torch.rand(2, 5, 8, 12)}
    out = aggregate(features)
    assert out.shape == (2, 8, 8, 12)
    assert torch.equal(out[:, 3:], features["b"])
    pooled = aggregate(features, size=(4, 6), mode="area", concat=False)
    torch.testing.assert_close(pooled["b"], torch.nn.functional.avg_pool2d(features["b"], 2))
    normed = aggregate(features, size=8, normalize=True)
    assert normed.shape == (2, 8, 8, 8)
    torch.testing.assert_close(
        aggregate({"b": features["b"]}, normalize=True).norm(dim=1), torch.ones(2, 8, 12)
    )
    with pytest.raises(ValueError, match="mode: must be one of"):
        aggregate(features, mode="linear")


def test_multi_model_extractor_prefixes_members(make_extractor, images):
    sd15 = make_extractor("sd15", preset="ours-v1.5", image_size=(64, 64))
    sdxl = make_extractor("sdxl", preset="ours-xl", image_size=(128, 128))
    ensemble = MultiModelExtractor({"sd15": sd15, "sdxl": sdxl})
    features = ensemble(images, "a photo")
    assert list(features) == list(ensemble.layers)
    assert next(iter(features)) == "sd15/up-level1-repeat1-vit-block0-cross-q"
    assert torch.equal(
        features["sdxl/up-level0-repeat0-vit-block7-out"],
        sdxl(images, "a photo")["up-level0-repeat0-vit-block7-out"],
    )
    assert features["sdxl/up-level1-repeat0-vit-block0-out"].shape == (2, 16, 8, 8)
    with pytest.raises(ValueError, match="contain no '/'"):
        MultiModelExtractor({"a/b": sd15})


def test_multi_model_extractor_from_preset_with_local_models(model_dirs, images):
    ensemble = MultiModelExtractor.from_preset(
        "ours-xl-t",
        models={
            "sdxl": str(model_dirs["sdxl"]),
            "sd15": str(model_dirs["sd15"]),
            "playground-v2": str(model_dirs["sdxl"]),
        },
        image_size=(64, 64),
    )
    features = ensemble(images[:1])
    assert [k.split("/")[0] for k in features] == ["sdxl"] * 4 + ["sd15"] * 4 + [
        "playground-v2"
    ] * 4
    assert torch.equal(
        features["sdxl/up-level1-repeat0-vit-block0-out"],
        features["playground-v2/up-level1-repeat0-vit-block0-out"],
    )
    with pytest.raises(ValueError, match=r"models: no ensemble member called \['sd21'\]"):
        MultiModelExtractor.from_preset("ours-xl-t", models={"sd21": "x"})


@pytest.mark.gpu
def test_cuda_fp16_matches_cpu_fp32(model_dirs, images):
    cpu = FeatureExtractor.from_pretrained(model_dirs["sdxl"], preset="ours-xl")
    gpu = FeatureExtractor.from_pretrained(
        model_dirs["sdxl"], preset="ours-xl", dtype="fp16", device="cuda", output_device="cpu"
    )
    reference, half = cpu(images), gpu(images)
    for name, value in reference.items():
        assert half[name].device.type == "cpu" and half[name].dtype == torch.float16
        assert (half[name].float() - value).abs().max() < 0.05 * value.abs().max(), name
