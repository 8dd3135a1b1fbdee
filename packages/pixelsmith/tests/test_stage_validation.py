"""Input checks of the API entries, before any work: a stage's image tensor and guidance latent
(finite, images in [0, 1]), the cascade's TIFF compression, its sizes and its memory estimate."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from common_kernels.runtime.errors import InvalidArgument
from pixelsmith import generate_cascade
from pixelsmith.config import latent_bytes_per_px, latent_maps_bytes, validate_cascade
from pixelsmith.io import COMPRESSIONS, check_compression, compression_error

PROMPT = "a cat"


def refuse_work(pipe, monkeypatch) -> None:
    """Any text encoding or sampling fails the test: the checks must come first."""

    def fail(*args, **kwargs):
        raise AssertionError("work started before the inputs were checked")

    for name in ("encode_text", "generate_base", "encode_guidance", "prepare_stage"):
        monkeypatch.setattr(pipe, name, fail)


def stage(pipe, config, **kwargs):
    options = dict(prompt=PROMPT, slider=1, num_inference_steps=2, config=config)
    options.update(output_type="latent", progress=False, **kwargs)
    return pipe(**options)


def pixels(height: int = 32, width: int = 32) -> torch.Tensor:
    """(1, 3, H, W) float pixels in [0, 1], both ends included."""
    values = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    values[0, 0, 0, 0], values[0, 1, 0, 0] = 0.0, 1.0
    return values


def with_value(tensor: torch.Tensor, value: float) -> torch.Tensor:
    changed = tensor.clone()
    changed.view(-1)[5] = value
    return changed


NOT_FINITE = "image: values must be finite and lie in [0, 1]; got 1 NaN/Inf value(s)"
IMAGE_CASES = {
    "nan": (with_value(pixels(), float("nan")), NOT_FINITE),
    "inf": (with_value(pixels(), float("inf")), NOT_FINITE),
    "minus_inf": (with_value(pixels(), -float("inf")), NOT_FINITE),
    "above_1": (with_value(pixels(), 1.5), "image: values must lie in [0, 1]; got [0, 1.5]"),
    "below_0": (with_value(pixels(), -0.25), "image: values must lie in [0, 1]; got [-0.25, 1]"),
    "in_minus_1_1": (pixels() * 2 - 1, "image: values must lie in [0, 1]; got [-1, 1]"),
    "uint8": (
        (pixels() * 255).to(torch.uint8),
        "image: tensors must be float in [0, 1]; got torch.uint8 (divide 8-bit pixels by 255)",
    ),
    "batch_of_2": (
        torch.rand(2, 3, 32, 32),
        "image must be a (1, 3, H, W) / (3, H, W) tensor in [0, 1], got (2, 3, 32, 32)",
    ),
    "one_channel": (
        torch.rand(1, 32, 32),
        "image must be a (1, 3, H, W) / (3, H, W) tensor in [0, 1], got (1, 32, 32)",
    ),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_stage_image_tensor_checked_before_work(case, make_pipe, small_config, monkeypatch):
    pipe = make_pipe()
    refuse_work(pipe, monkeypatch)
    image, message = IMAGE_CASES[case]
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        stage(pipe, small_config, image=image)


@pytest.mark.parametrize("handover", ["float", "uint8"])
def test_stage_image_tensor_in_0_1_equals_the_pil_image(handover, make_pipe, small_config):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    array[0, 0], array[0, 1] = 0, 255  # both ends of [0, 1]
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255  # (3, H, W)
    config = small_config.replace(handover=handover)

    def latents(image) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return stage(make_pipe(), config, image=image, generator=generator).latents

    expected = latents(Image.fromarray(array))
    for image in (tensor, tensor[None]):
        torch.testing.assert_close(latents(image), expected, rtol=0, atol=1e-5)


NOT_FINITE_LATENTS = (
    "guidance_latents contains NaN or Inf values; expected finite scaled VAE latents (any real "
    "value)"
)
GUIDANCE_CASES = {"nan": float("nan"), "inf": float("inf"), "minus_inf": -float("inf")}


@pytest.mark.parametrize("case", sorted(GUIDANCE_CASES))
def test_stage_guidance_latents_checked_before_work(case, make_pipe, small_config, monkeypatch):
    pipe = make_pipe()
    refuse_work(pipe, monkeypatch)
    latents = with_value(torch.randn(1, 4, 8, 8), GUIDANCE_CASES[case])
    with pytest.raises(ValueError, match=f"^{re.escape(NOT_FINITE_LATENTS)}$"):
        stage(pipe, small_config, guidance_latents=latents)


def test_cascade_refuses_an_unknown_compression_before_work(
    make_pipe, small_config, tmp_path, monkeypatch
):
    pipe = make_pipe()
    refuse_work(pipe, monkeypatch)
    usable = ", ".join(c for c in COMPRESSIONS if compression_error(c) is None)
    message = (
        "compression 'bogus' cannot be written here (COMPRESSION: invalid argument 'BOGUS'); "
        f"usable here: {usable} (more with `pip install imagecodecs`)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        generate_cascade(
            pipe,
            PROMPT,
            [64, 128],
            [1],
            num_inference_steps=2,
            config=small_config,
            output=tmp_path / "out.tif",
            compression="bogus",
        )
    assert list(tmp_path.iterdir()) == []


def test_check_compression_accepts_zlib_and_none():
    assert compression_error("zlib") is None
    check_compression("zlib")
    check_compression(None)
    with pytest.raises(InvalidArgument, match=r"^compression 'lz' cannot be written here") as info:
        check_compression("lz")
    assert info.value.for_flags({"compression": "--compression"}).startswith(
        "--compression 'lz' cannot be written here"
    )


def test_latent_maps_bytes_is_66_bytes_per_sdxl_latent_px():
    assert latent_bytes_per_px() == 4 * 4 * 4 + 2  # 4 float32 maps of 4 channels + int16 map
    assert latent_maps_bytes(1024, 1024) == 128 * 128 * 66
    assert latent_maps_bytes(2048, 1536) == 256 * 192 * 66
    assert latent_maps_bytes(31616, 31616) == 3952 * 3952 * 66  # docs/guide.md's 0.96 GiB
    assert latent_maps_bytes(64, 64, vae_scale_factor=8, channels=16) == 8 * 8 * (16 * 16 + 2)


def test_validate_cascade_names_the_arguments_and_a_cli_its_flags():
    flags = {"sizes": "--sizes", "sliders": "--slider", "num_inference_steps": "--steps",
             "patch_size": "--patch-size"}  # fmt: skip
    kwargs = dict(vae_scale_factor=8, patch_size=8)
    with pytest.raises(InvalidArgument) as info:
        validate_cascade([32, 48], [1], 2, **kwargs)
    assert str(info.value) == (
        "sizes[1] = 48x48 is smaller than one patch (64 px = patch_size 8 latent px); use larger "
        "sizes or a smaller patch_size"
    )
    assert info.value.for_flags(flags) == (
        "--sizes[1] = 48x48 is smaller than one patch (64 px = --patch-size 8 latent px); use "
        "larger sizes or a smaller --patch-size"
    )
    with pytest.raises(InvalidArgument) as info:
        validate_cascade([64, 128], [3], 2, **kwargs)
    assert info.value.for_flags(flags) == "--slider[0] must be an int in [1, 2], got 3"
    with pytest.raises(ValueError, match=r"^sizes: expected S or HxW \(height x width\) in "
                       r"pixels, positive integers, got '8x8x8'$"):  # fmt: skip
        validate_cascade(["8x8x8"], [], 2, **kwargs)
    assert validate_cascade(["64", "64x128"], [1], 2, **kwargs) == [(64, 64), (64, 128)]
