"""Dense window attention: the baseline SemanIR is compared against at equal width and depth.

Every layer attends to all ``window_size**2`` tokens of its (non-shifted) window with
``scaled_dot_product_attention``: a SwinIR-style window MHSA without shifted windows, so the only
difference from SemanIR is the sparse key-semantic dictionary. It is SemanIR's own skeleton
(:class:`~semanir.models.semanir.SemanIR` with ``dictionary="dense"``), so both share every
parameter shape; with ``k = window_size**2`` a SemanIR model computes the same function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .semanir_config import SemanIRConfig, semanir_test_tiny_unet, semanir_tiny_denoise


def dense_window_attention(config: SemanIRConfig) -> SemanIRConfig:
    """The dense-window-attention twin of a SemanIR config (same widths, depths, windows)."""
    tokens = config.window_size**2
    return dataclasses.replace(
        config, dictionary="dense", top_k=tokens, train_k_choices=(tokens,), inference_k=None
    )


CONFIGS: dict[str, Callable[[], SemanIRConfig]] = {
    "window_attention_test_tiny": lambda: dense_window_attention(semanir_test_tiny_unet()),
    "window_attention_tiny_denoise_gray": lambda: dense_window_attention(semanir_tiny_denoise(1)),
    "window_attention_tiny_denoise_color": lambda: dense_window_attention(semanir_tiny_denoise(3)),
}
