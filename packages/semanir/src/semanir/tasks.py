"""The restoration tasks: one record per task, read by every part of semanir that depends on one.

A :class:`Task` says how a clean image becomes the model's input (its degradation), which
options it takes and their ranges (the level of the degradation, the scale, the channels), how
results are scored (the BT.601 Y channel, a border crop) and which bundled models restore it
when no model is named. The command line (``--task``), evaluation (:mod:`semanir.evaluation`),
the datasets and the data module (:mod:`semanir.data`), the Lightning module's metrics and the
bundled registry (:mod:`semanir.bundled`) all read :data:`TASKS`: a new task is one entry there
(with its degradation function in :mod:`semanir.data.degradations` when it is a new one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Literal

from torch import Generator, Tensor

from common_kernels.runtime.errors import InvalidArgument, literal
from semanir.data.degradations import (
    QUALITY_RANGE,
    SIGMA_RANGE,
    SR_SCALES,
    Box,
    add_gaussian_noise,
    bayer_mosaic,
    check_quality,
    check_sigma,
    crop,
    downscale_crop,
    jpeg_compress,
    sample_quality,
    sample_sigma,
)

CHANNELS = ("gray", "rgb")
# (image, box, settings, generator) -> the degraded crop ``box`` of the clean (C, H, W) image;
# settings: the item's level ("sigma"/"quality", fixed or drawn), "scale" and "bayer_pattern"
Degrade = Callable[[Tensor, Box, Mapping[str, Any], Generator], Tensor]


@dataclass(frozen=True)
class Level:
    """The option that sets how strong a task's degradation is: fixed (``sigma``), drawn per
    image from a range (``sigma_range``) in training, and its own value in validation
    (``val_sigma``).

    Args:
        name: the fixed value's argument (``"sigma"``).
        limits: the accepted (lowest, highest) values.
        integer: values must be integers.
        meaning: what it is, in words, with its range (for messages).
        check: returns a value within ``limits`` (converted), else raises.
        sample: draws a value from a (low, high) range with a generator.
    """

    name: str
    limits: tuple[float, float]
    integer: bool
    meaning: str
    check: Callable[[Any], Any]
    sample: Callable[[tuple, Generator], Any]

    @property
    def range_name(self) -> str:
        return f"{self.name}_range"

    @property
    def val_name(self) -> str:
        return f"val_{self.name}"

    @property
    def span(self) -> str:
        """The accepted values in words (``"in [0, 255]"``)."""
        low, high = self.limits
        return f"an integer in [{low}, {high}]" if self.integer else f"in [{low:g}, {high:g}]"

    def within(self, value: object) -> bool:
        low, high = self.limits
        return low <= value <= high and (not self.integer or int(value) == value)


SIGMA = Level(
    "sigma", SIGMA_RANGE, False, "the noise level (0-255)", check_sigma, sample_sigma
)  # fmt: skip
QUALITY = Level(
    "quality", QUALITY_RANGE, True, "the JPEG quality (1-95)", check_quality, sample_quality
)  # fmt: skip
LEVELS = (SIGMA, QUALITY)


@dataclass(frozen=True)
class Task:
    """One restoration task.

    Args:
        name: its name (``--task``, ``data.task``).
        degrade: how a clean image becomes the input (:data:`Degrade`); None: degraded images
            are read from folders ("paired").
        level: the option that sets the degradation's strength (None: it takes none).
        scales: the accepted clean / input size ratios; None: any integer >= 1 (paired data).
        channels: the image channels it takes ("gray", "rgb").
        y_channel: colour results are scored on their BT.601 Y channel (else on RGB).
        crop_border: a border of ``scale`` pixels is left out of the scores.
        bundled: the bundled models that restore it when no model is named, preferred first
            (the first of the image's channels wins); empty: none ships.
        command_line: offered by ``semanir restore`` and ``semanir eval`` (``--task``).
    """

    name: str
    degrade: Degrade | None
    level: Level | None
    scales: tuple[int, ...] | None
    channels: tuple[str, ...]
    y_channel: bool
    crop_border: bool
    bundled: tuple[str, ...]
    command_line: bool

    @property
    def upscales(self) -> bool:
        """Its models make the image larger (the input is smaller than the clean image)."""
        return self.scales is not None and max(self.scales) > 1

    def metric_options(self, channels: int, scale: int) -> dict[str, Any]:
        """The PSNR/SSIM conventions (:mod:`semanir.metrics`) of images with ``channels``
        channels restored ``scale`` times larger."""
        return {
            "y_channel": self.y_channel and channels == 3,
            "crop_border": scale if self.crop_border else 0,
        }


def _add_noise(
    image: Tensor, box: Box, settings: Mapping[str, Any], generator: Generator
) -> Tensor:
    """White Gaussian noise of standard deviation sigma / 255, unclipped."""
    return add_gaussian_noise(crop(image, box), settings["sigma"], generator)


def _compress(image: Tensor, box: Box, settings: Mapping[str, Any], generator: Generator) -> Tensor:
    """Pillow's JPEG at a quality (4:2:0 chroma subsampling for colour)."""
    return jpeg_compress(crop(image, box), settings["quality"])


def _downscale(
    image: Tensor, box: Box, settings: Mapping[str, Any], generator: Generator
) -> Tensor:
    """MATLAB's bicubic downscaling by the scale (antialiased)."""
    return downscale_crop(image, box, settings["scale"])


def _mosaic(image: Tensor, box: Box, settings: Mapping[str, Any], generator: Generator) -> Tensor:
    """A Bayer mosaic: one colour kept per pixel."""
    return bayer_mosaic(crop(image, box), settings["bayer_pattern"])


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "denoise", _add_noise, SIGMA, (1,), CHANNELS, y_channel=False, crop_border=False,
            bundled=("semanir_tiny_denoise_gray", "semanir_tiny_denoise_color"),
            command_line=True,
        ),
        Task(
            "jpeg", _compress, QUALITY, (1,), CHANNELS, y_channel=True, crop_border=False,
            bundled=("semanir_tiny_jpeg_gray",), command_line=True,
        ),
        Task(
            "sr", _downscale, None, SR_SCALES, CHANNELS, y_channel=True, crop_border=True,
            bundled=("semanir_tiny_sr_x4",), command_line=True,
        ),
        Task(
            "demosaic", _mosaic, None, (1,), ("rgb",), y_channel=False, crop_border=False,
            bundled=(), command_line=False,
        ),
        Task(
            "paired", None, None, None, CHANNELS, y_channel=False, crop_border=False,
            bundled=(), command_line=False,
        ),
    )
}  # fmt: skip
COMMAND_LINE_TASKS = tuple(name for name, task in TASKS.items() if task.command_line)
SYNTHETIC_TASKS = tuple(name for name, task in TASKS.items() if task.degrade is not None)
TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]


