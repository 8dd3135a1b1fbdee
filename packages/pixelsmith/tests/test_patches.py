"""Patch planners: coverage, the minimum count, disjoint batches, determinism, official draws."""

from __future__ import annotations

import itertools

import pytest
import torch

from pixelsmith.patches import (
    GridPlanner,
    Patch,
    RandomPlanner,
    chess_mask,
    grid_offsets,
    make_planner,
    minimum_patches,
)


def coverage(batches: list[list[Patch]], height: int, width: int) -> torch.Tensor:
    count = torch.zeros(height, width, dtype=torch.int64)
    for batch in batches:
        for patch in batch:
            count[patch.slices] += 1
    return count


def assert_batches_disjoint(batches: list[list[Patch]]) -> None:
    for batch in batches:
        for i, a in enumerate(batch):
            for b in batch[i + 1 :]:
                assert not a.overlaps(b)


@pytest.mark.parametrize(
    ("size", "patch", "min_overlap", "expected"),
    [
        (256, 128, 0, [0, 128]),  # exact multiple: the minimum has no overlap
        (192, 128, 0, [0, 64]),
        (300, 128, 0, [0, 86, 172]),
        (128, 128, 0, [0]),
        (256, 128, 16, [0, 64, 128]),  # 3 patches for >= 16 px overlap
        (20, 8, 0, [0, 6, 12]),
    ],
)
def test_grid_offsets(size, patch, min_overlap, expected):
    offsets = grid_offsets(size, patch, min_overlap)
    assert offsets == expected
    assert offsets[0] == 0 and offsets[-1] == size - patch
    assert all(b - a <= patch - min_overlap for a, b in itertools.pairwise(offsets))


@pytest.mark.parametrize(("height", "width"), [(256, 192), (512, 512), (1024, 1024), (395, 263)])
def test_grid_reaches_minimum_and_covers(height, width):
    planner = GridPlanner(height, width, 128, batch_size=4)
    batches = planner.plan(0, chess=False, generator=torch.Generator())
    assert sum(len(b) for b in batches) == minimum_patches(height, width, 128)
    assert bool((coverage(batches, height, width) >= 1).all())
    assert_batches_disjoint(batches)
    assert all(len(b) <= 4 for b in batches)


def test_spec_example_grid_vs_minimum():
    # 256x192 latent, patch 128: 4 patches per step (the official random placement needs more)
    assert minimum_patches(256, 192, 128) == 4
    planner = GridPlanner(256, 192, 128, batch_size=1)
    batches = planner.plan(0, chess=False, generator=torch.Generator())
    assert [(p.top, p.left) for b in batches for p in b] == [(0, 0), (0, 64), (128, 0), (128, 64)]


def test_grid_batches_and_step_order():
    planner = GridPlanner(20, 20, 8, batch_size=4, stagger_below=2)  # 0, 6, 12: overlap 2
    even = planner.plan(0, chess=False, generator=torch.Generator())
    odd = planner.plan(1, chess=False, generator=torch.Generator())
    assert [len(b) for b in even] == [4, 2, 2, 1]  # 3x3 grid: parity classes, first fit
    assert odd == even[::-1]  # enough overlap: no stagger, the batches in reverse order
    assert_batches_disjoint(even)


@pytest.mark.parametrize(
    ("size", "even", "odd"),
    [
        (256, [0, 128], [0, 64, 128]),  # 2048 px: seam at 128 -> middle of [64, 192)
        (512, [0, 128, 256, 384], [0, 64, 192, 320, 384]),
        (192, [0, 64], [0, 64]),  # overlap 64 >= band: unchanged
    ],
)
def test_staggered_grid_moves_every_seam_into_a_patch_middle(size, even, odd):
    planner = GridPlanner(size, size, 128, batch_size=4, stagger_below=10)
    steps = [planner.plan(n, chess=False, generator=torch.Generator()) for n in (0, 1, 2)]
    offsets = [sorted({p.top for b in batches for p in b}) for batches in steps]
    assert offsets == [even, odd, even]
    assert sorted({p.left for b in steps[1] for p in b}) == odd  # both axes
    for batches in steps:
        assert bool((coverage(batches, size, size) >= 1).all())
        assert_batches_disjoint(batches)
    if odd != even:  # each even-step seam lies half a patch inside an odd-step patch
        for seam in even[1:]:
            assert any(top + 64 == seam for top in odd)
    plain = GridPlanner(size, size, 128, batch_size=4, stagger_below=0)
    assert (
        sum(len(b) for b in plain.plan(1, chess=False, generator=torch.Generator()))
        == len(even) ** 2
    )


