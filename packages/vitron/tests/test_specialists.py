"""Adapters on tiny itaclip / semanir / diffusers components, the registry and the router."""

# ruff: noqa: E501
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from vitron.invocations import InputCounts, parse_invocation
from vitron.io import to_tensor
from vitron.regions import Box, Region
from vitron.router import Router, TurnInputs, results_message
from vitron.specialists import (
    CallInputs,
    Consumes,
    ItaclipSegmenter,
    Specialist,
    SpecialistError,
    SpecialistRegistry,
)
from vitron.specialists.diffusion import encode_with_signal
from vitron.specialists.editing import processing_size
from vitron.specialists.generation import cascade_sizes


@pytest.fixture(scope="module")
def registry(specialist_options):
    return SpecialistRegistry(specialist_options)


def inputs(tmp_path, task, signal=None, call_id="c", **args) -> CallInputs:
    return CallInputs(call_id, task, args, signal, tmp_path)


def checked_invocation(calls: list[tuple[str, str, dict]], counts: InputCounts | None = None):
    """``parse_invocation`` of a version-1 block of ``(id, task, args)`` calls."""
    block = {"version": 1, "calls": [{"id": i, "task": t, "args": a} for i, t, a in calls]}
    return parse_invocation(block, counts)


def test_registry_is_lazy_and_checks_options(specialist_options):
    registry = SpecialistRegistry(specialist_options)
    assert not any(row["loaded"] for row in registry.describe())
    rows = {row["name"]: row for row in registry.describe()}
    assert rows["itaclip"]["consumes"] == ["text", "image", "video", "region", "signal"]
    assert rows["semanir"]["tasks"] == ["restore_image"]
    with pytest.raises(
        ValueError,
        match=r"options for unknown specialists \['sam'\] \(known: itaclip, diffusers-image",
    ):
        SpecialistRegistry({"sam": {}})
    with pytest.raises(
        ValueError,
        match=r"unknown options \['stride'\] for specialist 'itaclip' \(allowed: model, pretrained, preset, settings",
    ):
        SpecialistRegistry({"itaclip": {"stride": 3}})
    with pytest.raises(
        SpecialistError,
        match=r"no specialist serves 'edit_video' in this registry \(served: edit_image, extract_features",
    ):
        registry.specialist("edit_video")


def test_adapter_declarations_are_checked():
    class Careless(ItaclipSegmenter):
        name = "careless"
        consumes = Consumes.TEXT | Consumes.IMAGE | Consumes.REGION  # segment_video takes a video

    with pytest.raises(
        ValueError,
        match=r"serves segment_video, whose argument 'video' is video, but it does not declare",
    ):
        SpecialistRegistry(adapters=[Careless])


def test_segmentation_matches_itaclip(
    registry, specialist_options, expected_target, image, tmp_path
):
    """The adapter's mask against an itaclip ``Segmenter`` loaded here from the options' saved
    model (a second object; the adapter's is never asked): class 0 is the target, the options'
    background classes compete with it; the text target against open_clip alone."""
    from itaclip import Segmenter

    opts = specialist_options["itaclip"]
    assert opts["background_classes"] == ["background"]
    own = Segmenter.from_pretrained(
        opts["model"],
        opts["pretrained"],
        preset=None,
        cache_dir=tmp_path / "cache",
        **opts["settings"],
    )
    reference = own(image, classes=[["dog"], ["background"]])
    assert reference.class_names == ("dog", "background")
    seg = registry.specialist("segment_image")
    out = seg.run(inputs(tmp_path, "segment_image", image=image, text="dog"))
    assert seg.segmenter is not own
    mask = out.outputs["mask"].value
    assert mask.shape == (48, 64) and torch.equal(mask, reference.labels == 0)
    assert 0.1 < float(mask.float().mean()) < 0.9  # neither class wins everywhere
    assert torch.equal(out.outputs["labels"].value, reference.labels)
    saved = np.asarray(Image.open(tmp_path / "c_mask.png")) > 0
    assert (saved == mask.numpy()).all() and (tmp_path / "c_overlay.png").is_file()
    assert out.summary.startswith(
        f"mask of 'dog' covers {100 * float(mask.float().mean()):.1f}% of the image"
    )
    assert out.summary.endswith("(classes: dog, background)")
    boxed = (
        seg.run(
            inputs(tmp_path, "segment_image", image=image, text="dog", region=Box(0, 0, 20, 10))
        )
        .outputs["mask"]
        .value
    )
    assert (
        torch.equal(boxed[:10, :20], mask[:10, :20])
        and not boxed[10:].any()
        and not boxed[:, 20:].any()
    )
    target = seg.conditioning_target("segment_image", "dog")
    assert target.shape == (16,) and target.dtype == torch.float32
    torch.testing.assert_close(
        target, expected_target("segment_image", "dog"), atol=1e-6, rtol=1e-5
    )


