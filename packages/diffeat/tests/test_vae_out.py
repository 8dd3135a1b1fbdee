"""``vae-out`` as the official code defines it (``faithful=True``), against a restatement.

The official ``vae-out`` is the VAE decoding of the latents after one scheduler step of the
extraction call (divided by the VAE's scaling factor, stored raw). The restatement below uses
no diffusers scheduler: the DDIM form of PNDM's first PLMS step (SD 1.5) and the Euler step
``x + (sigma_{t-1} - sigma_t) eps`` (SDXL), from ``alphas_cumprod`` in fp64.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor


def restated_vae_out(pipe, kind: str, pixels: torch.Tensor, prompt: str, seed: int):
    """The official ``vae-out`` recomputed by hand (t = 50 on the official timestep list)."""
    vae, unet = pipe.vae, pipe.unet
    scale = vae.config.scaling_factor
    abar = pipe.scheduler.alphas_cumprod.double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = vae.encode(pixels * 2 - 1).latent_dist.sample(generator).double() * scale
        eps = randn_tensor(z.shape, generator=generator, dtype=torch.float32).double()
        embeds = pipe.encode_prompt(
            [prompt] * len(pixels),
            device="cpu",
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        kwargs = {}
        if kind == "sd15":
            # PNDM's 1000-step list holds 999 twice: entry 1000 - 50 is timestep 51
            t, prev = 51, 50
            x = abar[t].sqrt() * z + (1 - abar[t]).sqrt() * eps
            unet_in, unet_t = x, t
        else:
            # Euler (leading, offset 1): entry 950 is 50.0, the next one 49.0
            t, prev = 50, 49
            sigma, sigma_prev = (((1 - abar[i]) / abar[i]).sqrt() for i in (t, prev))
            x = z + sigma * eps
            unet_in, unet_t = x / (sigma**2 + 1).sqrt(), float(t)
            height, width = pixels.shape[-2:]
            kwargs["added_cond_kwargs"] = {
                "text_embeds": embeds[2],
                "time_ids": torch.tensor([[height, width, 0, 0, height, width]] * len(x)).float(),
            }
        model_output = unet(
            unet_in.float(), unet_t, encoder_hidden_states=embeds[0], **kwargs
        ).sample.double()
        if kind == "sd15":  # DDIM: predicted x0, then back to t - 1 with the same noise
            x0 = (x - (1 - abar[t]).sqrt() * model_output) / abar[t].sqrt()
            stepped = abar[prev].sqrt() * x0 + (1 - abar[prev]).sqrt() * model_output
        else:
            stepped = x + (sigma_prev - sigma) * model_output
        return vae.decode((stepped / scale).float()).sample


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_faithful_vae_out_is_the_decoded_latent_after_one_scheduler_step(
    pipes, make_extractor, images, kind
):
    pixels = images[:, :, :, :128]  # faithful mode needs square token grids
    extractor = make_extractor(kind, layers=["vae-out"], faithful=True)
    features = extractor(pixels, "a photo", torch.Generator().manual_seed(5))
    assert list(features) == ["vae-out"]  # the U-Net output it needed is not returned
    out = features["vae-out"]
    assert out.shape == (2, 3, 128, 128) and out.dtype == torch.float32
    expected = restated_vae_out(pipes[kind], kind, pixels, "a photo", 5)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    assert out.abs().max() > 0  # raw: no (x / 2 + 0.5) rescaling or clipping applied
    assert math.isclose(float(out.min()), float(expected.min()), abs_tol=2e-5)
    assert extractor.layer_infos(128)[0].shape == (3, 128, 128)


def test_faithful_vae_out_with_other_names_and_the_default_latent(make_extractor, images):
    pixels = images[:, :, :, :128]
    names = ["up-level1-repeat0-vit-block0-out", "vae-out"]
    faithful = make_extractor("sd15", layers=names, faithful=True)
    both = faithful(pixels, generator=torch.Generator().manual_seed(1))
    alone = make_extractor("sd15", layers=["vae-out"], faithful=True)(
        pixels, generator=torch.Generator().manual_seed(1)
    )
    assert list(both) == names and torch.equal(both["vae-out"], alone["vae-out"])
    # the other features are those of an extractor that does not decode
    plain = make_extractor("sd15", layers=names[:1], faithful=True)(
        pixels, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(plain[names[0]], both[names[0]])
    # the default stays the clean scaled latent
    default = make_extractor("sd15", layers=["vae-out"])
    assert default(pixels)["vae-out"].shape == (2, 4, 16, 16)
    assert default.layer_infos(128)[0].shape == (4, 16, 16)
    # latents given to a call: the same decoding of the same step
    generator = torch.Generator().manual_seed(1)
    latents = faithful.encode_images(faithful.preprocess(pixels), generator)
    from_latents = faithful(latents=latents, generator=generator, layers=["vae-out"])
    assert torch.equal(from_latents["vae-out"], both["vae-out"])
