"""The official auxiliary-text file format: ``name >=text`` lines, one per non-background class."""

from __future__ import annotations

import re

import pytest

from itaclip import AuxEntry, load_aux_texts, read_aux_file, write_aux_file
from itaclip.auxfile import aux_texts_for_classes, parse_aux_lines

CLASSES = ["background,sky,wall", "aeroplane,airplane", "bicycle", "bird"]


def exact(message: str) -> str:
    return f"^{re.escape(message)}$"


def test_read_official_lines(tmp_path):
    path = tmp_path / "defs.txt"
    path.write_bytes(
        "\ufeffaeroplane >= a powered flying vehicle\r\n"
        "\n"
        "bicycle>=a two-wheeled vehicle (speed >= walking)\n"
        "  bird >=   a feathered animal  \n"
        "   \n".encode()
    )
    entries = read_aux_file(path)
    assert entries == [
        AuxEntry("aeroplane", "a powered flying vehicle", 1),
        AuxEntry("bicycle", "a two-wheeled vehicle (speed >= walking)", 3),  # first '>=' splits
        AuxEntry("bird", "a feathered animal", 4),
    ]
    texts = load_aux_texts(path, CLASSES, background=0)
    assert texts == [
        None,
        "a powered flying vehicle",
        "a two-wheeled vehicle (speed >= walking)",
        "a feathered animal",
    ]


def test_names_match_any_synonym_case_insensitively():
    entries = parse_aux_lines("Airplane >= a plane\nBICYCLE >= a bike\nbird >= a bird\n")
    texts = aux_texts_for_classes(entries, CLASSES, background=0)
    assert texts == [None, "a plane", "a bike", "a bird"]
    # without a background every class needs a line, the first included
    entries = parse_aux_lines("sky >= the air\nplane >= a jet\nbicycle >= b\nbird >= c\n")
    with pytest.raises(ValueError, match=re.escape("<aux texts>:2: expected a text for class 1")):
        aux_texts_for_classes(entries, CLASSES)
    texts = aux_texts_for_classes(entries, CLASSES, check_names=False)
    assert texts == ["the air", "a jet", "b", "c"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "aeroplane >= a plane\nbicycle: a bike\n",
            "F:2: expected 'name >=text' (a class name, '>=', its auxiliary text), found no "
            "'>=' in 'bicycle: a bike'",
        ),
        (
            "aeroplane >= a plane\n\n  >= a bike\n",
            "F:3: expected a class name before '>=' in '  >= a bike'",
        ),
        ("aeroplane >=   \n", "F:1: expected an auxiliary text after '>=' for class 'aeroplane'"),
    ],
)
def test_malformed_lines(tmp_path, content, message):
    path = tmp_path / "aux.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=exact(message.replace("F:", f"{path}:"))):
        read_aux_file(path)
    with pytest.raises(ValueError, match=exact(message.replace("F:", f"{path}:"))):
        load_aux_texts(path, CLASSES, background=0)


def test_count_and_name_mismatches(tmp_path):
    path = tmp_path / "aux.txt"
    path.write_text("aeroplane >= a plane\nbicycle >= a bike\n")
    with pytest.raises(
        ValueError,
        match=exact(
            f"{path} has 2 auxiliary texts but there are 3 non-background classes (aeroplane, "
            "bicycle, bird); expected one 'name >=text' line per non-background class, in class "
            "order"
        ),
    ):
        load_aux_texts(path, CLASSES, background=0)
    path.write_text("")
    with pytest.raises(
        ValueError,
        match=exact(
            f"{path} has 0 auxiliary texts but there are 4 classes (background, aeroplane, "
            "bicycle, bird); expected one 'name >=text' line per class, in class order"
        ),
    ):
        load_aux_texts(path, CLASSES)
    path.write_text("aeroplane >= a plane\nbird >= a bird\nbicycle >= a bike\n")
    with pytest.raises(
        ValueError,
        match=exact(
            f"{path}:2: expected a text for class 2 'bicycle' (names: bicycle), found 'bird'; "
            "lines must follow the class order"
        ),
    ):
        load_aux_texts(path, CLASSES, background=0)
    texts = load_aux_texts(path, CLASSES, background=0, check_names=False)
    assert texts == [None, "a plane", "a bird", "a bike"]
    with pytest.raises(ValueError, match=exact("background must index a class in [0, 4), got 4")):
        load_aux_texts(path, CLASSES, background=4)


def test_write_then_read_round_trip(tmp_path):
    path = write_aux_file(
        tmp_path / "sub" / "syn.txt", ["cat", "dog"], ["a feline", "a canine >= wolf"]
    )
    assert path.read_text() == "cat >= a feline\ndog >= a canine >= wolf\n"
    assert load_aux_texts(path, ["cat", "dog"]) == ["a feline", "a canine >= wolf"]
    with pytest.raises(ValueError, match=exact("need one text per name, got 2 names and 1 texts")):
        write_aux_file(path, ["cat", "dog"], ["a feline"])
    with pytest.raises(ValueError, match=re.escape("cannot write class 'a>=b'")):
        write_aux_file(path, ["a>=b"], ["x"])
    with pytest.raises(ValueError, match=re.escape("cannot write class 'cat'")):
        write_aux_file(path, ["cat"], ["two\nlines"])
    assert path.read_text() == "cat >= a feline\ndog >= a canine >= wolf\n"  # left intact
