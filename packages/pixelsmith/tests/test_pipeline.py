"""PixelsmithPipeline on tiny components: parity with plain loops, conditioning, errors, I/O."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    StableDiffusionXLPipeline,
)
from PIL import Image

from common_kernels import fft_phase_fusion
from pixelsmith import PixelsmithConfig, PixelsmithPipeline, generate_cascade
from pixelsmith.images import LanczosImage, TensorImage, pil_to_pixels
from pixelsmith.io import to_uint8
from pixelsmith.patches import GridPlanner, Patch
from pixelsmith.sampling import GuidanceLatents, PatchSampler
from pixelsmith.tiny import SDXL_SCHEDULER_CONFIG, save_tiny_model

PROMPT = "a cat"


def stage_latents(pipe, image, height: int, width: int, steps: int, **settings):
    """One Pixelsmith stage of ``PROMPT`` from ``image`` to ``height`` x ``width`` px, without
    progress bars, returned as latents (``settings``: the pipeline's other arguments)."""
    return pipe(PROMPT, image, height=height, width=width, num_inference_steps=steps,
                output_type="latent", progress=False, **settings)  # fmt: skip


def capture_unet(pipe: PixelsmithPipeline) -> list[dict]:
    calls = []

    def hook(module, args, kwargs):
        calls.append({"sample": args[0].shape, **kwargs["added_cond_kwargs"]})

    pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_base_stage_is_plain_sdxl(make_pipe, components, small_config):
    pipe = make_pipe()
    image = generate_cascade(
        pipe, PROMPT, [64], [], num_inference_steps=3, seed=0, config=small_config, progress=False
    )
    plain = StableDiffusionXLPipeline(
        **{**components, "scheduler": pipe.scheduler}, add_watermarker=False
    )
    plain.set_progress_bar_config(disable=True)
    expected = plain(
        PROMPT,
        height=64,
        width=64,
        num_inference_steps=3,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(expected))


def official_fusion(x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """The official sampler's FFT fusion, restated: the angle of the plain phasor sum, no guard."""
    x_spec = torch.fft.rfft2(x, norm="ortho")
    g_spec = torch.fft.rfft2(guide, norm="ortho")
    phase = torch.angle(torch.exp(1j * torch.angle(x_spec)) + torch.exp(1j * torch.angle(g_spec)))
    return torch.fft.irfft2(x_spec.abs() * torch.exp(1j * phase), s=x.shape[-2:], norm="ortho")


def chess(patch_size: int, left: bool, down: bool) -> torch.Tensor:
    index = torch.arange(patch_size)
    board = (index[:, None] + index[None, :] + int(left) + int(down)) % 2 == 0
    return board


@pytest.mark.parametrize("scheduler_cls", ["ddim", EulerDiscreteScheduler])
def test_single_patch_stage_equals_plain_loop(random_image, make_pipe, small_config, scheduler_cls):
    """A stage whose latent is one patch is plain guided denoising: compare with a loop."""
    scheduler = None if scheduler_cls == "ddim" else scheduler_cls(**SDXL_SCHEDULER_CONFIG)
    pipe = make_pipe(scheduler)
    steps, slider = 4, 3
    gen = torch.Generator().manual_seed(0)
    image = random_image(32, 32)
    source = LanczosImage(TensorImage(pil_to_pixels(image)), 64, 64)
    with torch.no_grad():
        z = pipe.encode_guidance(source, config=small_config, generator=gen)
        latents, noise = pipe.prepare_stage(
            z, num_inference_steps=steps, config=small_config, generator=gen
        )
        state = gen.get_state()
        out = stage_latents(pipe, image, 64, 64, steps, slider=slider, config=small_config,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
        # the reference loop
        sched = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
        sched.set_timesteps(steps)
        pos, _, pooled, _ = pipe.encode_prompt(
            PROMPT, device="cpu", do_classifier_free_guidance=False
        )
        neg, neg_pooled = torch.zeros_like(pos), torch.zeros_like(pooled)
        gen.set_state(state)
        x = latents.clone()
        ts = sched.timesteps
        time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
        for n, t in enumerate(ts):
            if n < slider:
                x = fft_phase_fusion(x, sched.add_noise(z, noise, t.reshape(1)))
            left = float(torch.rand(1, generator=gen)) < 0.5 if n < slider - 1 else False
            down = float(torch.rand(1, generator=gen)) < 0.5 if n < slider - 1 else False
            model_in = sched.scale_model_input(torch.cat([x, x]), t)
            eps = pipe.unet(
                model_in,
                t,
                encoder_hidden_states=torch.cat([neg, pos]),
                added_cond_kwargs={
                    "text_embeds": torch.cat([neg_pooled, pooled]),
                    "time_ids": time_ids,
                },
            ).sample
            uncond, cond = eps.chunk(2)
            x = sched.step(uncond + 7.5 * (cond - uncond), t, x).prev_sample
            if n < slider - 1:
                guide = sched.add_noise(z, noise, ts[n + 1].reshape(1))
                x = torch.where(chess(8, left, down), guide, x)
    torch.testing.assert_close(out.latents, x, atol=1e-5, rtol=1e-5)
    assert out.stats.unet_calls_per_step == [1] * steps


def test_micro_conditioning_per_patch(make_pipe, small_config):
    pipe = make_pipe()
    calls = capture_unet(pipe)
    text = pipe.encode_text(PROMPT, guidance_scale=7.5)
    pipe.scheduler.set_timesteps(3)
    patches = [Patch(0, 8, 8), Patch(16, 0, 8)]
    x = torch.randn(2, 4, 8, 8)
    for faithful, expected in [
        (False, [[192, 160, 0, 64, 192, 160], [192, 160, 128, 0, 192, 160]]),
        (True, [[192, 160, 64, 64, 192, 160], [192, 160, 0, 0, 192, 160]]),  # column twice
    ]:
        config = small_config.replace(faithful=faithful, patch_scheduler="random")
        denoise = pipe._patch_denoiser(text, (192, 160), config, torch.Generator())
        with torch.no_grad():
            denoise(x, patches, 0)
        time_ids = calls[-1]["time_ids"]
        assert calls[-1]["sample"] == (4, 4, 8, 8)  # 2 patches x CFG
        assert time_ids.tolist() == expected * 2  # negative half, positive half


def test_cfg_off_uses_one_sample_per_patch(random_image, make_pipe, small_config):
    pipe = make_pipe()
    calls = capture_unet(pipe)
    with torch.no_grad():
        stage_latents(
            pipe, random_image(16, 16), 64, 64, 2, slider=1, guidance_scale=1.0, config=small_config
        )
    assert [c["sample"][0] for c in calls] == [1, 1]


def test_batched_patches_equal_one_by_one(make_pipe, small_config):
    pipe = make_pipe()
    text = pipe.encode_text(PROMPT, guidance_scale=7.5)
    pipe.scheduler.set_timesteps(3)
    gen = torch.Generator().manual_seed(0)
    z, noise, start = (torch.randn(1, 4, 20, 20, generator=gen) for _ in range(3))
    guidance = GuidanceLatents(z, noise, pipe.scheduler.add_noise, pipe.scheduler.timesteps)
    planner = GridPlanner(20, 20, 8, batch_size=4)
    plans = [planner.plan(n, chess=n < 1, generator=gen) for n in range(3)]
    results = []
    for split in (False, True):
        denoise = pipe._patch_denoiser(text, (160, 160), small_config, torch.Generator())
        sampler = PatchSampler(
            start.clone(), num_steps=3, guidance=guidance, slider=2, band=2, denoise=denoise
        )
        with torch.no_grad():
            for n, batches in enumerate(plans):
                sampler.step(n, [[p] for b in batches for p in b] if split else batches)
        results.append(sampler.latents)
    assert max(len(b) for b in plans[0]) == 4
    # fp32 convolutions pick batch-size-dependent kernels (~1e-6 relative per call); CFG at
    # scale 7.5 amplifies the difference ~15x per step, over 3 steps. A wrong patch/batch
    # association would differ by O(1).
    torch.testing.assert_close(results[0], results[1], atol=1e-4, rtol=1e-4)


def test_stage_outputs_and_grid_counts(random_image, make_pipe, small_config):
    pipe = make_pipe()
    kwargs = dict(
        slider=2, height=192, width=160, num_inference_steps=3, config=small_config, progress=False
    )
    with torch.no_grad():
        pt = pipe(PROMPT, random_image(48, 40), output_type="pt", **kwargs)
        pil = pipe(PROMPT, random_image(48, 40), output_type="pil", **kwargs)
    assert pt.images.shape == (1, 3, 192, 160) and 0 <= pt.images.min() <= pt.images.max() <= 1
    assert np.array_equal(
        np.asarray(pil.images[0]), (pt.images[0] * 255).round().byte().permute(1, 2, 0).numpy()
    )
    assert pt.latents.shape == (1, 4, 24, 20)
    # ceil(24/8) * ceil(20/8) = 9; odd steps: the rows (24 = 3 patches, no overlap) are
    # staggered to 4, the columns (overlap 2 = band) are not: 4 x 3
    assert pt.stats.patches_per_step == [9, 12, 9]
    assert pt.stats.unet_calls_per_step[::2] == [3, 3]  # 9 patches in disjoint batches 4, 4, 1


def official_order_stage(pipe, image, size, steps, slider, patch, band, seed):
    """The official sampler written plainly from the spec, for one faithful stage.

    Draws from one generator: the posterior sample (inside ``encode_guidance``), a discarded
    full-size start draw, the guidance noise cast to float16, then per patch a permutation of
    the pixels at the current step (row-major; its first element is the centre) and two
    uniforms (roll left, roll down). The start latent aliases the step-0 guidance. Per patch:
    fusion of the whole crop (before the slider; an rfft2/irfft2 round trip after it), revert,
    UNet with CFG and time_ids (column used twice), DDIM step, chess mask before slider - 1,
    write back with the seam band.
    """
    from pixelsmith.images import PILLanczosImage
    from pixelsmith.pipelines.pixelsmith import ddim_from_config

    height, width = size
    gen = torch.Generator().manual_seed(seed)
    config = PixelsmithConfig(patch_size=patch, band=band, vae_tile=8, vae_overlap=2)
    z = pipe.encode_guidance(
        PILLanczosImage(image, height, width), config=config, generator=gen, progress=False
    )
    torch.randn(z.shape, generator=gen)  # drawn and discarded
    eps = torch.randn(z.shape, generator=gen).half()
    scheduler = ddim_from_config(dict(SDXL_SCHEDULER_CONFIG))
    scheduler.set_timesteps(steps)
    ts = scheduler.timesteps
    guidance = [scheduler.add_noise(z.float(), eps.float(), ts[n : n + 1]) for n in range(slider)]
    latents = guidance[0]  # an alias: in-place updates change the step-0 guidance too
    embeds, _, pooled, _ = pipe.encode_prompt(
        PROMPT, device="cpu", do_classifier_free_guidance=False
    )
    h, w = z.shape[-2:]
    done = torch.zeros(h, w, dtype=torch.long)  # steps each pixel has had
    half = patch // 2
    offsets = torch.arange(patch)
    yy, xx = torch.meshgrid(offsets, offsets, indexing="ij")
    for n in range(steps):
        snapshot = latents.clone()
        while (done == n).any():
            pending = (done == n).nonzero()
            i, j = pending[torch.randperm(len(pending), generator=gen)[0]].tolist()
            roll_left = torch.rand(1, generator=gen).item() < 0.5
            roll_down = torch.rand(1, generator=gen).item() < 0.5
            i, j = min(max(i, half), h - half), min(max(j, half), w - half)
            rows, cols = slice(i - half, i + half), slice(j - half, j + half)
            crop = latents[..., rows, cols].clone()
            if n < slider:
                x = official_fusion(crop, guidance[n][..., rows, cols])
            else:
                x = torch.fft.irfft2(torch.fft.rfft2(crop), s=crop.shape[-2:])
            due, advanced = done[rows, cols] == n, done[rows, cols] == n + 1
            x = torch.where(advanced, snapshot[..., rows, cols], x)
            ids = torch.tensor([[height, width, 8 * (j - half), 8 * (j - half), height, width]] * 2)
            noise = pipe.unet(
                torch.cat([x, x]),
                ts[n],
                encoder_hidden_states=torch.cat([torch.zeros_like(embeds), embeds]),
                added_cond_kwargs={
                    "text_embeds": torch.cat([torch.zeros_like(pooled), pooled]),
                    "time_ids": ids.to(embeds.dtype),
                },
            ).sample
            uncond, cond = noise.chunk(2)
            new = scheduler.step(uncond + 7.5 * (cond - uncond), ts[n], x).prev_sample
            if n < slider - 1:
                board = (yy + xx) % 2 == 0
                board = board.roll(-1, 1) if roll_left else board
                board = board.roll(1, 0) if roll_down else board
                new = torch.where(board, guidance[n + 1][..., rows, cols], new)
            distance = torch.full((patch, patch), 10**6)
            for a, b in due.nonzero().tolist():  # Chebyshev distance to the due pixels
                distance = torch.minimum(distance, torch.maximum((yy - a).abs(), (xx - b).abs()))
            in_band = advanced & (distance <= band)
            old = latents[..., rows, cols].clone()
            latents[..., rows, cols] = torch.where(
                due, new, torch.where(in_band, (new + old) / 2, old)
            )
            done[rows, cols] += due.long()
    return latents


def test_faithful_stage_equals_an_official_order_loop(random_image, make_pipe):
    pipe = make_pipe()
    image = random_image(12, 10)
    config = PixelsmithConfig(patch_size=8, band=2, vae_tile=8, vae_overlap=2, faithful=True)
    with torch.no_grad():
        out = stage_latents(pipe, image, 160, 136, 5, slider=3, config=config,
                            generator=torch.Generator().manual_seed(11))  # fmt: skip
        expected = official_order_stage(pipe, image, (160, 136), 5, 3, 8, 2, seed=11)
    assert out.latents.shape == (1, 4, 20, 17)
    assert torch.equal(out.latents, expected)


def test_faithful_differs_from_default_and_uses_one_patch_per_call(
    random_image, make_pipe, small_config
):
    pipe = make_pipe()
    with torch.no_grad():
        default, faithful = (
            stage_latents(pipe, random_image(32, 32), 128, 128, 3, slider=2, config=config)
            for config in (small_config, small_config.replace(faithful=True))
        )
    assert faithful.stats.unet_calls_per_step == faithful.stats.patches_per_step
    assert default.stats.patches_per_step == [4, 9, 4]  # 2 x 2, staggered 3 x 3 on odd steps
    assert min(faithful.stats.patches_per_step) >= 4
    assert not torch.allclose(default.latents, faithful.latents)


def test_scheduler_slider_and_size_errors(random_image, make_pipe, small_config):
    image = random_image(16, 16)
    kwargs = dict(height=64, width=64, num_inference_steps=3, config=small_config, progress=False)
    with pytest.raises(ValueError, match="DPMSolverMultistepScheduler keeps state across steps"):
        make_pipe(DPMSolverMultistepScheduler.from_config(SDXL_SCHEDULER_CONFIG))(
            PROMPT, image, slider=1, **kwargs
        )
    with pytest.raises(
        ValueError, match=r"HeunDiscreteScheduler keeps state across steps \(order 2"
    ):
        make_pipe(HeunDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG))(
            PROMPT, image, slider=1, **kwargs
        )
    pipe = make_pipe()
    with pytest.raises(ValueError, match=r"slider must be an int in \[1, 3\], got 0"):
        pipe(PROMPT, image, slider=0, **kwargs)
    with pytest.raises(ValueError, match=r"slider must be an int in \[1, 3\], got 4"):
        pipe(PROMPT, image, slider=4, **kwargs)
    with pytest.raises(TypeError, match=r"slider must be an int in \[1, 3\], got float 1.5"):
        pipe(PROMPT, image, slider=1.5, **kwargs)
    with pytest.raises(
        ValueError, match="patch_size must be a multiple of the UNet downsampling factor 4, got 6"
    ):
        pipe(PROMPT, image, slider=1, **{**kwargs, "config": small_config.replace(patch_size=6)})
    with pytest.raises(
        ValueError, match=r"height and width must be at least one patch \(64 px\), got 48x64"
    ):
        pipe(PROMPT, image, slider=1, **{**kwargs, "height": 48})
    with pytest.raises(ValueError, match=r"generator must be a CPU torch\.Generator"):
        pipe(PROMPT, image, slider=1, generator=5, **kwargs)
    with pytest.raises(ValueError, match="output_type must be one of 'pil', 'pt', 'latent'"):
        pipe(PROMPT, image, slider=1, output_type="np", **kwargs)


def test_config_errors():
    with pytest.raises(
        ValueError, match="patch_scheduler='grid' is not available with faithful=True"
    ):
        PixelsmithConfig(faithful=True, patch_scheduler="grid")
    with pytest.raises(
        ValueError, match="patch_scheduler must be one of 'grid', 'random', got 'zigzag'"
    ):
        PixelsmithConfig(patch_scheduler="zigzag")
    with pytest.raises(ValueError, match=r"vae_overlap must be an int in \[0, 7\], got 8"):
        PixelsmithConfig(vae_tile=8, vae_overlap=8)
    with pytest.raises(ValueError, match=r"grid_min_overlap must be an int in \[0, 127\], got 128"):
        PixelsmithConfig(grid_min_overlap=128)
    assert PixelsmithConfig().scheduler_name == "grid"
    assert PixelsmithConfig(faithful=True).scheduler_name == "random"
    assert PixelsmithConfig(faithful=True).handover_mode == "uint8"
    assert PixelsmithConfig(faithful=True).batch_limit == 1


def test_saved_model_folder_has_the_usual_permissions(tmp_path):
    """save_pretrained goes through common_kernels.runtime.files.atomic_directory: safetensors' 0600
    weights end with what open() gives under the umask, and no temporary folder is left."""
    previous = os.umask(0o022)
    try:
        folder = save_tiny_model(tmp_path / "tiny", seed=0)
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in folder.rglob("*")}
    assert "unet/diffusion_pytorch_model.safetensors" in modes
    assert {mode for name, mode in modes.items() if (folder / name).is_file()} == {0o644}
    assert {mode for name, mode in modes.items() if (folder / name).is_dir()} == {0o755}
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_from_pretrained_round_trip(tmp_path, small_config):
    folder = save_tiny_model(tmp_path / "tiny", seed=0)
    pipe = PixelsmithPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.set_alpha_to_one and not pipe.scheduler.config.clip_sample
    pipe.scheduler.set_timesteps(50)
    assert pipe.scheduler.timesteps[0] == 981 and pipe.scheduler.timesteps[-1] == 1
    kept = PixelsmithPipeline.from_pretrained(folder, ddim=False)
    assert type(kept.scheduler).__name__ == "EulerDiscreteScheduler"
    first = generate_cascade(
        pipe, PROMPT, [64, 128], [1], num_inference_steps=2, config=small_config, progress=False
    )
    pipe.save_pretrained(tmp_path / "again")
    again = PixelsmithPipeline.from_pretrained(tmp_path / "again", vae=None)
    again.set_progress_bar_config(disable=True)
    second = generate_cascade(
        again, PROMPT, [64, 128], [1], num_inference_steps=2, config=small_config, progress=False
    )
    assert np.array_equal(np.asarray(first), np.asarray(second))
    # a replacement VAE given as a folder is loaded instead of the repository's
    other = save_tiny_model(tmp_path / "other", seed=1)
    swapped = PixelsmithPipeline.from_pretrained(folder, vae=str(other / "vae"))
    expected = PixelsmithPipeline.from_pretrained(other).vae.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in swapped.vae.state_dict().items())
    assert not torch.equal(
        swapped.vae.state_dict()["decoder.conv_out.weight"],
        pipe.vae.state_dict()["decoder.conv_out.weight"],
    )
    # "auto" keeps the repository's VAE for anything but the SDXL base id (no download here)
    assert all(torch.equal(v, pipe.vae.state_dict()[k]) for k, v in kept.vae.state_dict().items())


