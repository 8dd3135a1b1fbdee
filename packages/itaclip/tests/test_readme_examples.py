"""Every example of the README works as written (issue 33, item 4).

Shell blocks (``common_kernels.runtime.testing.shell_examples``): a ``run`` block runs line by line
in
bash, from a folder outside the clone holding the files the examples name (``photo.jpg``,
``more/*.png``, ``photos/`` with a subfolder, ``aux.json``, ``defs.txt``; synthesised here), with
the venv's ``itaclip`` on the PATH; each command must exit 0, and what it wrote is checked
(every image's overlay and label map, at the right size; the tiny model's files). A ``check``
block (hub weights, datasets, GPUs, pip) is given to the parsers instead: ``itaclip``'s, the
benchmark script's, noxfile.py's sessions; pip lines are resolved by the repository's
tests/test_install.py. Python blocks run too: the quickstart (saving included) with the tiny
model the README names, then the LLM example with a tiny random GPT-2 in the 8B model's place.
"""

from __future__ import annotations

import glob
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common_kernels.runtime import testing
from common_kernels.runtime.batch import find_images
from common_kernels.runtime.cli import UsageError
from common_kernels.runtime.photos import read_photo
from common_kernels.runtime.testing import ShellExample, example_params, program_words
from itaclip.cli import build_parser, main
from itaclip.tiny import CONFIG_FILE, WEIGHTS_FILE
from itaclip.viz import LEGEND_WIDTH

# The README's guides, API reference, command details and speed moved to docs pages (issue 52).
DOC_NAMES = ("api", "guide", "cli", "benchmarks", "development", "batch-jobs")
PACKAGE, REPOSITORY, README, DOCS, PAGES, EXAMPLES = testing.package_pages(__file__, DOC_NAMES)
PYTHON_MARKER = re.compile(r"<!--\s*python example:\s*check\s*\((.+)\)\s*-->")


def python_blocks() -> list[tuple[str, str, str]]:
    """("page:line" of the fence, code, reason to check it: "" to run it) of every python block
    of the README and its docs pages, in that order."""
    found = []
    for page in PAGES:
        found += page_python_blocks(page)
    return found


def page_python_blocks(page: Path) -> list[tuple[str, str, str]]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found = []
    for index, line in enumerate(lines):
        if line.strip() == "```python":
            end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
            marker = PYTHON_MARKER.fullmatch(lines[index - 1].strip()) if index else None
            found.append(
                (f"{page.name}:{index + 1}", "\n".join(lines[index + 1 : end]),
                 marker[1] if marker else "")
            )  # fmt: skip
    return found


