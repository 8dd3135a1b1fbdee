"""Features recorded while a pipeline generates (generate_with_features): the features at step
k equal a separate extraction on that step's latent, timestep and prompt embeddings; the image
equals the pipeline's own without recording; bad input refused before the pipeline runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from common_kernels.runtime.errors import InvalidArgument
from diffeat import FeatureExtractor, PromptEmbeddings
from diffeat import generate_features as commands
from diffeat.cli import main
from diffeat.configs import tiny_pixart_pipeline
from diffeat.dit import DiTFeatureExtractor
from diffeat.generation import check_steps, generate_with_features, loop_length
from diffeat.io import load_features

SD_NAMES = [
    "unet-in",
    "down-level0-repeat0-vit-block0-self-k",
    "down-level0-repeat0-vit-block0-self-map",
    "up-level1-repeat1-vit-block0-cross-q",
    "up-level1-repeat1-res-out",
    "unet-out",
]
DIT_NAMES = ["dit-in", "dit-block0-self-q", "dit-block3-cross-map", "dit-block27-ffn-inner"]
PROMPT = "a photo of a horse"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sd15(pipes):
    return pipes["sd15"]  # conftest's session pipeline (building one takes seconds)


@pytest.fixture(scope="module")
def pixart(perturb):
    pipe = tiny_pixart_pipeline(seed=1)
    perturb(pipe.transformer, 1, "scale_shift_table")  # and the AdaLN tables
    return pipe


def keeper(after: dict[int, torch.Tensor]):
    """A ``callback_on_step_end`` that keeps the latents after each step in ``after`` (the next
    step's input)."""

    def keep(pipe, step, timestep, kwargs):
        after[step] = kwargs["latents"].clone()
        return kwargs

    return keep


def seeded(seed: int) -> torch.Generator:
    """A new generator at ``seed`` (the recorded run and the plain one draw the same noise)."""
    return torch.Generator().manual_seed(seed)


def _close(recorded: dict, expected: dict, names) -> None:
    for name in names:
        assert recorded[name].shape == expected[name].shape, name
        torch.testing.assert_close(recorded[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)


def test_sd15_step_features_equal_an_extraction_and_the_image_is_unchanged(sd15):
    call = dict(prompt=PROMPT, num_inference_steps=3, guidance_scale=7.5, height=64, width=96,
                output_type="pt")  # fmt: skip
    start = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(5))
    after: dict[int, torch.Tensor] = {}
    keep = keeper(after)
    result = generate_with_features(
        sd15, SD_NAMES, [0, 2], branch="both", latents=start.clone(), callback_on_step_end=keep,
        **call,
    )  # fmt: skip
    plain = sd15(latents=start.clone(), **call).images
    assert torch.equal(result.output.images, plain)  # recording changes nothing
    # PNDM's PLMS loop runs one step more than num_inference_steps
    assert len(after) == loop_length(sd15.scheduler, type(sd15), call) == 4
    assert result.timesteps == {0: 667.0, 2: 334.0}
    cond, uncond = sd15.encode_prompt(PROMPT, "cpu", 1, True)
    both = PromptEmbeddings(torch.cat([uncond, cond]))  # the pipeline's guidance batch
    for step, latents in ((0, start), (2, after[1])):
        extractor = FeatureExtractor.from_pipeline(
            sd15, layers=SD_NAMES, timestep=int(result.timesteps[step])
        )
        sample = latents.expand(2, -1, -1, -1)  # (2, 4, h, w): PNDM does not scale its input
        expected = extractor.forward_unet(sample, both, (64, 96))
        for name in SD_NAMES:  # the same batch through the same kernels: equal bit for bit
            assert torch.equal(result.features[step][name], expected[name]), name
        # the prompt alone (batch 1) differs only by the kernels' batch-dependent rounding
        alone = extractor.forward_unet(latents, PromptEmbeddings(cond), (64, 96))
        _close({n: v[1:] for n, v in result.features[step].items()}, alone, SD_NAMES)
    heads = result.features[0].heads
    assert heads["down-level0-repeat0-vit-block0-self-map"] == sd15.unet.config.attention_head_dim
    # branch="cond" (the default) is the second half of "both"
    cond_only = generate_with_features(sd15, SD_NAMES[-2:], 2, latents=start.clone(), **call)
    for name in SD_NAMES[-2:]:
        assert torch.equal(cond_only.features[2][name], result.features[2][name][1:])
    assert torch.equal(cond_only.output.images, plain)


def test_sdxl_step_features_equal_an_extraction_on_eulers_scaled_input(pipes):
    sdxl = pipes["sdxl"]
    names = ["unet-in", "up-level0-repeat0-vit-block0-cross-q", "unet-out"]
    call = dict(prompt=PROMPT, num_inference_steps=3, guidance_scale=5.0, height=64, width=128,
                output_type="pt")  # fmt: skip
    after: dict[int, torch.Tensor] = {}
    keep = keeper(after)
    result = generate_with_features(
        sdxl, names, [1], branch="both", callback_on_step_end=keep, generator=seeded(3), **call
    )
    assert torch.equal(result.output.images, sdxl(generator=seeded(3), **call).images)
    assert result.timesteps == {1: 334.0}
    cond, uncond, pooled, uncond_pooled = sdxl.encode_prompt(PROMPT, device="cpu")
    both = PromptEmbeddings(torch.cat([uncond, cond]), pooled=torch.cat([uncond_pooled, pooled]))
    sigma = float(sdxl.scheduler.sigmas[1])
    sample = torch.cat([after[0]] * 2) / (sigma**2 + 1) ** 0.5  # Euler's scale_model_input
    extractor = FeatureExtractor.from_pipeline(sdxl, layers=names, timestep=334)
    expected = extractor.forward_unet(sample, both, (64, 128))
    for name in names:  # the size conditioning (64 x 128) too: equal bit for bit
        assert torch.equal(result.features[1][name], expected[name]), name


def test_pixart_step_features_equal_an_extraction(pixart):
    call = dict(prompt=PROMPT, num_inference_steps=2, guidance_scale=4.5, height=64, width=32,
                output_type="pt", max_sequence_length=24, use_resolution_binning=False)  # fmt: skip
    start = torch.randn(1, 4, 8, 4, generator=torch.Generator().manual_seed(2))
    after: dict[int, torch.Tensor] = {}

    def keep(step, timestep, latents):  # PixArt's pipelines call back the old way
        after[step] = latents.clone()

    result = generate_with_features(
        pixart, DIT_NAMES, [1], latents=start.clone(), callback=keep, callback_steps=1, **call
    )
    plain = pixart(latents=start.clone(), **call).images
    assert torch.equal(result.output.images, plain)
    assert list(result.features) == [1] and set(after) == {0, 1}
    encoded = pixart.encode_prompt(PROMPT, True, device="cpu", max_sequence_length=24)
    embeds, mask, uncond, uncond_mask = encoded  # (1, 24, 16) and (1, 24) each
    extractor = DiTFeatureExtractor.from_pipeline(
        pixart, layers=DIT_NAMES, timestep=int(result.timesteps[1]), max_sequence_length=24
    )
    sample = after[0].expand(2, -1, -1, -1)  # (2, 4, h, w): the guidance batch
    both = PromptEmbeddings(torch.cat([uncond, embeds]), mask=torch.cat([uncond_mask, mask]))
    expected = extractor.forward_unet(sample, both, (64, 32))
    for name in DIT_NAMES[:2]:  # before any text enters: equal bit for bit
        assert torch.equal(result.features[1][name], expected[name][1:]), name
    # after the prompt enters, within fp32 rounding (5.7e-7 at most here); branch="cond" is
    # the second half of the guidance batch
    _close(result.features[1], {n: v[1:] for n, v in expected.items()}, DIT_NAMES)
    assert result.features[1]["dit-block3-cross-map"].shape == (1, 2 * 24, 4, 2)


@pytest.mark.parametrize(
    ("options", "argument", "message"),
    [
        ({"steps": [4]}, "steps", "must be loop indices in [0, 3] (this run calls the network 4"),
        ({"steps": []}, "steps", "is empty"),
        ({"steps": [1, 1]}, "steps", "repeats a step"),
        ({"steps": [True]}, "steps", "got True"),
        ({"branch": "negative"}, "branch", "must be one of ('cond', 'uncond', 'both')"),
        ({"layers": ["vae-out"]}, "layers", "'vae-out' is the VAE latent"),
        ({"num_inference_steps": 0}, "num_inference_steps", "must be an integer >= 1, got 0"),
        ({"return_dict": False}, "return_dict", "must stay True"),
        ({"strength": 0.5}, "strength", "strength: text-to-image loops only"),
        ({"denoising_end": 0.8}, "denoising_end", "text-to-image loops only"),
    ],
)
def test_bad_input_is_refused_before_the_pipeline_runs(sd15, monkeypatch, options, argument,
                                                       message):  # fmt: skip
    monkeypatch.setattr(type(sd15), "__call__", lambda *a, **k: pytest.fail("the pipeline ran"))
    arguments = {"layers": ["unet-out"], "steps": [0], "prompt": PROMPT, "num_inference_steps": 3}
    arguments.update(options)
    with pytest.raises(InvalidArgument) as error:
        generate_with_features(sd15, **arguments)
    assert error.value.argument == argument
    assert message in str(error.value)


def test_unknown_layer_and_a_model_without_a_network_are_refused(sd15):
    with pytest.raises(ValueError, match="no-such-layer"):
        generate_with_features(sd15, ["no-such-layer"], [0], prompt=PROMPT)
    with pytest.raises(InvalidArgument, match="pipe must be a diffusers text-to-image pipeline"):
        generate_with_features(object(), ["unet-out"], [0])


def test_uncond_without_guidance_is_refused(sd15):
    with pytest.raises(InvalidArgument, match="used no classifier-free guidance"):
        generate_with_features(
            sd15, ["unet-out"], [0], branch="uncond", prompt=PROMPT, num_inference_steps=1,
            guidance_scale=1.0, height=32, width=32, output_type="pt",
        )  # fmt: skip


def test_check_steps_sorts_and_takes_one_index():
    assert check_steps(2, 3) == (2,)
    assert check_steps([2, 0], 3) == (0, 2)


@pytest.mark.slow  # building the tiny FLUX and SD3 pipelines takes 10-15 s on a loaded machine
def test_flux_and_sd3_step_features_equal_an_extraction():
    from diffeat import FluxFeatureExtractor, SD3FeatureExtractor
    from diffeat.backbones.mmdit import unpack_latents
    from diffeat.configs import tiny_flux_pipeline, tiny_sd3_pipeline

    after: dict[int, torch.Tensor] = {}
    keep = keeper(after)
    call = dict(prompt=PROMPT, num_inference_steps=2, height=64, width=32, output_type="pt",
                max_sequence_length=24)  # fmt: skip
    flux = tiny_flux_pipeline(seed=0)
    names = ["flux-in", "flux-double1-q", "flux-double1-self-map", "flux-single3-out", "flux-out"]
    result = generate_with_features(
        flux, names, [1], callback_on_step_end=keep, guidance_scale=3.5, generator=seeded(7), **call
    )
    plain = flux(guidance_scale=3.5, generator=seeded(7), **call).images
    assert torch.equal(result.output.images, plain)
    embeds, pooled, _ = flux.encode_prompt(PROMPT, None, device="cpu", max_sequence_length=24)
    extractor = FluxFeatureExtractor.from_pipeline(
        flux, layers=names, sigma=result.timesteps[1], guidance_scale=3.5, max_sequence_length=24
    )
    latents = unpack_latents(after[0], 8, 4)  # (1, 4, 8, 4): the pipeline's packed latents
    expected = extractor.forward_unet(latents, PromptEmbeddings(embeds, pooled=pooled), (64, 32))
    assert torch.equal(result.features[1]["flux-in"], expected["flux-in"])
    _close(result.features[1], expected, names)

    sd3 = tiny_sd3_pipeline(seed=0)
    names = ["sd3-in", "sd3-block0-q", "sd3-block0-self-map", "sd3-block5-out", "sd3-out"]
    after.clear()
    result = generate_with_features(
        sd3, names, [1], branch="both", callback_on_step_end=keep, guidance_scale=5.0,
        generator=seeded(7), **call,
    )  # fmt: skip
    plain = sd3(guidance_scale=5.0, generator=seeded(7), **call).images
    assert torch.equal(result.output.images, plain)
    cond, uncond, pooled, uncond_pooled = sd3.encode_prompt(
        PROMPT, None, None, device="cpu", max_sequence_length=24
    )
    both = PromptEmbeddings(torch.cat([uncond, cond]), pooled=torch.cat([uncond_pooled, pooled]))
    extractor = SD3FeatureExtractor.from_pipeline(
        sd3, layers=names, sigma=result.timesteps[1] / 1000, max_sequence_length=24
    )
    expected = extractor.forward_unet(after[0].expand(2, -1, -1, -1), both, (64, 32))
    _close(result.features[1], expected, names)


CLI_NAMES = ["unet-in", "up-level1-repeat1-res-out"]


def test_the_command_writes_the_apis_features_and_the_image(model_dirs, pipes, tmp_path):
    out, png = tmp_path / "gen.safetensors", tmp_path / "gen.png"
    status = main([
        "generate-features", "--model", str(model_dirs["sd15"]), "--prompt", PROMPT,
        "--steps", "3,1", "--layers", ",".join(CLI_NAMES), "--num-inference-steps", "3",
        "--image-size", "64x128", "--seed", "4", "-o", str(out), "--image", str(png),
    ])  # fmt: skip
    assert status == 0
    tensors, meta = load_features(out)
    expected = generate_with_features(
        pipes["sd15"], CLI_NAMES, [1, 3], prompt=PROMPT, num_inference_steps=3, height=64,
        width=128, generator=torch.Generator().manual_seed(4),
    )  # fmt: skip
    assert sorted(tensors) == sorted(f"step{k}/{n}" for k in (1, 3) for n in CLI_NAMES)
    for step in (1, 3):
        for name in CLI_NAMES:
            assert torch.equal(tensors[f"step{step}/{name}"], expected.features[step][name])
    assert meta["steps"] == [1, 3] and meta["layers"] == CLI_NAMES and meta["branch"] == "cond"
    assert meta["timesteps"] == [expected.timesteps[1], expected.timesteps[3]] == [334.0, 1.0]
    assert meta["image_size"] == [64, 128] and meta["seed"] == 4
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(expected.output.images[0]))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "4"], "--steps must be loop indices in [0, 3] (this run calls the network"),
        (["--steps", "a,1"], "--steps must be comma-separated integers, got 'a,1'"),
        (["--steps", "0", "--layers", "vae-out"], "--layers: 'vae-out' is the VAE latent"),
        (["--steps", "0", "--seed", "-1"], "--seed must be in [0, 18446744073709551615], got -1"),
        (["--steps", "0", "--image-size", "60"], "--image-size 60x60 is not a multiple of 64"),
        (["--steps", "0", "--num-inference-steps", "0"], "--num-inference-steps must be >= 1"),
        (["--steps", "0", "--guidance-scale", "nan"], "--guidance-scale must be finite, got nan"),
        (["--steps", "0", "--branch", "neg"], "--branch: invalid choice: 'neg'"),
    ],
)
def test_the_command_refuses_bad_input_before_loading(model_dirs, tmp_path, monkeypatch, capsys,
                                                      flags, message):  # fmt: skip
    monkeypatch.setattr(commands, "load_pipeline", lambda run: pytest.fail("weights loaded"))
    model = ["--model", str(model_dirs["sd15"]), "--num-inference-steps", "3"]
    status = main(["generate-features", *model, *flags, "-o", str(tmp_path / "g.safetensors")])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("diffeat generate-features: error: ") and message in error, error
    assert "\n" not in error and not (tmp_path / "g.safetensors").exists()


