# ruff: noqa: E501
"""Gradient reversal, the task discriminator, signal heads, the region encoder, the vision tower."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitron.models import (
    RegionConfig,
    RegionEncoder,
    SignalConfig,
    SignalHeads,
    SynergyModule,
    VisionConfig,
    VisionTower,
    reverse_gradient,
)
from vitron.tiny import TINY_OPEN_CLIP, tiny_config

TASKS = ("segment_image", "generate_image", "edit_image", "segment_video")


def signal_config(**overrides) -> SignalConfig:
    settings = {
        "tasks": TASKS, "specific_dim": 6, "invariant_dim": 5,
        "output_dims": {"segment_image": 3, "generate_image": 4, "edit_image": 4, "segment_video": 3},
        "discriminator_hidden": 7,
    }  # fmt: skip
    settings.update(overrides)
    return SignalConfig(**settings)


@pytest.mark.parametrize("scale", [1.0, 0.25, 3.0])
def test_gradient_reversal_flips_and_scales(scale):
    torch.manual_seed(0)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 3, dtype=torch.float64)
    y = reverse_gradient(x, scale)
    assert torch.equal(y, x)
    (y * weights).sum().backward()
    torch.testing.assert_close(x.grad, -scale * weights, rtol=0, atol=0)


def test_discriminator_loss_is_log_num_tasks_at_init():
    torch.manual_seed(0)
    synergy = SynergyModule(signal_config())
    invariant = torch.randn(12, 5) * 10
    tasks = [TASKS[i % 4] for i in range(12)]
    loss = synergy(invariant, tasks)
    assert loss.item() == pytest.approx(math.log(4), abs=1e-6)


def test_synergy_gradients_train_discriminator_and_fool_encoder():
    torch.manual_seed(0)
    synergy = SynergyModule(signal_config(grl_lambda=0.5))
    torch.nn.init.normal_(synergy.discriminator.net[-1].weight)  # leave the uniform start
    invariant = torch.randn(8, 5, requires_grad=True)
    tasks = [TASKS[i % 4] for i in range(8)]
    synergy(invariant, tasks).backward()
    reversed_grad = invariant.grad.clone()
    disc_grad = synergy.discriminator.net[0].weight.grad.clone()
    # the same loss without reversal
    invariant.grad = None
    synergy.zero_grad()
    logits = synergy.discriminator(invariant)
    F.cross_entropy(logits, synergy.task_ids(tasks, invariant.device)).backward()
    torch.testing.assert_close(reversed_grad, -0.5 * invariant.grad)
    torch.testing.assert_close(disc_grad, synergy.discriminator.net[0].weight.grad)


def test_signal_heads_route_each_task():
    torch.manual_seed(0)
    heads = SignalHeads(8, signal_config())
    hidden = torch.randn(3, 8)
    tasks = ["edit_image", "segment_image", "edit_image"]
    out = heads(hidden, tasks)
    assert out.specific.shape == (3, 6) and out.invariant.shape == (3, 5)
    assert [e.shape[0] for e in out.embeddings] == [4, 3, 4]
    for i, task in enumerate(tasks):
        both = torch.cat([heads.specific[task](hidden[i]), heads.invariant(hidden[i])])
        torch.testing.assert_close(out.embeddings[i], heads.output[task](both))
    with pytest.raises(ValueError, match=r"no signal head for tasks \['restore_image'\]"):
        heads(hidden[:1], ["restore_image"])


def test_signal_config_errors():
    with pytest.raises(ValueError, match=r"at least 2 tasks"):
        SignalConfig(tasks=("segment_image",), output_dims={"segment_image": 3})
    with pytest.raises(ValueError, match=r"output_dims has no width for tasks \['edit_image'\]"):
        SignalConfig(tasks=("segment_image", "edit_image"), output_dims={"segment_image": 3})


def test_region_encoder_pools_by_coverage():
    torch.manual_seed(0)
    encoder = RegionEncoder(4, 6, RegionConfig(hidden=8, location_frequencies=2)).double()
    features = torch.randn(2, 9, 4, dtype=torch.float64)
    coverage = torch.zeros(2, 9, dtype=torch.float64)
    coverage[0, 0], coverage[0, 1] = 1.0, 0.5
    coverage[1, 8] = 0.25
    boxes = torch.tensor([[0.0, 0.0, 0.6, 0.3], [0.7, 0.7, 0.8, 0.9]], dtype=torch.float64)
    pooled = RegionEncoder.pool(features, coverage)
    torch.testing.assert_close(pooled[0], (features[0, 0] + 0.5 * features[0, 1]) / 1.5)
    torch.testing.assert_close(pooled[1], features[1, 8])
    angles = boxes[..., None] * torch.tensor([math.pi, 2 * math.pi], dtype=torch.float64)
    fourier = torch.cat([angles.sin(), angles.cos()], -1).flatten(1)
    expected = encoder.mlp(pooled) + encoder.location(fourier)
    torch.testing.assert_close(encoder(features, coverage, boxes), expected)


def test_transformers_tower_selects_layer():
    torch.manual_seed(0)
    config = tiny_config().vision
    pixels = torch.randn(2, 3, 32, 32)
    for layer, index in ((-2, 1), (-1, 2), (1, 1), (2, 2)):
        tower = VisionTower(
            VisionConfig("transformers", config.model_config, select_layer=layer)
        ).eval()
        states = tower.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        torch.testing.assert_close(tower(pixels), states[index][:, 1:])
        assert tower(pixels).shape == (2, 16, 32)
    with pytest.raises(
        ValueError, match=r"select_layer must be in \[-2, 2\] for this 2-block tower, got -3"
    ):
        VisionTower(VisionConfig("transformers", config.model_config, select_layer=-3))


def test_open_clip_tower_selects_layer():
    torch.manual_seed(0)
    tower = VisionTower(VisionConfig("open_clip", TINY_OPEN_CLIP, select_layer=-2)).eval()
    visual = tower.model
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)  # (1, 16, 32)
        cls = visual.class_embedding.view(1, 1, -1).expand(1, 1, -1)
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
        for block in visual.transformer.resblocks[:3]:  # output of block 3 of 4 = layer -2
            x = block(x)
        torch.testing.assert_close(tower(pixels), x[:, 1:])
    assert tower.hidden_size == 32 and tower.config.grid == 4
    with pytest.raises(ValueError, match=r"only open_clip ViT towers are supported"):
        VisionTower(
            VisionConfig("open_clip", {**TINY_OPEN_CLIP, "vision_cfg": {"layers": [1, 1, 1, 1]}})
        )
