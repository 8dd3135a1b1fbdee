"""The task records (semanir.tasks): each record's values, and every --task of the CLI served."""

from __future__ import annotations

import pytest
import torch

from common_kernels.runtime.errors import InvalidArgument
from semanir import bundled
from semanir.commands import eval_parser, restore_parser
from semanir.data.datasets import index_generator
from semanir.data.degradations import (
    Box,
    add_gaussian_noise,
    bayer_mosaic,
    bicubic_downscale,
    jpeg_compress,
)
from semanir.tasks import (
    COMMAND_LINE_TASKS,
    QUALITY,
    SIGMA,
    SYNTHETIC_TASKS,
    TASKS,
    check_levels,
    check_scale,
    get_task,
)

# name: (level, scales, channels, y_channel, crop_border, upscales, bundled, command line)
RECORDS = {
    "denoise": (SIGMA, (1,), ("gray", "rgb"), False, False, False,
                ("semanir_tiny_denoise_gray", "semanir_tiny_denoise_color"), True),
    "jpeg": (QUALITY, (1,), ("gray", "rgb"), True, False, False, ("semanir_tiny_jpeg_gray",), True),
    "sr": (None, (2, 3, 4), ("gray", "rgb"), True, True, True, ("semanir_tiny_sr_x4",), True),
    "demosaic": (None, (1,), ("rgb",), False, False, False, (), False),
    "paired": (None, None, ("gray", "rgb"), False, False, False, (), False),
}  # fmt: skip


@pytest.mark.parametrize("name", list(RECORDS))
def test_each_record_holds_its_rules(name: str) -> None:
    task = get_task(name)
    level, scales, channels, y_channel, crop_border, upscales, defaults, offered = RECORDS[name]
    assert task.name == name
    assert task.level is level and task.scales == scales and task.channels == channels
    assert (task.y_channel, task.crop_border, task.upscales) == (y_channel, crop_border, upscales)
    assert task.bundled == defaults and task.command_line is offered


def test_the_metric_conventions() -> None:
    """The Y channel for colour JPEG and SR only; SR crops a border of its scale."""
    assert TASKS["sr"].metric_options(3, 4) == {"y_channel": True, "crop_border": 4}
    assert TASKS["sr"].metric_options(1, 2) == {"y_channel": False, "crop_border": 2}
    assert TASKS["jpeg"].metric_options(3, 1) == {"y_channel": True, "crop_border": 0}
    assert TASKS["denoise"].metric_options(3, 1) == {"y_channel": False, "crop_border": 0}
    assert TASKS["paired"].metric_options(3, 2) == {"y_channel": False, "crop_border": 0}


def test_the_levels_and_task_lists() -> None:
    assert (SIGMA.name, SIGMA.range_name, SIGMA.val_name) == ("sigma", "sigma_range", "val_sigma")
    assert (SIGMA.limits, SIGMA.span) == ((0.0, 255.0), "in [0, 255]")
    assert (QUALITY.limits, QUALITY.span) == ((1, 95), "an integer in [1, 95]")
    assert QUALITY.within(40) and not QUALITY.within(40.5) and not SIGMA.within(-1)
    assert COMMAND_LINE_TASKS == ("denoise", "jpeg", "sr")
    assert SYNTHETIC_TASKS == ("denoise", "jpeg", "sr", "demosaic")
    assert TASKS["paired"].degrade is None


def test_every_task_of_the_command_line_has_a_record_and_its_bundled_defaults() -> None:
    """``--task`` of restore and eval offers exactly the command-line records; each names its
    bundled defaults (an entry of the bundled table of that task, installed), or none."""
    for parser in (restore_parser(), eval_parser()):
        (action,) = [action for action in parser._actions if action.dest == "task"]
        assert tuple(action.choices) == COMMAND_LINE_TASKS
    for name, task in TASKS.items():
        for model in task.bundled:
            entry = bundled.bundled_model(model)
            assert entry.task == name and entry.scale in (task.scales or (entry.scale,)), model
        assert task.bundled or not task.command_line, f"{name}: offered without a bundled model"
    listed = {entry.name for entry in bundled.BUNDLED_MODELS.values()}
    assert listed == {model for task in TASKS.values() for model in task.bundled}
    assert bundled.model_for_task("denoise", "rgb").name == "semanir_tiny_denoise_color"
    assert bundled.model_for_task("jpeg", "rgb").name == "semanir_tiny_jpeg_gray"


def test_each_degradation_is_the_one_named() -> None:
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    box = Box(4, 0, 8, 12)
    crop = image[:, 4:12, 0:12]
    settings = {"sigma": 25.0, "quality": 30, "scale": 4, "bayer_pattern": "GRBG"}

    def degraded(name: str) -> torch.Tensor:
        return TASKS[name].degrade(image, box, settings, index_generator(0, 1))

    noise = add_gaussian_noise(crop, 25.0, index_generator(0, 1))
    assert torch.equal(degraded("denoise"), noise)
    assert torch.equal(degraded("jpeg"), jpeg_compress(crop, 30))
    assert torch.allclose(degraded("sr"), bicubic_downscale(image, 4)[:, 1:3, 0:3], atol=1e-6)
    assert torch.equal(degraded("demosaic"), bayer_mosaic(crop, "GRBG"))


@pytest.mark.parametrize(
    ("task", "scale", "message"),
    [
        ("sr", 8, "scale: task 'sr' needs 2, 3 or 4, got 8"),
        ("sr", None, "scale: task 'sr' needs 2, 3 or 4, got None"),
        ("denoise", 2, "scale: applies to tasks 'sr' and 'paired', not 'denoise'"),
        ("paired", 0, "scale: must be an integer >= 1, got 0"),
    ],
)
def test_scale_checks(task: str, scale: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_scale(get_task(task), scale)
    assert str(caught.value) == message
    for good, value in (("sr", 3), ("denoise", None), ("denoise", 1), ("paired", 5)):
        check_scale(get_task(good), value)


def test_level_checks_name_the_argument() -> None:
    cases = [
        ("jpeg", {"sigma": 5}, "sigma: applies to task 'denoise' only, not 'jpeg'"),
        ("sr", {"val_quality": 20}, "val_quality: applies to task 'jpeg' only, not 'sr'"),
        ("jpeg", {}, "quality_range: task 'jpeg' needs quality (fixed) or quality_range (drawn)"),
        ("jpeg", {"quality": 9.5}, "quality: must be an integer in [1, 95], got 9.5"),
        ("denoise", {"sigma_range": (9, 1)}, "sigma_range: must be [low, high] with low <= high, "
         "each in [0, 255], got [9, 1]"),
    ]  # fmt: skip
    for task, given, message in cases:
        with pytest.raises(InvalidArgument) as caught:
            check_levels(get_task(task), given, training=True, validating=False)
        assert str(caught.value) == message
    check_levels(get_task("denoise"), {"val_sigma": 25}, training=False, validating=True)
    with pytest.raises(InvalidArgument, match="task: must be one of denoise, jpeg, sr, got 'x'"):
        get_task("x", among=COMMAND_LINE_TASKS)