def test_segmentation_mixes_the_signal_into_the_target_queries(registry, image, tmp_path):
    from itaclip.io import to_rgb_tensor
    from itaclip.postprocess import query_logits_to_classes

    seg = registry.specialist("segment_image")
    signal = torch.randn(16, generator=torch.Generator().manual_seed(0))
    got = (
        seg.run(inputs(tmp_path, "segment_image", signal, image=image, text="dog"))
        .outputs["mask"]
        .value
    )
    parsed, features = seg.segmenter.text_features([["dog"], ["background"]])
    features[0] = torch.nn.functional.normalize(features[0] + 0.3 * signal / signal.norm(), dim=0)
    logits = seg.segmenter.query_logits(to_rgb_tensor(image), features)
    labels, _ = query_logits_to_classes(logits, parsed.segments(), seg.segmenter.config.logit_scale)
    assert torch.equal(got, labels == 0)
    with pytest.raises(
        SpecialistError,
        match=r"signal embedding has shape \(8,\) but itaclip's text features are 16 wide",
    ):
        seg.run(inputs(tmp_path, "segment_image", torch.zeros(8), image=image, text="dog"))


def test_segment_video_writes_gifs(registry, image, tmp_path):
    frames = [image, image.transpose(Image.FLIP_LEFT_RIGHT)]
    out = registry.specialist("segment_video").run(
        inputs(tmp_path, "segment_video", video=frames, text="dog")
    )
    assert len(out.outputs["masks"].value) == 2
    with Image.open(tmp_path / "c_overlay.gif") as gif:
        assert gif.n_frames == 2 and gif.size == (64, 48)


def test_inpainting_keeps_pixels_outside_the_mask(registry, image, tmp_path):
    editor = registry.specialist("edit_image")
    mask = torch.zeros(48, 64, dtype=torch.bool)
    mask[10:30, 20:50] = True
    out = editor.run(inputs(tmp_path, "edit_image", image=image, text="a cat", mask=mask))
    edited = np.asarray(Image.open(tmp_path / "c_image.png"))
    original = np.asarray(image)
    assert (edited[~mask.numpy()] == original[~mask.numpy()]).all()
    assert (edited[mask.numpy()] != original[mask.numpy()]).any()
    assert out.summary == "repainted 19.5% of the image as 'a cat'"
    # the mask may come from a region, or from segmenting a target with itaclip
    region = editor.edit_mask(
        inputs(tmp_path, "edit_image", image=image, text="x", region=Box(0, 0, 8, 4))
    )
    assert int(region.sum()) == 32
    target = editor.edit_mask(inputs(tmp_path, "edit_image", image=image, text="x", target="dog"))
    assert torch.equal(
        target, registry.specialist("segment_image").segment(image, "dog", None, None)[0]
    )
    with pytest.raises(
        SpecialistError,
        match=r"edit_image needs the part to repaint: a mask \(e.g. \$seg.mask\), a target to segment, or a region",
    ):
        editor.run(inputs(tmp_path, "edit_image", image=image, text="a cat"))
    assert processing_size(48, 64, 1024) == (768, 1024) and processing_size(5, 700, 32) == (8, 32)


def test_restoration_matches_semanir(registry, image, tmp_path):
    import semanir

    out = registry.specialist("restore_image").run(inputs(tmp_path, "restore_image", image=image))
    model = semanir.load_model()
    expected = semanir.restore(model, to_tensor(image)[:, None])[:, 0]  # gray model: per channel
    got = to_tensor(out.outputs["image"].value)
    torch.testing.assert_close(got, (expected * 255).round() / 255, atol=1e-6, rtol=0)


