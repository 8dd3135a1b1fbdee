"""The API owns the checks (issue 25): the options of ``run``, ``chat``, ``app`` and ``eval``
are checked by :mod:`vitron.options` before any model loads, and the API and the command give
the same message, each naming the argument its own way."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common_kernels.runtime.errors import InvalidArgument
from vitron import Assistant, Box, Region, Stroke
from vitron.cli import FLAGS, main
from vitron.options import (
    AssistantOptions,
    check_port,
    parse_regions,
    parse_settings,
    read_specialists_file,
)
from vitron.specialists import SpecialistRegistry
from vitron.tiny import tiny_model


@pytest.fixture
def image() -> Image.Image:
    return Image.fromarray(np.zeros((48, 64, 3), np.uint8))


@pytest.fixture
def image_file(tmp_path, image):
    path = tmp_path / "img.png"
    image.save(path)
    return path


def api_and_cli(call) -> tuple[str, str]:
    """The API's message (names as arguments) and the one the command prints with its flags."""
    with pytest.raises(InvalidArgument) as caught:
        call()
    return str(caught.value), caught.value.for_flags(FLAGS)


@pytest.mark.parametrize(
    ("kind", "text", "api", "cli"),
    [
        ("box", "0,0,100000,100000", "box 0,0,100000,100000 lies outside the 64x48 image",
         "--box 0,0,100000,100000 lies outside the 64x48 image"),
        ("box", "-1,0,10,10", "box -1,0,10,10 lies outside the 64x48 image",
         "--box -1,0,10,10 lies outside the 64x48 image"),
        ("stroke", "1,2 70,2", "stroke 1,2 70,2 lies outside the 64x48 image",
         "--stroke 1,2 70,2 lies outside the 64x48 image"),
        ("box", "0,0,10,10@1", "box refers to image 1, but 1 image(s) were given",
         "--box refers to image 1, but 1 image(s) were given"),
        ("box", "0,0,10", "box 0,0,10: box must be four numbers 'x1,y1,x2,y2', got '0,0,10'",
         "--box 0,0,10: box must be four numbers 'x1,y1,x2,y2', got '0,0,10'"),
    ],
)  # fmt: skip
def test_regions_outside_the_image_same_message_from_api_and_cli(
    kind, text, api, cli, image, image_file, tmp_path, capsys
):
    texts = {"boxes": [text]} if kind == "box" else {"strokes": [text]}
    assert api_and_cli(lambda: parse_regions([image], **texts)) == (api, cli)
    argv = ["run", "x", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "out"),
            "--image", str(image_file), f"--{kind}={text}"]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == f"vitron run: error: {cli}\n"


def test_regions_inside_the_image_pass(image):
    regions = parse_regions([image], boxes=["0,0,64,48", "0,0,1,1"], strokes=["0,0 64,48"])
    assert [r.shape for r in regions] == [
        Box(0, 0, 64, 48), Box(0, 0, 64, 48), Stroke(((0.0, 0.0), (64.0, 48.0)), 8.0)
    ]  # fmt: skip


def test_assistant_refuses_a_region_outside_its_image(image, tmp_path):
    assistant = Assistant(tiny_model(seed=0), SpecialistRegistry(), tmp_path)
    region = Region(Box(0, 0, 100, 10))
    with pytest.raises(ValueError) as caught:
        assistant.chat("x", images=[image], regions=[region])
    assert str(caught.value) == f"regions[0] {region.shape} lies outside the 64x48 image"
    assert assistant.messages == []  # nothing of the refused turn stays


@pytest.mark.parametrize(
    ("options", "api", "cli"),
    [
        ({"max_rounds": 0}, "max_rounds must be >= 1, got 0", "--max-rounds must be >= 1, got 0"),
        ({"top_p": 5.0}, "top_p must be in (0, 1], got 5.0", "--top-p must be in (0, 1], got 5.0"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0, got 0.0",
         "--temperature must be a finite number > 0, got 0.0"),
        ({"seed": -1}, "seed must be in [0, 4294967295], got -1",
         "--seed must be in [0, 4294967295], got -1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1, got 0",
         "--max-new-tokens must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_assistant_options_same_message_from_api_and_cli(options, api, cli, tmp_path, capsys):
    def make():
        return AssistantOptions("m", tmp_path / "out", **options)

    assert api_and_cli(make) == (api, cli)
    flag = FLAGS[next(iter(options))]
    argv = ["run", "x", "--model", "m", "-o", str(tmp_path / "out"), flag,
            str(next(iter(options.values())))]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == f"vitron run: error: {cli}\n"


def test_settings_specialists_and_port_name_the_argument(tmp_path):
    assert api_and_cli(lambda: parse_settings(["itaclip=3"])) == (
        "settings takes ADAPTER.OPTION=VALUE, got 'itaclip=3'",
        "--set takes ADAPTER.OPTION=VALUE, got 'itaclip=3'",
    )
    missing = tmp_path / "nope.json"
    assert api_and_cli(lambda: read_specialists_file(missing)) == (
        f"specialists {missing} does not exist",
        f"--specialists {missing} does not exist",
    )
    assert api_and_cli(lambda: check_port(0)) == (
        "port must be in [1, 65535], got 0",
        "--port must be in [1, 65535], got 0",
    )
