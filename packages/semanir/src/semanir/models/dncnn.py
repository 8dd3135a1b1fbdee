"""DnCNN (Zhang et al., TIP 2017): a plain conv-BN-ReLU stack that predicts the noise.

The published gray model has 17 conv layers of 64 features: conv+ReLU, 15 x (conv+BN+ReLU),
conv; the output is the input minus the predicted residual (residual learning).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from common_kernels.runtime.configs import DictConfig
from common_kernels.runtime.files import AtomicSavePretrained
from semanir.models.semanir import start_near_identity


@dataclass
class DnCNNConfig(DictConfig):
    """Hyper-parameters of a :class:`DnCNN`; JSON-serialisable via :meth:`to_dict`.

    Args:
        channels: image channels (input = output).
        features: width of the hidden conv layers.
        depth: total number of conv layers (>= 2).
        batch_norm: batch normalisation in the middle layers.
        model_type: always ``"dncnn"``; lets loaders pick the model class from config.json.
    """

    channels: int = 1
    features: int = 64
    depth: int = 17
    batch_norm: bool = True
    model_type: str = "dncnn"

    def __post_init__(self) -> None:
        if self.model_type != "dncnn":
            raise ValueError(f"model_type must be 'dncnn', got {self.model_type!r}")
        for name in ("channels", "features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 2:
            raise ValueError(f"depth must be an int >= 2 (first and last conv), got {self.depth!r}")


def _middle_layer(features: int, batch_norm: bool) -> list[nn.Module]:
    """conv 3x3 (+ BN) + ReLU; the conv has no bias when BN follows."""
    conv = nn.Conv2d(features, features, 3, padding=1, bias=not batch_norm)
    norm = [nn.BatchNorm2d(features)] if batch_norm else []
    return [conv, *norm, nn.ReLU(inplace=True)]


class DnCNN(
    nn.Module,
    AtomicSavePretrained,
    PyTorchModelHubMixin,
    library_name="semanir",
    license="apache-2.0",
    tags=["image-restoration", "denoising", "dncnn"],
):
    """DnCNN denoiser with residual learning: ``output = x - body(x)``.

    Args:
        config: a :class:`DnCNNConfig` or its dict form.
    """

    def __init__(self, config: DnCNNConfig | dict[str, Any]) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = DnCNNConfig.from_dict(config)
        self.config = config
        self._hub_mixin_config = config  # config.json always holds the full config
        c, f = config.channels, config.features
        layers: list[nn.Module] = [nn.Conv2d(c, f, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(config.depth - 2):
            layers += _middle_layer(f, config.batch_norm)
        layers.append(nn.Conv2d(f, c, 3, padding=1, bias=False))
        start_near_identity(layers[-1])  # same start as SemanIR for equal-budget comparisons
        self.body = nn.Sequential(*layers)

    @property
    def in_channels(self) -> int:
        return self.config.channels

    @property
    def out_channels(self) -> int:
        return self.config.channels

    @property
    def upscale(self) -> int:
        return 1

    def forward(self, x: Tensor) -> Tensor:
        """(B, channels, H, W) noisy images -> (B, channels, H, W) denoised images."""
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x must be a (B, {self.in_channels}, H, W) tensor for channels="
                f"{self.in_channels}, got {shape}"
            )
        return x - self.body(x)


CONFIGS: dict[str, Callable[[], DnCNNConfig]] = {
    "dncnn_test_tiny": partial(DnCNNConfig, channels=1, features=8, depth=4),
    "dncnn_denoise_gray": partial(DnCNNConfig, channels=1),
    "dncnn_denoise_color": partial(DnCNNConfig, channels=3),
    # the published 17 layers at 57 features: about the size of semanir_tiny_denoise_gray
    "dncnn_tiny_denoise_gray": partial(DnCNNConfig, channels=1, features=57),
}