def get_task(name: object, among: Iterable[str] | None = None) -> Task:
    """The record of the task called ``name``.

    Args:
        name: the task's name.
        among: the task names the caller serves (None: every task).

    Raises:
        InvalidArgument: (``task``) no such task among them.
    """
    check_choice("task", name, tuple(TASKS if among is None else among))
    return TASKS[name]


def check_choice(argument: str, value: object, choices: Sequence[str]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        got = f"must be one of {', '.join(choices)}, got {value!r}"
        raise InvalidArgument(argument, literal(got))


def tasks_taking(what: Callable[[Task], bool]) -> str:
    """The tasks for which ``what`` holds, for messages (``"task 'sr'"``, ``"tasks 'sr' and
    'paired'"``)."""
    names = [repr(name) for name, task in TASKS.items() if what(task)]
    if len(names) == 1:
        return f"task {names[0]}"
    return f"tasks {', '.join(names[:-1])} and {names[-1]}"


def check_channels(task: Task, channels: object) -> None:
    """``channels`` must be ``"gray"`` or ``"rgb"``, and one the task takes."""
    check_choice("channels", channels, CHANNELS)
    if channels not in task.channels:
        raise InvalidArgument(
            "channels", f"task {task.name!r} needs {' or '.join(map(repr, task.channels))}, got "
            f"{channels!r}",
        )  # fmt: skip


def check_scale(task: Task, scale: object) -> None:
    """The scale of a task: one of its ``scales`` for super-resolution, any integer >= 1 (or
    None) for paired data, None or 1 for the same-size tasks."""
    if task.scales is None:
        if scale is not None:
            check_integer("scale", scale, 1)
    elif not task.upscales:
        if scale not in (None, 1):
            takers = tasks_taking(lambda other: other.scales is None or other.upscales)
            raise InvalidArgument("scale", f"applies to {takers}, not {task.name!r}")
    elif scale not in task.scales:
        *first, last = task.scales
        raise InvalidArgument(
            "scale", f"task {task.name!r} needs {', '.join(map(str, first))} or {last}, got "
            f"{scale!r}",
        )  # fmt: skip


def check_integer(name: str, value: object, low: int) -> None:
    """``value`` must be an integer (not a bool) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise InvalidArgument(name, f"must be an integer >= {low}, got {value!r}")


def check_levels(
    task: Task, given: Mapping[str, object], *, training: bool, validating: bool
) -> None:
    """The degradation levels of a task (:data:`LEVELS`: ``sigma``, ``quality``, their ranges
    and validation values): within their limits; training needs a fixed value or a (low, high)
    range, not both, validation one of these or its own value; the other tasks take none.

    Args:
        task: the task.
        given: the level arguments by name (absent or None: not given).
        training: training images are given.
        validating: validation images are given.
    """
    for level in LEVELS:
        value, bounds = given.get(level.name), given.get(level.range_name)
        val_value = given.get(level.val_name)
        if level is not task.level:
            for argument in (level.name, level.range_name, level.val_name):
                if given.get(argument) is not None:
                    users = tasks_taking(lambda other, level=level: other.level is level)
                    raise InvalidArgument(argument, f"applies to {users} only, not {task.name!r}")
            continue
        name, range_name = level.name, level.range_name
        if value is not None and bounds is not None:
            raise InvalidArgument(name, f"give {{{name}}} or {{{range_name}}}, not both")
        if value is None and bounds is None and (training or (validating and val_value is None)):
            raise InvalidArgument(
                range_name,
                f"task {task.name!r} needs {{{name}}} (fixed) or {{{range_name}}} (drawn)",
            )
        for argument, number in ((name, value), (level.val_name, val_value)):
            if number is not None and not level.within(number):
                raise InvalidArgument(argument, f"must be {level.span}, got {number!r}")
        if bounds is not None and not _is_range(bounds, level):
            raise InvalidArgument(
                range_name,
                f"must be [low, high] with low <= high, each {level.span}, got {list(bounds)}",
            )


def _is_range(bounds: Sequence[Any], level: Level) -> bool:
    return len(bounds) == 2 and all(map(level.within, bounds)) and bounds[0] <= bounds[1]
