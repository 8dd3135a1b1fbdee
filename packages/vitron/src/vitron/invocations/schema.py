"""Typed, versioned specialist invocations: several calls per turn with dependencies.

In a reply the LLM writes free text, then one block

    <invoke>{"version": 1, "calls": [
      {"id": "seg", "task": "segment_image", "args": {"image": "$image0", "text": "dog"}},
      {"id": "edit", "task": "edit_image",
       "args": {"image": "$image0", "mask": "$seg.mask", "text": "a cat"}}]}</invoke>

followed by one signal token per call (see :mod:`vitron.models.synergy`). Argument values are
literals or references: ``$image<k>`` / ``$video<k>`` / ``$region<k>`` name the conversation's
inputs, ``$<call id>.<output>`` names an output of another call (which makes it a dependency).
``after`` lists extra dependencies. :func:`parse_invocation` checks everything (task names,
argument names and types, reference targets and their types, duplicate ids, cycles) and raises
:class:`InvocationError` naming the exact place (``calls[1].args.mask``).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
BLOCK_OPEN = "<invoke>"
BLOCK_CLOSE = "</invoke>"
CALL_KEYS = ("id", "task", "args", "after")
_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
_INPUT_REF = re.compile(r"^\$(image|video|region)(\d+)$")
_OUTPUT_REF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)$")
RESERVED_ID = re.compile(r"^(image|video|region)\d+$")

# value kinds of arguments and outputs
TEXT, INT, FLOAT, BOOL, TEXT_LIST = "text", "int", "float", "bool", "text_list"
IMAGE, VIDEO, MASK, REGION, LABELS, FEATURES = (
    "image",
    "video",
    "mask",
    "region",
    "labels",
    "features",
)
MEDIA_KINDS = (IMAGE, VIDEO, MASK, REGION, LABELS, FEATURES)


class InvocationError(ValueError):
    """An invocation that breaks the schema; ``path`` says where (``calls[0].args.text``)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


@dataclass(frozen=True)
class ArgSpec:
    """One argument of a task: its name, value kind and whether it is required."""

    name: str
    kind: str
    required: bool = False
    help: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """A task the router can dispatch.

    Args:
        name: task name used in calls.
        help: one line for the system prompt and the README.
        args: its arguments.
        outputs: output name -> value kind.
        letter: the official tag grammar's module letter, if any.
    """

    name: str
    help: str
    args: tuple[ArgSpec, ...]
    outputs: Mapping[str, str]
    letter: str | None = None

    def arg(self, name: str) -> ArgSpec | None:
        return next((a for a in self.args if a.name == name), None)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "generate_image",
            "text-to-image generation (high resolution through pixelsmith)",
            (
                ArgSpec("text", TEXT, True, "the prompt"),
                ArgSpec("negative", TEXT, help="negative prompt"),
                ArgSpec("width", INT, help="output width in pixels"),
                ArgSpec("height", INT, help="output height in pixels"),
                ArgSpec("seed", INT, help="random seed"),
            ),
            {"image": IMAGE},
            letter="A",
        ),
        TaskSpec(
            "segment_image",
            "open-vocabulary segmentation of a referred object or of several classes",
            (
                ArgSpec("image", IMAGE, True),
                ArgSpec("text", TEXT, True, "what to segment"),
                ArgSpec("classes", TEXT_LIST, help="other classes competing for pixels"),
                ArgSpec("region", REGION, help="restrict the mask to this region"),
            ),
            {"mask": MASK, "overlay": IMAGE, "labels": LABELS},
            letter="B",
        ),
        TaskSpec(
            "edit_image",
            "inpaint a masked part of an image from a prompt",
            (
                ArgSpec("image", IMAGE, True),
                ArgSpec("text", TEXT, True, "what to paint in the masked part"),
                ArgSpec("mask", MASK, help="the part to repaint (e.g. $seg.mask)"),
                ArgSpec("target", TEXT, help="segment this to get the mask"),
                ArgSpec("region", REGION, help="repaint this region"),
                ArgSpec("seed", INT),
            ),
            {"image": IMAGE},
            letter="C",
        ),
        TaskSpec(
            "generate_video",
            "text-to-video generation",
            (
                ArgSpec("text", TEXT, True),
                ArgSpec("num_frames", INT),
                ArgSpec("seed", INT),
            ),
            {"video": VIDEO},
            letter="D",
        ),
        TaskSpec(
            "segment_video",
            "segment a referred object in every frame of a video (tracked from a region)",
            (
                ArgSpec("video", VIDEO, True),
                ArgSpec("text", TEXT, True),
                ArgSpec("region", REGION, help="the object on the first frame; then tracked"),
            ),
            {"masks": VIDEO, "overlay": VIDEO},
            letter="E",
        ),
        TaskSpec(
            "edit_video",
            "replace the foreground and background of a video",
            (
                ArgSpec("video", VIDEO, True),
                ArgSpec("text", TEXT, True, "foreground description"),
                ArgSpec("background", TEXT, True, "background description"),
            ),
            {"video": VIDEO},
            letter="F",
        ),
        TaskSpec(
            "image_to_video",
            "animate an image",
            (ArgSpec("image", IMAGE, True), ArgSpec("text", TEXT), ArgSpec("seed", INT)),
            {"video": VIDEO},
            letter="G",
        ),
        TaskSpec(
            "restore_image",
            "denoise / restore an image",
            (ArgSpec("image", IMAGE, True), ArgSpec("tile", INT, help="tile side")),
            {"image": IMAGE},
        ),
        TaskSpec(
            "extract_features",
            "diffusion U-Net features of an image",
            (
                ArgSpec("image", IMAGE, True),
                ArgSpec("text", TEXT, help="prompt for the U-Net"),
                ArgSpec("layers", TEXT_LIST, help="activation names"),
            ),
            {"features": FEATURES},
        ),
    )
}


