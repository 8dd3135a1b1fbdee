"""Per-dataset settings of the official configs and the class lists shipped with the package."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class Preset:
    """Inference settings of one benchmark dataset (ViT-B/16, official configs).

    Args:
        short_side: images are resized so their short side is this (long side <= 2048).
        lam: weight of the first image-engineering category.
        alpha: weight of the auxiliary text.
        aux: auxiliary text kind, ``"definition"`` or ``"synonym"``.
        logit_scale: softmax temperature over the queries.
        prob_thd: pixels with a lower max probability become background.
        area_thd: area threshold (share of the non-background area), ``None`` = off.
    """

    short_side: int
    lam: float
    alpha: float
    aux: str
    logit_scale: float
    prob_thd: float
    area_thd: float | None = None


PRESETS: dict[str, Preset] = {
    "coco_stuff": Preset(448, 0.75, 0.2, "definition", 40.0, 0.0),
    "coco_object": Preset(336, 0.75, 0.1, "synonym", 50.0, 0.1),
    "voc21": Preset(336, 0.7, 0.05, "definition", 60.0, 0.1, 0.1),
    "context60": Preset(336, 0.75, 0.15, "definition", 55.0, 0.1),
    "cityscapes": Preset(560, 0.7, 0.05, "synonym", 40.0, 0.0),
}


@dataclass(frozen=True)
class DatasetClasses:
    """The classes of a dataset as shipped in ``itaclip/data/classes/<name>.json``.

    Args:
        queries: per class, its names (the first is the display name).
        definitions: per class, a short definition (auxiliary text).
        synonyms: per class, a one-word synonym (auxiliary text).
        background: index of the background class, or ``None``.
    """

    queries: tuple[tuple[str, ...], ...]
    definitions: tuple[str, ...]
    synonyms: tuple[str, ...]
    background: int | None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(q[0] for q in self.queries)

    def aux_texts(self, kind: str) -> tuple[str, ...]:
        """Auxiliary texts of ``kind`` (``"definition"`` or ``"synonym"``)."""
        if kind not in ("definition", "synonym"):
            raise ValueError(f"aux must be 'definition' or 'synonym', got {kind!r}")
        return self.definitions if kind == "definition" else self.synonyms


def check_preset(name: str) -> Preset:
    """The preset called ``name``, or a ``KeyError`` listing the known ones."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


@cache
def dataset_classes(name: str) -> DatasetClasses:
    """Class queries, definitions, synonyms and background index of a preset's dataset."""
    check_preset(name)
    text = resources.files("itaclip.data").joinpath("classes", f"{name}.json").read_text()
    data = json.loads(text)
    entries = data["classes"]
    return DatasetClasses(
        queries=tuple(tuple(entry["queries"]) for entry in entries),
        definitions=tuple(entry["definition"] for entry in entries),
        synonyms=tuple(entry["synonym"] for entry in entries),
        background=data["background"],
    )
