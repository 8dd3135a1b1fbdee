"""Every shell example of the README runs as written, from a folder outside the clone holding the
files it names, and so do the Python quickstarts (issue 33, item 4). Blocks marked
``<!-- example: check (reason) -->`` (training for hours, benchmarks, installs) are checked
without running them through: every ``semanir`` flag they use is one the command offers, every
script they run exists and takes the flags given. The docs pages the README's long sections
moved to (``DOCS``) are tested the same way."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common_kernels.runtime import testing
from common_kernels.runtime.photos import read_photo
from common_kernels.runtime.testing import ShellExample, example_params, package_pages
from semanir.models import build_model

# The README's guides, API reference, results and benchmarks (issue 52), the GPU recipe, and
# batch jobs beyond one machine (issue 61).
DOC_NAMES = ("cli", "guide", "api", "results", "benchmarks", "training", "batch-jobs")
PACKAGE, REPOSITORY, README, DOCS, PAGES, EXAMPLES = package_pages(__file__, DOC_NAMES)
PYTHON_BLOCKS = [(page, code) for page in PAGES for code in testing.python_blocks(page)]
BIN = Path(sys.executable).parent


def image(path: Path, size: tuple[int, int], channels: int = 1, seed: int = 0, **save) -> None:
    """A smooth ramp with noise, (height, width), saved with Pillow."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 210, size[1])[None, :, None] * np.ones((*size, channels))
    pixels = np.clip(ramp + rng.normal(0, 15, ramp.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path, **save)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The files the examples name, in a folder outside the clone."""
    for name, channels in (("noisy.png", 1), ("big.png", 1), ("clean.png", 1), ("small.png", 3)):
        image(tmp_path / name, (40, 48), channels)
    image(tmp_path / "photo.jpg", (40, 48), 3, quality=40)
    for name in ("photos/a.png", "photos/b.png", "photos/sub/c.png", "scans/s1.png",
                 "set12/01.png", "set12/02.png"):  # fmt: skip
        image(tmp_path / name, (32, 32), seed=len(name))
    torch.manual_seed(0)
    build_model("semanir_test_tiny_unet").save_pretrained(tmp_path / "my_model")
    return tmp_path


@pytest.mark.parametrize("example", example_params(EXAMPLES, "run"))
def test_shell_example_runs_as_written(example: ShellExample, workdir: Path) -> None:
    testing.run_shell_block(example.code, workdir, check=True)
    for target in testing.option_values(example.commands(), "-o"):
        path = workdir / target
        assert path.exists(), target
        if path.is_file():
            assert min(read_photo(path).size) >= 32, target  # an image, decoded
    if "small_x4.png" in example.code:  # the README's block
        assert read_photo(workdir / "small_x4.png").size == (160, 192)  # x4
        assert read_photo(workdir / "clean.png").channels == 3  # photo.jpg kept its colour
        assert "set12.csv" in os.listdir(workdir)
    if "--check-shards" in example.code:  # docs/batch-jobs.md: two shards, then the check
        restored = sorted(p.relative_to(workdir / "restored") for p in
                          (workdir / "restored").rglob("*.png"))  # fmt: skip
        assert restored == [Path("a.png"), Path("b.png"), Path("sub/c.png")]
        assert sorted(p.name for p in (workdir / "restored" / ".shards").iterdir()) == [
            "shard-00000-of-00002.jsonl", "shard-00001-of-00002.jsonl"]  # fmt: skip


@cache
def offered_flags(command: str) -> str:
    """The ``--help`` text of ``semanir COMMAND``."""
    done = subprocess.run([str(BIN / "semanir"), command, "--help"], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def check_semanir(words: list[str]) -> None:
    flags = [w.split("=")[0] for w in words[2:] if w.startswith("--")]
    text = offered_flags(words[1])
    missing = [f for f in flags if not re.search(rf"(?<![\w.-]){re.escape(f)}(?![\w-])", text)]
    assert not missing, f"semanir {words[1]} does not offer {missing}"
    if "--config" in words:
        name = words[words.index("--config") + 1]
        assert (PACKAGE / "src" / "semanir" / "configs" / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("example", example_params(EXAMPLES, "check"))
def test_checked_example_uses_what_exists(example: ShellExample) -> None:
    checks = {"semanir": check_semanir}
    testing.check_example_commands(
        example, REPOSITORY, checks, unchecked={"mkdir", "git", "sbatch", "ray"}
    )


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)),
                         ids=lambda i: f"{PYTHON_BLOCKS[i][0].name}-{i}")  # fmt: skip
def test_python_quickstart_runs_and_saves(index: int, workdir: Path, monkeypatch) -> None:
    page, code = PYTHON_BLOCKS[index]
    monkeypatch.chdir(workdir)
    saved = re.findall(r"write_(?:image|photo)\(\"([^\"]+)\"", code)
    assert saved, "the quickstart saves its result"
    for name in saved:
        (workdir / name).unlink(missing_ok=True)
    exec(compile(code, f"{page.name} python block {index}", "exec"), {})
    for name in saved:
        assert read_photo(workdir / name).size == (40, 48)


def test_every_example_is_a_run_or_a_check_with_a_reason() -> None:
    """The CLI block runs as written (in the slow lane: a minute of restores); every block that
    is not a plain run says why."""
    assert all(page.is_file() for page in DOCS), DOCS
    modes = [(e.mode, bool(e.reason)) for e in EXAMPLES]
    assert ("slow", True) in modes and all(mode == "run" or why for mode, why in modes)
    shutil.which("bash") or pytest.fail("bash is needed to run the examples")