def test_generation_with_signal_token(registry, tmp_path):
    gen = registry.specialist("generate_image")
    plain = (
        gen.run(inputs(tmp_path, "generate_image", call_id="a", text="a cat"))
        .outputs["image"]
        .value
    )
    again = (
        gen.run(inputs(tmp_path, "generate_image", call_id="b", text="a cat"))
        .outputs["image"]
        .value
    )
    signal = torch.randn(16, generator=torch.Generator().manual_seed(0))
    steered = (
        gen.run(inputs(tmp_path, "generate_image", signal, call_id="s", text="a cat"))
        .outputs["image"]
        .value
    )
    assert plain.size == (32, 32) and np.array_equal(np.asarray(plain), np.asarray(again))
    assert not np.array_equal(np.asarray(plain), np.asarray(steered))
    kwargs = encode_with_signal(gen.pipe, "a cat", None, signal, 2.0, guidance_scale=5.0)
    assert kwargs["prompt_embeds"].shape == (1, 17, 16) and kwargs[
        "negative_prompt_embeds"
    ].shape == (1, 17, 16)
    torch.testing.assert_close(kwargs["prompt_embeds"][0, -1], 2.0 * signal)
    torch.testing.assert_close(
        kwargs["negative_prompt_embeds"][0, -1], kwargs["negative_prompt_embeds"][0, -2]
    )
    with pytest.raises(
        SpecialistError,
        match=r"signal embedding has shape \(4,\) but this pipeline's text conditioning is 16 wide",
    ):
        encode_with_signal(gen.pipe, "a cat", None, torch.zeros(4), 1.0, 5.0)
    embeds = gen.pipe.encode_prompt(
        prompt="a cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )[0]
    # tokens: <start> "a</w>" "c" "a" "t</w>" <end>: the end-of-text state is row 5
    torch.testing.assert_close(gen.conditioning_target("generate_image", "a cat"), embeds[0, 5])
    with pytest.raises(SpecialistError, match=r"height must be a multiple of 8 and >= 8, got 30"):
        gen.run(inputs(tmp_path, "generate_image", text="a cat", height=30))


def test_cascade_sizes():
    assert cascade_sizes(1024, 4096, 4096, 2.0) == [(1024, 1024), (2048, 2048), (4096, 4096)]
    assert cascade_sizes(1024, 2048, 4096, 2.0) == [(512, 1024), (1024, 2048), (2048, 4096)]
    assert cascade_sizes(32, 256, 256, 8.0) == [(32, 32), (256, 256)]


def test_video_generation(registry, tmp_path):
    video = registry.specialist("generate_video")
    out = video.run(inputs(tmp_path, "generate_video", text="a cat", num_frames=2))
    frames = out.outputs["video"].value
    assert len(frames) == 2 and frames[0].size == (32, 32)
    with Image.open(tmp_path / "c_video.gif") as gif:
        assert gif.n_frames == 2
    assert out.summary == "generated a 2-frame 32x32 video of 'a cat'"
    image = Image.new("RGB", (32, 32))
    kwargs = video.call_kwargs(inputs(tmp_path, "image_to_video", image=image))
    assert kwargs["image"] is image and kwargs["prompt"] == "" and kwargs["num_frames"] == 3


def test_image_to_video_on_tiny_i2vgen_xl(registry, image, tmp_path):
    video = registry.specialist("image_to_video")
    out = video.run(inputs(tmp_path, "image_to_video", image=image, text="make it run", seed=3))
    frames = out.outputs["video"].value
    assert [f.size for f in frames] == [(32, 32)] * 3  # the options' num_frames, height, width
    assert out.outputs["video"].path == tmp_path / "c_video.gif"
    with Image.open(tmp_path / "c_video.gif") as gif:
        assert (gif.n_frames, gif.size) == (3, (32, 32))
    assert out.summary == "generated a 3-frame 32x32 video of 'make it run'"
    again = video.run(
        inputs(tmp_path / "b", "image_to_video", image=image, text="make it run", seed=3)
    )
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(frames, again.outputs["video"].value, strict=True)
    )
    other = video.run(
        inputs(tmp_path / "o", "image_to_video", image=image, text="make it run", seed=4)
    )
    assert not np.array_equal(np.asarray(frames[0]), np.asarray(other.outputs["video"].value[0]))
    untitled = video.run(inputs(tmp_path, "image_to_video", call_id="u", image=image))
    assert untitled.summary == "generated a 3-frame 32x32 video of the image"


