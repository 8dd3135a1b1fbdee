"""The prompt encoders' cache (``diffeat.prompts.cached_rows``): only missing prompts are
encoded, in one batch; rows come back in the prompts' order; the oldest go beyond the size."""

from __future__ import annotations

import torch

from diffeat.prompts import cached_rows


def test_cached_rows_encode_only_what_is_missing_and_keep_the_newest():
    batches: list[list[str]] = []

    def encode(prompts: list[str]):
        batches.append(prompts)
        codes = torch.tensor([[float(ord(p[0]))] for p in prompts])  # (B, 1)
        return codes, -codes

    cache: dict = {}
    first, second = cached_rows(cache, ["b", "a", "b"], encode, size=2)
    assert batches == [["a", "b"]]  # one batch, each prompt once, in sorted order
    assert first.flatten().tolist() == [98.0, 97.0, 98.0] and torch.equal(second, -first)
    first, _ = cached_rows(cache, ["c", "a"], encode, size=2)
    assert batches == [["a", "b"], ["c"]] and first.flatten().tolist() == [99.0, 97.0]
    assert list(cache) == ["b", "c"]  # the oldest entry ("a") dropped beyond two
