"""A parser for the official tag grammar, without its faults.

The official replies look like

    Sure! <module>B</module><instruction>image segmentation: the dog</instruction>
    <region>[10, 20, 200, 220]</region>

Module letters: A image generation, B image segmentation, C image editing, D video generation,
E video segmentation, F video editing (two instructions: foreground, background), G
image-to-video. The official regex parser keeps only the first module, splits an instruction on
its *last* colon ("add a sign saying Note: closed" -> "closed"), leaves ``</s>`` in the text,
deletes the text between unrelated tags, and silently falls back to chat on ``<module> B
</module>``. Here every module becomes a call, an instruction is split only on a first colon
whose prefix is a known task label of its module (or a label the official model writes on any
module, such as ``generation:``), end-of-sequence strings are removed, text outside the three
known tags is kept verbatim (a ``<region>`` that opens no ``<region>...</region>`` pair, or an
``<image>`` written in prose, is text and stays as written), whitespace and case around letters
are ignored, and anything malformed raises :class:`~vitron.invocations.schema.InvocationError`,
including an instruction that is only a task label (``image generation:`` with nothing after).

Compatibility with the official app: a lone C (edit) without a region or a B before it segments
its instruction's target with itaclip (``edit_target``: "turn the dog into a cat" repaints
itaclip's mask of "the dog" as "a cat"); a B, C or E module without a ``<region>`` of its own
gets the user's region (``InputCounts.region_images``); E tracks the object from its region.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from vitron.invocations.schema import (
    TASKS,
    Call,
    InputCounts,
    Invocation,
    InvocationError,
    Ref,
    topological_order,
)

LETTERS = {spec.letter: spec.name for spec in TASKS.values() if spec.letter}
TAG_NAMES = ("module", "instruction", "region")
TAG_PATTERN = re.compile(r"<\s*(/?)\s*(module|instruction|region)\s*>", re.IGNORECASE)

# labels the official model writes before an instruction on any module ("generation: ...")
GENERIC_LABELS = ("generation", "instruction", "task")
# instruction prefixes ("label: text") recognised as task labels, per module letter
TASK_LABELS: dict[str, tuple[str, ...]] = {
    letter: (*labels, *GENERIC_LABELS)
    for letter, labels in {
        "A": ("image generation", "text-to-image", "text to image", "generate"),
        "B": (
            "image segmentation",
            "segmentation",
            "referring segmentation",
            "segment",
            "grounding",
        ),
        "C": ("image editing", "editing", "edit", "inpainting", "inpaint"),
        "D": ("video generation", "text-to-video", "text to video", "generate"),
        "E": (
            "video segmentation",
            "video tracking",
            "tracking",
            "segmentation",
            "segment",
            "track",
        ),
        "F": ("video editing", "editing", "edit", "foreground", "background"),
        "G": ("image-to-video", "image to video", "animation", "animate", "video generation"),
    }.items()
}
ALL_LABELS = frozenset(label for labels in TASK_LABELS.values() for label in labels)
# "replace X with Y", "turn X into Y", ...: an edit instruction's target X and its prompt Y
EDIT_PATTERNS = (
    re.compile(r"^(?:replace|swap)\s+(?P<target>.+?)\s+(?:with|by|for)\s+(?P<prompt>.+)$", re.I),
    re.compile(
        r"^(?:change|turn|make|transform|convert)\s+(?P<target>.+?)\s+(?:into|to)\s+"
        r"(?P<prompt>.+)$",
        re.I,
    ),
)


@dataclass
class _Module:
    letter: str
    start: int
    instructions: list[tuple[str | None, str]] = field(default_factory=list)
    regions: list[tuple[float, float, float, float]] = field(default_factory=list)


def join_kept_text(pieces: Sequence[str]) -> str:
    """The text left around removed blocks, joined without touching its own whitespace.

    At each join the spaces/tabs on both sides are replaced by one space (none next to a line
    break or an empty side), so ``"Ok. <block> Done"`` reads ``"Ok. Done"`` while indentation
    and line breaks elsewhere in the reply are kept.
    """
    out = ""
    for piece in pieces:
        left, right = out.rstrip(" \t"), piece.lstrip(" \t")
        glue = "" if not left or not right or left[-1] == "\n" or right[0] == "\n" else " "
        out = left + glue + right
    return out.strip()


def tag_matches(text: str) -> list[re.Match[str]]:
    """The grammar's own tags in ``text``, in order. A ``<region>`` that is not closed by the
    next tag is prose (the model wrote the placeholder in a sentence), not a tag."""
    matches = list(TAG_PATTERN.finditer(text))
    kept = []
    for i, match in enumerate(matches):
        if match.group(2).lower() == "region" and not match.group(1):
            following = matches[i + 1] if i + 1 < len(matches) else None
            closes = following is not None and following.group(1) != ""
            if not (closes and following.group(2).lower() == "region"):
                continue
        kept.append(match)
    return kept


def split_instruction(text: str, letter: str) -> tuple[str | None, str]:
    """``"image editing: add a sign saying Note: closed"`` -> ``("image editing", "add ...")``.

    Only a first colon whose prefix is a known label of the module splits; otherwise the whole
    instruction is the text (its colons included).

    Raises:
        ValueError: the instruction is a task label (of any module) with nothing after it.
    """
    head, sep, tail = text.partition(":")
    if sep and not tail.strip() and head.strip().lower() in ALL_LABELS:
        raise ValueError(
            f"instruction {text.strip()!r} is only the task label {head.strip()!r}; "
            f"write what to do after the colon ('{head.strip()}: a red car')"
        )
    if sep and head.strip().lower() in TASK_LABELS[letter] and tail.strip():
        return head.strip().lower(), tail.strip()
    return None, text.strip()


def edit_target(instruction: str) -> tuple[str, str]:
    """What a lone edit instruction repaints and with what: ``(target, prompt)``.

    ``"turn the dog into a cat"`` / ``"replace the dog with a cat"`` / ``"change the dog to a
    cat"`` -> ``("the dog", "a cat")``; any other instruction is both the target (itaclip
    segments it) and the prompt.
    """
    text = instruction.strip()
    for pattern in EDIT_PATTERNS:
        if m := pattern.match(text):
            return m.group("target").strip(), m.group("prompt").strip().rstrip(".")
    return text, text


def _parse_region(body: str, where: str) -> tuple[float, float, float, float]:
    cleaned = body.strip().strip("[]()").replace(",", " ").split()
    try:
        values = tuple(float(v) for v in cleaned)
    except ValueError:
        raise InvocationError(where, f"region must be four numbers, got {body.strip()!r}") from None
    if len(values) != 4 or not (values[0] < values[2] and values[1] < values[3]):
        raise InvocationError(
            where, f"region must be [x1, y1, x2, y2] with x1 < x2 and y1 < y2, got {body.strip()!r}"
        )
    return values  # type: ignore[return-value]


def parse_tags(text: str, counts: InputCounts | None = None) -> tuple[str, Invocation | None]:
    """Parse a reply written in the tag grammar.

    Args:
        text: the reply, end-of-sequence strings already removed.
        counts: the conversation's inputs (``$image0`` / ``$video0`` must exist when used).

    Returns:
        (free text with the tag blocks removed, the invocation or ``None`` without modules).
    """
    counts = counts or InputCounts()
    kept: list[str] = []
    modules: list[_Module] = []
    pos = 0
    matches = tag_matches(text)
    i = 0
    while i < len(matches):
        opening = matches[i]
        name = opening.group(2).lower()
        where = f"<{name}> at character {opening.start()}"
        if opening.group(1):
            raise InvocationError(where, f"closing </{name}> without an opening tag")
        if i + 1 >= len(matches):
            raise InvocationError(where, f"<{name}> is never closed")
        closing = matches[i + 1]
        if not closing.group(1) or closing.group(2).lower() != name:
            raise InvocationError(
                where,
                f"<{name}> must be closed by </{name}> before "
                f"<{closing.group(1)}{closing.group(2)}>",
            )
        kept.append(text[pos : opening.start()])
        body = text[opening.end() : closing.start()]
        pos = closing.end()
        i += 2
        if name == "module":
            letter = body.strip().upper()
            if letter not in LETTERS:
                raise InvocationError(
                    where,
                    f"unknown module {body.strip()!r} (letters: {', '.join(sorted(LETTERS))})",
                )
            modules.append(_Module(letter, opening.start()))
            continue
        if not modules:
            raise InvocationError(where, f"<{name}> comes before any <module>")
        if name == "instruction":
            if not body.strip():
                raise InvocationError(where, "empty instruction")
            try:
                modules[-1].instructions.append(split_instruction(body, modules[-1].letter))
            except ValueError as err:
                raise InvocationError(where, str(err)) from None
        else:
            modules[-1].regions.append(_parse_region(body, where))
    kept.append(text[pos:])
    free_text = join_kept_text(kept)
    if not modules:
        return free_text, None
    return free_text, Invocation(tuple(_module_calls(modules, counts)))


def _module_calls(modules: Sequence[_Module], counts: InputCounts) -> list[Call]:
    """Calls of the modules in order. A module works on the image (video) made by an earlier
    module of the same reply (generate, edit, animate), else on the newest input one.

    Regions: a module's own ``<region>`` comes first; without one, a B, C or E module gets the
    user's newest region drawn on the input image it works on (E: the user's newest region;
    C only when no B before it gives a mask). Masks of C: its region, else the mask of the last
    B before it, else itaclip segments its instruction's target (:func:`edit_target`).
    """
    calls: list[Call] = []
    last_segmentation: str | None = None  # its mask feeds a following edit
    made: dict[str, Ref] = {}  # media kind -> the newest output of that kind in this reply
    for m in modules:
        where = f"<module>{m.letter}</module> at character {m.start}"
        if not m.instructions:
            raise InvocationError(where, "has no <instruction>")
        if len(m.regions) > 1:
            raise InvocationError(where, f"has {len(m.regions)} regions; at most one is allowed")
        task = LETTERS[m.letter]
        region = {"box": m.regions[0]} if m.regions else None
        if region is not None and TASKS[task].arg("region") is None:
            raise InvocationError(where, f"{task} takes no <region>")
        if m.letter == "F":
            video = _media("video", made, where, counts)
            calls.append(_edit_video_call(m, where, len(calls), video))
        else:
            for _label, instruction in m.instructions:
                call_id = f"c{len(calls) + 1}"
                args: dict = {"text": instruction}
                media = TASKS[task].args[0]
                if media.name in ("image", "video") and media.required:
                    args[media.name] = _media(media.name, made, where, counts)
                given = region
                if given is None and not (task == "edit_image" and last_segmentation):
                    given = _user_region(task, args, counts)
                if given is not None:
                    args["region"] = given
                elif task == "edit_image" and last_segmentation is not None:
                    args["mask"] = Ref(last_segmentation, "mask")
                elif task == "edit_image":
                    args["target"], args["text"] = edit_target(instruction)
                calls.append(Call(call_id, task, args))
                if task == "segment_image":
                    last_segmentation = call_id
        for kind in ("image", "video"):
            if TASKS[task].outputs.get(kind) == kind:
                made[kind] = Ref(calls[-1].id, kind)
    topological_order(calls)
    return calls


def _user_region(task: str, args: dict, counts: InputCounts) -> Ref | None:
    """The user's region for a B / C / E call without a ``<region>`` of its own: the newest one
    drawn on the input image the call works on (E: the newest one); ``None`` without any."""
    if task not in ("segment_image", "edit_image", "segment_video"):
        return None
    drawn_on = counts.region_images
    if not drawn_on:
        return None
    if task == "segment_video":
        return Ref("region", str(len(drawn_on) - 1))
    image = args["image"]
    if not image.is_input:  # an image made earlier in the reply: the user drew on none of it
        return None
    matching = [k for k, on in enumerate(drawn_on) if on == image.index]
    return Ref("region", str(matching[-1])) if matching else None


def _media(kind: str, made: dict[str, Ref], where: str, counts: InputCounts) -> Ref:
    """The image/video a module works on: made earlier in the reply, else the newest input
    (the first one when the counts are unchecked)."""
    if kind in made:
        return made[kind]
    available = getattr(counts, f"{kind}s")
    if available is None:
        return Ref(kind, "0")
    if available == 0:
        raise InvocationError(where, f"needs an input {kind}, but the conversation has none")
    return Ref(kind, str(available - 1))


def _edit_video_call(m: _Module, where: str, index: int, video: Ref) -> Call:
    if len(m.instructions) != 2:
        raise InvocationError(
            where,
            f"video editing needs two instructions (foreground, background), "
            f"got {len(m.instructions)}",
        )
    by_label = {
        label: text for label, text in m.instructions if label in ("foreground", "background")
    }
    if len(by_label) == 2:
        foreground, background = by_label["foreground"], by_label["background"]
    else:
        (_, foreground), (_, background) = m.instructions
    args = {
        "video": video,
        "text": foreground,
        "background": background,
    }
    return Call(f"c{index + 1}", "edit_video", args)