def test_clip_skip_prompt_states_match_diffusers(registry, tmp_path):
    """I2VGenXL's default clip_skip=1 reads text_encoder.text_model, absent from transformers 5's
    CLIPTextModel; the adapter encodes the prompt itself. Oracle: diffusers' own encode_prompt
    with that attribute given back."""
    from types import SimpleNamespace

    from vitron.specialists.video import clip_skip_prompt_kwargs

    video = registry.specialist("image_to_video")
    video.ensure_loaded()  # pipelines are cached from load on; another test may not have run
    pipe = video.pipeline("image_to_video")
    encoder = pipe.text_encoder
    assert not hasattr(encoder, "text_model")
    kwargs = {"prompt": "make it run", "guidance_scale": 9.0, "num_frames": 3}
    ours = clip_skip_prompt_kwargs(pipe, kwargs)
    assert sorted(ours) == [
        "guidance_scale",
        "negative_prompt_embeds",
        "num_frames",
        "prompt_embeds",
    ]
    assert kwargs["prompt"] == "make it run"  # the caller's dict is not changed
    assert "negative_prompt_embeds" not in clip_skip_prompt_kwargs(
        pipe, {**kwargs, "guidance_scale": 1.0}
    )
    object.__setattr__(
        encoder, "text_model", SimpleNamespace(final_layer_norm=encoder.final_layer_norm)
    )
    try:
        pipe._guidance_scale = 9.0
        with torch.no_grad():
            embeds, negative = pipe.encode_prompt("make it run", pipe.device, 1, clip_skip=1)
        assert clip_skip_prompt_kwargs(pipe, kwargs) is kwargs  # nothing to work around
    finally:
        object.__delattr__(encoder, "text_model")
    assert embeds.shape == (1, 16, 16)
    torch.testing.assert_close(ours["prompt_embeds"], embeds)
    torch.testing.assert_close(ours["negative_prompt_embeds"], negative)
    last = pipe.encode_prompt("make it run", pipe.device, 1, clip_skip=None)[0]
    assert not torch.allclose(embeds, last)  # clip_skip changes the states: it matters
    t2v = registry.specialist("generate_video").pipeline("generate_video")
    assert clip_skip_prompt_kwargs(t2v, kwargs) is kwargs  # clip_skip defaults to None there


def test_missing_package_is_reported(tmp_path):
    @dataclasses.dataclass
    class NoOptions:
        pass

    class Absent(Specialist):
        name, tasks, consumes = "absent", ("restore_image",), Consumes.IMAGE
        packages, extra, hub_weights, Options = (
            ("no_such_package_xyz",),
            "specialists",
            "-",
            NoOptions,
        )

        def load(self) -> None:
            raise AssertionError("never reached")

        def execute(self, inputs):
            raise AssertionError("never reached")

    registry = SpecialistRegistry(adapters=[Absent])
    with pytest.raises(
        SpecialistError,
        match=r"specialist 'absent' needs no_such_package_xyz: pip install 'vitron\[specialists\]'",
    ):
        registry.specialist("restore_image").run(inputs(tmp_path, "restore_image", image=None))


def test_router_order_failures_and_regions(registry, image, tmp_path):
    invocation = checked_invocation(
        [
            ("edit", "edit_image", {"image": "$image0", "text": "a cat", "mask": "$seg.mask"}),
            ("seg", "segment_image", {"image": "$image0", "text": "dog", "region": "$region0"}),
            ("bad", "edit_image", {"image": "$image0", "text": "x"}),
            ("after_bad", "restore_image", {"image": "$bad.image"}),
            ("vid", "edit_video", {"video": "$video0", "text": "a", "background": "b"}),
        ],
        InputCounts(images=1, videos=1, regions=1),
    )
    turn_inputs = TurnInputs([image], [[image]], [Region(Box(0, 0, 32, 24))])
    outcomes = Router(registry, tmp_path).run(invocation, turn_inputs)
    status = {o.call.id: o.status for o in outcomes}
    assert [o.call.id for o in outcomes] == ["seg", "edit", "bad", "after_bad", "vid"]
    assert status == {
        "seg": "ok",
        "edit": "ok",
        "bad": "error",
        "after_bad": "skipped",
        "vid": "error",
    }
    seg_mask = outcomes[0].outputs["mask"].value
    assert not seg_mask[24:].any() and not seg_mask[:, 32:].any()
    message = results_message(outcomes)
    assert (
        "[after_bad] restore_image skipped: skipped: it depends on bad, which did not succeed"
        in message
    )
    assert "[vid] edit_video error: error: no specialist serves 'edit_video'" in message
    assert "(files: mask=seg_mask.png, overlay=seg_overlay.png)" in message


