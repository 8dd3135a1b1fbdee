"""``Segmenter`` on a (B, 3, H, W) batch: one result per image, each equal to the single-image
call bit for bit (issue 25, item 8)."""

from __future__ import annotations

import io
import sys

import torch

CLASSES = ["sky,wall", "cat", "dog,puppy"]
TEXTS = [None, "a small furry pet", "a young dog"]


def assert_same(batched, single) -> None:
    """Every field of two ``Segmentation`` results equal exactly."""
    for field in ("labels", "probs", "labels_before_closing", "query_logits", "query_class"):
        one, other = getattr(batched, field), getattr(single, field)
        if one is None or other is None:  # query_logits: only when asked for
            assert one is None and other is None, field
        else:
            assert torch.equal(one, other), field
    assert batched.class_names == single.class_names and batched.query_names == single.query_names


def test_a_batch_gives_the_single_image_results_exactly(make_segmenter):
    segmenter = make_segmenter(
        stride=16, faithful=True, prob_thd=0.3, area_thd=0.1, alpha=0.3, logit_scale=30.0
    )  # PAMR, thresholds, closing and auxiliary texts all on
    batch = torch.rand(3, 3, 72, 88, generator=torch.Generator().manual_seed(0))
    options = {"background": 0, "output_size": (40, 50), "return_query_logits": True}
    results = segmenter(batch, CLASSES, TEXTS, **options)
    assert isinstance(results, list) and len(results) == 3
    for image, result in zip(batch, results, strict=True):
        single = segmenter(image, CLASSES, TEXTS, **options)
        assert result.labels.shape == (40, 50) and result.probs.shape == (3, 40, 50)
        assert_same(result, single)
    assert not torch.equal(results[0].query_logits, results[1].query_logits)  # distinct images


def test_a_batch_of_one_is_a_list_and_presets_work_on_batches(make_segmenter):
    segmenter = make_segmenter(preset="voc21", pamr=False)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    results = segmenter(image[None])
    assert isinstance(results, list) and len(results) == 1
    assert_same(results[0], segmenter(image))
    assert results[0].probs.shape == (21, 64, 64)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_batch_progress_counts_the_images(make_segmenter, monkeypatch):
    segmenter = make_segmenter(pamr=False)
    batch = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    quiet = segmenter(batch, CLASSES)
    assert terminal.getvalue() == ""  # progress is off by default in the API
    shown = segmenter(batch, CLASSES, progress=True)
    bar = terminal.getvalue()
    assert "images" in bar and "2/2" in bar and "windows" in bar
    for one, other in zip(quiet, shown, strict=True):
        assert torch.equal(one.probs, other.probs)