def test_hand_over_sources(make_pipe, small_config, tmp_path):
    """uint8: PIL Lanczos of the 8-bit decoded image; float: Lanczos of the decoded floats."""
    pipe = make_pipe()
    latents = torch.randn(1, 4, 8, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        decoded = torch.cat([b for _, b in pipe.decoded_rows(latents, config=small_config)], 1)
        uint8 = pipe.guidance_source(
            latents, (128, 96), config=small_config.replace(handover="uint8"), workdir=tmp_path
        )
        floats = pipe.guidance_source(latents, (128, 96), config=small_config, workdir=tmp_path)
    eight_bit = Image.fromarray(to_uint8(decoded)).resize((96, 128), Image.LANCZOS)
    assert torch.equal(uint8.read(0, 0, 128, 96), pil_to_pixels(eight_bit))
    expected = LanczosImage(TensorImage(decoded.clamp(-1, 1).half()), 128, 96)
    assert torch.equal(floats.read(0, 0, 128, 96), expected.read(0, 0, 128, 96))


@pytest.mark.parametrize("name", ["DDPMScheduler", "EulerAncestralDiscreteScheduler"])
def test_stochastic_schedulers_draw_from_the_generator(random_image, make_pipe, small_config, name):
    import diffusers

    scheduler = getattr(diffusers, name).from_config(SDXL_SCHEDULER_CONFIG)
    with torch.no_grad():
        a, b, c = (
            stage_latents(make_pipe(scheduler), random_image(32, 32), 128, 128, 2, slider=1,
                          config=small_config, generator=torch.Generator().manual_seed(s)).latents
            for s in (0, 0, 1)
        )  # fmt: skip
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert bool(torch.isfinite(a).all())
