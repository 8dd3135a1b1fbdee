"""Templates, class parsing, template-averaged embeddings, auxiliary mixing and the disk cache."""

from __future__ import annotations

import os

import pytest
import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from itaclip import PRESETS, dataset_classes
from itaclip.text import (
    TextEmbeddingCache,
    embed_texts,
    imagenet_templates,
    mix_auxiliary,
    parse_classes,
)
from itaclip.tiny import save_tiny_model


def test_templates_are_openai_imagenet_in_order():
    templates = imagenet_templates()
    assert len(templates) == 80
    assert [t.format("cat") for t in templates] == [f("cat") for f in OPENAI_IMAGENET_TEMPLATES]


def test_parse_classes_synonyms_and_segments():
    parsed = parse_classes(["cat", "dog, puppy", ["person", "man", "woman"]])
    assert parsed.names == ("cat", "dog", "person")
    assert parsed.queries == ("cat", "dog", "puppy", "person", "man", "woman")
    assert parsed.query_class.tolist() == [0, 1, 1, 2, 2, 2]
    assert parsed.segments() == [(0, 1), (1, 3), (3, 6)]


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ([], "at least one class"),
        (["cat", "dog", "cat"], "duplicate class name 'cat': used by class 0 and class 2"),
        (["cat", "dog,cat"], "duplicate class name 'cat'"),
        (["cat", "dog,,puppy"], "class 1 .* has an empty name"),
        (["cat", " "], "class 1 .* has an empty name"),
    ],
)
def test_parse_classes_rejects_bad_lists(classes, message):
    with pytest.raises(ValueError, match=message):
        parse_classes(classes)


def test_parse_classes_rejects_one_string():
    with pytest.raises(TypeError, match="list of class names"):
        parse_classes("cat,dog")


def test_embed_texts_is_normalised_template_mean(tiny_clip, tiny_tokenizer):
    templates = ("a photo of a {}.", "a drawing of the {}.", "{}")
    out = embed_texts(tiny_clip.encode_text, tiny_tokenizer, ["cat", "dog"], templates, 2)
    with torch.no_grad():
        for row, name in zip(out, ["cat", "dog"], strict=True):
            feats = tiny_clip.encode_text(tiny_tokenizer([t.format(name) for t in templates]))
            feats = feats / feats.norm(dim=-1, keepdim=True)
            mean = feats.mean(0)
            torch.testing.assert_close(row, mean / mean.norm(), atol=1e-6, rtol=1e-5)


def test_mix_auxiliary_keeps_background():
    q = torch.randn(4, 3)
    aux = torch.randn(2, 3)
    owners = torch.tensor([0, 0, 1, 1])
    mixed = mix_auxiliary(q, aux, owners, 0.25, keep=(0,))
    torch.testing.assert_close(mixed[:2], q[:2])
    torch.testing.assert_close(mixed[2:], 0.75 * q[2:] + 0.25 * aux[1])
    with pytest.raises(ValueError, match="alpha"):
        mix_auxiliary(q, aux, owners, 1.5)


def test_disk_cache_round_trip_and_keys(tmp_path):
    cache = TextEmbeddingCache(tmp_path / "cache")
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(2, 3)

    first = cache.get_or_compute("model-a", ["cat", "dog"], ("{}",), compute)
    second = cache.get_or_compute("model-a", ["cat", "dog"], ("{}",), compute)
    assert len(calls) == 1
    torch.testing.assert_close(first, second)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".safetensors"]  # no temp left
    keys = {
        cache.key("model-a", ["cat", "dog"], ("{}",)),
        cache.key("model-b", ["cat", "dog"], ("{}",)),
        cache.key("model-a", ["dog", "cat"], ("{}",)),
        cache.key("model-a", ["cat", "dog"], ("a {}",)),
    }
    assert len(keys) == 4


def test_cache_and_tiny_model_files_have_the_usual_permissions(tmp_path):
    """Written through common_kernels.runtime.files: safetensors' own 0600 becomes what open()
    gives."""
    previous = os.umask(0o022)
    try:
        cache = TextEmbeddingCache(tmp_path / "cache")
        cache.get_or_compute("m", ["cat"], ("{}",), lambda: torch.zeros(1, 3))
        save_tiny_model(tmp_path / "tiny", seed=0)
    finally:
        os.umask(previous)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == 3 and "tiny/open_clip_model.safetensors" in written
    assert {(tmp_path / name).stat().st_mode & 0o777 for name in written} == {0o644}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "tiny"]  # no temporary left


def test_segmenter_uses_disk_cache(tiny_clip, tiny_tokenizer, tmp_path, monkeypatch):
    from itaclip import Segmenter, SegmenterConfig

    seg = Segmenter(tiny_clip, tiny_tokenizer, SegmenterConfig(), cache_dir=tmp_path)
    first = seg.embed(["cat", "sky"])
    fresh = Segmenter(tiny_clip, tiny_tokenizer, SegmenterConfig(), cache_dir=tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("text encoder called despite a cache hit")

    monkeypatch.setattr("itaclip.segmenter.embed_texts", fail)
    torch.testing.assert_close(fresh.embed(["cat", "sky"]), first)
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_shipped_class_lists(name):
    data = dataset_classes(name)
    expected = {
        "voc21": 21,
        "voc20": 20,
        "context60": 60,
        "context59": 59,
        "coco_object": 81,
        "coco_stuff": 171,
        "cityscapes": 19,
        "ade20k": 150,
    }
    assert len(data.queries) == expected[name]
    assert len(data.definitions) == len(data.synonyms) == expected[name]
    parse_classes(list(data.queries))  # no duplicate queries
    assert all(len(d.split()) < 50 for d in data.definitions)
    assert all(len(s.split()) == 1 for s in data.synonyms)
    has_background = name in ("voc21", "context60", "coco_object")
    assert (data.background == 0) if has_background else data.background is None


@pytest.mark.parametrize(("name", "source"), [("voc20", "voc21"), ("context59", "context60")])
def test_no_background_lists_are_the_lists_without_their_background(name, source):
    data, full = dataset_classes(name), dataset_classes(source)
    assert (data.background, full.background, full.names[0]) == (None, 0, "background")
    assert data.queries == full.queries[1:]
    assert data.definitions == full.definitions[1:] and data.synonyms == full.synonyms[1:]


def test_voc20_and_ade20k_class_order():
    """VOC20: the 20 VOC objects in label order 1..20; ADE20K: the dataset's order of its 150
    classes (label k + 1 in the files is class k), spot-checked along the list."""
    assert dataset_classes("voc20").names == (
        "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
        "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
        "train", "tv monitor",
    )  # fmt: skip
    names = dataset_classes("ade20k").names
    spots = {0: "wall", 2: "sky", 8: "windowpane", 12: "person", 20: "car", 44: "chest of drawers",
             89: "television receiver", 90: "airplane", 127: "bicycle", 138: "ashcan",
             141: "crt screen", 149: "flag"}  # fmt: skip
    assert {k: names[k] for k in spots} == spots and len(names) == 150
