# ruff: noqa: E501
"""The three training stages: exact trainable sets, JSONL data, end-to-end runs on the CPU."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from vitron.models import VitronModel
from vitron.processing import IGNORE_INDEX
from vitron.tiny import tiny_model
from vitron.training import ConversationDataset, configure_stage, stage_processor, train

CALLS = {
    "version": 1,
    "calls": [
        {"id": "seg", "task": "segment_image", "args": {"image": "$image0", "text": "dog", "region": "$region0"}},
        {"id": "gen", "task": "generate_image", "args": {"text": "a cat"}},
    ],
}  # fmt: skip


def names_of(module, prefix: str) -> set[str]:
    return {f"{prefix}.{n}" for n, _ in module.named_parameters()}


@pytest.mark.parametrize(("stage", "lora"), [(1, 0), (2, 0), (2, 2), (3, 0), (3, 2)])
def test_trainable_parameters_per_stage(stage, lora):
    model = tiny_model(seed=0)
    projector, regions = (
        names_of(model.projector, "projector"),
        names_of(model.region_encoder, "region_encoder"),
    )
    signal = names_of(model.signal_heads, "signal_heads") | names_of(model.synergy, "synergy")
    trainable = set(configure_stage(model, stage, lora))
    llm = names_of(model.llm, "llm")
    adapters = {n for n in llm if "lora_A" in n or "lora_B" in n}
    embeddings = {
        n for n in llm if n.endswith(("embed_tokens.weight", "lm_head.weight")) and "lora" not in n
    }
    expected = {
        (1, 0): projector,
        (2, 0): projector | regions | llm,
        (2, 2): projector | regions | adapters | embeddings,
        (3, 0): signal,
        (3, 2): signal | adapters,
    }[(stage, lora)]
    assert trainable == expected
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("vision.") for n in trainable)
    if lora:
        assert len(adapters) == 2 * 7 * 2  # A and B of 7 linear layers in each of 2 blocks
        assert len(embeddings) == 2


def test_stage_errors():
    with pytest.raises(ValueError, match=r"stage must be 1, 2 or 3, got 4"):
        configure_stage(tiny_model(), 4)
    with pytest.raises(
        ValueError, match=r"stage 1 trains only the projector; LoRA applies to stages 2 and 3"
    ):
        configure_stage(tiny_model(), 1, lora_rank=4)


@pytest.fixture
def dataset_dir(tmp_path, write_noise_images):
    write_noise_images(tmp_path, ["img0.png", "img1.png"], 40, 56)
    save_file({"seg": torch.randn(16), "gen": torch.randn(16)}, tmp_path / "targets.safetensors")
    caption = {"id": "c", "images": ["img0.png"], "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a noisy square"}]}  # fmt: skip
    grounded = {
        "id": "g", "images": ["img1.png"], "regions": [{"image": 0, "box": [0, 0, 0.5, 0.5]}],
        "conversations": [
            {"from": "human", "value": "<image>\nSegment the dog in <region>, then draw a cat."},
            {"from": "gpt", "value": "Segmenting and drawing.", "calls": CALLS},
            {"from": "results", "value": "[seg] segment_image ok: mask of 'dog' covers 12.0%"},
            {"from": "gpt", "value": "Done."},
        ],
        "signal_targets": "targets.safetensors",
    }  # fmt: skip
    (tmp_path / "stage1.jsonl").write_text(
        json.dumps(caption) + "\n\n" + json.dumps(caption) + "\n"
    )
    (tmp_path / "stage23.jsonl").write_text(
        json.dumps(grounded) + "\n" + json.dumps(grounded) + "\n"
    )
    return tmp_path


def test_dataset_builds_samples(dataset_dir):
    model = tiny_model()
    data = ConversationDataset(dataset_dir / "stage23.jsonl", stage_processor(model, 2))
    sample = data[0]
    assert len(data) == 2 and sample.signal_tasks == ("segment_image", "generate_image")
    assert sample.images.shape == (1, 3, 32, 32) and len(sample.regions) == 1
    # [0, 0, 0.5, 0.5] of a 56x40 image = x 0..28, y 0..20; 'pad' adds 8 px on top of a 56 square
    torch.testing.assert_close(sample.regions[0].box, torch.tensor([0, 8, 28, 28]) / 56)
    assert all(t is not None and t.shape == (16,) for t in sample.signal_targets)
    supervised = model.tokenizer.decode(sample.input_ids[sample.labels != IGNORE_INDEX])
    assert supervised.startswith(" Segmenting and drawing. <invoke>") and supervised.endswith(
        "<signal><signal></s> Done.</s>"
    )
    plain = ConversationDataset(dataset_dir / "stage1.jsonl", stage_processor(model, 1))[0]
    assert model.tokenizer.decode(plain.input_ids) == "<s><image>\na noisy square</s>"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{oops", r"stage\.jsonl:1: not valid JSON"),
        (json.dumps({"images": []}), r"stage\.jsonl:1: a record is an object with 'conversations'"),
        (json.dumps({"conversations": [], "extra": 1}), r"stage\.jsonl:1: unknown keys \['extra'\]"),
        (json.dumps({"conversations": [{"from": "bot", "value": "x"}]}), r"conversations\[0\]\.from must be one of"),
        (json.dumps({"conversations": [{"from": "human", "value": "x"}]}), r"the conversation has no assistant turn to learn from"),
        (json.dumps({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y", "calls": {"version": 1, "calls": [{"id": "a", "task": "segment_image", "args": {"image": "$image0", "text": "d"}}]}}]}),
         r"conversations\[1\]\.calls: calls\[0\]\.args\.image: \$image0 does not exist: the conversation has 0 image\(s\)"),
    ],
)  # fmt: skip
def test_dataset_errors(tmp_path, line, message):
    (tmp_path / "stage.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        data = ConversationDataset(tmp_path / "stage.jsonl", tiny_model().processor)
        data[0]


def test_stage3_skips_batches_without_signals(dataset_dir, tmp_path):
    mixed = dataset_dir / "mixed.jsonl"  # the caption has no signal: nothing for stage 3
    caption = (dataset_dir / "stage1.jsonl").read_text().splitlines()[0]
    mixed.write_text(caption + "\n" + (dataset_dir / "stage23.jsonl").read_text())
    model = tiny_model(seed=0)
    result = train(
        model, mixed, tmp_path / "out", stage=3, max_steps=3, batch_size=1, lr=1e-2,
        checkpoints=False, accelerator="cpu", enable_progress_bar=False,
    )  # fmt: skip
    assert result["skipped_batches"] >= 1 and result["last_loss"] < result["first_loss"]
    with pytest.raises(
        ValueError, match=r"no batch of .*stage1\.jsonl has anything stage 3 trains"
    ):
        train(
            tiny_model(seed=0), dataset_dir / "stage1.jsonl", tmp_path / "none", stage=3,
            max_steps=2, batch_size=1, checkpoints=False, accelerator="cpu",
            enable_progress_bar=False,
        )  # fmt: skip
    assert not (tmp_path / "none" / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("stage", "lora", "data"), [(1, 0, "stage1"), (2, 0, "stage23"), (3, 2, "stage23")]
)
def test_training_runs_and_lowers_the_loss(dataset_dir, tmp_path, stage, lora, data):
    model = tiny_model(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(
        model, dataset_dir / f"{data}.jsonl", tmp_path / "out", stage=stage, max_steps=6, batch_size=2,
        lr=1e-2, lora_rank=lora, checkpoints=False, accelerator="cpu", enable_progress_bar=False,
    )  # fmt: skip
    assert result["last_loss"] < result["first_loss"]
    loaded = VitronModel.from_pretrained(tmp_path / "out")
    after = dict(loaded.named_parameters())
    assert sorted(after) == sorted(before)  # LoRA merged away
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert not any(n.startswith("vision.") for n in changed)
    if stage == 1:
        assert changed == {n for n in before if n.startswith("projector.")}
    if stage == 3:
        assert {n.split(".")[0] for n in changed} == {"signal_heads", "synergy", "llm"}
        assert not any(n.startswith(("projector.", "region_encoder.")) for n in changed)


def test_a_model_trained_from_a_tiny_model_is_saved_as_trained(dataset_dir, tmp_path):
    """The tiny model's weights are random; once trained, its saved config no longer says so
    (and, False, is left out of config.json: see test_model)."""
    model = tiny_model(seed=0)
    assert model.config.random_weights is True
    train(
        model, dataset_dir / "stage1.jsonl", tmp_path / "out", stage=1, max_steps=1, batch_size=1,
        checkpoints=False, accelerator="cpu", enable_progress_bar=False,
    )  # fmt: skip
    assert "random_weights" not in json.loads((tmp_path / "out" / "config.json").read_text())
    assert VitronModel.from_pretrained(tmp_path / "out").config.random_weights is False
