"""Per-dataset settings of the official configs and the class lists shipped with the package."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class Preset:
    """Inference settings of one benchmark dataset (ViT-B/16).

    ``voc21``, ``context60``, ``coco_object``, ``coco_stuff`` and ``cityscapes`` are the official
    ITACLIP configs; ``voc20``, ``context59`` and ``ade20k`` have none (see ``PRESETS``).

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


# The first five are ITACLIP's official configs. ITACLIP has no config for the other three, the
# no-background benchmarks of its peers: their short side, logit scale and prob_thd follow the
# peers' configs (SCLIP and NACLIP: cfg_voc20 / cfg_context59 / cfg_ade20k resize the short side
# to 336, the segmentors' defaults are logit scale 40 and prob_thd 0), and lam, alpha and the
# auxiliary text follow ITACLIP's config of the closest dataset: voc21 for voc20, context60 for
# context59, coco_stuff (like ADE20K: no background, a vocabulary of stuff and things) for ade20k.
PRESETS: dict[str, Preset] = {
    "coco_stuff": Preset(448, 0.75, 0.2, "definition", 40.0, 0.0),
    "coco_object": Preset(336, 0.75, 0.1, "synonym", 50.0, 0.1),
    "voc21": Preset(336, 0.7, 0.05, "definition", 60.0, 0.1, 0.1),
    "context60": Preset(336, 0.75, 0.15, "definition", 55.0, 0.1),
    "cityscapes": Preset(560, 0.7, 0.05, "synonym", 40.0, 0.0),
    "voc20": Preset(336, 0.7, 0.05, "definition", 40.0, 0.0),
    "context59": Preset(336, 0.75, 0.15, "definition", 40.0, 0.0),
    "ade20k": Preset(336, 0.75, 0.2, "definition", 40.0, 0.0),
}

# presets whose classes are another preset's without its background class
WITHOUT_BACKGROUND: dict[str, str] = {"voc20": "voc21", "context59": "context60"}


@dataclass(frozen=True)
class DatasetClasses:
    """The classes of a dataset as shipped in ``itaclip/data/classes/<name>.json``
    (``voc20`` and ``context59``: ``voc21.json`` and ``context60.json`` without the background).

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

    def without_background(self) -> DatasetClasses:
        """The same classes in the same order with the background class left out."""
        if self.background is None:
            return self
        keep = [i for i in range(len(self.queries)) if i != self.background]
        return DatasetClasses(
            queries=tuple(self.queries[i] for i in keep),
            definitions=tuple(self.definitions[i] for i in keep),
            synonyms=tuple(self.synonyms[i] for i in keep),
            background=None,
        )


def check_preset(name: str) -> Preset:
    """The preset called ``name``, or a ``KeyError`` listing the known ones."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


@cache
def dataset_classes(name: str) -> DatasetClasses:
    """Class queries, definitions, synonyms and background index of a preset's dataset.

    ``voc20`` and ``context59`` are ``voc21`` and ``context60`` without their background class.
    """
    check_preset(name)
    if name in WITHOUT_BACKGROUND:
        return dataset_classes(WITHOUT_BACKGROUND[name]).without_background()
    text = resources.files("itaclip.data").joinpath("classes", f"{name}.json").read_text()
    data = json.loads(text)
    entries = data["classes"]
    return DatasetClasses(
        queries=tuple(tuple(entry["queries"]) for entry in entries),
        definitions=tuple(entry["definition"] for entry in entries),
        synonyms=tuple(entry["synonym"] for entry in entries),
        background=data["background"],
    )