@dataclass(frozen=True)
class Ref:
    """A reference: to an input (``$image0``) or to another call's output (``$seg.mask``)."""

    source: str
    name: str

    @property
    def is_input(self) -> bool:
        return self.source in ("image", "video", "region")

    @property
    def index(self) -> int:
        return int(self.name)

    def __str__(self) -> str:
        return f"${self.source}{self.name}" if self.is_input else f"${self.source}.{self.name}"


def parse_ref(text: str) -> Ref | None:
    """``"$image0"`` / ``"$seg.mask"`` -> ``Ref``; ``None`` for a string that is no reference."""
    if not text.startswith("$"):
        return None
    if m := _INPUT_REF.match(text):
        return Ref(m.group(1), m.group(2))
    if m := _OUTPUT_REF.match(text):
        return Ref(m.group(1), m.group(2))
    raise InvocationError("", f"malformed reference {text!r} (use $image0 or $call_id.output)")


@dataclass(frozen=True)
class Call:
    """One specialist call: ``args`` maps argument names to literals or ``Ref``s."""

    id: str
    task: str
    args: Mapping[str, Any]
    after: tuple[str, ...] = ()

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Ids of the calls that must run first (explicit ``after`` and referenced outputs)."""
        found = list(self.after)
        for value in self.args.values():
            if isinstance(value, Ref) and not value.is_input and value.source not in found:
                found.append(value.source)
        return tuple(found)

    def to_dict(self) -> dict[str, Any]:
        args = {
            k: str(v) if isinstance(v, Ref) else _jsonable(escape_literal(v))
            for k, v in self.args.items()
        }
        data: dict[str, Any] = {"id": self.id, "task": self.task, "args": args}
        if self.after:
            data["after"] = list(self.after)
        return data


def looks_like_ref(text: str) -> bool:
    """Whether a string has the form of a reference (``$image0``, ``$seg.mask``)."""
    return bool(_INPUT_REF.match(text) or _OUTPUT_REF.match(text))


def escape_literal(value: Any) -> Any:
    """A literal text (or list of texts) as written in a calls block: a text that would read as
    a reference or that starts with ``$$`` gets one more leading ``$`` (see
    :func:`unescape_literal`); anything else is unchanged."""
    if isinstance(value, str):
        return "$" + value if looks_like_ref(value) or value.startswith("$$") else value
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return tuple(escape_literal(v) for v in value)
    return value


def unescape_literal(text: str, path: str, arg: ArgSpec) -> str:
    """A literal text argument as written -> its value.

    Text arguments take no references: a leading ``$$`` stands for one literal ``$``
    (``"$$seg.mask"`` -> ``"$seg.mask"``), a text with the form of a reference (``"$seg.mask"``)
    is an error that names this escape, and any other ``$`` is literal (``"$5 off"``).
    """
    if text.startswith("$$"):
        return text[1:]
    if looks_like_ref(text):
        raise InvocationError(
            path,
            f"{arg.name} takes a literal {arg.kind}, not a reference (to write the text "
            f"{text!r}, write ${text})",
        )
    return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Invocation:
    """A versioned set of calls; ``order()`` gives a dependency-respecting execution order."""

    calls: tuple[Call, ...]
    version: int = SCHEMA_VERSION
    _by_id: dict[str, Call] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {c.id: c for c in self.calls})

    def __getitem__(self, call_id: str) -> Call:
        return self._by_id[call_id]

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "calls": [c.to_dict() for c in self.calls]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(", ", ": "))

    def render(self) -> str:
        """The ``<invoke>...</invoke>`` block as the LLM writes it."""
        return f"{BLOCK_OPEN}{self.to_json()}{BLOCK_CLOSE}"

    def order(self) -> list[Call]:
        """Calls in dependency order; among ready calls, the order they were written in."""
        return [self._by_id[i] for i in topological_order(self.calls)]


def topological_order(calls: Sequence[Call]) -> list[str]:
    """Kahn's algorithm, stable in the written order; raises on cycles."""
    pending = {c.id: set(c.depends_on) for c in calls}
    done: list[str] = []
    while pending:
        ready = [c.id for c in calls if c.id in pending and not pending[c.id] - set(done)]
        if not ready:
            raise InvocationError("calls", f"the calls form a cycle: {_find_cycle(pending)}")
        done.append(ready[0])
        del pending[ready[0]]
    return done