@pytest.mark.parametrize("kind", ["pixart", "pixart-alpha"])
def test_generate_features_on_pixart_at_the_size_asked(kind, tmp_path, capsys):
    """As tried (issue 59): generate-features on tiny PixArt-Sigma failed with diffusers'
    "Invalid sample size" (the resolution binning has no bin for a tiny sample size), and on
    PixArt-alpha ``--image-size 128`` recorded 1024 px features (the bin's) under an image_size
    of [128, 128]. The binning is off: features of the size asked, as the metadata says."""
    folder = tmp_path / kind
    assert main(["tiny-model", str(folder), "--kind", kind]) == 0
    out = tmp_path / "g.safetensors"
    argv = ["generate-features", "--model", str(folder), "--prompt", PROMPT, "--steps", "0",
            "--num-inference-steps", "2", "--image-size", "128x64", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    tensors, metadata = load_features(out)
    assert metadata["image_size"] == [128, 64]
    patch = 2  # VAE x8, patch 2: a 128x64 image is 8x4 tokens
    assert {tuple(t.shape[-2:]) for t in tensors.values()} == {
        (128 // 8 // patch, 64 // 8 // patch)
    }
    run = commands.check_generation(str(folder), None, [0], num_inference_steps=2)
    assert run.call["use_resolution_binning"] is False
