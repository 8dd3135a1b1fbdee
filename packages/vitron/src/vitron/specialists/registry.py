"""The registry: which adapter serves which task, with what options; instantiated lazily."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from vitron.invocations.schema import IMAGE, MASK, REGION, TASKS, TEXT, VIDEO
from vitron.specialists.base import Consumes, Specialist, SpecialistError
from vitron.specialists.editing import DiffusersInpainter
from vitron.specialists.features import DiffeatFeatures
from vitron.specialists.generation import DiffusersImageGenerator
from vitron.specialists.restoration import SemanirRestorer
from vitron.specialists.segmentation import ItaclipSegmenter
from vitron.specialists.video import DiffusersVideo

BUILTIN_SPECIALISTS: tuple[type[Specialist], ...] = (
    ItaclipSegmenter,
    DiffusersImageGenerator,
    DiffusersInpainter,
    SemanirRestorer,
    DiffeatFeatures,
    DiffusersVideo,
)
_KIND_CONSUMES = {
    TEXT: Consumes.TEXT,
    IMAGE: Consumes.IMAGE,
    VIDEO: Consumes.VIDEO,
    MASK: Consumes.MASK,
    REGION: Consumes.REGION,
}


def check_adapter(cls: type[Specialist]) -> None:
    """An adapter must serve known tasks and consume every input kind those tasks take."""
    for task in cls.tasks:
        if task not in TASKS:
            raise ValueError(f"specialist {cls.name!r} serves unknown task {task!r}")
        for arg in TASKS[task].args:
            needed = _KIND_CONSUMES.get(arg.kind)
            if needed is not None and needed not in cls.consumes:
                raise ValueError(
                    f"specialist {cls.name!r} serves {task}, whose argument {arg.name!r} is "
                    f"{arg.kind}, but it does not declare that it consumes {arg.kind}"
                )


class SpecialistRegistry:
    """Task -> adapter, built from per-adapter options; nothing loads before its first call.

    Args:
        options: adapter name -> options dict (see each adapter's ``Options``).
        device: where the specialists run.
        adapters: adapter classes (default: the built-in ones); a later one serving the same
            task replaces an earlier one.
        offload: keep each specialist's weights on the CPU between its calls (moved to
            ``device`` for a call and back after): the accelerator then holds one specialist
            at a time, at the cost of a host-device copy of its weights per call.
    """

    def __init__(
        self,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        device: str | torch.device = "cpu",
        adapters: Iterable[type[Specialist]] = BUILTIN_SPECIALISTS,
        offload: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.offload = offload
        self.classes: dict[str, type[Specialist]] = {}
        self.by_task: dict[str, str] = {}
        for cls in adapters:
            self.register(cls)
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.classes))
        if unknown:
            raise ValueError(
                f"options for unknown specialists {unknown} (known: {', '.join(self.classes)})"
            )
        self.options = {
            name: cls.options_from(options.get(name)) for name, cls in self.classes.items()
        }
        self.instances: dict[str, Specialist] = {}

    @classmethod
    def from_file(
        cls, path: str | Path, device: str | torch.device = "cpu", offload: bool = True
    ) -> SpecialistRegistry:
        """A registry from a JSON file ``{"itaclip": {...}, "diffusers-image": {...}, ...}``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"specialists file {path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold an object of adapter name -> options")
        return cls(data, device, offload=offload)

    def register(self, cls: type[Specialist]) -> None:
        check_adapter(cls)
        self.classes[cls.name] = cls
        for task in cls.tasks:
            self.by_task[task] = cls.name

    def specialist(self, task: str) -> Specialist:
        """The adapter serving ``task`` (created on first request; weights load on first run)."""
        if task not in self.by_task:
            raise SpecialistError(
                f"no specialist serves {task!r} in this registry "
                f"(served: {', '.join(sorted(self.by_task))})"
            )
        name = self.by_task[task]
        if name not in self.instances:
            cls = self.classes[name]
            self.instances[name] = cls(
                self.options[name], registry=self, device=self.device, offload=self.offload
            )
        return self.instances[name]

    def describe(self) -> list[dict[str, Any]]:
        """One row per adapter: tasks, consumed inputs, missing packages, hub weights."""
        return [
            {
                "name": cls.name,
                "tasks": list(cls.tasks),
                "consumes": cls.consumes.names(),
                "missing": cls.missing_packages(),
                "extra": cls.extra,
                "hub_weights": cls.hub_weights,
                "loaded": name in self.instances and self.instances[name].loaded,
            }
            for name, cls in self.classes.items()
        ]