def test_router_region_on_another_image(registry, image, tmp_path):
    invocation = checked_invocation(
        [("s", "segment_image", {"image": "$image0", "text": "dog", "region": "$region0"})]
    )
    outcome = Router(registry, tmp_path).run(
        invocation, TurnInputs([image, image], [], [Region(Box(0, 0, 5, 5), image=1)])
    )[0]
    assert outcome.status == "error"
    assert outcome.summary == "error: $region0 was drawn on $image1, but call 's' works on $image0"


def test_highres_generation_through_pixelsmith(specialist_options, tmp_path):
    from pixelsmith.tiny import save_tiny_model

    folder = save_tiny_model(tmp_path / "pixelsmith")
    options = dict(specialist_options)
    options["diffusers-image"] = {
        **options["diffusers-image"], "highres_model": str(folder), "highres_sliders": [1],
        "highres_max_ratio": 32.0,
    }  # fmt: skip
    gen = SpecialistRegistry(options).specialist("generate_image")
    # pixelsmith's tiny SDXL denoises 128-latent-px patches (1024 px): one patch per step
    out = gen.run(inputs(tmp_path, "generate_image", text="a cat", width=1024, height=1024))
    assert out.outputs["image"].value.size == (1024, 1024)
    assert (tmp_path / "c_image.png").is_file()
    assert out.used_signal is False  # the pixelsmith path takes no signal embedding


def test_features_through_diffeat(specialist_options, image, tmp_path):
    from safetensors.torch import load_file

    from diffeat import list_layers

    model_dir = specialist_options["diffusers-image"]["model"]
    options = {"diffeat": {"model": model_dir, "settings": {"image_size": 32}}}
    features = SpecialistRegistry(options).specialist("extract_features")
    features.ensure_loaded()
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    names = [info.name for info in list_layers(unet, file=io.StringIO())[:2]]
    out = features.run(
        inputs(tmp_path, "extract_features", image=image, text="a photo", layers=list(names))
    )
    stored = load_file(str(tmp_path / "c_features.safetensors"))
    assert sorted(stored) == sorted(names)
    for name in names:
        assert stored[name].ndim == 3 and torch.equal(
            stored[name], out.outputs["features"].value[name]
        )


def test_router_survives_a_specialist_crash_and_never_overwrites_files(
    registry, image, tmp_path, monkeypatch
):
    restorer = registry.specialist("restore_image")

    def crash(inputs):
        raise RuntimeError("CUDA out of memory (simulated)")

    invocation = checked_invocation(
        [
            ("fix", "restore_image", {"image": "$image0"}),
            ("seg", "segment_image", {"image": "$fix.image", "text": "d"}),
            ("other", "segment_image", {"image": "$image0", "text": "d"}),
        ],
        InputCounts(images=1),
    )
    router = Router(registry, tmp_path)
    monkeypatch.setattr(restorer, "run", crash)
    outcomes = router.run(invocation, TurnInputs([image], [], []))
    assert [(o.call.id, o.status) for o in outcomes] == [
        ("fix", "error"), ("seg", "skipped"), ("other", "ok"),
    ]  # fmt: skip
    assert outcomes[0].summary == "error: RuntimeError: CUDA out of memory (simulated)"
    # the same call ids in a later turn write new files next to the earlier ones
    first = outcomes[2].outputs["mask"].path
    again = router.run(invocation, TurnInputs([image], [], []))[2].outputs["mask"].path
    assert (first.name, again.name) == ("other_mask.png", "other_mask_2.png")
    assert first.is_file() and again.is_file()


def test_the_base_imports_no_registry_and_a_registry_is_a_source():
    """No import circle between the adapters' base and the registry that imports the adapters,
    not even one for type checking: the base names what it needs as a protocol."""
    import ast
    from pathlib import Path

    from vitron.specialists import base
    from vitron.specialists.base import SpecialistSource

    tree = ast.parse(Path(base.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name and name.startswith("vitron.") for name in imported)
    registry = SpecialistRegistry()
    source: SpecialistSource = registry
    assert type(source.specialist("segment_image")).__name__ == "ItaclipSegmenter"
