"""Where the patches of a denoising step go: a deterministic grid or the paper's random centres.

A planner turns one step into a list of *batches*; the patches of a batch are pairwise disjoint,
so denoising them in one UNet call equals denoising them one after the other. Together the
patches of a step cover every latent pixel. Planning only depends on coverage, never on latent
values, so a whole step is planned (and its random draws made) before the UNet runs.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from dataclasses import KW_ONLY, dataclass, field
from typing import ClassVar

import torch
from torch import Tensor


@dataclass(frozen=True)
class Patch:
    """A square latent patch and the checkerboard rolls drawn for its chess mask.

    Args:
        top: first latent row.
        left: first latent column.
        size: side in latent px.
        roll_left: roll the checkerboard one pixel to the left.
        roll_down: roll the checkerboard one pixel down.
    """

    top: int
    left: int
    size: int
    roll_left: bool = False
    roll_down: bool = False

    @property
    def slices(self) -> tuple[slice, slice]:
        """(rows, cols) selecting the patch from an (..., h, w) tensor."""
        return slice(self.top, self.top + self.size), slice(self.left, self.left + self.size)

    def overlaps(self, other: Patch) -> bool:
        return (
            self.top < other.top + other.size
            and other.top < self.top + self.size
            and self.left < other.left + other.size
            and other.left < self.left + self.size
        )


def chess_mask(patch: Patch, device: torch.device | str | None = None) -> Tensor:
    """(size, size) bool checkerboard, True where the guidance replaces the latent.

    The base board is True where ``row + col`` is even; ``roll_left`` rolls it one pixel left
    (``torch.roll`` by -1 on columns) and ``roll_down`` one pixel down (+1 on rows).
    """
    index = torch.arange(patch.size, device=device)
    board = (index[:, None] + index[None, :]) % 2 == 0  # (size, size)
    if patch.roll_left:
        board = board.roll(-1, dims=1)
    if patch.roll_down:
        board = board.roll(1, dims=0)
    return board


def minimum_patches(height: int, width: int, patch_size: int) -> int:
    """ceil(h / p) * ceil(w / p): no placement of p x p patches covers h x w with fewer."""
    return math.ceil(height / patch_size) * math.ceil(width / patch_size)


def grid_offsets(size: int, patch_size: int, min_overlap: int = 0) -> list[int]:
    """Evenly spread patch offsets along one axis, as few as possible.

    The count starts at ceil(size / patch) and grows until neighbours overlap by at least
    ``min_overlap`` px (offsets are rounded, so the smallest overlap is checked exactly).
    """
    if size < patch_size:
        raise ValueError(f"an axis of {size} latent px is smaller than the patch ({patch_size})")
    if size == patch_size:
        return [0]
    count = max(2, math.ceil(size / patch_size))
    while True:
        span = size - patch_size
        offsets = [(i * span + (count - 1) // 2) // (count - 1) for i in range(count)]
        overlap = patch_size - max(b - a for a, b in itertools.pairwise(offsets))
        if overlap >= min_overlap or count > span:
            return offsets
        count += 1


def _draw_rolls(generator: torch.Generator) -> tuple[bool, bool]:
    """Two uniform draws (shift left, then shift down); each rolls the board when below 0.5."""
    left = float(torch.rand(1, generator=generator)) < 0.5
    down = float(torch.rand(1, generator=generator)) < 0.5
    return left, down


# subclasses add their keyword-only settings to these fields; eq=False: compared by identity
@dataclass(eq=False)
class PatchPlanner(ABC):
    """Plans the patches of each step over an ``height x width`` latent.

    Args:
        height: latent height.
        width: latent width.
        patch_size: patch side in latent px (at most height and width).
        batch_size: at most this many disjoint patches per batch (UNet call).
        always_draw_rolls: draw the two checkerboard rolls for every patch, even at steps
            without a chess mask (the official sampler does; it changes the random stream).
    """

    name: ClassVar[str]

    height: int
    width: int
    patch_size: int
    batch_size: int = 1
    _: KW_ONLY
    always_draw_rolls: bool = False

    def __post_init__(self) -> None:
        if self.patch_size > self.height or self.patch_size > self.width:
            raise ValueError(
                f"patch_size ({self.patch_size}) must not exceed the latent size "
                f"({self.height}x{self.width})"
            )

    @abstractmethod
    def plan(self, step: int, *, chess: bool, generator: torch.Generator) -> list[list[Patch]]:
        """The batches of step ``step``; ``chess`` says whether rolls are needed."""

    def _with_rolls(self, patch: Patch, chess: bool, generator: torch.Generator) -> Patch:
        if not (chess or self.always_draw_rolls):
            return patch
        left, down = _draw_rolls(generator)
        return Patch(patch.top, patch.left, patch.size, left, down)


@dataclass(eq=False)
class GridPlanner(PatchPlanner):
    """A deterministic grid with the minimum number of patches per step, staggered when needed.

    The even-step grid has ``ceil(size / p)`` evenly spread patches per axis. Where an axis is
    an exact multiple of the patch (2048 px = 2 x 1024 px for SDXL) neighbours do not overlap,
    so no pixel is ever reverted or band-averaged there and the seams would stay in place for
    every step. On such axes (overlap below ``stagger_below`` px) odd steps use a grid shifted
    by half a patch, with one patch more (the edge patches clamped inside): every even-step
    seam then lies in the middle of an odd-step patch. Batches group pairwise-disjoint patches
    (greedy first fit in row-major order, at most ``batch_size`` each); odd steps run their
    batches in reverse order so the seam bands are averaged from alternating sides. The
    arguments not listed below are :class:`PatchPlanner`'s.

    Args:
        min_overlap: see :func:`grid_offsets`.
        stagger_below: stagger the axes whose grid neighbours overlap by fewer latent px
            (0 = never stagger).
    """

    name = "grid"

    _: KW_ONLY
    min_overlap: int = 0
    stagger_below: int = 0
    layouts: tuple[list[list[Patch]], ...] = field(init=False, repr=False)  # even, odd steps

    def __post_init__(self) -> None:
        super().__post_init__()
        height, width, size = self.height, self.width, self.patch_size
        rows = grid_offsets(height, size, self.min_overlap)
        cols = grid_offsets(width, size, self.min_overlap)
        odd_rows = staggered_offsets(rows, height, size, self.stagger_below)
        odd_cols = staggered_offsets(cols, width, size, self.stagger_below)
        self.layouts = tuple(
            _first_fit_batches([Patch(top, left, size) for top in r for left in c], self.batch_size)
            for r, c in ((rows, cols), (odd_rows, odd_cols))
        )

    def plan(self, step: int, *, chess: bool, generator: torch.Generator) -> list[list[Patch]]:
        order = self.layouts[0] if step % 2 == 0 else self.layouts[1][::-1]
        return [[self._with_rolls(p, chess, generator) for p in batch] for batch in order]


def staggered_offsets(
    offsets: list[int], size: int, patch_size: int, stagger_below: int
) -> list[int]:
    """Odd-step offsets of one axis: ``offsets`` shifted by half a patch plus both edge patches
    when neighbours overlap by fewer than ``stagger_below`` px, else ``offsets`` unchanged."""
    if len(offsets) < 2:
        return offsets
    overlap = patch_size - max(b - a for a, b in itertools.pairwise(offsets))
    if overlap >= stagger_below:
        return offsets
    shifted = [offset + patch_size // 2 for offset in offsets[:-1]]
    return sorted({0, *shifted, size - patch_size})


def _first_fit_batches(patches: list[Patch], batch_size: int) -> list[list[Patch]]:
    batches: list[list[Patch]] = []
    for patch in patches:
        for batch in batches:
            if len(batch) < batch_size and not any(patch.overlaps(q) for q in batch):
                batch.append(patch)
                break
        else:
            batches.append([patch])
    return batches


@dataclass(eq=False)
class RandomPlanner(PatchPlanner):
    """The paper's placement: the next centre is a random not-yet-denoised pixel.

    The centre is clamped so the patch lies inside the latent. Consecutive patches that are
    disjoint from the open batch join it (same result as running them one by one). The
    arguments not listed below are :class:`PatchPlanner`'s.

    Args:
        permutation_draw: draw the centre as the first element of a random permutation of all
            pending pixels (row-major), as the official code; O(h w) per patch. Otherwise one
            ``randint`` picks it (same distribution, O(h + w) per patch).
    """

    name = "random"

    _: KW_ONLY
    permutation_draw: bool = False

    def _draw_index(self, count: int, generator: torch.Generator) -> int:
        if self.permutation_draw:
            return int(torch.randperm(count, generator=generator)[0])
        return int(torch.randint(count, (1,), generator=generator))

    def plan(self, step: int, *, chess: bool, generator: torch.Generator) -> list[list[Patch]]:
        height, width, size = self.height, self.width, self.patch_size
        half = size // 2
        pending = torch.ones(height, width, dtype=torch.bool)  # (h, w)
        row_counts = torch.full((height,), width, dtype=torch.int64)  # pending pixels per row
        remaining = height * width
        batches: list[list[Patch]] = []
        while remaining > 0:
            index = self._draw_index(remaining, generator)
            cumulative = row_counts.cumsum(0)
            row = int(torch.searchsorted(cumulative, index, right=True))
            before = int(cumulative[row - 1]) if row > 0 else 0
            col = int(pending[row].nonzero()[index - before, 0])
            top = min(max(row, half), height - size + half) - half
            left = min(max(col, half), width - size + half) - half
            patch = self._with_rolls(Patch(top, left, size), chess, generator)
            rows, cols = patch.slices
            cleared = pending[rows, cols].sum(1)  # (size,) pending pixels per patch row
            pending[rows, cols] = False
            row_counts[rows] -= cleared
            remaining -= int(cleared.sum())
            open_batch = batches[-1] if batches else None
            if (
                open_batch is not None
                and len(open_batch) < self.batch_size
                and not any(patch.overlaps(q) for q in open_batch)
            ):
                open_batch.append(patch)
            else:
                batches.append([patch])
        return batches


def make_planner(
    name: str,
    height: int,
    width: int,
    patch_size: int,
    *,
    batch_size: int,
    faithful: bool,
    min_overlap: int = 0,
    stagger_below: int = 0,
) -> PatchPlanner:
    """The planner ``name`` ("grid" or "random") for one stage."""
    if name == "grid":
        return GridPlanner(
            height,
            width,
            patch_size,
            batch_size,
            min_overlap=min_overlap,
            stagger_below=stagger_below,
        )
    if name == "random":
        return RandomPlanner(
            height,
            width,
            patch_size,
            batch_size,
            permutation_draw=faithful,
            always_draw_rolls=faithful,
        )
    raise ValueError(f"patch_scheduler must be one of 'grid', 'random', got {name!r}")