def save_image(path: Path, height: int, width: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder outside the clone with the files the README's examples name."""
    work = tmp_path / "work"
    save_image(work / "photo.jpg", 60, 80, 0)
    save_image(work / "more" / "a.png", 48, 40, 1)
    save_image(work / "more" / "b.png", 36, 52, 2)
    save_image(work / "photos" / "p1.jpg", 40, 56, 3)
    save_image(work / "photos" / "2024" / "p2.png", 44, 36, 4)
    save_image(work / "street.jpg", 72, 96, 5)
    aux = {"lm": "meta-llama/Meta-Llama-3-8B-Instruct", "kind": "definition",
           "classes": ["cat", "dog"], "texts": ["a small pet", "a loyal pet"]}  # fmt: skip
    (work / "aux.json").write_text(json.dumps(aux))
    (work / "defs.txt").write_text("cat >= a small pet\ndog >= a loyal pet\n")
    (work / "my_definitions.txt").write_text("car >= a road vehicle\nperson >= a human being\n")
    return work


def environment(tmp_path: Path) -> dict[str, str]:
    """The venv's scripts first on the PATH, caches in tmp_path, no hub, one thread."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip


def logical_lines(code: str) -> list[str]:
    """The block's command lines, continuation lines joined; comments and blanks left out."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [
        line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def expand(words: list[str], cwd: Path) -> list[str]:
    """Glob patterns expanded as bash does (relative to ``cwd``)."""
    expanded = []
    for word in words:
        matches = sorted(glob.glob(word, root_dir=cwd)) if any(c in word for c in "*?[") else []
        expanded += matches or [word]
    return expanded


def check_written(words: list[str], cwd: Path) -> None:
    """What an ``itaclip`` command of a run block wrote."""
    args = build_parser().parse_args(words[1:])
    if args.command == "tiny-model":
        assert {CONFIG_FILE, WEIGHTS_FILE} <= {p.name for p in (cwd / args.directory).iterdir()}
        return
    assert args.command == "segment", words
    classes = len(args.classes.split(","))
    listing = find_images([cwd / image for image in args.images], recursive=args.recursive)
    for image in listing.images:
        folder = cwd / args.output / image.relative.parent
        with Image.open(folder / f"{image.relative.stem}_labels.png") as labels_file:
            labels = np.asarray(labels_file)
        expected = args.output_size or read_photo(image.path).size
        assert labels.shape == tuple(expected) and labels.dtype == np.uint8
        assert labels.max() < classes
        with Image.open(folder / f"{image.relative.stem}_overlay.png") as overlay:
            assert overlay.size[0] == expected[1] + LEGEND_WIDTH
            assert overlay.size[1] >= expected[0] and overlay.mode == "RGB"


def check_command(words: list[str], example: ShellExample) -> None:
    """A command of a check block, given to the parser that would run it."""
    words = program_words(words)
    if words[0] == "itaclip":
        try:
            build_parser().parse_args(words[1:])
        except UsageError as error:
            pytest.fail(f"{example.id}: {shlex.join(words)}: {error}")
    elif words[0] == "python":
        script = REPOSITORY / words[1]
        assert script.is_file(), f"{example.id}: no script {words[1]}"
        testing.load_script(script, f"readme_{script.stem}").build_parser().parse_args(
            words[2:]
        )  # SystemExit(2) on a bad flag
    elif words[0] == "nox":
        session = words[words.index("-s") + 1]
        packages = {p.parent.name for p in REPOSITORY.glob("packages/*/pyproject.toml")}
        assert session in testing.nox_sessions(REPOSITORY) | packages, session
    else:
        assert words[:2] == ["pip", "install"], f"{example.id}: cannot check {words}"
        assert "test_install.py" in example.reason  # resolved there with pip --dry-run


def test_the_readme_has_its_examples():
    modes = [example.mode for example in EXAMPLES]
    assert modes.count("run") == modes.count("slow") == 1 and modes.count("check") == 9
    assert [reason != "" for _, _, reason in python_blocks()] == [False, True]


@pytest.mark.parametrize(
    "example", example_params(EXAMPLES, "run") + example_params(EXAMPLES, "check")
)
def test_shell_example(example: ShellExample, workdir: Path, tmp_path: Path):
    if example.mode == "check":
        assert example.reason
        for words in example.commands():
            check_command(words, example)
        return
    env = environment(tmp_path)
    assert not workdir.is_relative_to(REPOSITORY)
    for line in logical_lines(example.code):
        done = subprocess.run(["bash", "-c", line], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, f"{example.id}: {line}\n{done.stderr}"
        check_written(expand(program_words(shlex.split(line, comments=True)), workdir), workdir)


def test_python_quickstart_and_llm_example(workdir, tmp_path, monkeypatch, make_tiny_lm):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["tiny-model", "tiny-clip/"]) == 0  # as the README says
    (line, quickstart, _), (llm_line, llm, reason) = python_blocks()
    namespace: dict = {}
    exec(compile(quickstart, line, "exec"), namespace)
    result, image = namespace["result"], namespace["image"]
    assert image.size == (72, 96)
    with Image.open("street_labels.png") as labels:
        saved = np.asarray(labels)
    first = namespace["segmenter"](
        image, classes=["car", "person,pedestrian", "road", "sky", "tree"]
    )
    assert np.array_equal(saved, first.labels.numpy())  # what save_labels wrote
    with Image.open("street_overlay.png") as overlay:
        assert overlay.size[0] == 96 + 180 and overlay.size[1] >= 72
    assert [r.labels.shape for r in namespace["results"]] == [(240, 320)] * 2
    assert namespace["voc"].probs.shape == (21, 72, 96)
    assert result.query_logits.shape == (6, 480, 640) and result.labels.shape == (480, 640)
    assert result.query_names == ("background", "sky", "wall", "car", "person", "pedestrian")

    # the LLM example, with a tiny random GPT-2 given in place of the hub's 8B model
    assert "8B LLM" in reason
    from itaclip.generate import AuxTextGenerator, SamplingConfig

    words = "a an the of house building people live zebra animal with stripes horse"
    model, tokenizer = make_tiny_lm(words)
    real = inspect.signature(AuxTextGenerator.from_pretrained)
    asked = []

    def tiny_lm(*args, **kwargs):
        asked.append(real.bind(*args, **kwargs).arguments)  # the README's call fits the API
        return AuxTextGenerator(model, tokenizer, SamplingConfig(max_new_tokens=8))

    monkeypatch.setattr(AuxTextGenerator, "from_pretrained", tiny_lm)
    exec(compile(llm, llm_line, "exec"), namespace)
    assert asked == [{"name": "meta-llama/Meta-Llama-3-8B-Instruct",
                      "model_kwargs": {"torch_dtype": "auto"}}]  # fmt: skip
    assert len(namespace["definitions"]) == len(namespace["synonyms"]) == 2
    assert namespace["result"].class_names == ("house", "zebra")