def _find_cycle(pending: Mapping[str, set[str]]) -> str:
    """A human-readable cycle ``a -> b -> a`` among the pending calls."""
    start = next(iter(pending))
    path = [start]
    while True:
        nxt = next(d for d in sorted(pending[path[-1]]) if d in pending)
        if nxt in path:
            cycle = [*path[path.index(nxt) :], nxt]
            return " -> ".join(cycle)
        path.append(nxt)


@dataclass(frozen=True)
class InputCounts:
    """How many images, videos and regions the conversation holds (``None`` = unchecked).

    Args:
        images: number of input images.
        videos: number of input videos.
        regions: number of user-drawn regions (``len(region_images)`` when only that is given).
        region_images: the image each region was drawn on, in order (``None`` = unknown); the
            tag grammar uses it to give a module the user's region (see ``parse_tags``).
    """

    images: int | None = None
    videos: int | None = None
    regions: int | None = None
    region_images: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.region_images is not None:
            object.__setattr__(self, "region_images", tuple(self.region_images))
            if self.regions is None:
                object.__setattr__(self, "regions", len(self.region_images))
            elif self.regions != len(self.region_images):
                raise ValueError(
                    f"{self.regions} regions but {len(self.region_images)} region_images"
                )


def parse_invocation(data: str | Mapping[str, Any], counts: InputCounts | None = None):
    """Parse and validate an invocation (JSON text or an already decoded dict).

    Args:
        data: ``{"version": 1, "calls": [...]}`` as text or dict.
        counts: numbers of inputs to check ``$image<k>`` etc. against.

    Returns:
        The checked invocation (an ``Invocation``).

    Raises:
        InvocationError: on the first violation, naming where it is.
    """
    counts = counts or InputCounts()
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise InvocationError("", f"invocation is not valid JSON: {err}") from None
    if not isinstance(data, Mapping):
        raise InvocationError("", f"invocation must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"version", "calls"})
    if unknown:
        raise InvocationError("", f"unknown keys {unknown} (allowed: version, calls)")
    if "version" not in data:
        raise InvocationError("version", f"missing (this parser reads version {SCHEMA_VERSION})")
    version = data["version"]
    if type(version) is not int or version != SCHEMA_VERSION:  # 1.0 and true are not 1
        raise InvocationError(
            "version",
            f"unsupported schema version {version!r} (this parser reads {SCHEMA_VERSION})",
        )
    raw_calls = data.get("calls")
    if not isinstance(raw_calls, list) or not raw_calls:
        raise InvocationError("calls", "must be a non-empty list of calls")
    calls = [_parse_call(raw, f"calls[{i}]", counts) for i, raw in enumerate(raw_calls)]
    _check_ids_and_refs(calls)
    topological_order(calls)
    return Invocation(tuple(calls), version)


def _parse_call(raw: Any, path: str, counts: InputCounts) -> Call:
    if not isinstance(raw, Mapping):
        raise InvocationError(path, f"a call must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(CALL_KEYS))
    if unknown:
        raise InvocationError(path, f"unknown keys {unknown} (allowed: {', '.join(CALL_KEYS)})")
    call_id = raw.get("id")
    if not isinstance(call_id, str) or not _ID.match(call_id):
        raise InvocationError(
            f"{path}.id",
            f"must be an identifier (letters, digits, _; <= 32 chars), got {call_id!r}",
        )
    if RESERVED_ID.match(call_id):
        raise InvocationError(f"{path}.id", f"{call_id!r} is reserved for inputs")
    task = raw.get("task")
    if task not in TASKS:
        close = difflib.get_close_matches(str(task), TASKS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InvocationError(
            f"{path}.task", f"unknown task {task!r} (known: {', '.join(TASKS)}){hint}"
        )
    spec = TASKS[task]
    raw_args = raw.get("args", {})
    if not isinstance(raw_args, Mapping):
        raise InvocationError(f"{path}.args", "must be an object of argument values")
    args = {}
    for name, value in raw_args.items():
        arg = spec.arg(name)
        if arg is None:
            allowed = ", ".join(a.name for a in spec.args)
            raise InvocationError(
                f"{path}.args.{name}", f"{task} has no argument {name!r} (allowed: {allowed})"
            )
        args[name] = _parse_value(value, arg, f"{path}.args.{name}", counts)
    missing = [a.name for a in spec.args if a.required and a.name not in args]
    if missing:
        raise InvocationError(f"{path}.args", f"{task} requires {', '.join(missing)}")
    after = raw.get("after", [])
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise InvocationError(f"{path}.after", "must be a list of call ids")
    return Call(call_id, task, args, tuple(after))


def _parse_value(value: Any, arg: ArgSpec, path: str, counts: InputCounts) -> Any:
    if arg.kind in MEDIA_KINDS:
        if arg.kind == REGION and isinstance(value, Mapping):
            return _parse_region_literal(value, path)
        if not isinstance(value, str):
            raise InvocationError(
                path, f"expected a reference to {_article(arg.kind)} (e.g. $image0), got {value!r}"
            )
        try:
            ref = parse_ref(value)
        except InvocationError as err:
            raise InvocationError(path, err.message) from None
        if ref is None:
            raise InvocationError(
                path, f"expected a reference to {_article(arg.kind)} (e.g. $image0), got {value!r}"
            )
        if ref.is_input:
            _check_input_ref(ref, arg, path, counts)
        return ref
    if arg.kind == TEXT and isinstance(value, str):
        value = unescape_literal(value, path, arg)
    elif arg.kind == TEXT_LIST and isinstance(value, list):
        value = [unescape_literal(v, path, arg) if isinstance(v, str) else v for v in value]
    elif isinstance(value, str) and value.startswith("$"):
        raise InvocationError(path, f"{arg.name} takes a literal {arg.kind}, not a reference")
    checks = {
        TEXT: lambda v: isinstance(v, str) and v.strip() != "",
        INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
        FLOAT: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        BOOL: lambda v: isinstance(v, bool),
        TEXT_LIST: lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v),
    }
    if not checks[arg.kind](value):
        wanted = {
            TEXT: "a non-empty string",
            INT: "an integer",
            FLOAT: "a number",
            BOOL: "true or false",
            TEXT_LIST: "a list of non-empty strings",
        }[arg.kind]
        raise InvocationError(path, f"expected {wanted}, got {value!r}")
    return tuple(value) if arg.kind == TEXT_LIST else value


def _is_number(value: Any) -> bool:
    """A finite JSON number (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_region_literal(value: Mapping[str, Any], path: str) -> dict[str, Any]:
    if set(value) == {"box"}:
        box = value["box"]
        ok = isinstance(box, list) and len(box) == 4
        if not ok or not all(_is_number(v) for v in box):
            raise InvocationError(path, f"box must be [x1, y1, x2, y2] numbers, got {box!r}")
        if not (box[0] < box[2] and box[1] < box[3]):
            raise InvocationError(path, f"box must satisfy x1 < x2 and y1 < y2, got {box!r}")
        return {"box": tuple(float(v) for v in box)}
    if set(value) in ({"points"}, {"points", "width"}):
        points = value["points"]
        if not isinstance(points, list) or not points:
            raise InvocationError(path, "points must be a non-empty list of [x, y]")
        for p in points:
            if not (isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p)):
                raise InvocationError(path, f"each point must be [x, y] numbers, got {p!r}")
        width = value.get("width", 8.0)
        if not _is_number(width) or width <= 0:
            raise InvocationError(path, f"width must be a number > 0 (brush px), got {width!r}")
        return {"points": tuple((float(x), float(y)) for x, y in points), "width": float(width)}
    raise InvocationError(
        path, "a region literal is {'box': [x1, y1, x2, y2]} or {'points': [[x, y], ...]}"
    )


def _check_input_ref(ref: Ref, arg: ArgSpec, path: str, counts: InputCounts) -> None:
    allowed_sources = {IMAGE: "image", VIDEO: "video", REGION: "region"}
    if allowed_sources.get(arg.kind) != ref.source:
        raise InvocationError(
            path, f"expected {_article(arg.kind)}, but {ref} is an input {ref.source}"
        )
    available = getattr(counts, f"{ref.source}s")
    if available is not None and ref.index >= available:
        raise InvocationError(
            path, f"{ref} does not exist: the conversation has {available} {ref.source}(s)"
        )


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _check_ids_and_refs(calls: Sequence[Call]) -> None:
    seen: dict[str, int] = {}
    for i, call in enumerate(calls):
        if call.id in seen:
            raise InvocationError(
                f"calls[{i}].id", f"duplicate id {call.id!r} (also calls[{seen[call.id]}])"
            )
        seen[call.id] = i
    by_id = {c.id: c for c in calls}
    for i, call in enumerate(calls):
        for dep in call.after:
            if dep not in by_id:
                raise InvocationError(f"calls[{i}].after", f"no call has id {dep!r}")
            if dep == call.id:
                raise InvocationError(f"calls[{i}].after", "a call cannot wait for itself")
        spec = TASKS[call.task]
        for name, value in call.args.items():
            if not isinstance(value, Ref) or value.is_input:
                continue
            path = f"calls[{i}].args.{name}"
            if value.source == call.id:
                raise InvocationError(path, f"{value} refers to the call itself")
            if value.source not in by_id:
                raise InvocationError(path, f"{value}: no call has id {value.source!r}")
            source_spec = TASKS[by_id[value.source].task]
            if value.name not in source_spec.outputs:
                raise InvocationError(
                    path,
                    f"{value}: {source_spec.name} has no output {value.name!r} "
                    f"(outputs: {', '.join(source_spec.outputs)})",
                )
            produced = source_spec.outputs[value.name]
            wanted = spec.arg(name).kind
            if produced != wanted:
                raise InvocationError(
                    path, f"expected {_article(wanted)}, but {value} is {_article(produced)}"
                )
