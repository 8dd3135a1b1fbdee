"""The full model: what is spliced where, its losses, save/load round trips, bad inputs."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import vitron
from vitron.invocations import parse_invocation
from vitron.models import VitronModel
from vitron.processing import IGNORE_INDEX, Message
from vitron.regions import Box, Region
from vitron.tiny import byte_level_tokenizer, tiny_config, tiny_model

CALLS = {
    "version": 1,
    "calls": [
        {"id": "seg", "task": "segment_image", "args": {"image": "$image0", "text": "dog"}},
        {"id": "fix", "task": "restore_image", "args": {"image": "$image0"}},
        {"id": "gen", "task": "generate_image", "args": {"text": "a cat"}},
    ],
}


def conversation(with_region: bool = True) -> list[Message]:
    where = " in <region>" if with_region else ""
    return [
        Message("user", f"<image>\nFind the dog{where}, clean the photo, draw a cat."),
        Message("assistant", "On it.", parse_invocation(CALLS)),
    ]


def test_media_and_regions_are_spliced_at_their_placeholders(model, image):
    region = Region(Box(8, 4, 40, 30))
    sample = model.processor.sample(conversation(), [image], regions=[region])
    spliced = model.splice([sample])
    image_span, region_span = spliced.spans[0]
    assert (image_span.kind, image_span.end - image_span.start) == ("image", 16)
    assert (region_span.kind, region_span.end - region_span.start) == ("region", 1)
    with torch.no_grad():
        features = model.vision(sample.images)  # (1, 16, 32)
        rows = spliced.inputs_embeds[0, image_span.start : image_span.end]
        torch.testing.assert_close(rows, model.projector(features)[0])
        # independent pooling and box encoding
        coverage = sample.regions[0].coverage
        pooled = (coverage[:, None] * features[0]).sum(0) / coverage.sum()
        angles = sample.regions[0].box[:, None] * math.pi * 2.0 ** torch.arange(4)  # (4, 4)
        fourier = torch.cat([angles.sin(), angles.cos()], -1).flatten()
        expected = model.region_encoder.mlp(pooled) + model.region_encoder.location(fourier)
        torch.testing.assert_close(spliced.inputs_embeds[0, region_span.start], expected)
    # 64x48 image, 'pad': 8 px on top, scale 0.5 -> x 4..20, y (4 + 8) / 2 .. (30 + 8) / 2
    torch.testing.assert_close(sample.regions[0].box, torch.tensor([4.0, 6.0, 20.0, 19.0]) / 32)
    assert int((spliced.labels[0, image_span.start : region_span.end] != IGNORE_INDEX).sum()) == 0


def test_losses_match_plain_computation(model, image):
    target = torch.randn(16)
    sample = model.processor.sample(
        conversation(),
        [image],
        regions=[Region(Box(8, 4, 40, 30))],
        signal_targets=[target, None, None],
    )
    assert sample.signal_tasks == ("segment_image", "restore_image", "generate_image")
    out = model([sample], align_weight=0.5, synergy_weight=0.25)
    spliced = model.splice([sample])
    logits, labels = out.logits[0, :-1], spliced.labels[0, 1:]
    keep = labels != IGNORE_INDEX
    lm = F.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(out.lm_loss, lm)
    # two signals have heads (segment_image, generate_image): restore_image has none
    features = out.signals[0]
    assert features.tasks == ("segment_image", "generate_image")
    torch.testing.assert_close(
        out.align_loss, 1 - F.cosine_similarity(features.embeddings[0], target, dim=0)
    )
    assert out.synergy_loss.item() == pytest.approx(math.log(4), abs=1e-6)
    torch.testing.assert_close(out.loss, lm + 0.5 * out.align_loss + 0.25 * out.synergy_loss)
    embeddings = model.signal_embeddings(sample)
    assert embeddings[1] is None and embeddings[0][0] == "segment_image"
    torch.testing.assert_close(embeddings[0][1], features.embeddings[0].detach())


def test_video_tokens_are_pooled_frames(image):
    model = tiny_model(seed=1)
    model.config.video_pool = 2
    frames = [image, image.transpose(0), image]
    sample = model.processor.sample(
        [Message("user", "<video> what happens?"), Message("assistant", "x")], videos=[frames]
    )
    assert sample.videos.shape == (1, 2, 3, 32, 32)  # two frames sampled (first and last)
    span = model.splice([sample]).spans[0][0]
    assert (span.kind, span.end - span.start) == ("video", 2 * 4)  # 2 frames x (4 / 2)^2


@pytest.mark.parametrize("backend", ["transformers", "open_clip"])
def test_save_load_round_trip(tmp_path, image, backend):
    model = tiny_model(seed=3, vision_backend=backend)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer",
    ]
    loaded = VitronModel.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    sample = model.processor.sample(conversation(with_region=False), [image])
    torch.testing.assert_close(loaded([sample]).logits, model([sample]).logits)
    data = json.loads((tmp_path / "m" / "config.json").read_text())
    assert data["vitron_version"] == vitron.__version__ and data["vision"]["backend"] == backend


def test_saved_files_have_the_usual_permissions(tmp_path):
    """save_pretrained's files (written through common_kernels.files.atomic_write) get what
    open() gives under the umask, not mkstemp's 0600."""
    previous = os.umask(0o022)
    try:
        tiny_model(seed=0).save_pretrained(tmp_path / "m")
    finally:
        os.umask(previous)
    modes = {
        str(path.relative_to(tmp_path / "m")): path.stat().st_mode & 0o777
        for path in (tmp_path / "m").rglob("*")
        if path.is_file()
    }
    assert {"config.json", "model.safetensors"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o644)
    assert not [p for p in (tmp_path / "m").rglob(".*") if p.name.endswith(".tmp")]


