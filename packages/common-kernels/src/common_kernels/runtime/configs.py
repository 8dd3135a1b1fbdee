"""Dataclass configs that round-trip through plain dicts (JSON/YAML), refusing unknown keys."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

ConfigT = TypeVar("ConfigT", bound="DictConfig")


class DictConfig:
    """Mixin for a ``@dataclass`` config: :meth:`to_dict` and its inverse :meth:`from_dict`.

    ``from_dict`` refuses keys that are not fields (a misspelt option must not be dropped
    silently) and leaves every value check to the dataclass's ``__post_init__``.
    """

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields (tuples become lists when dumped)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` listing the known."""
        names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(names)}")
        return cls(**data)
