"""Tiny random SD 1.5- and SDXL-shaped diffusers pipelines built from configs (seeded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffeat import FeatureExtractor
from diffeat.app import PcaPage, open_page
from diffeat.cli import main
from diffeat.configs import tiny_pipeline
from diffeat.viz import pca_rgb


def _perturb(module: torch.nn.Module, seed: int, *also: str) -> None:
    """Non-trivial norm affines and biases (and the parameters whose names hold one of
    ``also``), so hooks see generic values (zeros and ones hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias") or any(part in name for part in ("norm", *also)):
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="session")
def perturb():
    """Makes a module's weights generic in place: ``perturb(module, seed, *also)`` adds seeded
    noise to its norm affines and biases (and to the parameters named with one of ``also``)."""
    return _perturb


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny models (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``): they are per-op overhead, which extra threads
    only add to on a shared machine (40x slower at a load of 8 on 2 cores); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pipes() -> dict:
    out = {}
    for seed, kind in enumerate(("sd15", "sdxl")):
        pipe = tiny_pipeline(kind, seed=seed)
        _perturb(pipe.unet, seed)
        out[kind] = pipe
    return out


@pytest.fixture(scope="session")
def model_dirs(pipes, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``save_pretrained`` folders of the tiny pipelines (for from_pretrained and the CLI)."""
    out = {}
    for kind, pipe in pipes.items():
        folder = tmp_path_factory.mktemp(f"tiny_{kind}")
        pipe.save_pretrained(folder, safe_serialization=True)
        out[kind] = folder
    return out


@pytest.fixture
def make_extractor(pipes):
    def make(kind: str, **options) -> FeatureExtractor:
        return FeatureExtractor.from_pipeline(pipes[kind], **options)

    return make


@pytest.fixture
def image(tmp_path) -> Path:
    """A 32 x 48 PNG of coloured stripes, ``tmp_path / "a.png"``."""
    ys, xs = torch.meshgrid(torch.arange(32), torch.arange(48), indexing="ij")
    pixels = torch.stack([ys * 7 % 256, xs * 5 % 256, (xs + ys) * 3 % 256], -1).to(torch.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(pixels.numpy()).save(path)
    return path


@pytest.fixture
def refused(capsys):
    """Checks that ``main(argv)`` exits 2 with one line ``diffeat COMMAND: error: LINE...``."""

    def check(argv: list[str], line: str) -> None:
        assert main(argv) == 2, line
        err = capsys.readouterr().err
        assert err.startswith(f"diffeat {argv[0]}: error: {line}"), err
        assert err.count("\n") == 1

    return check


@pytest.fixture
def tiny_page(tmp_path):
    """Makes the 32 x 48 px page of a ``diffeat tiny-model --kind KIND`` folder, checked to say
    that its weights are random, to select the first two names (no preset) and to state the
    timestep."""

    def make(kind: str) -> PcaPage:
        folder = tmp_path / "tiny"
        assert main(["tiny-model", str(folder), "--kind", kind]) == 0
        page = open_page(folder, image_size=(32, 48), device="cpu")
        assert page.note == (
            f"Model: `{folder}`. Its weights are random (written by `diffeat tiny-model --kind "
            f"{kind} --seed 0`), so its features are noise."
        )
        assert page.default_layers == page.choices[:2]  # no preset: the catalogue's first two
        assert page.noise == "Noise level: timestep 50."
        return page

    return make


@pytest.fixture(scope="session")
def page_pca():
    """Runs a page on a photo for one layer: checks its image against the PCA of the
    extractor's feature and returns the labels shown and the feature."""

    def run(page: PcaPage, layer: str) -> tuple[list[str], torch.Tensor]:
        photo = Image.new("RGB", (56, 40), (200, 30, 90))
        shown = page.run(photo, [layer], "a cat")
        feature = page.extractor(photo, "a cat", layers=[layer])[layer]
        assert np.array_equal(np.asarray(shown[0][0]), pca_rgb(feature, (32, 48))[0])
        return [label for _, label in shown], feature

    return run


@pytest.fixture(scope="session")
def smooth_images():
    """Makes two smooth test images (2, 3, height, width) in [0, 1]."""

    def make(height: int, width: int) -> torch.Tensor:
        ys = torch.linspace(0, 1, height)[:, None]
        xs = torch.linspace(0, 1, width)[None, :]
        first = torch.stack([ys * xs, (1 - ys) * xs, 0.5 + 0.4 * torch.sin(8 * xs + 3 * ys)])
        second = torch.stack([xs.expand(height, width), ys.expand(height, width), 0.5 * (xs + ys)])
        return torch.stack([first, second]).clamp(0, 1)

    return make


@pytest.fixture
def images(smooth_images) -> torch.Tensor:
    """Two smooth, non-square test images (B, 3, 128, 192) in [0, 1]."""
    return smooth_images(128, 192)


@pytest.fixture(scope="session")
def vit_block_names():
    """Makes the activation names of one transformer block, in execution order, under a prefix
    (``down-level0-repeat0-vit-block0``)."""
    kinds = ("self-q", "self-k", "self-v", "self-map", "cross-q", "cross-map", "ffn-inner", "out")

    def names(prefix: str) -> list[str]:
        return [f"{prefix}-{kind}" for kind in kinds]

    return names