def test_load_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"lacks config.json \(written by VitronModel.save_pretrained\)"
    ):
        VitronModel.from_pretrained(tmp_path / "empty")
    tokenizer = byte_level_tokenizer()
    with pytest.raises(
        ValueError,
        match=r"the tokenizer lacks the tokens \['<image>', '<video>', '<region>', '<signal>'\]",
    ):
        VitronModel(tiny_config(), tokenizer)
    with pytest.raises(ValueError, match=r"video_pool must divide the patch grid \(4\), got 3"):
        tiny_config().__class__(**{**tiny_config().__dict__, "video_pool": 3})


def test_long_conversations_are_refused_at_inference(model, image):
    sample = model.processor.sample(conversation(with_region=False), [image])
    model.config.max_length, old = 50, model.config.max_length
    try:
        with pytest.raises(
            ValueError, match=r"above the model's max_length 50; start a new conversation"
        ):
            model.generate(sample, max_new_tokens=2)
        assert max(model.splice([sample]).lengths) == 50  # training truncates instead
    finally:
        model.config.max_length = old


def test_from_components_loads_pretrained_parts(tmp_path, image):
    """A new Vitron from saved transformers parts (the route from hub weights, offline)."""
    from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel

    tokenizer = byte_level_tokenizer()
    config = tiny_config(vocab_size=len(tokenizer))
    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config.llm))
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    CLIPVisionModel(CLIPVisionConfig(**config.vision.model_config)).save_pretrained(
        tmp_path / "clip"
    )
    model = VitronModel.from_components(
        str(tmp_path / "llm"), str(tmp_path / "clip"), preprocess="center_crop"
    )
    assert (
        len(model.tokenizer) == 260 + 4 and model.llm.get_input_embeddings().weight.shape[0] == 264
    )
    new_rows = model.llm.get_input_embeddings().weight[260:]
    torch.testing.assert_close(new_rows, llm.get_input_embeddings().weight.mean(0).expand(4, -1))
    assert (
        model.config.vision.preprocess == "center_crop" and model.config.vision.select_layer == -2
    )
    sample = model.processor.sample(conversation(with_region=False), [image])
    assert torch.isfinite(model([sample]).loss)
