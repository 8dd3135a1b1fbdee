"""DDIM inversion as the noising (noising="ddim-inversion"): the network input equals a hand
computation of the DDIM steps with the U-Net (and PixArt's noise half) called directly, it is
deterministic, and schedulers or settings that cannot invert are refused naming the
argument."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import PNDMScheduler

from common_kernels.runtime.errors import InvalidArgument
from diffeat import DiTFeatureExtractor, ExtractorConfig, FeatureExtractor, FluxFeatureExtractor
from diffeat.configs import SD15_SCHEDULER, tiny_flux_pipeline, tiny_pixart_pipeline
from diffeat.inversion import check_inversion, inversion_timesteps
from diffeat.plan import check_from_pretrained

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def manual_inversion(network, latents, embeds, alphas, steps, channels, **kwargs):
    """DDIM inversion restated: eps at (x_i, s_i), x0, then x_{i+1} (abar = 1 for the clean)."""
    x = latents.double()
    for index in range(len(steps) - 1):
        now, later = steps[index], steps[index + 1]
        a_now = 1.0 if index == 0 else float(alphas[now])
        a_next = float(alphas[later])
        with torch.no_grad():
            eps = network(x.float(), timestep=torch.tensor([now]), encoder_hidden_states=embeds,
                          return_dict=False, **kwargs)[0][:, :channels].double()  # fmt: skip
        x0 = (x - math.sqrt(1 - a_now) * eps) / math.sqrt(a_now)
        x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
    return x


def test_inversion_timesteps():
    assert inversion_timesteps(6, 3) == [0, 2, 4, 6]
    assert inversion_timesteps(50, 4) == [0, 12, 25, 38, 50]  # round(i t / k)
    assert len(set(inversion_timesteps(50, 50))) == 51


def test_unet_input_is_the_ddim_inversion_and_deterministic(pipes):
    pipe = pipes["sd15"]
    extractor = FeatureExtractor.from_pipeline(
        pipe, layers=["unet-in", "vae-out"], timestep=6, noising="ddim-inversion",
        inversion_steps=3, latent="mean",
    )  # fmt: skip
    images = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    first = extractor(images, "a horse", torch.Generator().manual_seed(1))
    second = extractor(images, "a horse", torch.Generator().manual_seed(2))
    assert torch.equal(first["unet-in"], second["unet-in"])  # no random noise
    embeds = extractor.encode_prompts(["a horse"] * 2).embeds
    want = manual_inversion(
        pipe.unet, first["vae-out"], embeds, pipe.scheduler.alphas_cumprod.double(), [0, 2, 4, 6], 4
    )
    torch.testing.assert_close(first["unet-in"].double(), want, atol=1e-5, rtol=1e-5)
    random = FeatureExtractor.from_pipeline(pipe, layers=["unet-in"], timestep=6, latent="mean")
    assert not torch.allclose(random(images, "a horse")["unet-in"], first["unet-in"])


def test_pixart_inverts_with_its_noise_half():
    pipe = tiny_pixart_pipeline(seed=0)
    extractor = DiTFeatureExtractor.from_pipeline(
        pipe, layers=["dit-in"], timestep=4, noising="ddim-inversion", inversion_steps=2,
        max_sequence_length=8,
    )  # fmt: skip
    latents = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(0))
    got = extractor(latents=latents, prompts="a cat")["dit-in"]
    embeddings = extractor.encode_prompts(["a cat"])
    kwargs = {"encoder_attention_mask": embeddings.mask,
              "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}  # fmt: skip
    want = manual_inversion(
        pipe.transformer, latents, embeddings.embeds, pipe.scheduler.alphas_cumprod.double(),
        [0, 2, 4], 4, **kwargs,
    )  # fmt: skip
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_what_cannot_invert_is_refused(pipes, model_dirs):
    with pytest.raises(InvalidArgument, match=r"^noising: must be one of \('random', 'ddim-inve"):
        ExtractorConfig(layers=["unet-in"], noising="ddim")
    with pytest.raises(InvalidArgument, match=r"^inversion_steps: applies to the ddim-inversion"):
        ExtractorConfig(layers=["unet-in"], inversion_steps=5)
    with pytest.raises(InvalidArgument, match=r"^inversion_steps must be >= 1, got 0"):
        ExtractorConfig(layers=["unet-in"], noising="ddim-inversion", inversion_steps=0)
    with pytest.raises(
        ValueError, match=r"^inversion_steps: must be in \[1, timestep\] = \[1, 6\]"
    ):
        FeatureExtractor.from_pipeline(
            pipes["sd15"], layers=["unet-in"], timestep=6, noising="ddim-inversion",
            inversion_steps=7,
        )  # fmt: skip
    with pytest.raises(InvalidArgument, match=r"^inversion_steps: must be in \[1, timestep\]"):
        check_from_pretrained(model_dirs["sd15"], layers=["unet-in"], timestep=0,
                              noising="ddim-inversion")  # fmt: skip
    flux = tiny_flux_pipeline(seed=0)
    with pytest.raises(
        ValueError,
        match=r"^noising: DDIM inversion needs a DDPM-style noise "
        r"schedule \(alphas_cumprod\); this model's FlowMatchEulerDiscreteScheduler",
    ):
        FluxFeatureExtractor.from_pipeline(flux, layers=["flux-in"], noising="ddim-inversion")
    scheduler = PNDMScheduler.from_config({**SD15_SCHEDULER, "prediction_type": "sample"})
    with pytest.raises(ValueError, match=r"predicts 'sample'"):
        check_inversion(scheduler, 50, None)
    with pytest.raises(ValueError, match=r"^noising: the official code's DDIM inversion"):
        check_inversion(pipes["sd15"].scheduler, 50, None, faithful=True)


@pytest.mark.slow  # 5.9 s at a load of 11 on this machine (one model load by the command)
def test_the_command_line_inverts_as_the_api(pipes, model_dirs, tmp_path):
    from PIL import Image

    from diffeat.cli import main
    from diffeat.io import load_features

    Image.fromarray((torch.rand(64, 128, 3) * 255).byte().numpy()).save(tmp_path / "a.png")
    out = tmp_path / "f.safetensors"
    options = ["--noising", "ddim-inversion", "--inversion-steps", "2", "--timestep", "4"]
    argv = ["extract", str(tmp_path / "a.png"), "--model", str(model_dirs["sd15"]), "--layers",
            "unet-in,up-level1-repeat0-res-out", *options, "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    features, meta = load_features(out)
    assert meta["noising"] == "ddim-inversion" and meta["inversion_steps"] == 2
    extractor = FeatureExtractor.from_pipeline(  # the pipeline the folder was saved from
        pipes["sd15"], layers=["unet-in", "up-level1-repeat0-res-out"], timestep=4,
        noising="ddim-inversion", inversion_steps=2,
    )  # fmt: skip
    want = extractor(Image.open(tmp_path / "a.png"), "")
    for name in want:
        torch.testing.assert_close(features[name], want[name], atol=1e-6, rtol=1e-6)
