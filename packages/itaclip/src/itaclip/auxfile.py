"""Auxiliary-text files in the official format: one ``name >=text`` line per class.

The official ITACLIP code reads its LLM-generated definitions and synonyms from text files with
one line per non-background class, in class order, e.g.::

    aeroplane >= a powered flying vehicle with fixed wings
    bicycle >= a vehicle with two wheels moved by pedals

Each line is split at its first ``>=``: the class name before it, the auxiliary text after it
(both stripped). Blank lines are skipped. ``load_aux_texts`` checks the lines against a class
list and returns one text per class, ``None`` for the background class (whose queries keep
their original features, so it needs no auxiliary text).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common_kernels.runtime.files import write_text
from itaclip.text import parse_classes

SEPARATOR = ">="


@dataclass(frozen=True)
class AuxEntry:
    """One line of an auxiliary-text file.

    Args:
        name: the class name before ``>=``.
        text: the auxiliary text after ``>=``.
        line: 1-based line number in the file.
    """

    name: str
    text: str
    line: int


def parse_aux_lines(content: str, source: str = "<aux texts>") -> list[AuxEntry]:
    """Entries of ``name >=text`` lines; blank lines are skipped.

    Args:
        content: the file's text.
        source: name used in error messages (the file path).

    Raises:
        ValueError: a non-blank line without ``>=``, or with an empty name or text; the message
            gives ``source:line`` and what was expected.
    """
    entries = []
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        if SEPARATOR not in raw:
            raise ValueError(
                f"{source}:{number}: expected 'name >=text' (a class name, '>=', its auxiliary "
                f"text), found no '>=' in {raw!r}"
            )
        name, text = (part.strip() for part in raw.split(SEPARATOR, 1))
        if not name:
            raise ValueError(f"{source}:{number}: expected a class name before '>=' in {raw!r}")
        if not text:
            raise ValueError(
                f"{source}:{number}: expected an auxiliary text after '>=' for class {name!r}"
            )
        entries.append(AuxEntry(name, text, number))
    return entries


def read_aux_file(path: str | os.PathLike) -> list[AuxEntry]:
    """The entries of an auxiliary-text file (UTF-8, optional BOM); see ``parse_aux_lines``."""
    path = Path(path)
    return parse_aux_lines(path.read_text(encoding="utf-8-sig"), str(path))


def aux_texts_for_classes(
    entries: Sequence[AuxEntry],
    classes: Sequence[str | Sequence[str]],
    background: int | None = None,
    check_names: bool = True,
    source: str = "<aux texts>",
) -> list[str | None]:
    """One auxiliary text per class from the entries of the non-background classes.

    Args:
        entries: one entry per non-background class, in class order.
        classes: the class list (as for ``Segmenter``: ``"a,b"`` or ``["a", "b"]`` per class).
        background: background class index (it has no entry and gets ``None``).
        check_names: require each entry's name to be one of its class's names
            (case-insensitive).
        source: name used in error messages (the file path).

    Raises:
        ValueError: the number of entries differs from the number of non-background classes,
            or (``check_names``) an entry names a different class.
    """
    parsed = parse_classes(classes)
    if background is not None and not 0 <= background < parsed.num_classes:
        raise ValueError(
            f"background must index a class in [0, {parsed.num_classes}), got {background}"
        )
    owners = parsed.query_class.tolist()
    names_of = [[] for _ in range(parsed.num_classes)]
    for query, owner in zip(parsed.queries, owners, strict=True):
        names_of[owner].append(query)
    targets = [index for index in range(parsed.num_classes) if index != background]
    if len(entries) != len(targets):
        kind = "class" if background is None else "non-background class"
        raise ValueError(
            f"{source} has {len(entries)} auxiliary texts but there are {len(targets)} "
            f"{kind}es ({', '.join(parsed.names[i] for i in targets)}); expected one "
            f"'name >=text' line per {kind}, in class order"
        )
    texts: list[str | None] = [None] * parsed.num_classes
    for entry, index in zip(entries, targets, strict=True):
        if check_names and entry.name.casefold() not in {n.casefold() for n in names_of[index]}:
            raise ValueError(
                f"{source}:{entry.line}: expected a text for class {index} "
                f"{parsed.names[index]!r} (names: {', '.join(names_of[index])}), found "
                f"{entry.name!r}; lines must follow the class order"
            )
        texts[index] = entry.text
    return texts


def load_aux_texts(
    path: str | os.PathLike,
    classes: Sequence[str | Sequence[str]],
    background: int | None = None,
    check_names: bool = True,
) -> list[str | None]:
    """Read an official-format file and return one text per class (``None`` = background).

    See ``read_aux_file`` and ``aux_texts_for_classes``.
    """
    return aux_texts_for_classes(
        read_aux_file(path), classes, background, check_names, source=str(path)
    )


def write_aux_file(path: str | os.PathLike, names: Sequence[str], texts: Sequence[str]) -> Path:
    """Write ``name >= text`` lines (one per class) atomically; returns the path.

    Raises:
        ValueError: lengths differ, or a name or text contains a line break, or a name ``>=``.
    """
    if len(names) != len(texts):
        raise ValueError(f"need one text per name, got {len(names)} names and {len(texts)} texts")
    lines = []
    for name, text in zip(names, texts, strict=True):
        if SEPARATOR in name or any(c in name + text for c in "\r\n"):
            raise ValueError(
                f"cannot write class {name!r}: names may not contain '>=' and neither names "
                "nor texts may contain line breaks"
            )
        lines.append(f"{name} {SEPARATOR} {text}\n")
    path = Path(path)
    write_text(path, "".join(lines), make_parents=True)
    return path
