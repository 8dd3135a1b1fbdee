"""The full model: what is spliced where, its losses, save/load round trips, bad inputs.

Tolerances: fp32 restatements against the model use ``torch.testing.assert_close``'s fp32
defaults (rtol 1.3e-6, atol 1e-5).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import vitron
from vitron.invocations import parse_invocation
from vitron.models import VitronConfig, VitronModel
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


def restated_invariant(model: VitronModel, hidden: torch.Tensor) -> torch.Tensor:
    """(..., invariant_dim) task-invariant features of (..., H) signal states, written out."""
    first, second = model.signal_heads.invariant[0], model.signal_heads.invariant[2]
    inner = F.gelu(F.linear(hidden, first.weight, first.bias))
    return F.linear(inner, second.weight, second.bias)


def restated_signal_embedding(model: VitronModel, hidden: torch.Tensor, task: str) -> torch.Tensor:
    """The signal head of one (H,) state: ``output[task](cat(specific[task](h), invariant(h)))``."""
    heads = model.signal_heads
    specific = F.linear(hidden, heads.specific[task].weight, heads.specific[task].bias)
    both = torch.cat([specific, restated_invariant(model, hidden)])
    return F.linear(both, heads.output[task].weight, heads.output[task].bias)


def test_losses_match_plain_computation(image):
    """Every loss restated from the LLM's own hidden states and the heads' weights: the signal
    rows are found from the labels, the heads and the discriminator are written with F.linear.
    The discriminator's last layer starts at zero, which pins the synergy loss at log 4
    whatever the features; it is then randomised, so the synergy term depends on them."""
    model = tiny_model(seed=0)
    region = Region(Box(8, 4, 40, 30))
    untrained = model([model.processor.sample(conversation(), [image], regions=[region])])
    assert untrained.synergy_loss.item() == pytest.approx(math.log(4), abs=1e-6)
    generator = torch.Generator().manual_seed(5)
    last = model.synergy.discriminator.net[-1]
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=generator))
        last.bias.copy_(torch.randn(last.bias.shape, generator=generator))
    target = torch.randn(16, generator=generator)
    sample = model.processor.sample(
        conversation(),
        [image],
        regions=[region],
        signal_targets=[target, None, None],
    )
    assert sample.signal_tasks == ("segment_image", "restore_image", "generate_image")
    out = model([sample], align_weight=0.5, synergy_weight=0.25)
    with torch.no_grad():
        spliced = model.splice([sample])
        llm = model.llm(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            output_hidden_states=True,
        )
        labels = spliced.labels[0]
        # the reply's three <signal> tokens are supervised: their labels are the token itself
        positions = torch.nonzero(labels == model.signal_token_id)[:, 0].tolist()
        assert len(positions) == 3 and spliced.signal_positions == [positions]
        hidden = llm.hidden_states[-1][0]  # (L, H)
        logits, shifted = llm.logits[0, :-1], labels[1:]
        keep = shifted != IGNORE_INDEX
        lm = F.cross_entropy(logits[keep], shifted[keep])
        # heads for segment_image (call 0) and generate_image (call 2); restore_image has none
        seg_state, gen_state = hidden[positions[0]], hidden[positions[2]]
        seg = restated_signal_embedding(model, seg_state, "segment_image")
        align = 1 - torch.dot(seg, target) / (seg.norm() * target.norm())
        invariant = restated_invariant(model, torch.stack([seg_state, gen_state]))
        net = model.synergy.discriminator.net
        task_logits = net[2](F.gelu(net[0](invariant)))  # (2, 4)
        # task ids in TINY_SIGNAL_TASKS: segment_image 0, generate_image 2
        log_probs = task_logits.log_softmax(-1)
        synergy = -(log_probs[0, 0] + log_probs[1, 2]) / 2
    assert out.signals[0].tasks == ("segment_image", "generate_image")
    torch.testing.assert_close(out.lm_loss, lm)
    torch.testing.assert_close(out.align_loss, align)
    torch.testing.assert_close(out.synergy_loss, synergy)
    assert abs(synergy.item() - math.log(4)) > 1e-2  # the features matter now
    torch.testing.assert_close(out.loss, lm + 0.5 * align + 0.25 * synergy)
    embeddings = model.signal_embeddings(sample)
    assert embeddings[1] is None and [e[0] for e in (embeddings[0], embeddings[2])] == [
        "segment_image",
        "generate_image",
    ]
    torch.testing.assert_close(embeddings[0][1], seg)
    torch.testing.assert_close(
        embeddings[2][1], restated_signal_embedding(model, gen_state, "generate_image")
    )


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


def test_random_weights_is_saved_only_when_true(tmp_path):
    """A tiny model's config says its weights are random and keeps saying so after a round
    trip; any other model's config.json has no random_weights key, so vitron 0.4.2 (which
    refuses a field it does not know) still reads it, and a config without it reads False."""
    tiny = tiny_model(seed=0)
    assert tiny.config.random_weights is True
    tiny.save_pretrained(tmp_path / "tiny")
    assert json.loads((tmp_path / "tiny" / "config.json").read_text())["random_weights"] is True
    assert VitronModel.from_pretrained(tmp_path / "tiny").config.random_weights is True
    tiny.config.random_weights = False  # a trained or a real model
    tiny.save_pretrained(tmp_path / "real")
    data = json.loads((tmp_path / "real" / "config.json").read_text())
    assert "random_weights" not in data
    # the fields after 0.4.2 are written only when set (system_prompt, video_support: an
    # imported official model, with prompt_layout and tokenizer_options; region.style
    # "official")
    later = {"random_weights", "system_prompt", "video_support", "prompt_layout",
             "tokenizer_options"}  # fmt: skip
    fields_0_4_2 = {field.name for field in dataclasses.fields(VitronConfig)} - later
    assert set(data) - {"vitron_version"} == fields_0_4_2
    assert "style" not in data["region"]
    assert VitronModel.from_pretrained(tmp_path / "real").config.random_weights is False


def test_saved_files_have_the_usual_permissions(tmp_path):
    """save_pretrained's files (written through common_kernels.runtime.files.atomic_write) get what
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
    with pytest.raises(ValueError) as caught:
        VitronModel.from_pretrained(tmp_path / "empty")
    assert str(caught.value) == (
        f"model {tmp_path / 'empty'}: the folder lacks config.json, model.safetensors, tokenizer "
        "(a Vitron folder is written by VitronModel.save_pretrained or `vitron tiny-model DIR`)"
    )
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
