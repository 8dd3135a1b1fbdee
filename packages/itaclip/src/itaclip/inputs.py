"""The classes of a call, checked before any model work: names, background, auxiliary texts.

``check_classes`` is what ``Segmenter`` runs before it embeds any text, and what ``itaclip
segment`` runs before it loads the model; ``names`` spells the arguments as the caller does
(the CLI: ``{"classes": "--classes", "background": "--background", "aux_file": "--aux-file"}``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from itaclip.auxfile import load_aux_texts
from itaclip.config import Names, named
from itaclip.text import ClassQueries, parse_classes


@dataclass(frozen=True)
class ClassInputs:
    """Checked classes of a call.

    Args:
        queries: the parsed classes and their queries.
        aux_texts: one auxiliary text per class (``None`` for the background), or ``None``.
        background: the background class index, or ``None``.
    """

    queries: ClassQueries
    aux_texts: tuple[str | None, ...] | None = None
    background: int | None = None


def parse_class_option(text: str, name: str = "classes") -> list[list[str]]:
    """``"person|man,dog"`` -> ``[["person", "man"], ["dog"]]``, checked: ``,`` separates the
    classes and ``|`` the names of one class (the command line's syntax).

    Args:
        text: the classes as one string.
        name: how the caller spells the argument in messages.

    Raises:
        ValueError: an empty or duplicate name.
    """
    classes = [[part.strip() for part in item.split("|")] for item in text.split(",")]
    try:
        parse_classes(classes)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} {text!r}: {error}") from None
    return classes


def class_names(queries: ClassQueries, index: int) -> list[str]:
    """Every name (query) of class ``index``."""
    owners = queries.query_class.tolist()
    return [query for query, owner in zip(queries.queries, owners, strict=True) if owner == index]


def check_background(
    background: int | str | None, queries: ClassQueries, name: str = "background"
) -> int | None:
    """The background class index of a 0-based index, a digit string or any name of a class.

    Args:
        background: the index or name (``None``: no background class).
        queries: the parsed classes.
        name: how the caller spells the argument in messages.

    Raises:
        ValueError: an index outside the classes or a name of none of them.
    """
    if background is None:
        return None
    if isinstance(background, str) and background.strip().isdigit():
        background = int(background)
    if isinstance(background, bool) or not isinstance(background, (int, str)):
        raise TypeError(f"{name} must be a class index or name, got {background!r}")
    if isinstance(background, int):
        if not 0 <= background < queries.num_classes:
            raise ValueError(
                f"{name} {background} is not a class index in [0, {queries.num_classes})"
            )
        return background
    for index in range(queries.num_classes):
        if background.strip() in class_names(queries, index):
            return index
    raise ValueError(f"{name} {background!r} names none of the classes {list(queries.names)}")


def load_aux_file(
    path: str | os.PathLike,
    classes: Sequence[str | Sequence[str]],
    background: int | None = None,
    check_names: bool = True,
    names: Names | None = None,
) -> list[str | None]:
    """One auxiliary text per class from a file: the JSON of ``itaclip aux`` (``.json``), or
    any other suffix in the official ``name >=text`` format (``itaclip.auxfile``).

    Args:
        path: the file.
        classes: the classes (as for ``Segmenter``).
        background: the background class index (no line in an official-format file).
        check_names: check the names of an official-format file against ``classes``.
        names: how the caller spells ``aux_file`` and ``classes`` in messages.

    Raises:
        FileNotFoundError: no file at ``path``.
        IsADirectoryError: ``path`` is a folder.
        ValueError: a malformed file, or texts for other classes.
    """
    flag, path = named("aux_file", names), Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder, not a file")
    if not path.exists():
        raise FileNotFoundError(f"{flag} {path} does not exist")
    if path.suffix.lower() != ".json":
        try:
            return load_aux_texts(path, classes, background, check_names)
        except (OSError, ValueError) as error:
            raise ValueError(f"{flag}: {error}") from None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{flag} {path}: not readable JSON ({error})") from None
    texts = data.get("texts") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("classes"), list)
        or not isinstance(texts, list)
        or not all(isinstance(text, str) and text.strip() for text in texts)
        or len(texts) != len(data["classes"])
    ):
        raise ValueError(
            f"{flag} {path}: expected the JSON of `itaclip aux` (an object with lists "
            '"classes" and "texts" of equal length, non-empty texts)'
        )
    first_names = list(parse_classes(classes).names)
    if data["classes"] != first_names:
        raise ValueError(
            f"{flag} {path} holds auxiliary texts for {data['classes']}, "
            f"but {named('classes', names)} names {first_names}"
        )
    return texts


def check_aux_texts(
    aux_texts: Sequence[str | None], queries: ClassQueries, background: int | None, name: str
) -> None:
    """One text per class, ``None`` only for the background class.

    Args:
        aux_texts: the texts.
        queries: the parsed classes.
        background: the background class index, or ``None``.
        name: how the caller spells the argument in messages.
    """
    if len(aux_texts) != queries.num_classes:
        raise ValueError(
            f"{name} needs one text per class ({queries.num_classes}), got {len(aux_texts)}"
        )
    missing = [i for i, text in enumerate(aux_texts) if text is None and i != background]
    if missing:
        raise ValueError(
            f"{name} may be None only for the background class ({background}), "
            f"got None for class(es) {missing}"
        )


def check_classes(
    classes: Sequence[str | Sequence[str]],
    aux_texts: Sequence[str | None] | None = None,
    background: int | str | None = None,
    *,
    aux_file: str | os.PathLike | None = None,
    check_aux_names: bool = True,
    names: Names | None = None,
) -> ClassInputs:
    """The classes, background and auxiliary texts of a call, checked (nothing is embedded).

    Args:
        classes: class names; ``"a,b"`` or ``["a", "b"]`` gives a class two names (queries).
        aux_texts: one auxiliary text per class (the background's may be ``None``).
        background: the background class: a 0-based index or any of its names.
        aux_file: auxiliary texts from a file instead (see ``load_aux_file``).
        check_aux_names: check the names of an official-format ``aux_file``.
        names: how the caller spells the arguments in messages.

    Raises:
        ValueError: no class, an empty or duplicate name, a background that is no class,
            auxiliary texts that do not fit the classes, both ``aux_texts`` and ``aux_file``.
        FileNotFoundError: no ``aux_file`` there.
    """
    if aux_file is not None and aux_texts is not None:
        raise ValueError("pass aux_texts or aux_file, not both")
    queries = parse_classes(classes)
    index = check_background(background, queries, named("background", names))
    if aux_file is not None:
        aux_texts = load_aux_file(aux_file, classes, index, check_aux_names, names)
    if aux_texts is None:
        return ClassInputs(queries, None, index)
    check_aux_texts(aux_texts, queries, index, named("aux_texts", names))
    return ClassInputs(queries, tuple(aux_texts), index)
