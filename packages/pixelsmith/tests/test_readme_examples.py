"""Every shell example of the README runs as written, with the tiny model it names, from a folder
outside the clone (issue 33, item 4), and so does the Python quickstart on the tiny model, saving
included. Blocks marked ``<!-- example: check (reason) -->`` (SDXL weights from the hub, GPUs,
benchmarks of tens of minutes, installs) are checked without running them: every ``pixelsmith``
command (also under ``torchrun -m``) and every benchmark script's command is parsed by its own
argument parser, every nox session exists. The other Python examples compile and their imports
resolve."""

from __future__ import annotations

import ast
import re
import shutil
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from common_kernels.runtime import testing
from common_kernels.runtime.files import parse_size
from common_kernels.runtime.testing import ShellExample, example_params, program_words
from pixelsmith.cli import build_parser
from pixelsmith.tiny import save_tiny_model

# The README's guides, API reference, app and benchmarks moved to docs pages (issue 52).
DOC_NAMES = ("api", "guide", "cli", "benchmarks", "development")
PACKAGE, REPOSITORY, README, DOCS, PAGES, EXAMPLES = testing.package_pages(__file__, DOC_NAMES)
BIN = Path(sys.executable).parent
TINY = "tiny-sdxl"  # the folder the examples name: ./tiny-sdxl
LIBRARY_CHATTER = ("Loading pipeline components", "Writing model shards", "FutureWarning")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("readme") / TINY, seed=0)


