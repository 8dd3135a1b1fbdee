"""Routes to reproduce a run: precomputed embeddings, a guidance latent, the step plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixelsmith import StepPlan, TextConditioning, generate_cascade
from pixelsmith.images import LanczosImage, TensorImage, pil_to_pixels

PROMPT = "a cat"


def image(height: int = 32, width: int = 32) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def embeddings(pipe, prompt: str = PROMPT) -> dict[str, torch.Tensor]:
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompt, device="cpu", do_classifier_free_guidance=True
    )
    return {
        "prompt_embeds": embeds,
        "pooled_prompt_embeds": pooled,
        "negative_prompt_embeds": negative,
        "negative_pooled_prompt_embeds": negative_pooled,
    }


def stage(pipe, config, **kwargs):
    options = dict(slider=2, height=64, width=64, num_inference_steps=3, config=config)
    options.update({"output_type": "latent", "progress": False, **kwargs})
    options.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(**options)


def test_precomputed_embeddings_equal_the_prompt(make_pipe, small_config):
    pipe = make_pipe()
    reference = stage(pipe, small_config, prompt=PROMPT, image=image())
    embeds = embeddings(pipe)
    out = stage(make_pipe(), small_config, image=image(), **embeds)
    assert torch.equal(out.latents, reference.latents)
    # without the negative ones, SDXL's zero negative embeddings are used, as for a prompt
    only = {k: v for k, v in embeds.items() if not k.startswith("negative")}
    out = stage(make_pipe(), small_config, image=image(), **only)
    assert torch.equal(out.latents, reference.latents)
    # and the negative embeddings are really used
    other = embeddings(pipe, "ca")
    changed = {**embeds, "negative_prompt_embeds": other["prompt_embeds"]}
    changed["negative_pooled_prompt_embeds"] = other["pooled_prompt_embeds"]
    assert not torch.equal(stage(make_pipe(), small_config, image=image(), **changed).latents,
                           reference.latents)  # fmt: skip


def test_guidance_latents_replace_the_image(make_pipe, small_config):
    pipe = make_pipe()
    reference = stage(pipe, small_config, prompt=PROMPT, image=image())
    gen = torch.Generator().manual_seed(0)
    source = LanczosImage(TensorImage(pil_to_pixels(image())), 64, 64)
    z = pipe.encode_guidance(source, config=small_config, generator=gen, progress=False)
    # the generator continues from where encoding left it, as inside pipe(image=...)
    out = stage(make_pipe(), small_config, prompt=PROMPT, guidance_latents=z, generator=gen)
    assert torch.equal(out.latents, reference.latents)


def test_a_pipeline_without_vae_and_text_encoders_runs_a_stage_from_latents(
    make_pipe, small_config, components
):
    """A host that encodes text and images itself (ComfyUI) builds the pipeline from a UNet and
    a scheduler: the stage from guidance latents and embeddings equals the full pipeline's."""
    pipe = make_pipe()
    embeds = embeddings(pipe)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    reference = stage(pipe, small_config, guidance_latents=z, **embeds)
    parts = {name: None for name in ("vae", "text_encoder", "text_encoder_2", "tokenizer",
                                     "tokenizer_2")}  # fmt: skip
    bare = type(pipe)(**{**components, **parts, "scheduler": pipe.scheduler},
                      add_watermarker=False)  # fmt: skip
    assert bare.latent_channels == 4 and bare.vae_scale_factor == 8
    out = stage(bare, small_config, guidance_latents=z, **embeds)
    assert torch.equal(out.latents, reference.latents)
    # an image or a decoded output needs the VAE it does not have
    with pytest.raises(ValueError, match=r"image needs the pipeline's VAE, and this pipeline "
                       r"has none \(vae=None\): give guidance_latents instead"):  # fmt: skip
        stage(bare, small_config, image=image(), **embeds)
    with pytest.raises(ValueError, match=r"output_type 'pt' needs the pipeline's VAE, and this "
                       r"pipeline has none \(vae=None\): use output_type='latent'"):  # fmt: skip
        stage(bare, small_config, guidance_latents=z, **{**embeds, "output_type": "pt"})
    positive = {k: v for k, v in embeds.items() if not k.startswith("negative")}
    for text in ({"prompt": PROMPT}, {**positive, "negative_prompt": "x"}):
        with pytest.raises(
            ValueError,
            match="prompt and negative_prompt need the pipeline's "
            "text encoders, and this pipeline has none: give prompt_embeds",
        ):
            stage(bare, small_config, guidance_latents=z, **text)


