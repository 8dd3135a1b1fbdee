"""Run an invocation's calls in dependency order through the specialist registry.

References are resolved just before each call (``$image0`` -> the user's image, ``$seg.mask``
-> the mask the ``seg`` call produced). A call whose specialist fails is reported as an error
and every call depending on it is skipped with the reason; independent calls still run. The
outcomes become the ``results`` message that goes back to the LLM for the final answer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from common_kernels.runtime.progress import progress as show_progress
from vitron.invocations.schema import Call, Invocation, Ref
from vitron.regions import Mask, Region, RegionError, Shape, Stroke, parse_box, region_mask_at
from vitron.specialists.base import Artifact, CallInputs, Consumes, SpecialistError
from vitron.specialists.registry import SpecialistRegistry

STATUSES = ("ok", "error", "skipped")


@dataclass
class TurnInputs:
    """The conversation's inputs that calls can reference.

    Args:
        images: ``$image<k>``.
        videos: ``$video<k>`` (lists of frames).
        regions: ``$region<k>``.
    """

    images: Sequence[Image.Image] = ()
    videos: Sequence[Sequence[Image.Image]] = ()
    regions: Sequence[Region] = ()


@dataclass
class CallOutcome:
    """What happened to one call.

    Args:
        call: the call.
        status: ``"ok"``, ``"error"`` or ``"skipped"``.
        summary: the specialist's summary, or the error / skip reason.
        outputs: its outputs by name (``ok`` only).
        specialist: the adapter that ran it.
        seconds: wall time.
        used_signal: whether a signal embedding was passed.
    """

    call: Call
    status: str
    summary: str
    outputs: dict[str, Artifact] = field(default_factory=dict)
    specialist: str | None = None
    seconds: float = 0.0
    used_signal: bool = False

    @property
    def files(self) -> list[Path]:
        return [a.path for a in self.outputs.values() if a.path is not None]

    def failure(self) -> str:
        """One line saying which call did not succeed and why (``""`` for a call that did)."""
        head = f"call {self.call.id} ({self.call.task})"
        if self.status == "error":
            return f"{head} failed: {self.summary.removeprefix('error: ')}"
        if self.status == "skipped":
            return f"{head} was skipped: {self.summary.removeprefix('skipped: ')}"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.call.id,
            "task": self.call.task,
            "status": self.status,
            "summary": self.summary,
            "specialist": self.specialist,
            "files": {name: str(a.path) for name, a in self.outputs.items() if a.path is not None},
            "used_signal": self.used_signal,
            "seconds": round(self.seconds, 3),
        }


class Router:
    """Dispatches invocations to a registry.

    Args:
        registry: the specialists.
        output_dir: where specialists write their files.
        seed: base seed handed to every call.
    """

    def __init__(self, registry: SpecialistRegistry, output_dir: str | Path, seed: int = 0) -> None:
        self.registry = registry
        self.output_dir = Path(output_dir)
        self.seed = seed

    def run(
        self,
        invocation: Invocation,
        inputs: TurnInputs,
        signals: Mapping[str, Tensor] | None = None,
        progress: bool = False,
    ) -> list[CallOutcome]:
        """Run every call; returns one outcome per call, in execution order.

        Args:
            invocation: the parsed calls.
            inputs: what ``$image0`` etc. refer to.
            signals: call id -> signal embedding.
            progress: show the calls' progress on stderr (a bar on a terminal, lines in a log).
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)
        signals = signals or {}
        done: dict[str, CallOutcome] = {}
        order = invocation.order()
        calls = show_progress(
            order, desc="vitron calls", unit="calls", leave=False, disable=not progress
        )
        for call in calls:
            failed = [d for d in call.depends_on if done[d].status != "ok"]
            if failed:
                reason = f"skipped: it depends on {', '.join(failed)}, which did not succeed"
                done[call.id] = CallOutcome(call, "skipped", reason)
                continue
            done[call.id] = self.run_call(call, inputs, done, signals.get(call.id))
        return [done[c.id] for c in order]

    def run_call(
        self, call: Call, inputs: TurnInputs, done: Mapping[str, CallOutcome], signal: Tensor | None
    ):
        start = time.perf_counter()
        try:
            specialist = self.registry.specialist(call.task)
            args = {
                name: self.resolve(call, name, value, inputs, done)
                for name, value in call.args.items()
            }
            use_signal = signal is not None and Consumes.SIGNAL in specialist.consumes
            call_inputs = CallInputs(
                call.id, call.task, args, signal if use_signal else None, self.output_dir, self.seed
            )
            result = specialist.run(call_inputs)
        except (SpecialistError, RegionError, ValueError, OSError) as err:
            return CallOutcome(call, "error", f"error: {err}", seconds=time.perf_counter() - start)
        except Exception as err:  # a specialist's own failure (e.g. out of memory): the call
            # fails with its reason, its dependents are skipped, the other calls still run
            message = f"error: {type(err).__name__}: {err}"
            return CallOutcome(call, "error", message, seconds=time.perf_counter() - start)
        return CallOutcome(
            call,
            "ok",
            result.summary,
            result.outputs,
            specialist.name,
            time.perf_counter() - start,
            use_signal and result.used_signal,
        )

    def resolve(
        self, call: Call, name: str, value: Any, inputs: TurnInputs, done: Mapping[str, CallOutcome]
    ):
        """The value an argument refers to, checked against what exists."""
        if name == "region":
            return self.resolve_region(call, value, inputs, done)
        if not isinstance(value, Ref):
            return value
        if value.is_input:
            pool = {"image": inputs.images, "video": inputs.videos, "region": inputs.regions}[
                value.source
            ]
            if value.index >= len(pool):
                raise SpecialistError(
                    f"{value} does not exist: the turn has {len(pool)} {value.source}(s)"
                )
            return pool[value.index]
        return done[value.source].outputs[value.name].value

    def resolve_region(self, call: Call, value: Any, inputs: TurnInputs, done) -> Shape:
        """A region argument as a shape in the pixels of the call's image (of the first frame
        of its video, for a video call)."""
        if "video" in call.args:
            return self.resolve_video_region(call, value, inputs, done)
        image_ref = call.args.get("image")
        image = (
            self.resolve(call, "image", image_ref, inputs, done) if image_ref is not None else None
        )
        if isinstance(value, Ref):
            region = self.resolve(call, "", value, inputs, done)
            if (
                isinstance(image_ref, Ref)
                and image_ref.is_input
                and region.image != image_ref.index
            ):
                raise SpecialistError(
                    f"{value} was drawn on $image{region.image}, "
                    f"but call {call.id!r} works on {image_ref}"
                )
            return region.shape
        if "box" in value:
            if image is None:
                raise SpecialistError(f"call {call.id!r}: a box needs the image it is drawn on")
            return parse_box(value["box"], image.width, image.height)
        return Stroke(value["points"], value["width"])

    def resolve_video_region(self, call: Call, value: Any, inputs: TurnInputs, done) -> Shape:
        """A video call's region on its first frame. A literal is in the frame's pixels; a
        user region (drawn on an image) is used as drawn when that image has the frame's size,
        else stretched onto the frame (its mask resized)."""
        frames = self.resolve(call, "video", call.args["video"], inputs, done)
        if not frames:
            raise SpecialistError(f"call {call.id!r}: the video has no frames")
        width, height = frames[0].size
        if not isinstance(value, Ref):
            if "box" in value:
                return parse_box(value["box"], width, height)
            return Stroke(value["points"], value["width"])
        region = self.resolve(call, "", value, inputs, done)
        if not 0 <= region.image < len(inputs.images):
            raise SpecialistError(f"{value} was drawn on an image the turn does not have")
        image = inputs.images[region.image]
        if image.size == (width, height):
            return region.shape
        mask = region_mask_at(region.shape, image.height, image.width).float()[None, None]
        stretched = F.interpolate(mask, size=(height, width), mode="nearest")[0, 0]  # (H, W)
        if not bool(stretched.any()):
            raise SpecialistError(f"{value} vanishes when stretched onto the video's frames")
        return Mask(stretched.double())


def results_message(outcomes: Sequence[CallOutcome]) -> str:
    """The text fed back to the LLM: one line per call."""
    lines = []
    for o in outcomes:
        files = ", ".join(f"{n}={a.path.name}" for n, a in o.outputs.items() if a.path is not None)
        line = f"[{o.call.id}] {o.call.task} {o.status}: {o.summary}"
        lines.append(f"{line} (files: {files})" if files else line)
    return "\n".join(lines)