def test_grid_rolls_are_drawn_only_with_chess():
    planner = GridPlanner(24, 24, 8)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    plain = planner.plan(0, chess=False, generator=gen)
    assert torch.equal(gen.get_state(), state)  # no draw
    assert not any(p.roll_left or p.roll_down for b in plain for p in b)
    a = planner.plan(0, chess=True, generator=torch.Generator().manual_seed(3))
    b = planner.plan(0, chess=True, generator=torch.Generator().manual_seed(3))
    assert a == b
    reference = torch.Generator().manual_seed(3)
    rolls = [(float(torch.rand(1, generator=reference)) < 0.5) for _ in range(18)]
    assert [(p.roll_left, p.roll_down) for bt in a for p in bt] == list(
        zip(rolls[::2], rolls[1::2], strict=True)
    )


@pytest.mark.parametrize("permutation_draw", [False, True])
def test_random_planner_covers_deterministically(permutation_draw):
    planner = RandomPlanner(24, 20, 8, batch_size=3, permutation_draw=permutation_draw)
    a = planner.plan(0, chess=True, generator=torch.Generator().manual_seed(0))
    b = planner.plan(0, chess=True, generator=torch.Generator().manual_seed(0))
    c = planner.plan(0, chess=True, generator=torch.Generator().manual_seed(1))
    assert a == b and a != c
    assert bool((coverage(a, 24, 20) >= 1).all())
    assert_batches_disjoint(a)
    assert all(0 <= p.top <= 16 and 0 <= p.left <= 12 for bt in a for p in bt)


def test_random_planner_official_draws():
    """Faithful draws: randperm over pending pixels (row-major), centre clamp, two uniforms."""
    height, width, size = 20, 18, 8
    planner = RandomPlanner(
        height, width, size, permutation_draw=True, always_draw_rolls=True, batch_size=1
    )
    batches = planner.plan(0, chess=False, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    pending = torch.ones(height, width, dtype=torch.bool)
    expected = []
    while pending.any():
        positions = pending.nonzero()  # row-major
        i, j = positions[torch.randperm(len(positions), generator=gen)[0]].tolist()
        i = min(max(i, 4), height - 4)
        j = min(max(j, 4), width - 4)
        left = float(torch.rand(1, generator=gen)) < 0.5
        down = float(torch.rand(1, generator=gen)) < 0.5
        expected.append(Patch(i - 4, j - 4, size, left, down))
        pending[i - 4 : i + 4, j - 4 : j + 4] = False
    assert [b[0] for b in batches] == expected
    assert all(len(b) == 1 for b in batches)


def test_random_default_draw_is_one_randint_per_patch():
    planner = RandomPlanner(16, 16, 8, batch_size=1)
    batches = planner.plan(0, chess=False, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    pending = torch.ones(16, 16, dtype=torch.bool)
    for (patch,) in batches:
        positions = pending.nonzero()
        i, j = positions[int(torch.randint(len(positions), (1,), generator=gen))].tolist()
        assert (patch.top, patch.left) == (min(max(i, 4), 12) - 4, min(max(j, 4), 12) - 4)
        pending[patch.slices] = False


def test_chess_mask_rolls():
    board = chess_mask(Patch(0, 0, 4))
    assert board.tolist()[0] == [True, False, True, False]
    assert torch.equal(chess_mask(Patch(0, 0, 4, roll_left=True)), board.roll(-1, 1))
    assert torch.equal(chess_mask(Patch(0, 0, 4, roll_down=True)), board.roll(1, 0))
    assert torch.equal(chess_mask(Patch(0, 0, 4, True, True)), board)  # two parity flips
    assert int(board.sum()) == 8


def test_planner_errors():
    with pytest.raises(ValueError, match=r"patch_size \(16\) must not exceed the latent size"):
        GridPlanner(12, 40, 16)
    with pytest.raises(ValueError, match="patch_scheduler must be one of 'grid', 'random'"):
        make_planner("spiral", 16, 16, 8, batch_size=1, faithful=False)
    with pytest.raises(ValueError, match="smaller than the patch"):
        grid_offsets(6, 8)
