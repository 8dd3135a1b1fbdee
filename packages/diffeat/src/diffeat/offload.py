"""Model CPU offload: every component of an extractor (text encoders, VAE, the denoising
network and a ControlNet) stays on the CPU and goes to the execution device only while its
stage runs, as diffusers' ``enable_model_cpu_offload``: the text encoders for a prompt, the VAE
for the latent (and a faithful ``vae-out``'s decode), the network for the pass.

The moves are plain ``Module.to`` calls, one per component and stage (never one per block), so
the device holds the largest stage's weights (FLUX.1-dev: the transformer) instead of all of
them; each stage then pays one host-to-device copy of its weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

OFFLOADS = ("model",)  # the accepted values of ``offload`` (None: no offload)
OFFLOAD_DEVICE = torch.device("cpu")  # where offloaded weights wait


def move(module: nn.Module, device: torch.device) -> None:
    """Move ``module``'s weights to ``device`` (in place; every offload move goes here)."""
    module.to(device)


class ModelOffload:
    """The offload state of one extractor: its execution device and the components on it.

    Args:
        execution_device: where each stage runs.
    """

    def __init__(self, execution_device: torch.device) -> None:
        self.execution_device = torch.device(execution_device)
        self._resident: set[int] = set()  # ids of the modules moved in by an open stage

    def park(self, modules: list[nn.Module]) -> None:
        """Move ``modules`` to :data:`OFFLOAD_DEVICE` (outside any stage)."""
        for module in modules:
            move(module, OFFLOAD_DEVICE)

    @contextlib.contextmanager
    def stage(self, *modules: nn.Module | None) -> Iterator[None]:
        """``modules`` on the execution device inside the block, back on the CPU after (also
        when the block raises, e.g. early exit). Reentrant: a module an outer stage moved in
        stays there until that stage ends (DDIM inversion's passes, then the recorded one)."""
        moved = [m for m in modules if m is not None and id(m) not in self._resident]
        try:
            for module in moved:
                self._resident.add(id(module))
                move(module, self.execution_device)
            yield
        finally:
            for module in moved:
                move(module, OFFLOAD_DEVICE)
                self._resident.discard(id(module))
