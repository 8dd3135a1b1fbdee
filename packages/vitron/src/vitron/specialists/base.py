"""What a specialist adapter is: the tasks it serves, what it consumes, lazy loading, options."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import enum
import importlib.util
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

OFFLOAD_DEVICE = torch.device("cpu")


class Consumes(enum.Flag):
    """Inputs an adapter makes use of."""

    TEXT = enum.auto()
    IMAGE = enum.auto()
    VIDEO = enum.auto()
    REGION = enum.auto()
    MASK = enum.auto()
    SIGNAL = enum.auto()

    def names(self) -> list[str]:
        return [m.name.lower() for m in Consumes if m in self]


class SpecialistError(RuntimeError):
    """A specialist that cannot run a call (missing package, bad input, no mask, ...)."""


@dataclass
class Artifact:
    """One output of a call.

    Args:
        kind: ``"image"``, ``"mask"``, ``"labels"``, ``"video"`` or ``"features"``.
        value: PIL image, (H, W) tensor, list of frames, or dict of tensors.
        path: the file it was written to.
    """

    kind: str
    value: Any
    path: Path | None = None


@dataclass
class SpecialistOutput:
    """Outputs by name (matching the task's schema), a one-line summary for the LLM, and
    whether the signal embedding it was given was used (a path may ignore it)."""

    outputs: dict[str, Artifact]
    summary: str
    used_signal: bool = True


@dataclass
class CallInputs:
    """A call with its references resolved.

    Args:
        call_id: the call's id (used in file names).
        task: the task name.
        args: argument values: text, numbers, PIL images, (H, W) bool masks, lists of frames,
            region shapes (``Box`` / ``Stroke`` / ``Mask``) in the call image's pixels.
        signal: the call's signal embedding, when the LLM produced one and the adapter
            consumes signals.
        output_dir: where to write files.
        seed: base random seed of the turn.
    """

    call_id: str
    task: str
    args: dict[str, Any]
    signal: Tensor | None
    output_dir: Path
    seed: int = 0

    @property
    def call_seed(self) -> int:
        """The call's ``seed`` argument, or the turn's seed when the call gives none."""
        return self.args.get("seed", self.seed)

    def file(self, name: str, suffix: str) -> Path:
        """A new path for output ``name``: ``<call id>_<name><suffix>``, or with ``_2``, ``_3``,
        ... before the suffix when an earlier turn's call of the same id already wrote it."""
        path = self.output_dir / f"{self.call_id}_{name}{suffix}"
        count = 1
        while path.exists():
            count += 1
            path = self.output_dir / f"{self.call_id}_{name}_{count}{suffix}"
        return path


class SpecialistSource(Protocol):
    """Where an adapter finds another specialist (a ``SpecialistRegistry``): this module names
    what it needs instead of importing the registry, which imports the adapters."""

    def specialist(self, task: str) -> Specialist: ...


class Specialist(abc.ABC):
    """Base class of the adapters; subclasses set the class attributes and ``Options``.

    Nothing is imported or loaded until the first call (``load`` runs once). With ``offload``,
    the weights stay on the CPU between calls: :meth:`active` moves them to ``device`` for a
    call (or a batch of ``conditioning_target`` calls) and back after, so the accelerator holds
    the LLM plus one specialist at a time instead of all of them.

    Args:
        options: an ``Options`` instance (defaults when ``None``).
        registry: the registry, for adapters that use another specialist (editing segments).
        device: where models run.
        offload: keep the weights on the CPU when idle.
    """

    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]]
    consumes: ClassVar[Consumes]
    packages: ClassVar[tuple[str, ...]]
    extra: ClassVar[str]
    hub_weights: ClassVar[str]
    Options: ClassVar[type]

    def __init__(
        self,
        options: Any = None,
        registry: SpecialistSource | None = None,
        device: str | torch.device = "cpu",
        offload: bool = True,
    ) -> None:
        self.options = options if options is not None else self.Options()
        self.registry = registry
        self.device = torch.device(device)
        self.offload = offload
        self.loaded = False
        self._active_depth = 0

    @classmethod
    def missing_packages(cls) -> list[str]:
        """Import names of required packages that are not installed."""
        return [p for p in cls.packages if importlib.util.find_spec(p) is None]

    @classmethod
    def options_from(cls, data: Mapping[str, Any] | None) -> Any:
        """Build ``Options`` from a dict, naming unknown keys."""
        data = dict(data or {})
        allowed = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown options {unknown} for specialist {cls.name!r} "
                f"(allowed: {', '.join(allowed)})"
            )
        return cls.Options(**data)

    def ensure_loaded(self) -> None:
        if self.loaded:
            return
        missing = self.missing_packages()
        if missing:
            raise SpecialistError(
                f"specialist {self.name!r} needs {', '.join(missing)}: "
                f"pip install 'vitron[{self.extra}]'"
            )
        self.load()
        self.loaded = True

    @abc.abstractmethod
    def load(self) -> None:
        """Import the package and load the weights onto ``device`` (called once, on first use)."""

    def offloadable(self) -> list[Any]:
        """The loaded objects that hold weights (pipelines, modules: anything with ``.to``)."""
        return []

    def move(self, device: torch.device) -> None:
        """Move every :meth:`offloadable` object to ``device``."""
        for part in self.offloadable():
            part.to(device)

    @contextlib.contextmanager
    def active(self) -> Iterator[Specialist]:
        """The loaded specialist, on ``device`` for the block; with ``offload``, moved back to
        the CPU when the outermost block ends (blocks nest without moving)."""
        self._active_depth += 1
        try:
            if self._active_depth == 1 and self.offload and self.loaded:
                self.move(self.device)
            self.ensure_loaded()
            yield self
        finally:
            self._active_depth -= 1
            if self._active_depth == 0 and self.offload and self.loaded:
                self.move(OFFLOAD_DEVICE)

    def run(self, inputs: CallInputs) -> SpecialistOutput:
        """Run one call (loaded first if needed; on ``device`` during the call)."""
        if inputs.task not in self.tasks:
            raise SpecialistError(f"specialist {self.name!r} does not serve task {inputs.task!r}")
        with self.active():
            return self.execute(inputs)

    @abc.abstractmethod
    def execute(self, inputs: CallInputs) -> SpecialistOutput:
        """Run one call on loaded weights."""

    def call_generator(self, inputs: CallInputs) -> torch.Generator:
        """A generator on ``device`` seeded with the call's seed (:attr:`CallInputs.call_seed`)."""
        return generator(self.device, inputs.call_seed)

    def conditioning_target(self, task: str, text: str) -> Tensor:
        """The specialist's own conditioning of ``text`` (a float32 CPU vector): the stage-3
        target of a signal. Adapters that consume signals override it (inside :meth:`active`)."""
        raise SpecialistError(f"specialist {self.name!r} takes no signal embeddings")


class CachingSpecialist(Specialist):
    """An adapter whose models load on demand, one per key (a task, a layer selection):
    ``models`` starts empty at :meth:`load` and every model in it is offloadable."""

    def load(self) -> None:
        self.models: dict[Hashable, Any] = {}

    def offloadable(self) -> list[Any]:
        return list(self.models.values())


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    """``"auto"`` (fp16 on CUDA, fp32 elsewhere), ``"fp32"``, ``"fp16"`` or ``"bf16"``."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in table:
        raise ValueError(f"dtype must be 'auto', 'fp32', 'fp16' or 'bf16', got {name!r}")
    return table[name]


def generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device.type if device.type != "mps" else "cpu").manual_seed(seed)
