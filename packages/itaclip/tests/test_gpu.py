"""GPU lane (``nox -s gpu``): ITACLIP's fp16/bf16 paths on CUDA end to end against the fp32 CPU
segmentation of the same tiny random CLIP.

Every variant segments the same image with the same classes through ``Segmenter.__call__``
(text features, sliding windows, the ViT under autocast, stitching, PAMR, class max) and is
compared with the fp32 CPU result: the query logits (cosine similarities in [-1, 1]) within
``LOGIT_ATOL`` in max abs error, the labels equal on at least ``MIN_AGREEMENT`` of the pixels.
The same test body runs on the CPU (fp32: an exact match; bf16 and fp16 under CPU autocast), so
the comparison runs where there is no GPU. The tolerances are 4-7x the largest errors CPU
autocast gave on three seeds of the tiny model (bf16 2.5e-3, fp16 3.4e-4; labels >= 0.996).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch

from common_kernels.runtime.testing import precision_variants
from itaclip import Segmentation, Segmenter, SegmenterConfig

LOGIT_ATOL = {"fp32": 1e-5, "fp16": 2.5e-3, "bf16": 1e-2}
MIN_AGREEMENT = 0.98
CLASSES = ["cat", "dog,puppy", "sky", "grass", "road"]
VARIANTS = precision_variants()


@dataclass(frozen=True)
class Agreement:
    """How close a segmentation is to a reference one."""

    max_abs_logit_error: float
    label_agreement: float


def compare_segmentations(actual: Segmentation, expected: Segmentation) -> Agreement:
    """Max abs error of the query logits (in fp64) and the share of pixels with equal labels.

    Args:
        actual: a segmentation made with ``return_query_logits=True``.
        expected: the reference segmentation of the same image and classes.
    """
    if actual.query_logits is None or expected.query_logits is None:
        raise ValueError("both segmentations need query logits (return_query_logits=True)")
    if (
        actual.query_logits.shape != expected.query_logits.shape
        or actual.labels.shape != expected.labels.shape
    ):
        raise ValueError(
            f"shapes differ: logits {tuple(actual.query_logits.shape)} vs "
            f"{tuple(expected.query_logits.shape)}, labels {tuple(actual.labels.shape)} vs "
            f"{tuple(expected.labels.shape)}"
        )
    error = (actual.query_logits.double() - expected.query_logits.double()).abs().max()
    agreement = (actual.labels == expected.labels).double().mean()
    return Agreement(float(error), float(agreement))


def sample_image() -> torch.Tensor:
    """A smooth (3, 96, 128) RGB image in [0, 1] (three crops of 64 along the width)."""
    ys = torch.linspace(0, 1, 96)[:, None]
    xs = torch.linspace(0, 1, 128)[None, :]
    return torch.stack([ys * xs, (1 - ys) * xs, 0.5 + 0.4 * torch.sin(8 * xs + 3 * ys)]).clamp(0, 1)


def segment(clip: torch.nn.Module, tokenizer, device: str, precision: str) -> Segmentation:
    """Segment ``sample_image()`` with a copy of ``clip`` on ``device`` at ``precision``."""
    model = copy.deepcopy(clip).to(device)
    config = SegmenterConfig(
        short_side=None, crop=64, stride=32, batch_size=10, precision=precision
    )
    return Segmenter(model, tokenizer, config)(sample_image(), CLASSES, return_query_logits=True)


@pytest.fixture(scope="module")
def reference(tiny_clip, tiny_tokenizer) -> Segmentation:
    return segment(tiny_clip, tiny_tokenizer, "cpu", "fp32")


def fake_segmentation(labels: list[list[int]], logits: torch.Tensor) -> Segmentation:
    return Segmentation(
        labels=torch.tensor(labels),
        probs=torch.zeros(4, *logits.shape[-2:]),
        class_names=("a", "b", "c", "d"),
        query_logits=logits,
    )


def test_compare_segmentations_measures_logit_error_and_label_agreement() -> None:
    logits = torch.linspace(-1, 1, 16).reshape(4, 2, 2)
    expected = fake_segmentation([[0, 1], [2, 3]], logits)
    changed = logits.clone()
    changed[1, 0, 1] += 0.25
    actual = fake_segmentation([[0, 1], [2, 0]], changed)
    agreement = compare_segmentations(actual, expected)
    assert agreement.max_abs_logit_error == pytest.approx(0.25)
    assert agreement.label_agreement == 0.75
    assert compare_segmentations(expected, expected) == Agreement(0.0, 1.0)


def test_compare_segmentations_refuses_other_shapes_and_missing_logits() -> None:
    expected = fake_segmentation([[0, 1], [2, 3]], torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match=r"shapes differ: logits \(4, 2, 3\) vs \(4, 2, 2\)"):
        compare_segmentations(
            fake_segmentation([[0, 1, 1], [2, 3, 3]], torch.zeros(4, 2, 3)), expected
        )
    without = Segmentation(torch.zeros(2, 2, dtype=torch.long), torch.zeros(4, 2, 2), ("a",))
    with pytest.raises(ValueError, match="return_query_logits=True"):
        compare_segmentations(without, expected)


@pytest.mark.parametrize(("device", "precision"), VARIANTS)
def test_segmentation_matches_fp32_cpu(
    tiny_clip, tiny_tokenizer, reference, device, precision
) -> None:
    result = segment(tiny_clip, tiny_tokenizer, device, precision)
    assert result.query_logits.dtype == torch.float32 and result.labels.device.type == "cpu"
    agreement = compare_segmentations(result, reference)
    assert agreement.max_abs_logit_error <= LOGIT_ATOL[precision], agreement
    assert agreement.label_agreement >= MIN_AGREEMENT, agreement
    if precision != "fp32":  # the ViT did run in low precision
        assert agreement.max_abs_logit_error > 0


@pytest.mark.gpu
def test_auto_precision_is_fp16_autocast_on_cuda(tiny_clip, tiny_tokenizer) -> None:
    model = copy.deepcopy(tiny_clip).cuda()
    seg = Segmenter(model, tiny_tokenizer, SegmenterConfig(short_side=None, crop=64))
    with seg.autocast():
        assert torch.is_autocast_enabled("cuda")
        assert torch.get_autocast_dtype("cuda") == torch.float16
    assert seg.batch_size == 20  # the GPU default
