"""ControlNet: the patch path equals diffusers' whole-image ControlNet pipeline where one patch
covers the image, a zero-initialised ControlNet gives exactly the plain result, condition crops
follow the patches (staggered grid, random centres with rolls) with their time ids, TIFF
conditions are read segment by segment, and bad inputs are one error before any step."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline
from PIL import Image

from pixelsmith import PixelsmithConfig, PixelsmithPipeline, generate_cascade
from pixelsmith.cli import main
from pixelsmith.control import (
    ControlCondition,
    TiffCondition,
    open_control_image,
)
from pixelsmith.patches import Patch
from pixelsmith.sampling import PatchSampler
from pixelsmith.tiny import TINY_CONTROLNET_CONFIG, tiny_controlnet

PROMPT = "a cat"


def saved_controlnet(tmp_path, active: bool) -> ControlNetModel:
    """The tiny ControlNet saved and loaded back; ``active`` randomises its zero layers."""
    controlnet = tiny_controlnet(seed=0)
    if active:
        gen = torch.Generator().manual_seed(1)
        zero = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
        zero.append(controlnet.controlnet_cond_embedding.conv_out)
        with torch.no_grad():
            for layer in zero:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.3)
    controlnet.save_pretrained(tmp_path / "controlnet")
    return ControlNetModel.from_pretrained(tmp_path / "controlnet").eval()


@pytest.fixture
def cascade_options(small_config) -> dict:
    return dict(num_inference_steps=2, seed=0, config=small_config, progress=False)


def test_one_patch_equals_diffusers_controlnet_pipeline(
    random_image, make_pipe, components, tmp_path
):
    """Plain patch denoising (no guidance) of a latent that is one patch, with the ControlNet
    on the patch's crop, is diffusers' StableDiffusionXLControlNetPipeline on the image."""
    controlnet = saved_controlnet(tmp_path, active=True)
    pipe = make_pipe()
    condition = random_image(64, 64, seed=3)
    control = ControlCondition(controlnet, open_control_image(condition), scale=0.7)
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    steps = 3
    text = pipe.encode_text(PROMPT, guidance_scale=7.5)
    pipe.scheduler.set_timesteps(steps)
    config = PixelsmithConfig(patch_size=8, band=2)
    denoise = pipe._patch_denoiser(text, (64, 64), config, torch.Generator(), control)
    sampler = PatchSampler(
        start.clone(), num_steps=steps, guidance=None, slider=0, band=2, denoise=denoise
    )
    with torch.no_grad():
        for step in range(steps):
            sampler.step(step, [[Patch(0, 0, 8)]])
    reference = StableDiffusionXLControlNetPipeline(
        **{**components, "scheduler": pipe.scheduler},
        controlnet=controlnet,
        add_watermarker=False,
    )
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        PROMPT,
        image=condition,
        height=64,
        width=64,
        num_inference_steps=steps,
        guidance_scale=7.5,
        controlnet_conditioning_scale=0.7,
        latents=start.clone(),
        output_type="latent",
    ).images
    torch.testing.assert_close(sampler.latents, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(sampler.latents, start)


def test_zero_initialised_controlnet_gives_exactly_the_plain_cascade(
    random_image, make_pipe, tmp_path, cascade_options
):
    condition = random_image(96, 96, seed=1)  # another size than any stage: resized per stage
    plain = generate_cascade(make_pipe(), PROMPT, [64, 128], [1], **cascade_options)
    zero, active = (
        generate_cascade(
            make_pipe(),
            PROMPT,
            [64, 128],
            [1],
            controlnet=saved_controlnet(tmp_path, active=active),
            control_image=condition,
            **cascade_options,
        )
        for active in (False, True)
    )
    assert np.array_equal(np.asarray(zero), np.asarray(plain))
    assert not np.array_equal(np.asarray(active), np.asarray(plain))


@pytest.mark.parametrize("placement", ["grid", "faithful"])
def test_condition_crops_follow_the_patches_with_their_time_ids(
    random_image, make_pipe, small_config, tmp_path, placement
):
    """Crops at every patch position (the staggered odd-step grid; random centres whose
    chess mask is rolled), the time ids of each patch, at the stage size and resized."""
    controlnet = saved_controlnet(tmp_path, active=True)
    calls = []
    controlnet.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(
            (kwargs["controlnet_cond"], kwargs["added_cond_kwargs"]["time_ids"])
        ),
        with_kwargs=True,
    )
    config = small_config.replace(faithful=placement == "faithful")
    plans = []
    height, width = 192, 160  # latent 24 x 20: 3 x 3 grid, rows staggered on odd steps
    condition = random_image(2 * height, 2 * width, seed=4)
    for image, resized in [
        (condition.resize((width, height), Image.LANCZOS), False),
        (condition, True),
    ]:
        calls.clear(), plans.clear()
        with torch.no_grad():
            make_pipe()(
                PROMPT,
                random_image(48, 40),
                slider=3,
                height=height,
                width=width,
                num_inference_steps=3,
                config=config,
                output_type="latent",
                progress=False,
                callback=lambda step, latents, plan: plans.append(plan),
                control=ControlCondition(controlnet, open_control_image(image)),
            )
        pixels = np.asarray(image, dtype=np.float32) / 255  # (H, W, 3)
        if resized:  # PIL's Lanczos in float ("F" images: no 8-bit rounding between passes)
            channels = [
                Image.fromarray(pixels[..., c]).resize((width, height), Image.LANCZOS)
                for c in range(3)
            ]
            pixels = np.stack([np.asarray(c) for c in channels], -1).clip(0, 1)
        batches = [batch for plan in plans for batch in plan.batches]
        time_ids = [ids for plan in plans for ids in plan.time_ids]
        assert len(calls) == len(batches)
        for (cond, ids), batch, expected_ids in zip(calls, batches, time_ids, strict=True):
            crops = np.stack(
                [pixels[8 * p.top : 8 * p.top + 64, 8 * p.left : 8 * p.left + 64] for p in batch]
            )  # (k, 64, 64, 3)
            k = len(batch)
            assert cond.shape == (2 * k, 3, 64, 64)  # CFG: the same crops twice
            assert torch.equal(cond[:k], cond[k:])
            got = cond[:k].permute(0, 2, 3, 1).numpy()
            np.testing.assert_allclose(got, crops, rtol=0, atol=1e-5 if resized else 0)
            assert ids[:k].tolist() == expected_ids and ids[k:].tolist() == expected_ids
    if placement == "grid":
        tops = [sorted({p.top for b in plan.batches for p in b}) for plan in plans[:2]]
        assert tops == [[0, 8, 16], [0, 4, 12, 16]]  # odd steps: rows shifted by half a patch
    else:
        rolls = {(p.roll_left, p.roll_down) for plan in plans for b in plan.batches for p in b}
        assert len(rolls) > 1  # the chess rolls vary; the crops followed the patches regardless


def test_tiff_condition_is_read_segment_by_segment(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (200, 136, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "tiled.tif", array, tile=(32, 32), compression="zlib")
    tifffile.imwrite(tmp_path / "strips.tif", array, rowsperstrip=16)
    tifffile.imwrite(tmp_path / "gray.tif", array[..., 0], tile=(32, 32))
    tiled = TiffCondition(tmp_path / "tiled.tif")
    region = tiled.read(40, 50, 64, 64)  # rows 40-103, cols 50-113: tiles 1-3 x 1-3
    assert torch.equal(
        region, torch.from_numpy(array[40:104, 50:114] / np.float32(255)).permute(2, 0, 1)
    )
    assert tiled.segments_read == 9
    strips = TiffCondition(tmp_path / "strips.tif")
    assert torch.equal(strips.read(40, 50, 64, 64), region)
    assert strips.segments_read == 5  # strips 2-6 (rows 32-111)
    whole = TiffCondition(tmp_path / "tiled.tif").read(0, 0, 200, 136)
    assert torch.equal(whole, torch.from_numpy(array / np.float32(255)).permute(2, 0, 1))
    gray = TiffCondition(tmp_path / "gray.tif").read(190, 130, 10, 6)
    assert torch.equal(
        gray, torch.from_numpy(array[190:, 130:, 0] / np.float32(255)).expand(3, -1, -1)
    )


def test_tiff_condition_equals_the_same_image_in_memory(
    random_image, make_pipe, tmp_path, cascade_options
):
    condition = random_image(96, 96, seed=2)
    tifffile.imwrite(tmp_path / "cond.tif", np.asarray(condition), tile=(32, 32))
    controlnet = saved_controlnet(tmp_path, active=True)
    images = [
        generate_cascade(
            make_pipe(),
            PROMPT,
            [64, 128],
            [1],
            controlnet=controlnet,
            control_image=image,
            **cascade_options,
        )
        for image in (condition, tmp_path / "cond.tif")
    ]
    assert np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_bad_control_inputs_are_one_error_before_any_step(
    random_image, make_pipe, tmp_path, small_config
):
    pipe = make_pipe()
    unet_calls = []
    pipe.unet.register_forward_pre_hook(lambda *args: unet_calls.append(1))
    good = saved_controlnet(tmp_path, active=False)
    wide = ControlNetModel(**{**TINY_CONTROLNET_CONFIG, "block_out_channels": (8, 16, 32)})
    tifffile.imwrite(tmp_path / "deep.tif", np.zeros((64, 64, 3), np.uint16))
    image = random_image(64, 64)
    cases = [
        (
            dict(controlnet=wide, control_image=image),
            "controlnet does not match the model: its block_out_channels is (8, 16, 32), the "
            "UNet's (4, 8, 16); is it a ControlNet for another base model than this SDXL one?",
        ),
        (
            dict(controlnet=good, control_image=random_image(64, 96)),
            "control_image is 64x96 px (height x width) but the image is 128x128: a condition "
            "image must have the final image's aspect ratio (within 1%); it is resized to every "
            "stage's size",
        ),
        (dict(control_image=image), "control_image needs controlnet"),
        (dict(controlnet=good), "controlnet needs control_image (its condition image)"),
        (
            dict(controlnet=good, control_image=image, controlnet_conditioning_scale=float("nan")),
            "controlnet_conditioning_scale must be a finite number, got nan",
        ),
        (
            dict(controlnet=good, control_image=tmp_path / "none.png"),
            f"control_image {tmp_path / 'none.png'}: no such file; expected an image file",
        ),
        (
            dict(controlnet=good, control_image=tmp_path / "deep.tif"),
            f"control_image {tmp_path / 'deep.tif'}: expected an 8-bit gray, RGB or RGBA TIFF "
            "with interleaved samples, got uint16 with shape (64, 64, 3)",
        ),
        (
            dict(controlnet=good, control_image=torch.full((3, 64, 64), 2.0)),
            "control_image: values must lie in [0, 1]; got [2, 2]",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as error:
            generate_cascade(pipe, PROMPT, [64, 128], [1], config=small_config, **kwargs)
        assert str(error.value) == message
    with pytest.raises(TypeError, match="controlnet must be a diffusers ControlNetModel, got str"):
        generate_cascade(
            pipe, PROMPT, [64, 128], [1], controlnet="org/cn", control_image=image,
            config=small_config,
        )  # fmt: skip
    assert unet_calls == []


def test_cli_controlnet_equals_api_and_bad_inputs_exit_2(
    random_image, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # ./nope/cn below is relative
    model = tmp_path / "tiny"
    assert main(["tiny-model", str(model)]) == 0
    controlnet = saved_controlnet(tmp_path, active=True)  # tmp_path / "controlnet"
    ControlNetModel(
        **{**TINY_CONTROLNET_CONFIG, "block_out_channels": (8, 16, 32)}
    ).save_pretrained(tmp_path / "wide")
    condition = random_image(96, 96, seed=2)
    tifffile.imwrite(tmp_path / "cond.tif", np.asarray(condition), tile=(32, 32))
    small = ["--patch-size", "8", "--band", "2", "--vae-tile", "8", "--vae-overlap", "2"]
    common = ["--model", str(model), "--sizes", "64", "128", "--slider", "1", "--steps", "2"]
    common += ["--quiet", *small]
    control = ["--controlnet", str(tmp_path / "controlnet"), "--control-image"]
    png = tmp_path / "cat.png"
    argv = ["generate", "a cat", "-o", str(png), *common]
    assert main([*argv, *control, str(tmp_path / "cond.tif"), "--control-scale", "0.5"]) == 0
    pipe = PixelsmithPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    expected = generate_cascade(
        pipe,
        "a cat",
        [64, 128],
        [1],
        num_inference_steps=2,
        seed=0,
        progress=False,
        config=PixelsmithConfig(patch_size=8, band=2, vae_tile=8, vae_overlap=2),
        controlnet=controlnet,
        control_image=condition,
        controlnet_conditioning_scale=0.5,
    )
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(expected))
    capsys.readouterr()
    wide = tmp_path / "wide.png"
    random_image(64, 96).save(wide)
    bad = ["generate", "a cat", "-o", str(tmp_path / "x.png"), *common]
    cases = [
        (["--control-image", str(wide)], "--control-image needs --controlnet"),
        (
            ["--controlnet", str(tmp_path / "controlnet")],
            "--controlnet needs --control-image (its condition image)",
        ),
        (
            [*control, str(wide)],
            "--control-image is 64x96 px (height x width) but the image is 128x128: a condition "
            "image must have the final image's aspect ratio (within 1%); it is resized to every "
            "stage's size",
        ),
        (
            ["--controlnet", "./nope/cn", "--control-image", str(wide)],
            f"--controlnet: no ControlNet folder ./nope/cn (nothing at {tmp_path}/nope/cn)",
        ),
        (
            [*control, str(tmp_path / "cond.tif"), "--control-scale", "inf"],
            "--control-scale must be a finite number, got inf",
        ),
        (
            ["--controlnet", str(tmp_path / "wide"), "--control-image", str(tmp_path / "cond.tif")],
            "controlnet does not match the model: its block_out_channels is (8, 16, 32), the "
            "UNet's (4, 8, 16); is it a ControlNet for another base model than this SDXL one?",
        ),
    ]
    for extra, message in cases:
        assert main([*bad, *extra]) == 2
        assert capsys.readouterr().err == f"pixelsmith generate: error: {message}\n"
    assert not (tmp_path / "x.png").exists()
