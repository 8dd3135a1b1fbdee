"""Label-scarce segmentation (DDPM-seg protocol): an ensemble of per-pixel MLPs, mode vote."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from common_kernels.runtime.files import AtomicSavePretrained
from common_kernels.runtime.progress import progress as progress_of
from diffeat.features import check_not_empty


def pixel_mlp(in_dim: int, num_classes: int, hidden: Sequence[int] = (128, 32)) -> nn.Sequential:
    """``dim -> 128 -> 32 -> classes`` with ReLU + BatchNorm after each hidden layer."""
    layers: list[nn.Module] = []
    width = in_dim
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.BatchNorm1d(size)]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def pixel_training_set(
    features: Tensor, labels: Tensor, ignore_index: int | None = 255
) -> tuple[Tensor, Tensor]:
    """Per-pixel training rows: features upsampled (bilinear) to the label resolution.

    Args:
        features: (B, C, h, w) aggregated features.
        labels: (B, H, W) integer labels.
        ignore_index: label value to drop (None keeps every pixel).

    Returns:
        (N, C) float32 features and (N,) int64 labels.
    """
    if features.ndim != 4 or labels.ndim != 3 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features/labels: expected (B, C, h, w) and (B, H, W); got "
            f"{tuple(features.shape)} and {tuple(labels.shape)}"
        )
    check_not_empty(features, "features")
    check_not_empty(labels, "labels")
    up = F.interpolate(
        features.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False
    )
    rows = up.permute(0, 2, 3, 1).reshape(-1, features.shape[1])  # (B*H*W, C)
    flat = labels.reshape(-1).long()
    if ignore_index is not None:
        keep = flat != ignore_index
        rows, flat = rows[keep], flat[keep]
    return rows, flat


class PixelMLPEnsemble(nn.Module, AtomicSavePretrained, PyTorchModelHubMixin):
    """``members`` independently initialised and shuffled per-pixel MLPs; prediction = mode.

    Args:
        in_dim: feature channels.
        num_classes: number of labels.
        members: ensemble size (paper: 10).
        hidden: hidden widths (paper: 128, 32).
    """

    def __init__(
        self, in_dim: int, num_classes: int, members: int = 10, hidden: Sequence[int] = (128, 32)
    ):
        super().__init__()
        if members < 1 or num_classes < 2:
            raise ValueError(
                f"members >= 1 and num_classes >= 2 required; got {members}, {num_classes}"
            )
        self.num_classes = num_classes
        self.members = nn.ModuleList(pixel_mlp(in_dim, num_classes, hidden) for _ in range(members))

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        epochs: int = 8,
        batch_size: int = 64,
        lr: float = 1e-3,
        seed: int = 0,
        progress: bool = False,
    ) -> list[float]:
        """Train every member with Adam on (N, C) features and (N,) labels.

        Each member is re-initialised from ``seed + index`` and sees its own shuffles.

        Returns:
            The last-epoch mean loss of each member.
        """
        if features.ndim != 2 or labels.shape != features.shape[:1]:
            raise ValueError(
                f"features/labels: expected (N, C) and (N,); got {tuple(features.shape)}, "
                f"{tuple(labels.shape)}"
            )
        check_not_empty(features, "features")
        if epochs < 1 or batch_size < 2:
            raise ValueError(
                f"epochs >= 1 and batch_size >= 2 required; got {epochs}, {batch_size}"
            )
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels: values must lie in [0, {self.num_classes - 1}]")
        device = next(self.parameters()).device
        features, labels = features.float().to(device), labels.long().to(device)
        losses = []
        members = progress_of(
            self.members, desc="diffeat ensemble", unit="members", disable=not progress
        )
        for index, member in enumerate(members):
            generator = torch.Generator().manual_seed(seed + index)
            _reset(member, generator)
            member.train()
            optimizer = torch.optim.Adam(member.parameters(), lr=lr)
            for _ in range(epochs):
                order = torch.randperm(len(labels), generator=generator).to(device)
                total, count = 0.0, 0
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    if len(rows) < 2:  # BatchNorm needs two samples
                        continue
                    loss = F.cross_entropy(member(features[rows]), labels[rows])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total, count = total + loss.item() * len(rows), count + len(rows)
            member.eval()
            losses.append(total / max(count, 1))
        return losses

    @torch.no_grad()
    def member_predictions(self, features: Tensor, chunk: int = 65536) -> Tensor:
        """(N, C) -> (members, N) argmax labels of every member (eval mode)."""
        check_not_empty(features, "features")
        self.eval()
        device = next(self.parameters()).device
        parts = []
        for start in range(0, features.shape[0], chunk):
            rows = features[start : start + chunk].float().to(device)
            parts.append(torch.stack([m(rows).argmax(1) for m in self.members]))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def predict(self, features: Tensor, chunk: int = 65536) -> Tensor:
        """(N, C) -> (N,) pixel-wise mode of the members' labels (ties: lowest label)."""
        votes = self.member_predictions(features, chunk)  # (M, N)
        counts = F.one_hot(votes, self.num_classes).sum(0)  # (N, K)
        return counts.argmax(1)

    @torch.no_grad()
    def predict_map(self, features: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """(B, C, h, w) -> (B, H, W) labels; features upsampled (bilinear) to ``size`` first."""
        check_not_empty(features, "features")
        size = tuple(size) if size is not None else tuple(features.shape[-2:])
        up = F.interpolate(features.float(), size=size, mode="bilinear", align_corners=False)
        rows = up.permute(0, 2, 3, 1).reshape(-1, features.shape[1])  # (B*H*W, C)
        return self.predict(rows).reshape(features.shape[0], *size).cpu()


def _reset(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise Linear layers from ``generator`` (PyTorch's default scheme), reset BN."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            bound = 1.0 / layer.in_features**0.5
            with torch.no_grad():
                weight = torch.empty(layer.weight.shape).uniform_(
                    -bound, bound, generator=generator
                )
                bias = torch.empty(layer.bias.shape).uniform_(-bound, bound, generator=generator)
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
        elif isinstance(layer, nn.BatchNorm1d):
            layer.reset_parameters()
            layer.reset_running_stats()
