"""Every shell example of the README runs as written, from a folder outside the clone holding the
files it names (synthesised here: a 391 x 586 zebra.png, whose size is no multiple of 32, and a
folder of photos), with the tiny models the README names; so do the Python quickstarts, saving
included (issue 33, item 4). Blocks marked ``<!-- example: check (reason) -->`` (hub weights on a
GPU, benchmarks, installs) are checked without running them through: every ``diffeat`` command
is parsed by the command's own parser, every script exists and takes the flags given, every nox
session exists."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common_kernels.runtime import testing
from common_kernels.runtime.testing import ShellExample, example_params, program_words
from diffeat import PRESETS
from diffeat.cli import build_parser
from diffeat.configs import save_tiny_model
from diffeat.io import load_features

# The README's guides, API reference, app and benchmarks moved to docs pages (issue 52).
DOC_NAMES = ("api", "guide", "cli", "benchmarks", "development", "batch-jobs")
PACKAGE, REPOSITORY, README, DOCS, PAGES, EXAMPLES = testing.package_pages(__file__, DOC_NAMES)
BIN = Path(sys.executable).parent
OURS_XL = list(PRESETS["ours-xl"].layers)


def image(path: Path, size: tuple[int, int], seed: int = 0) -> None:
    """A random RGB image of (height, width), saved with Pillow (format by suffix)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``diffeat tiny-model tiny-xl --kind sdxl`` and ``tiny-sd15 --kind sd15``, made once."""
    folder = tmp_path_factory.mktemp("tiny_models")
    save_tiny_model(str(folder / "tiny-xl"), "sdxl")
    save_tiny_model(str(folder / "tiny-sd15"), "sd15")
    return folder


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The images the examples name, in a folder outside the clone."""
    image(tmp_path / "zebra.png", (391, 586))
    image(tmp_path / "horse.jpg", (300, 400), seed=1)
    image(tmp_path / "a.png", (64, 64), seed=2)
    for index, name in enumerate(("photos/a.png", "photos/b.png", "photos/sub/c.png")):
        image(tmp_path / name, (48 + 16 * index, 80), seed=3 + index)
    return tmp_path


def with_models(workdir: Path, tiny_models: Path, commands: list[list[str]] = ()) -> None:
    """Copy the tiny models into ``workdir``, except those ``commands`` write themselves."""
    written = {words[2] for words in map(program_words, commands) if words[1:2] == ["tiny-model"]}
    for name in ("tiny-xl", "tiny-sd15"):
        if name not in written:
            shutil.copytree(tiny_models / name, workdir / name)


def check_outputs(workdir: Path) -> None:
    """What the README's run blocks write, where they wrote it."""
    if (workdir / "feats.safetensors").exists():  # the first block: zebra.png at 1024 x 1024
        features, meta = load_features(workdir / "feats.safetensors")
        assert list(features) == OURS_XL and meta["image_size"] == [1024, 1024]
        assert features[OURS_XL[0]].shape == (1, 16, 32, 32)
        pngs = sorted((workdir / "pca").iterdir())
        assert [p.name for p in pngs] == sorted(f"zebra__{name}.png" for name in OURS_XL)
        assert Image.open(pngs[0]).size == (1024, 1024)
        assert list(json.loads((workdir / "probe.json").read_text())) == OURS_XL
    if (workdir / "photos.safetensors").exists():  # the folder block
        features, meta = load_features(workdir / "photos.safetensors")
        assert meta["images"] == ["photos/a.png", "photos/b.png"]  # photos/sub/c.png left out
        assert features[OURS_XL[0]].shape == (2, 16, 32, 32)
        pngs = sorted(p.relative_to(workdir / "pca-photos") for p in
                      (workdir / "pca-photos").rglob("*.png"))  # fmt: skip
        stems = ("a", "b", "sub/c")
        layers = ("unet-in", "up-level1-repeat0-vit-block0-out")
        assert pngs == sorted(Path(f"{s}__{layer}.png") for s in stems for layer in layers)
        assert Image.open(workdir / "pca-photos" / "sub" / "c__unet-in.png").size == (64, 64)


@pytest.mark.parametrize("example", example_params(EXAMPLES, "run"))
def test_shell_example_runs_as_written(
    example: ShellExample, workdir: Path, tiny_models: Path
) -> None:
    with_models(workdir, tiny_models, example.commands())
    done = testing.run_shell_block(example.code, workdir, check=True)
    for target in testing.option_values(example.commands(), "-o"):
        path = workdir / target
        assert path.exists(), target
        assert path.is_file() or any(path.rglob("*.png")), target
    check_outputs(workdir)
    if "--skip-existing" in example.code:  # the resumed run found nothing left to do
        assert "wrote 0 PNGs to pca-photos" in done.stdout
        assert "left out 3 image(s) whose PNGs exist (--skip-existing)" in done.stderr


def check_diffeat(words: list[str]) -> None:
    """``diffeat ...`` as the command's parser reads it (every flag and choice exists)."""
    args = build_parser().parse_args(words[1:])
    assert args.command == words[1]


@pytest.mark.parametrize("example", example_params(EXAMPLES, "check"))
def test_checked_example_uses_what_exists(example: ShellExample) -> None:
    testing.check_example_commands(example, REPOSITORY, {"diffeat": check_diffeat})


def python_blocks() -> dict[str, str]:
    """The runnable Python blocks by section: the README's quickstart and the checks (in
    docs/api.md)."""
    blocks = {}
    for page, heading in ((README, "## Quickstart"), (DOCS[0], "## Checks before any weights")):
        text = page.read_text(encoding="utf-8")
        section = text[text.index(f"\n{heading}") :]
        blocks[heading] = re.search(r"```python\n(.*?)```", section, re.S)[1]
    return blocks


@pytest.mark.parametrize("heading", list(python_blocks()))
def test_python_quickstart_runs_and_saves(
    heading: str, workdir: Path, tiny_models: Path, monkeypatch
) -> None:
    code = python_blocks()[heading]
    with_models(workdir, tiny_models)
    monkeypatch.chdir(workdir)
    saved = re.findall(r"(?:save_features|write_features)\(\"([^\"]+)\"", code)
    assert saved, "the quickstart saves its result"
    exec(compile(code, heading, "exec"), {})
    features, _ = load_features(workdir / saved[0])
    if heading == "## Quickstart":  # horse.jpg resized to the preset's 1024 x 1024
        assert sorted(features) == sorted(OURS_XL)
        assert features[OURS_XL[0]].shape == (1, 16, 32, 32)
    else:  # a.png and the 2 images of photos/, at image_size=64
        assert list(features) == ["unet-in"] and features["unet-in"].shape == (3, 4, 8, 8)


def test_every_example_is_a_run_or_a_check_with_a_reason() -> None:
    modes = [(e.mode, bool(e.reason)) for e in EXAMPLES]
    assert ("run", False) in modes and all(mode == "run" or why for mode, why in modes)
    assert not [e.id for e in EXAMPLES if "../shared" in e.code]  # runs anywhere
    shutil.which("bash") or pytest.fail("bash is needed to run the examples")
