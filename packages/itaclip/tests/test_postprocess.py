"""Segment max, thresholds and closing against plain references."""

from __future__ import annotations

import torch

from itaclip.postprocess import (
    area_threshold,
    classify_query_logits,
    morphological_closing,
    query_logits_to_classes,
    segment_max,
)


def test_segment_max_vs_one_hot_reference():
    torch.manual_seed(0)
    values = torch.rand(6, 5, 7)
    owners = [0, 1, 1, 2, 2, 2]
    segments = [(0, 1), (1, 3), (3, 6)]
    one_hot = torch.zeros(3, 6)
    one_hot[owners, range(6)] = 1
    reference = (one_hot[:, :, None, None] * values[None]).amax(1)  # (C, Q, H, W) -> (C, H, W)
    torch.testing.assert_close(segment_max(values, segments), reference)
    single = segment_max(values, [(i, i + 1) for i in range(6)])
    torch.testing.assert_close(single, values)


def test_area_threshold_uses_non_background_area():
    labels = torch.zeros(10, 10, dtype=torch.long)
    labels[:, :5] = 0  # background: half the image
    labels[:4, 5:] = 1  # 20 px
    labels[4:9, 5:] = 2  # 25 px
    labels[9, 5:] = 3  # 5 px: 5 / 50 = 0.10 of the non-background area
    probs = torch.nn.functional.one_hot(labels, 4).permute(2, 0, 1).float() * 0.9 + 0.025
    out = area_threshold(probs, 0.1, background=0)
    kept = [bool(out[c].abs().sum() > 0) for c in range(4)]
    assert kept == [True, True, True, False]  # 5 is not > 0.1 * 50
    torch.testing.assert_close(out[:3], probs[:3])
    # with the image area (100 px) as the base, class 3 would fail too; class 1 at 0.25 would not
    assert bool(area_threshold(probs, 0.45, 0)[1].sum() == 0)  # 20 <= 0.45 * 50
    assert bool(area_threshold(probs, 0.45, 0)[2].sum() > 0)  # 25 > 22.5


def test_probability_threshold_and_logit_scale():
    logits = torch.zeros(3, 1, 3)
    logits[1, 0, 0] = 1.0  # pixel 0: class 1 wins clearly at scale 10
    logits[2, 0, 1] = 0.01  # pixel 1: nearly uniform -> below 0.5
    labels, probs = query_logits_to_classes(
        logits, [(0, 1), (1, 2), (2, 3)], logit_scale=10.0, prob_thd=0.5, background=0
    )
    expected = torch.softmax(logits * 10.0, 0)
    torch.testing.assert_close(probs, expected)
    assert labels.tolist() == [[1, 0, 0]]
    labels, _ = query_logits_to_classes(logits, [(0, 1), (1, 2), (2, 3)], 10.0, prob_thd=0.5)
    assert labels.tolist() == [[1, 2, 0]]  # no background class: no threshold


def test_closing_vs_reference():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (7, 9))

    def grey(x, op, fill):
        padded = torch.nn.functional.pad(x[None, None].float(), (1, 1, 1, 1), value=fill)[0, 0]
        out = torch.empty_like(x, dtype=torch.float32)
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                out[i, j] = op(padded[i : i + 3, j : j + 3])
        return out

    expected = grey(grey(labels, torch.max, -1e9), torch.min, 1e9).long()
    assert torch.equal(morphological_closing(labels), expected)
    hole = torch.ones(5, 5, dtype=torch.long)
    hole[2, 2] = 0
    assert torch.equal(morphological_closing(hole), torch.ones(5, 5, dtype=torch.long))


def test_classify_returns_labels_before_the_closing():
    logits = torch.zeros(3, 5, 5)
    logits[2] = 1.0  # class 2 everywhere ...
    logits[1, 2, 2] = 3.0  # ... but a hole of class 1 in the middle
    logits[:, 0, 0] = 1.0  # a tied corner: 1/3 < prob_thd -> background 0
    segments = [(0, 1), (1, 2), (2, 3)]
    out = classify_query_logits(logits, segments, 10.0, prob_thd=0.9, background=0, closing=True)
    before = torch.full((5, 5), 2)
    before[2, 2] = 1
    before[0, 0] = 0
    assert torch.equal(out.labels_before_closing, before)
    assert torch.equal(out.labels, morphological_closing(before))
    assert out.labels[2, 2] == 2 and out.labels[0, 0] == 2  # closing fills both
    torch.testing.assert_close(out.probs, torch.softmax(10.0 * logits, 0))
    plain = classify_query_logits(logits, segments, 10.0, prob_thd=0.9, background=0)
    assert torch.equal(plain.labels, before) and torch.equal(plain.labels_before_closing, before)
    labels, probs = query_logits_to_classes(logits, segments, 10.0, 0.9, None, 0, closing=True)
    assert torch.equal(labels, out.labels) and torch.equal(probs, out.probs)
