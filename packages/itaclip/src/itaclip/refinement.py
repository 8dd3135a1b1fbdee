"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, 2020) as used by ITACLIP.

Affinities come from the image: for every pixel, its 8 neighbours at each dilation (replicate
padding), ``-|x_n - x| / (1e-8 + 0.1 std)`` with ``std`` the unbiased standard deviation of the
3x3 samples of all dilations, averaged over the image channels, softmax over the neighbours.
Each iteration replaces a mask value by the affinity-weighted sum of its neighbours' values.
The affinity is shared by all mask channels, so refining channel chunks separately is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

NEIGHBOUR_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def _shifted(padded: Tensor, pad: int, dy: int, dx: int, height: int, width: int) -> Tensor:
    """View of the pixel at offset (dy, dx) of every pixel, from a replicate-padded tensor."""
    return padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width]


def pamr_affinity(image: Tensor, dilations: Sequence[int] = (8, 16)) -> Tensor:
    """Neighbour affinities of each pixel.

    Args:
        image: (B, C, H, W) guide image.
        dilations: neighbourhood dilations.

    Returns:
        (B, 8 * len(dilations), H, W) weights, summing to 1 over dim 1.
    """
    height, width = image.shape[-2:]
    pad = max(dilations)
    padded = F.pad(image, (pad, pad, pad, pad), mode="replicate")
    samples, diffs = [], []
    for d in dilations:
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                neighbour = _shifted(padded, pad, dy * d, dx * d, height, width)
                samples.append(neighbour)
                if (dy, dx) != (0, 0):
                    diffs.append((neighbour - image).abs())
    std = torch.stack(samples, dim=2).std(dim=2, unbiased=True)  # (B, C, H, W)
    aff = -torch.stack(diffs, dim=2) / (1e-8 + 0.1 * std.unsqueeze(2))  # (B, C, K, H, W)
    return aff.mean(1).softmax(1)  # (B, K, H, W)


def pamr_propagate(mask: Tensor, affinity: Tensor, dilations: Sequence[int]) -> Tensor:
    """One PAMR step: affinity-weighted sum of each pixel's neighbours; (B, Q, H, W)."""
    height, width = mask.shape[-2:]
    pad = max(dilations)
    padded = F.pad(mask, (pad, pad, pad, pad), mode="replicate")
    out = torch.zeros_like(mask)
    index = 0
    for d in dilations:
        for dy, dx in NEIGHBOUR_OFFSETS:
            neighbour = _shifted(padded, pad, dy * d, dx * d, height, width)
            out.addcmul_(neighbour, affinity[:, index : index + 1])
            index += 1
    return out


@torch.no_grad()
def pamr(
    image: Tensor,
    mask: Tensor,
    iterations: int = 10,
    dilations: Sequence[int] = (8, 16),
    chunk: int | None = 16,
) -> Tensor:
    """Refine ``mask`` with image-guided affinities.

    Args:
        image: (B, 3, H, W) guide image.
        mask: (B, Q, H, W) logits or scores to refine.
        iterations: propagation steps.
        dilations: neighbourhood dilations.
        chunk: mask channels refined at a time (``None`` = all); the result does not depend
            on it, only peak memory does.

    Returns:
        (B, Q, H, W) refined mask in ``mask``'s dtype.
    """
    if image.shape[0] != mask.shape[0] or image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(
            f"image (B, C, H, W) and mask (B, Q, H, W) must share B, H, W; got "
            f"{tuple(image.shape)} and {tuple(mask.shape)}"
        )
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1 or None, got {chunk}")
    affinity = pamr_affinity(image.float(), dilations)
    step = mask.shape[1] if chunk is None else chunk
    outputs = []
    for part in mask.float().split(step, dim=1):
        for _ in range(iterations):
            part = pamr_propagate(part, affinity, dilations)
        outputs.append(part)
    return torch.cat(outputs, dim=1).to(mask.dtype)
