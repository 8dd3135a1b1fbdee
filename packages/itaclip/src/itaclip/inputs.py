"""The classes of a call, checked before any model work: names, background, auxiliary texts.

``check_classes`` is what ``Segmenter`` runs before it embeds any text, and what ``itaclip
segment`` runs before it loads the model; its errors are ``InvalidArgument`` naming
``classes``, ``background``, ``aux_texts`` or ``aux_file``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common_kernels.runtime.errors import InvalidArgument, InvalidValue, literal
from itaclip.auxfile import load_aux_texts
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


def parse_class_option(text: str) -> list[list[str]]:
    """``"person|man,dog"`` -> ``[["person", "man"], ["dog"]]``, checked: ``,`` separates the
    classes and ``|`` the names of one class (the command line's syntax).

    Args:
        text: the classes as one string.

    Raises:
        InvalidArgument: (``classes``) an empty or duplicate name.
    """
    classes = [[part.strip() for part in item.split("|")] for item in text.split(",")]
    try:
        parse_classes(classes)
    except (TypeError, ValueError) as error:
        raise InvalidValue("classes", "{classes} " + literal(f"{text!r}: {error}")) from None
    return classes


def class_names(queries: ClassQueries, index: int) -> list[str]:
    """Every name (query) of class ``index``."""
    owners = queries.query_class.tolist()
    return [query for query, owner in zip(queries.queries, owners, strict=True) if owner == index]


def check_background(background: int | str | None, queries: ClassQueries) -> int | None:
    """The background class index of a 0-based index, a digit string or any name of a class.

    Args:
        background: the index or name (``None``: no background class).
        queries: the parsed classes.

    Raises:
        InvalidArgument: (``background``) an index outside the classes or a name of none of
            them; a ``TypeError`` for neither an index nor a name.
    """
    if background is None:
        return None
    if isinstance(background, str) and background.strip().isdigit():
        background = int(background)
    if isinstance(background, bool) or not isinstance(background, (int, str)):
        raise TypeError(f"background must be a class index or name, got {background!r}")
    if isinstance(background, int):
        if not 0 <= background < queries.num_classes:
            raise InvalidValue(
                "background",
                f"{{background}} {background} is not a class index in [0, {queries.num_classes})",
            )
        return background
    for index in range(queries.num_classes):
        if background.strip() in class_names(queries, index):
            return index
    raise InvalidValue(
        "background",
        "{background} "
        + literal(f"{background!r} names none of the classes {list(queries.names)}"),
    )


def load_aux_file(
    path: str | os.PathLike,
    classes: Sequence[str | Sequence[str]],
    background: int | None = None,
    check_names: bool = True,
) -> list[str | None]:
    """One auxiliary text per class from a file: the JSON of ``itaclip aux`` (``.json``), or
    any other suffix in the official ``name >=text`` format (``itaclip.auxfile``).

    Args:
        path: the file.
        classes: the classes (as for ``Segmenter``).
        background: the background class index (no line in an official-format file).
        check_names: check the names of an official-format file against ``classes``.

    Raises:
        InvalidArgument: (``aux_file``) no file at ``path``, a folder, a malformed file, or
            texts for other ``classes``.
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidValue("aux_file", "{aux_file} " + literal(f"{path} is a folder, not a file"))
    if not path.exists():
        raise InvalidValue("aux_file", "{aux_file} " + literal(f"{path} does not exist"))
    if path.suffix.lower() != ".json":
        try:
            return load_aux_texts(path, classes, background, check_names)
        except (OSError, ValueError) as error:
            raise InvalidArgument("aux_file", literal(error)) from None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InvalidValue(
            "aux_file", "{aux_file} " + literal(f"{path}: not readable JSON ({error})")
        ) from None
    texts = data.get("texts") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("classes"), list)
        or not isinstance(texts, list)
        or not all(isinstance(text, str) and text.strip() for text in texts)
        or len(texts) != len(data["classes"])
    ):
        raise InvalidValue(
            "aux_file",
            "{aux_file} "
            + literal(
                f"{path}: expected the JSON of `itaclip aux` (an object with lists "
                '"classes" and "texts" of equal length, non-empty texts)'
            ),
        )
    first_names = list(parse_classes(classes).names)
    if data["classes"] != first_names:
        raise InvalidValue(
            "aux_file",
            "{aux_file} "
            + literal(f"{path} holds auxiliary texts for {data['classes']}, but")
            + " {classes}"
            + literal(f" names {first_names}"),
        )
    return texts


def check_aux_texts(
    aux_texts: Sequence[str | None], queries: ClassQueries, background: int | None
) -> None:
    """One text per class, ``None`` only for the background class.

    Args:
        aux_texts: the texts.
        queries: the parsed classes.
        background: the background class index, or ``None``.

    Raises:
        InvalidArgument: (``aux_texts``) a text count other than the class count, or a
            ``None`` for a class that is not the background.
    """
    if len(aux_texts) != queries.num_classes:
        raise InvalidValue(
            "aux_texts",
            f"{{aux_texts}} needs one text per class ({queries.num_classes}), got {len(aux_texts)}",
        )
    missing = [i for i, text in enumerate(aux_texts) if text is None and i != background]
    if missing:
        raise InvalidValue(
            "aux_texts",
            f"{{aux_texts}} may be None only for the background class ({background}), "
            f"got None for class(es) {missing}",
        )


def check_classes(
    classes: Sequence[str | Sequence[str]],
    aux_texts: Sequence[str | None] | None = None,
    background: int | str | None = None,
    *,
    aux_file: str | os.PathLike | None = None,
    check_aux_names: bool = True,
) -> ClassInputs:
    """The classes, background and auxiliary texts of a call, checked (nothing is embedded).

    Args:
        classes: class names; ``"a,b"`` or ``["a", "b"]`` gives a class two names (queries).
        aux_texts: one auxiliary text per class (the background's may be ``None``).
        background: the background class: a 0-based index or any of its names.
        aux_file: auxiliary texts from a file instead (see ``load_aux_file``).
        check_aux_names: check the names of an official-format ``aux_file``.

    Raises:
        InvalidArgument: a background that is no class, auxiliary texts or an ``aux_file``
            that do not fit the classes, no ``aux_file`` there.
        ValueError: no class, an empty or duplicate name, both ``aux_texts`` and ``aux_file``.
    """
    if aux_file is not None and aux_texts is not None:
        raise ValueError("pass aux_texts or aux_file, not both")
    queries = parse_classes(classes)
    index = check_background(background, queries)
    if aux_file is not None:
        aux_texts = load_aux_file(aux_file, classes, index, check_aux_names)
    if aux_texts is None:
        return ClassInputs(queries, None, index)
    check_aux_texts(aux_texts, queries, index)
    return ClassInputs(queries, tuple(aux_texts), index)
