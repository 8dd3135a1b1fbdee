"""The one bad-argument contract (``common_kernels.runtime.errors``): what Python users read,
what a command line prints with its flags, and what survives pickling (worker processes)."""

from __future__ import annotations

import pickle

import pytest

from common_kernels.runtime.cli import check_device
from common_kernels.runtime.errors import (
    InvalidArgument,
    InvalidValue,
    MissingPath,
    argument_errors,
    literal,
    shown,
)

FLAGS = {"stride": "--stride", "crop": "--crop", "allow_large": "--allow-large",
         "patch_scheduler": "--scheduler", "device": "--device"}  # fmt: skip


def test_an_invalid_argument_is_shown_after_its_argument() -> None:
    error = InvalidArgument("stride", "must be <= {crop}, got 500", mentions={"crop": "crop=224"})
    assert isinstance(error, ValueError)
    assert str(error) == "stride: must be <= crop=224, got 500"
    assert error.message == "must be <= crop=224, got 500"
    assert error.for_flags(FLAGS) == "--stride: must be <= --crop, got 500"


def test_an_invalid_value_names_its_argument_in_place() -> None:
    error = InvalidValue("stride", "{stride} must be in [1, {crop}], got 0")
    assert isinstance(error, InvalidArgument)
    assert str(error) == "stride must be in [1, crop], got 0"
    assert error.for_flags(FLAGS) == "--stride must be in [1, --crop], got 0"
    assert error.for_flags({}) == str(error)


def test_settings_are_spelt_as_python_or_as_flags() -> None:
    error = InvalidValue(
        "patch_scheduler", "{patch_scheduler='grid'} needs {allow_large=True} above 4096 px"
    )
    assert str(error) == "patch_scheduler='grid' needs allow_large=True above 4096 px"
    assert error.for_flags(FLAGS) == "--scheduler grid needs --allow-large above 4096 px"


def test_literal_text_keeps_its_braces() -> None:
    error = InvalidValue("stride", shown("stride", "{odd}") + " is not a number")
    assert shown("stride", "{odd}") == "{stride} {{odd}}"
    assert literal("a{b}") == "a{{b}}"
    assert str(error) == "stride {odd} is not a number"
    assert error.for_flags(FLAGS) == "--stride {odd} is not a number"


@pytest.mark.parametrize(
    "error",
    [
        InvalidArgument("stride", "must be >= 1, got 0", mentions={"crop": "crop=1"}),
        InvalidValue("stride", "{stride} must be >= 1, got 0"),
        MissingPath("stride", "no file ./x"),
    ],
    ids=["argument", "value", "missing"],
)
def test_errors_survive_pickling(error: InvalidArgument) -> None:
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert (again.argument, again.template, again.mentions, str(again)) == (
        error.argument, error.template, error.mentions, str(error),
    )  # fmt: skip


def test_a_missing_path_is_a_file_not_found_error_too() -> None:
    error = MissingPath("vae", "no VAE folder ./x")
    assert isinstance(error, FileNotFoundError) and isinstance(error, InvalidArgument)
    assert error.for_flags({"vae": "--vae"}) == "--vae: no VAE folder ./x"


def test_argument_errors_words_a_runtime_rule_in_the_apis_terms() -> None:
    with pytest.raises(InvalidValue) as caught, argument_errors("device"):
        check_device("tpu", "device")
    assert str(caught.value).startswith("device tpu")
    assert caught.value.for_flags(FLAGS).startswith("--device tpu")
    with pytest.raises(ValueError, match=r"^other$"), argument_errors("device"):
        raise ValueError("other")  # not the rule's message: passed on unchanged
