# ruff: noqa: E501
"""Region footprints on the patch grid under resize / centre crop / pad, against hand-computed grids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitron.geometry import apply_geometry, plan_geometry
from vitron.regions import (
    Box,
    Mask,
    RegionError,
    Stroke,
    model_box,
    parse_box,
    patch_coverage,
    region_mask_at,
    shape_from_json,
)

H, W, SIZE, GRID = 40, 80, 32, 4  # a wide 40x80 image into a 32x32 frame of 8x8 patches


def grid(rows: dict[int, list[float]]) -> torch.Tensor:
    out = torch.zeros(GRID, GRID, dtype=torch.float64)
    for r, values in rows.items():
        out[r, : len(values)] = torch.tensor(values, dtype=torch.float64)
    return out


def box_mask(x1: int, y1: int, x2: int, y2: int) -> Mask:
    values = torch.zeros(H, W, dtype=torch.float64)
    values[y1:y2, x1:x2] = 1.0
    return Mask(values)


@pytest.mark.parametrize(
    ("mode", "box", "expected"),
    [
        # resize: x * 0.4, y * 0.8 -> x 0..16, y 0..8: top row, two left patches (not transposed)
        ("resize", (0, 0, 40, 10), grid({0: [1, 1, 0, 0]})),
        # centre crop: resize to 32x64 (x0.8), crop 16 px from the left: x 0..16, y 8..24
        ("center_crop", (20, 10, 40, 30), grid({1: [1, 1], 2: [1, 1]})),
        # half of the box is cropped away: x -8..8 -> first column; y 0..4 -> half a row
        ("center_crop", (10, 0, 30, 5), grid({0: [0.5]})),
        # pad: pad to 80x80 (20 px on top), scale 0.4: the whole image is rows 1-2
        ("pad", (0, 0, 80, 40), grid({1: [1, 1, 1, 1], 2: [1, 1, 1, 1]})),
        # x 0..4, y 8..12: a quarter of patch (1, 0)
        ("pad", (0, 0, 10, 10), grid({1: [0.25]})),
    ],
)
def test_box_coverage_matches_hand_computed(mode, box, expected):
    geometry = plan_geometry(H, W, SIZE, mode)
    coverage = patch_coverage(Box(*box), geometry, GRID)
    torch.testing.assert_close(coverage, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["resize", "center_crop", "pad"])
@pytest.mark.parametrize("box", [(20, 10, 40, 30), (22, 0, 31, 10), (35, 3, 80, 17)])
def test_pixel_aligned_mask_equals_box(mode, box):
    geometry = plan_geometry(H, W, SIZE, mode)
    expected = patch_coverage(Box(*box), geometry, GRID)
    torch.testing.assert_close(
        patch_coverage(box_mask(*box), geometry, GRID), expected, rtol=0, atol=1e-12
    )


def test_geometry_maps_both_ways_and_boxes():
    g = plan_geometry(H, W, SIZE, "pad")
    assert (g.scale_x, g.scale_y, g.offset_x, g.offset_y, g.pad) == (0.4, 0.4, 0.0, 8.0, (20, 0))
    assert g.to_source(*g.to_model(13.0, 7.0)) == pytest.approx((13.0, 7.0))
    c = plan_geometry(H, W, SIZE, "center_crop")
    assert (c.resized, c.crop, c.offset_x) == ((32, 64), (0, 16), -16.0)
    torch.testing.assert_close(
        model_box(Box(0, 0, 10, 10), g), torch.tensor([0, 0.25, 0.125, 0.375], dtype=torch.float64)
    )
    # a mask's box is its pixel extent
    torch.testing.assert_close(
        model_box(box_mask(0, 0, 10, 10), g), model_box(Box(0, 0, 10, 10), g)
    )


def test_model_box_of_a_cropped_mask_is_the_extent_of_what_stays():
    """Centre crop keeps source x in [20, 60]; an L whose vertical arm (x 0..10, y 0..40) is
    cropped away and whose horizontal arm (y 5..10, x 0..40) is half kept: the box is x 20..40,
    y 5..10 in source pixels, i.e. model x 0..16, y 4..8 (scale 0.8, offset -16)."""
    values = torch.zeros(H, W, dtype=torch.float64)
    values[:, :10] = 1.0
    values[5:10, :40] = 1.0
    g = plan_geometry(H, W, SIZE, "center_crop")
    expected = torch.tensor([0, 4, 16, 8], dtype=torch.float64) / SIZE
    torch.testing.assert_close(model_box(Mask(values), g), expected, rtol=0, atol=1e-12)
    stroke = Stroke(((0.5, 0.5), (0.5, 39.5)), width=2.0)  # the left two columns only
    with pytest.raises(RegionError, match=r"falls outside what the model sees .*center_crop"):
        model_box(stroke, g)


def test_image_and_region_share_geometry():
    """A white block where the box is lands where the coverage says, in every mode."""
    image = torch.zeros(3, H, W)
    image[:, :, :40] = 1.0  # left half white
    for mode in ("resize", "center_crop", "pad"):
        g = plan_geometry(H, W, SIZE, mode)
        framed = apply_geometry(image, g, fill=(0.0, 0.0, 0.0))  # (3, 32, 32)
        patch_means = F.avg_pool2d(framed[:1][None], SIZE // GRID)[0, 0].double()  # (4, 4)
        coverage = patch_coverage(Box(0, 0, 40, 40), g, GRID)
        torch.testing.assert_close(patch_means, coverage, rtol=0, atol=0.06)


def test_apply_geometry_matches_plain_ops():
    torch.manual_seed(0)
    image = torch.rand(3, H, W)
    crop = apply_geometry(image, plan_geometry(H, W, SIZE, "center_crop"), fill=(0.5,) * 3)
    reference = F.interpolate(image[None], size=(32, 64), mode="bicubic", antialias=True)[
        0, :, :, 16:48
    ]
    torch.testing.assert_close(crop, reference)
    padded = apply_geometry(image, plan_geometry(H, W, SIZE, "pad"), fill=(0.1, 0.2, 0.3))
    canvas = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1).repeat(1, 80, 80)
    canvas[:, 20:60] = image
    reference = F.interpolate(canvas[None], size=(32, 32), mode="bicubic", antialias=True)[0]
    torch.testing.assert_close(padded, reference)
    torch.testing.assert_close(padded[:, 0, 0], torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(
        ValueError, match=r"image is \(40, 80\) but the geometry was planned for \(80, 40\)"
    ):
        apply_geometry(image, plan_geometry(80, 40, SIZE, "pad"), fill=(0,) * 3)


def test_stroke_rasterisation_and_source_masks():
    stroke = Stroke(((0.5, 5.5), (9.5, 5.5)), width=1.0)  # along row 5, columns 0-9
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[5, :10] = True
    assert torch.equal(region_mask_at(stroke, H, W), expected)
    dot = Stroke(((20.5, 20.5),), width=3.0)  # one point: a disc of radius 1.5
    assert int(region_mask_at(dot, H, W).sum()) == 9
    box = region_mask_at(Box(2.5, 1, 4, 3), H, W)  # x 2.5..4 covers half of column 2
    assert box[1:3, 2:4].all() and int(box.sum()) == 4


def test_parse_box_pixels_and_normalised():
    assert parse_box("[10, 20, 30, 40]") == Box(10, 20, 30, 40)
    assert parse_box("0.25 0.5 0.75 1", width=80, height=40) == Box(20, 20, 60, 40)
    assert shape_from_json({"image": 0, "box": [0, 0, 0.5, 0.5]}, 40, 80) == Box(0, 0, 40, 20)
    assert shape_from_json({"points": [[1, 2], [3, 4]], "width": 2}) == Stroke(
        ((1, 2), (3, 4)), 2.0
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Box(5, 5, 1, 9), r"box must satisfy x1 < x2 and y1 < y2, got \(5, 5, 1, 9\)"),
        (lambda: Box(0, 0, float("nan"), 1), r"box coordinates must be finite"),
        (lambda: parse_box("1,2,3"), r"box must be four numbers 'x1,y1,x2,y2', got '1,2,3'"),
        (lambda: parse_box("a,b,c,d"), r"box must be four numbers"),
        (lambda: parse_box("0,0,0.5,0.5"), r"is normalised \(all values in \[0, 1\]\); the image size is needed"),
        (lambda: Stroke(()), r"a stroke needs at least one point"),
        (lambda: Stroke(((1, 1),), width=0), r"stroke width must be > 0, got 0"),
        (lambda: Mask(torch.zeros(3, 3)), r"mask is empty"),
        (lambda: Mask(torch.ones(3)), r"a mask must be \(H, W\), got shape \(3,\)"),
        (lambda: Mask(torch.full((2, 2), 2.0)), r"mask values must lie in \[0, 1\]"),
        (lambda: region_mask_at(Mask(torch.ones(4, 4)), H, W), r"mask is \(4, 4\) but its image is \(40, 80\)"),
        (lambda: region_mask_at(Box(100, 0, 120, 10), H, W), r"lies outside the 80x40 image"),
        (lambda: patch_coverage(Box(0, 0, 15, 40), plan_geometry(H, W, SIZE, "center_crop"), GRID), r"falls outside what the model sees .*preprocess='center_crop'"),
        (lambda: shape_from_json({"circle": 1}), r"a region is .*got keys \['circle'\]"),
        (lambda: plan_geometry(4, 4, 8, "stretch"), r"preprocess mode must be one of \('resize', 'center_crop', 'pad'\), got 'stretch'"),
    ],
)  # fmt: skip
def test_region_errors(make, message):
    with pytest.raises((RegionError, ValueError), match=message):
        make()
