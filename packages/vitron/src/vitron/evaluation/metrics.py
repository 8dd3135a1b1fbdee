"""Evaluation metrics as pure functions: referring-segmentation IoUs and answer accuracies.

Referring segmentation (LISA's convention, which VITRON's RefCOCO numbers follow):

- cIoU = sum of intersections / sum of unions over every sample (one sample = one referring
  sentence), so large objects weigh more;
- gIoU = mean of the per-sample IoU, where a sample whose prediction and ground truth are both
  empty (union 0) counts IoU 1.0 (LISA: ``acc_iou[union_i == 0] += 1.0  # no-object target``).
  LISA also adds 1e-5 to each union; here the IoU is exact, so scores can differ from LISA's
  in the sixth decimal. When every union is 0, cIoU is 1.0 by the same convention (LISA's
  epsilon makes it 0 there).

Image QA: :func:`vqa_accuracy` is the VQA accuracy ``min(#humans who gave the answer / 3, 1)``
averaged over the 10 leave-one-annotator-out subsets of 9; :func:`normalize_answer` is the VQA
answer normalisation. :func:`exact_match` compares one reference answer after the same
normalisation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np


@dataclass(frozen=True)
class MaskCounts:
    """Pixel counts of one prediction against its ground truth.

    Args:
        intersection: pixels in both.
        union: pixels in either.
        predicted: pixels in the prediction.
        target: pixels in the ground truth.
    """

    intersection: int
    union: int
    predicted: int
    target: int

    @property
    def iou(self) -> float:
        """Intersection over union; 1.0 when both masks are empty (LISA's no-object rule)."""
        return 1.0 if self.union == 0 else self.intersection / self.union


def mask_counts(predicted: np.ndarray, target: np.ndarray) -> MaskCounts:
    """Pixel counts of a predicted (H, W) mask against the (H, W) ground truth.

    Args:
        predicted: bool (or 0/1) prediction.
        target: bool (or 0/1) ground truth of the same shape.
    """
    if predicted.shape != target.shape:
        raise ValueError(
            f"the prediction is {predicted.shape} but the ground truth is {target.shape}"
        )
    pred, gt = predicted.astype(bool), target.astype(bool)
    return MaskCounts(
        intersection=int(np.count_nonzero(pred & gt)),
        union=int(np.count_nonzero(pred | gt)),
        predicted=int(np.count_nonzero(pred)),
        target=int(np.count_nonzero(gt)),
    )


def cumulative_iou(counts: Iterable[MaskCounts]) -> float:
    """cIoU: total intersection over total union (1.0 when every union is 0).

    Args:
        counts: one entry per sample.
    """
    counts = list(counts)
    if not counts:
        raise ValueError("cIoU needs at least one sample")
    union = sum(c.union for c in counts)
    return 1.0 if union == 0 else sum(c.intersection for c in counts) / union


def mean_iou(counts: Iterable[MaskCounts]) -> float:
    """gIoU: the mean of the per-sample IoUs (an empty/empty sample counts 1.0).

    Args:
        counts: one entry per sample.
    """
    ious = [c.iou for c in counts]
    if not ious:
        raise ValueError("gIoU needs at least one sample")
    return sum(ious) / len(ious)


# ---- VQA answer normalisation (https://visualqa.org/evaluation.html) ------------------------

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
# the punctuation the VQA evaluation spaces out; apostrophes and colons stay ("girl's",
# "2:20"), periods and commas between digits have their own rules
PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
# contractions written with their apostrophes; every spelling that drops some of them
# ("dont", "couldnt've", "couldn'tve") is mapped back (forms that are also words, such as
# "its", "lets", "well", "were", "ill", "shed", "wed", are left out)
CONTRACTIONS = (
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't",
    "don't", "hadn't", "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd",
    "how'll", "how's", "i'd've", "i'm", "i've", "isn't", "it'd", "it'd've", "it'll",
    "ma'am", "mightn't", "mightn't've", "might've", "mustn't", "must've", "needn't", "not've",
    "o'clock", "oughtn't", "shan't", "she'd've", "she's", "should've", "shouldn't",
    "shouldn't've", "somebody'd", "somebody'd've", "somebody'll", "somebody's", "someone'd",
    "someone'd've", "someone'll", "someone's", "something'd", "something'd've",
    "something'll", "that's", "there'd", "there'd've", "there're", "there's", "they'd",
    "they'd've", "they'll", "they're", "they've", "'twas", "wasn't", "we'd've", "we've",
    "weren't", "what'll", "what're", "what's", "what've", "when's", "where'd", "where's",
    "where've", "who'd", "who'd've", "who'll", "who's", "who've", "why'll", "why're", "why's",
    "won't", "would've", "wouldn't", "wouldn't've", "y'all", "y'all'll", "y'all'd've",
    "you'd", "you'd've", "you'll", "you're", "you've",
)  # fmt: skip
PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")  # a period not followed by a digit
COMMA_IN_NUMBER = re.compile(r"(?<=\d),(?=\d)")  # 100,978 -> 100978


def _apostrophe_variants(word: str) -> set[str]:
    """``word`` with every non-empty subset of its apostrophes removed."""
    parts = word.split("'")
    variants = set()
    for keep in product((True, False), repeat=len(parts) - 1):
        text = parts[0]
        for kept, part in zip(keep, parts[1:], strict=True):
            text += ("'" if kept else "") + part
        variants.add(text)
    variants.discard(word)
    return variants


CONTRACTION_FIXES = {
    variant: word for word in CONTRACTIONS for variant in _apostrophe_variants(word)
}


def normalize_answer(text: str) -> str:
    """The VQA answer normalisation, applied to predictions and to human answers alike.

    Lowercase; newlines and tabs become spaces; periods are removed unless they are a decimal
    point; commas between digits are removed; the other punctuation (except apostrophes and
    colons) becomes a space; number words zero..ten (and "none") become digits; the articles
    a, an, the are dropped; contractions missing their apostrophes get them back ("dont" ->
    "don't"); words are joined by single spaces.

    Args:
        text: an answer.
    """
    text = text.lower().replace("\n", " ").replace("\t", " ")
    text = PERIOD_NOT_DECIMAL.sub("", text)
    text = COMMA_IN_NUMBER.sub("", text)
    text = text.translate(str.maketrans(PUNCTUATION, " " * len(PUNCTUATION)))
    words = [NUMBER_WORDS.get(w, w) for w in text.split()]
    words = [CONTRACTION_FIXES.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The VQA accuracy of one predicted answer against the human answers.

    For each annotator left out in turn, ``min(#other annotators who gave the prediction / 3,
    1)``; the mean over the leave-one-out subsets (10 choose 9 in VQA v2). With 10 answers,
    k matching gives 0, 0.3, 0.6, 0.9, 1.0 for k = 0, 1, 2, 3, >= 4. Both sides are
    normalised with :func:`normalize_answer` first.

    Args:
        prediction: the model's answer.
        answers: the human answers (10 in VQA v2).
    """
    if not answers:
        raise ValueError("VQA accuracy needs at least one human answer")
    predicted = normalize_answer(prediction)
    matches = [normalize_answer(a) == predicted for a in answers]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(matches)


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the prediction equals the answer after :func:`normalize_answer`, else 0.0.

    Args:
        prediction: the model's answer.
        answer: the reference answer.
    """
    return float(normalize_answer(prediction) == normalize_answer(answer))
