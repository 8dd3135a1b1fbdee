"""Small trainable parts: the projector, the region encoder, signal heads and the synergy module."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitron.models.config import RegionConfig, SignalConfig


class Projector(nn.Module):
    """LLaVA's 2-layer MLP with GELU from the vision width into the LLM embedding space.

    Args:
        vision_dim: width of the patch features.
        llm_dim: LLM hidden size.
        hidden: hidden width (``None`` = ``llm_dim``).
    """

    def __init__(self, vision_dim: int, llm_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or llm_dim
        self.fc1 = nn.Linear(vision_dim, hidden)
        self.fc2 = nn.Linear(hidden, llm_dim)

    def forward(self, features: Tensor) -> Tensor:
        """(..., vision_dim) -> (..., llm_dim)."""
        return self.fc2(F.gelu(self.fc1(features)))


def mlp(widths: Sequence[int], activation: type[nn.Module]) -> nn.Sequential:
    """Linear layers from ``widths[0]`` through each width in turn, ``activation`` between them.

    The layers sit at the indices 0, 2, 4, ... of the ``nn.Sequential`` (the parameter names
    of saved and released checkpoints).

    Args:
        widths: input width, the hidden widths, output width (at least two).
        activation: the activation's class (e.g. ``nn.GELU``), one instance between layers.
    """
    linears = [nn.Linear(width_in, width_out) for width_in, width_out in itertools.pairwise(widths)]
    layers: list[nn.Module] = [linears[0]]
    for linear in linears[1:]:
        layers += [activation(), linear]
    return nn.Sequential(*layers)


def fourier_box(boxes: Tensor, frequencies: int) -> Tensor:
    """(N, 4) boxes in [0, 1] -> (N, 4 * 2 * frequencies) sin/cos features."""
    scales = (2.0 ** torch.arange(frequencies, device=boxes.device, dtype=boxes.dtype)) * math.pi
    angles = boxes[..., None] * scales  # (N, 4, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (N, 4 * 2F)


class RegionEncoder(nn.Module):
    """Mask-average-pool pre-projection patch features, 3-layer MLP, plus a box encoding.

    ``config.style == "official"`` is the released checkpoint's extractor (same parameter
    names as the vitron style where the layers match): ReLU instead of GELU, an unweighted mean
    over every patch the region touches, and ``location`` = Linear(4, llm_dim / 2) - ReLU -
    Linear(llm_dim / 2, llm_dim) on the box in pixels of the ``image_size`` square input.

    Args:
        vision_dim: width of the patch features.
        llm_dim: LLM hidden size.
        config: hidden width, Fourier frequencies and style.
        image_size: side of the square model input (the official style's box unit).
    """

    def __init__(
        self, vision_dim: int, llm_dim: int, config: RegionConfig, image_size: int = 224
    ) -> None:
        super().__init__()
        self.frequencies = config.location_frequencies
        self.style = config.style
        self.image_size = image_size
        widths = (vision_dim, config.hidden, config.hidden, llm_dim)
        if config.style == "official":
            self.mlp = mlp(widths, nn.ReLU)
            self.location = mlp((4, llm_dim // 2, llm_dim), nn.ReLU)
            return
        self.mlp = mlp(widths, nn.GELU)
        self.location = mlp((8 * config.location_frequencies, config.hidden, llm_dim), nn.GELU)

    @staticmethod
    def pool(features: Tensor, coverage: Tensor) -> Tensor:
        """Coverage-weighted mean of patch features.

        Args:
            features: (N, P, C) patch features of each region's image.
            coverage: (N, P) fraction of each patch covered by the region (not all zero).

        Returns:
            (N, C) pooled features.
        """
        weights = coverage.to(features.dtype)
        weights = weights / weights.sum(dim=1, keepdim=True)  # (N, P)
        return torch.einsum("np,npc->nc", weights, features)

    def forward(self, features: Tensor, coverage: Tensor, boxes: Tensor) -> Tensor:
        """(N, P, C) features, (N, P) coverage, (N, 4) boxes -> (N, llm_dim) region embeddings."""
        if self.style == "official":
            # the official extractor binarises its (resized) mask: every touched patch counts once
            pooled = self.pool(features, (coverage > 0).to(features.dtype))
            pixels = boxes.to(features.dtype) * self.image_size
            return self.mlp(pooled) + self.location(pixels)
        pooled = self.pool(features, coverage)
        location = fourier_box(boxes.to(features.dtype), self.frequencies)
        return self.mlp(pooled) + self.location(location)


class GradientReversal(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by ``-scale``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: Tensor, scale: float = 1.0) -> Tensor:
    """Gradient-reversal layer (Ganin & Lempitsky): forward ``x``, backward ``-scale * grad``."""
    return GradientReversal.apply(x, scale)


@dataclass
class SignalFeatures:
    """Signal features of N signal tokens.

    Args:
        specific: (N, specific_dim) task-specific features.
        invariant: (N, invariant_dim) task-invariant features.
        embeddings: N tensors, each of its task's conditioning width.
        tasks: task of each signal.
    """

    specific: Tensor
    invariant: Tensor
    embeddings: list[Tensor]
    tasks: tuple[str, ...]


class SignalHeads(nn.Module):
    """Project signal-token hidden states into task-specific and task-invariant features.

    The embedding handed to a specialist is ``output[task](concat(specific, invariant))``, of
    the width of that specialist's conditioning (``config.output_dims[task]``).

    Args:
        llm_dim: LLM hidden size.
        config: task list and widths.
    """

    def __init__(self, llm_dim: int, config: SignalConfig) -> None:
        super().__init__()
        self.tasks = tuple(config.tasks)
        self.specific = nn.ModuleDict(
            {t: nn.Linear(llm_dim, config.specific_dim) for t in self.tasks}
        )
        self.invariant = mlp((llm_dim, config.invariant_dim, config.invariant_dim), nn.GELU)
        width = config.specific_dim + config.invariant_dim
        self.output = nn.ModuleDict(
            {t: nn.Linear(width, config.output_dims[t]) for t in self.tasks}
        )
        self.specific_dim = config.specific_dim

    def forward(self, hidden: Tensor, tasks: Sequence[str]) -> SignalFeatures:
        """(N, llm_dim) hidden states of N signal tokens, one task each -> features."""
        unknown = sorted(set(tasks) - set(self.tasks))
        if unknown:
            raise ValueError(f"no signal head for tasks {unknown} (heads: {', '.join(self.tasks)})")
        if hidden.shape[0] != len(tasks):
            raise ValueError(f"{hidden.shape[0]} signal states for {len(tasks)} tasks")
        invariant = self.invariant(hidden)  # (N, invariant_dim)
        specific = hidden.new_zeros(hidden.shape[0], self.specific_dim)
        for task in set(tasks):
            rows = torch.tensor([i for i, t in enumerate(tasks) if t == task], device=hidden.device)
            specific = specific.index_copy(0, rows, self.specific[task](hidden[rows]))
        both = torch.cat([specific, invariant], dim=-1)  # (N, specific + invariant)
        embeddings = [self.output[t](both[i]) for i, t in enumerate(tasks)]
        return SignalFeatures(specific, invariant, embeddings, tuple(tasks))


class TaskDiscriminator(nn.Module):
    """MLP that guesses the task from task-invariant features (last layer starts at zero).

    A zero last layer gives uniform predictions at initialisation: the loss starts at exactly
    ``log(num_tasks)``, the value a fully task-invariant feature keeps it at.

    Args:
        invariant_dim: width of the task-invariant features.
        hidden: hidden width.
        num_tasks: number of task classes.
    """

    def __init__(self, invariant_dim: int, hidden: int, num_tasks: int) -> None:
        super().__init__()
        self.net = mlp((invariant_dim, hidden, num_tasks), nn.GELU)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: Tensor) -> Tensor:
        """(N, invariant_dim) -> (N, num_tasks) logits."""
        return self.net(features)


class SynergyModule(nn.Module):
    """Adversarial decoupling: the discriminator learns the task, the encoder learns to fool it.

    ``loss = cross_entropy(D(GRL(invariant)), task)``: minimising it trains the discriminator
    normally while the gradient reversal pushes the invariant features to carry no task
    information.

    Args:
        config: tasks, widths and the reversal scale.
    """

    def __init__(self, config: SignalConfig) -> None:
        super().__init__()
        self.tasks = tuple(config.tasks)
        self.scale = config.grl_lambda
        self.discriminator = TaskDiscriminator(
            config.invariant_dim, config.discriminator_hidden, len(self.tasks)
        )

    def task_ids(self, tasks: Sequence[str], device: torch.device) -> Tensor:
        return torch.tensor([self.tasks.index(t) for t in tasks], device=device)

    def forward(self, invariant: Tensor, tasks: Sequence[str]) -> Tensor:
        """Mean discriminator cross-entropy over N signals (a scalar)."""
        logits = self.discriminator(reverse_gradient(invariant, self.scale))  # (N, T)
        return F.cross_entropy(logits.float(), self.task_ids(tasks, invariant.device))
