"""Multi-model extraction: the XL-t ensemble (SDXL + SD 1.5 + Playground v2) and custom ones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from diffeat.extractor import FeatureExtractor
from diffeat.features import Features
from diffeat.presets import ENSEMBLES, EnsembleMember, get_preset


class MultiModelExtractor:
    """Several extractors run on the same images; feature names become ``key/name``.

    Args:
        members: ``{key: FeatureExtractor}`` in output order.
    """

    def __init__(self, members: Mapping[str, FeatureExtractor]):
        if not members:
            raise ValueError("members: give at least one extractor")
        bad = [key for key in members if "/" in key or not key]
        if bad:
            raise ValueError(f"members: keys must be non-empty and contain no '/'; got {bad}")
        self.members = dict(members)

    @classmethod
    def from_preset(
        cls,
        name: str = "ours-xl-t",
        models: Mapping[str, str] | None = None,
        members: Sequence[EnsembleMember] | None = None,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str = "cpu",
        **options,
    ) -> MultiModelExtractor:
        """Load an ensemble; every member resizes images to its preset's resolution.

        Args:
            name: a key of :data:`diffeat.ENSEMBLES` (ignored when ``members`` is given).
            models: ``{member key: hub id or folder}`` overriding the default repositories.
            members: your own member list instead of the named ensemble.
            dtype: weights dtype of every member.
            device: device of every member.
            **options: :class:`~diffeat.ExtractorConfig` fields for every member
                (``image_size`` overrides the per-preset resolution).
        """
        if members is None:
            if name not in ENSEMBLES:
                raise ValueError(
                    f"name: unknown ensemble {name!r}; choose one of {sorted(ENSEMBLES)}"
                )
            members = ENSEMBLES[name]
        models = dict(models or {})
        unknown = sorted(set(models) - {m.key for m in members})
        if unknown:
            raise ValueError(f"models: no ensemble member called {unknown}")
        loaded = {}
        for member in members:
            preset = get_preset(member.preset)
            member_options = {"image_size": preset.resolution, **options}
            loaded[member.key] = FeatureExtractor.from_pretrained(
                models.get(member.key, member.model),
                preset=member.preset,
                dtype=dtype,
                device=device,
                **member_options,
            )
        return cls(loaded)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(f"{k}/{n}" for k, m in self.members.items() for n in m.layers)

    def __call__(
        self,
        images,
        prompts: str | Sequence[str] = "",
        generator: torch.Generator | None = None,
    ) -> Features:
        """``{key/name: (B, C, h, w)}`` from every member (sizes differ between members).

        Returns :class:`~diffeat.Features` (head counts under the prefixed names).
        """
        out, heads = {}, {}
        for key, extractor in self.members.items():
            features = extractor(images, prompts, generator)
            for name, feature in features.items():
                out[f"{key}/{name}"] = feature
            heads.update({f"{key}/{name}": h for name, h in features.heads.items()})
        return Features(out, heads)
