"""Tiny random SD 1.5- and SDXL-shaped diffusers pipelines built from configs (seeded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffeat import FeatureExtractor
from diffeat.configs import tiny_pipeline


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial norm affines and biases, so hooks see generic values (zeros hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


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