@pytest.fixture
def workdir(tmp_path: Path, tiny_model: Path) -> Path:
    """A folder outside the clone holding what the examples name: ``./tiny-sdxl``."""
    assert REPOSITORY not in tmp_path.resolve().parents
    shutil.copytree(tiny_model, tmp_path / TINY)
    return tmp_path


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of a written image, decoded."""
    if path.suffix.lower() in (".tif", ".tiff"):
        return tifffile.imread(path).shape[:2]
    with Image.open(path) as image:
        return np.asarray(image).shape[:2]


def option(words: list[str], flag: str) -> list[str]:
    """The values after ``flag`` up to the next option."""
    if flag not in words:
        return []
    values = []
    for word in words[words.index(flag) + 1 :]:
        if word.startswith("-"):
            break
        values.append(word)
    return values


def expected_images(words: list[str]) -> dict[str, tuple[int, int]]:
    """What ``pixelsmith generate`` writes: ``-o`` at the last size, and with
    ``--save-intermediate`` every earlier stage as ``<stem>_<H>x<W><suffix>``."""
    sizes = [parse_size(size) for size in option(words, "--sizes")]
    output = Path(option(words, "-o")[0])
    found = {str(output): sizes[-1]}
    if "--save-intermediate" in words:
        for height, width in sizes[:-1]:
            name = f"{output.stem}_{height}x{width}{output.suffix}"
            found[str(output.with_name(name))] = (height, width)
    return found


@pytest.mark.parametrize("example", example_params(EXAMPLES, "run"))
def test_shell_example_runs_as_written(example: ShellExample, workdir: Path) -> None:
    done = testing.run_shell_block(example.code, workdir, check=True)
    assert not [text for text in LIBRARY_CHATTER if text in done.stderr], done.stderr[-3000:]
    checked = 0
    for command in example.commands():
        words = program_words(command)
        assert words[0] == "pixelsmith", f"{example.id}: {words[0]} is not pixelsmith"
        if words[1:2] == ["tiny-model"]:
            assert (workdir / words[2] / "model_index.json").is_file()
            assert f"wrote {Path(words[2])}" in done.stdout.splitlines()
        elif words[1:2] == ["generate"]:
            for name, size in expected_images(words).items():
                assert image_size(workdir / name) == size, name
            assert f"wrote {option(words, '-o')[0]}" in done.stdout.splitlines()
            assert not list(workdir.glob("*.pixelsmith")), "a finished run leaves no checkpoint"
        elif words[1:] == ["--version"]:
            version = metadata.version("pixelsmith")
            assert any(line.startswith(f"pixelsmith {version} (common-kernels ")
                       for line in done.stdout.splitlines())  # fmt: skip
        else:
            pytest.fail(f"{example.id}: no check for {words}")
        checked += 1
    assert checked == len(example.commands())
    assert not [p.name for p in workdir.iterdir() if p.name.startswith(".")]  # no temporaries


@cache
def script_parser(relative: str):
    """The ``build_parser()`` of a benchmark script of this package, loaded from its file."""
    path = REPOSITORY / relative
    assert path.is_file() and PACKAGE / "benchmarks" in path.parents, relative
    return testing.load_script(path, f"readme_{path.stem}").build_parser()


def check_command(words: list[str], reason: str) -> None:
    """Raise unless ``words`` is a command this package (or the repository) accepts."""
    if words[0] == "pixelsmith":
        build_parser().parse_args(words[1:])  # pixelsmith's Parser raises a UsageError
    elif words[0] == "torchrun":
        module = words.index("-m")
        assert words[module + 1] == "pixelsmith", words
        build_parser().parse_args(words[module + 2 :])
    elif words[0] == "python" and words[1].endswith(".py"):
        try:
            script_parser(words[1]).parse_args(words[2:])
        except SystemExit as error:  # argparse's own parser exits on a bad flag
            pytest.fail(f"{words[1]} refuses {words[2:]} (exit {error.code})")
    elif words[0] == "nox":
        assert words[1] == "-s" and words[2] in testing.nox_sessions(REPOSITORY), words
    elif words[:2] == ["pip", "install"]:
        assert "install" in reason  # resolved by the repository's tests/test_install.py
    else:
        pytest.fail(f"no check for {words}")


@pytest.mark.parametrize("example", example_params(EXAMPLES, "check"))
def test_checked_example_parses(example: ShellExample) -> None:
    commands = [program_words(command) for command in example.commands()]
    for words in commands:
        check_command(words, example.reason)
    assert commands, example.id


def examples_in_python() -> list[str]:
    """The Python blocks of the README and its docs pages that are examples (they import
    something); the others are reference listings (the API's signature)."""
    return [
        code
        for page in PAGES
        for code in testing.python_blocks(page)
        if re.search(r"^(from|import) ", code, re.M)
    ]


QUICKSTARTS = [code for code in examples_in_python() if f"./{TINY}" in code]


def test_the_readme_has_a_quickstart_on_the_tiny_model() -> None:
    assert len(QUICKSTARTS) == 1 and len(examples_in_python()) >= 4


@pytest.mark.parametrize("index", range(len(QUICKSTARTS)))
def test_python_quickstart_runs_and_saves(index: int, workdir: Path, monkeypatch) -> None:
    code = QUICKSTARTS[index]
    monkeypatch.chdir(workdir)
    saved = re.findall(r"\.save\(\"([^\"]+)\"\)", code) + re.findall(r"output=\"([^\"]+)\"", code)
    assert saved, "the quickstart saves its result"
    namespace: dict = {}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)
    for name in saved:
        assert image_size(workdir / name) == (2048, 2048), name
    assert namespace["image"].size == (2048, 2048)


@pytest.mark.parametrize("index", range(len(examples_in_python())))
def test_python_example_compiles_and_its_imports_resolve(index: int) -> None:
    code = examples_in_python()[index]
    tree = ast.parse(code)
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert imports
    exec(compile(ast.Module(imports, type_ignores=[]), "imports", "exec"), {})


def test_every_example_is_a_run_or_a_check_with_a_reason() -> None:
    modes = [(e.mode, bool(e.reason)) for e in EXAMPLES]
    assert ("run", False) in modes and all(mode == "run" or why for mode, why in modes)
    assert shutil.which("bash"), "bash is needed to run the examples"