def test_step_plan_reaches_the_callback(make_pipe, small_config):
    pipe = make_pipe()
    for faithful in (False, True):
        config = small_config.replace(faithful=faithful)
        plans: list[StepPlan] = []
        seen_latents: list[torch.Tensor] = []

        def record(step, latents, plan, plans=plans, seen_latents=seen_latents):
            plans.append(plan)
            seen_latents.append(latents.clone())

        out = stage(pipe, config, prompt=PROMPT, image=image(48, 40), height=96, width=80,
                    callback=record)  # fmt: skip
        pipe.scheduler.set_timesteps(3)
        assert [p.step for p in plans] == [0, 1, 2]
        assert [p.timestep for p in plans] == pipe.scheduler.timesteps.tolist()
        assert [p.fusion for p in plans] == [True, True, False]  # slider 2
        assert [p.chess for p in plans] == [True, False, False]
        assert torch.equal(seen_latents[-1], out.latents)
        for plan, patches in zip(plans, out.stats.patches_per_step, strict=True):
            assert sum(len(b) for b in plan.batches) == patches
            covered = torch.zeros(12, 10, dtype=torch.bool)  # every latent pixel in a patch
            for batch, ids in zip(plan.batches, plan.time_ids, strict=True):
                for patch, row in zip(batch, ids, strict=True):
                    covered[patch.slices] = True
                    top = 8 * (patch.left if faithful else patch.top)  # official: column twice
                    assert row == [96, 80, top, 8 * patch.left, 96, 80]
            assert bool(covered.all())


def test_generate_cascade_with_embeddings_and_checkpoint_identity(make_pipe, small_config,
                                                                  tmp_path):  # fmt: skip
    sizes, options = [64, 96], dict(num_inference_steps=3, seed=0, progress=False)
    reference = generate_cascade(make_pipe(), PROMPT, sizes, [2], config=small_config, **options)
    pipe = make_pipe()
    embeds = embeddings(pipe)
    out = generate_cascade(pipe, None, sizes, [2], config=small_config, **embeds, **options)
    assert np.array_equal(np.asarray(out), np.asarray(reference))

    class Stop(Exception):
        pass

    def stop(stage, step, latents, plan):
        raise Stop

    checkpoint = tmp_path / "ckpt"
    with pytest.raises(Stop):
        generate_cascade(make_pipe(), None, sizes, [2], config=small_config,
                         checkpoint_dir=checkpoint, callback=stop, **embeds, **options)  # fmt: skip
    other = {**embeds, "prompt_embeds": embeds["prompt_embeds"] + 1}
    with pytest.raises(ValueError, match=r"\(embeddings differ\)"):
        generate_cascade(make_pipe(), None, sizes, [2], config=small_config,
                         checkpoint_dir=checkpoint, **other, **options)  # fmt: skip
    resumed = generate_cascade(make_pipe(), None, sizes, [2], config=small_config,
                               checkpoint_dir=checkpoint, **embeds, **options)  # fmt: skip
    assert np.array_equal(np.asarray(resumed), np.asarray(reference))


def test_text_conditioning_is_exported_and_embedding_errors(make_pipe, small_config):
    pipe = make_pipe()
    embeds = embeddings(pipe)
    text = pipe.encode_text(guidance_scale=7.5, **embeds)
    assert isinstance(text, TextConditioning)
    assert torch.equal(text.prompt_embeds, embeds["prompt_embeds"])
    assert torch.equal(text.negative_pooled, embeds["negative_pooled_prompt_embeds"])
    pooled = embeds["pooled_prompt_embeds"]
    cases = [
        ({"prompt": PROMPT, **embeds}, "give exactly one of prompt and prompt_embeds"),
        ({}, "give exactly one of prompt and prompt_embeds"),
        ({"prompt_embeds": embeds["prompt_embeds"]},
         "prompt_embeds and pooled_prompt_embeds must be given together"),
        ({"prompt_embeds": embeds["prompt_embeds"][0], "pooled_prompt_embeds": pooled},
         r"prompt_embeds must have shape \(1, L, D\), got \(77, 32\)"),
        ({**embeds, "negative_prompt": "x"},
         "give at most one of negative_prompt and negative_prompt_embeds"),
        ({**embeds, "negative_prompt_embeds": embeds["prompt_embeds"][:, :5]},
         "must have the shapes of prompt_embeds"),
    ]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            pipe.encode_text(guidance_scale=7.5, **kwargs)
    z = torch.zeros(1, 4, 8, 8)
    stage_errors = [
        ({"prompt": PROMPT}, "give exactly one of image and guidance_latents"),
        ({"prompt": PROMPT, "image": image(), "guidance_latents": z},
         "give exactly one of image and guidance_latents"),
        ({"prompt": PROMPT, "guidance_latents": torch.zeros(1, 3, 8, 8)},
         r"guidance_latents must have shape \(1, 4, h, w\), got \(1, 3, 8, 8\)"),
        ({"prompt": PROMPT, "guidance_latents": z.clone().fill_(float("nan"))},
         "guidance_latents contains NaN or Inf"),
        ({"prompt": PROMPT, "guidance_latents": z, "height": 128},
         "must be the guidance_latents' size times 8: 64x64"),
    ]  # fmt: skip
    for kwargs, message in stage_errors:
        with pytest.raises(ValueError, match=message):
            stage(pipe, small_config, **{"height": None, "width": None, **kwargs})
