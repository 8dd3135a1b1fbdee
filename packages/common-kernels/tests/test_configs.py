"""common_kernels.runtime.configs: the dict round trip of dataclass configs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from common_kernels.runtime.configs import DictConfig


@dataclasses.dataclass(frozen=True)
class Example(DictConfig):
    width: int = 4
    sizes: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")


def test_round_trip_through_json() -> None:
    config = Example(width=7, sizes=(3,))
    data = json.loads(json.dumps(config.to_dict()))
    assert data == {"width": 7, "sizes": [3]}
    assert Example.from_dict({**data, "sizes": tuple(data["sizes"])}) == config


def test_unknown_keys_are_listed_with_the_known() -> None:
    with pytest.raises(ValueError) as error:
        Example.from_dict({"width": 2, "depth": 3, "colour": 1})
    assert str(error.value) == (
        "unknown Example fields ['colour', 'depth']; known: ['sizes', 'width']"
    )


def test_value_checks_stay_the_dataclass_s() -> None:
    with pytest.raises(ValueError, match=r"^width must be >= 1, got 0$"):
        Example.from_dict({"width": 0})
