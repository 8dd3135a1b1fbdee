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
def images() -> torch.Tensor:
    """Two smooth, non-square test images (B, 3, 128, 192) in [0, 1]."""
    ys = torch.linspace(0, 1, 128)[:, None]
    xs = torch.linspace(0, 1, 192)[None, :]
    first = torch.stack([ys * xs, (1 - ys) * xs, 0.5 + 0.4 * torch.sin(8 * xs + 3 * ys)])
    second = torch.stack([xs.expand(128, 192), ys.expand(128, 192), 0.5 * (xs + ys)])
    return torch.stack([first, second]).clamp(0, 1)
