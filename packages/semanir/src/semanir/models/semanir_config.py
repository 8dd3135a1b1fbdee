"""The configuration of SemanIR (:class:`SemanIRConfig`) and its named configs.

A config is plain data, validated when made: every field's accepted range is checked in
``__post_init__`` with an error naming the field. The model is in :mod:`semanir.models.semanir`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

from common_kernels.runtime.configs import DictConfig

ARCHITECTURES = ("columnar", "unet")
DICTIONARIES = ("stage", "layer", "dense")
NORMS = ("pre", "post")
SIMILARITIES = ("cosine", "dot")
ATTENTION_BACKENDS = ("auto", "reference", "mask", "gather", "triton", "flex", "tiles", "cpp")
UPSCALES = (1, 2, 3, 4)
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def _choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _positive(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def check_k(name: str, k: object, upper: int, window: int) -> None:
    """Raise ``ValueError`` unless ``k`` is an int in ``[1, upper]``."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= upper:
        raise ValueError(
            f"{name} must be an int in [1, {upper}] (a {window}x{window} window holds "
            f"{window * window} tokens), got {k!r}"
        )


@dataclass
class SemanIRConfig(DictConfig):
    """Hyper-parameters of a :class:`SemanIR` model; JSON-serialisable via :meth:`to_dict`.

    Args:
        in_channels: input image channels (1 gray, 3 color).
        out_channels: output image channels.
        embed_dim: token width of the first (full-resolution) level.
        depths: transformer layers per stage, in execution order. Columnar: any number of
            stages. U-net with L levels: L down stages, the bottleneck, L up stages, the
            refinement stage (2L + 2 entries).
        heads: attention heads per stage (same length as ``depths``).
        dim_mults: U-net only: width of level l is ``embed_dim * dim_mults[l]``; the number of
            downsamplings is ``len(dim_mults) - 1``. Columnar bodies use ``(1,)``.
        window_size: side of the square windows the dictionary and attention live in.
        top_k: k_max: the largest dictionary size used in training, ``<= window_size**2``.
        train_k_choices: k values sampled (uniformly, one per forward) in training mode.
        inference_k: k in eval mode; ``None`` means ``top_k``. At most ``window_size**2``.
        similarity: dictionary similarity, ``"cosine"`` or ``"dot"``.
        dictionary: ``"stage"`` (one KNN graph per stage, the paper), ``"layer"`` (one per
            layer, the ablation) or ``"dense"`` (every window token: dense window attention).
        architecture: ``"columnar"`` (super-resolution) or ``"unet"`` (other restoration).
        upscale: super-resolution factor, 1 (restoration), 2, 3 or 4; columnar only.
        mlp_ratio: hidden width of the MLP relative to the token width.
        norm: ``"pre"`` (``x + f(norm(x))``) or ``"post"`` (``x + norm(f(x))``).
        cosine_attention: cosine logits times a learnable per-head scale clamped to <= 100.
        position_bias: add an MLP relative-position bias gathered at the neighbours.
        position_bias_hidden: hidden width of the relative-position MLP.
        attention_backend: common_kernels.knn_attention backend for the KNN modes.
        img_range: inputs are multiplied by this after mean subtraction.
        img_mean: per-channel mean subtracted from the input (and added back to the output);
            ``None`` subtracts nothing. Needs ``in_channels == out_channels``.
        upsampler_dim: width of the pixel-shuffle upsampler (super-resolution only).
        model_type: always ``"semanir"``; lets loaders pick the model class from config.json.
    """

    in_channels: int = 3
    out_channels: int = 3
    embed_dim: int = 32
    depths: tuple[int, ...] = (2, 2, 2, 2, 2, 2)
    heads: tuple[int, ...] = (2, 4, 4, 4, 2, 2)
    dim_mults: tuple[int, ...] = (1, 2, 2)
    window_size: int = 8
    top_k: int = 32
    train_k_choices: tuple[int, ...] = (16, 24, 32)
    inference_k: int | None = None
    similarity: str = "cosine"
    dictionary: str = "stage"
    architecture: str = "unet"
    upscale: int = 1
    mlp_ratio: float = 2.0
    norm: str = "post"
    cosine_attention: bool = True
    position_bias: bool = True
    position_bias_hidden: int = 64
    attention_backend: str = "auto"
    img_range: float = 1.0
    img_mean: tuple[float, ...] | None = None
    upsampler_dim: int = 64
    model_type: str = "semanir"

    def __post_init__(self) -> None:
        for name in ("depths", "heads", "dim_mults", "train_k_choices", "img_mean"):
            value = getattr(self, name)
            if isinstance(value, list):  # JSON round trips turn tuples into lists
                setattr(self, name, tuple(value))
        self._validate()

    @property
    def levels(self) -> int:
        """Number of 2x downsamplings in the body (0 for columnar)."""
        return len(self.dim_mults) - 1

    @property
    def resolved_inference_k(self) -> int:
        """The k used in eval mode when a call does not override it."""
        return self.top_k if self.inference_k is None else self.inference_k

    def stage_dims(self) -> tuple[int, ...]:
        """Token width of every stage, in execution order."""
        widths = [self.embed_dim * m for m in self.dim_mults]
        if self.architecture == "columnar":
            return tuple(widths[0] for _ in self.depths)
        return (*widths[:-1], widths[-1], *reversed(widths[:-1]), widths[0])

    def _validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        _choice("model_type", self.model_type, ("semanir",))
        _choice("architecture", self.architecture, ARCHITECTURES)
        _choice("dictionary", self.dictionary, DICTIONARIES)
        _choice("norm", self.norm, NORMS)
        _choice("similarity", self.similarity, SIMILARITIES)
        _choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        _choice("upscale", self.upscale, UPSCALES)
        for name in ("in_channels", "out_channels", "embed_dim", "window_size"):
            _positive(name, getattr(self, name))
        _positive("position_bias_hidden", self.position_bias_hidden)
        _positive("upsampler_dim", self.upsampler_dim)
        self._validate_body()
        tokens = self.window_size**2
        check_k("top_k", self.top_k, tokens, self.window_size)
        if not self.train_k_choices:
            raise ValueError("train_k_choices must hold at least one k")
        for k in self.train_k_choices:
            check_k("every train_k_choices entry", k, self.top_k, self.window_size)
        if self.inference_k is not None:
            check_k("inference_k", self.inference_k, tokens, self.window_size)
        if not self.mlp_ratio > 0 or not self.img_range > 0:
            raise ValueError(
                f"mlp_ratio and img_range must be > 0, got {self.mlp_ratio}, {self.img_range}"
            )
        if self.img_mean is not None and (
            len(self.img_mean) != self.in_channels or self.in_channels != self.out_channels
        ):
            raise ValueError(
                f"img_mean needs one value per channel and in_channels == out_channels, got "
                f"{len(self.img_mean)} values for {self.in_channels} -> {self.out_channels}"
            )

    def _validate_body(self) -> None:
        """Check depths, heads, dim_mults and upscale against the architecture."""
        if not self.depths or len(self.heads) != len(self.depths):
            raise ValueError(
                f"depths must be non-empty and heads must have one entry per stage, got "
                f"depths={self.depths}, heads={self.heads}"
            )
        for i, depth in enumerate(self.depths):
            _positive(f"depths[{i}]", depth)
        for i, mult in enumerate(self.dim_mults):
            _positive(f"dim_mults[{i}]", mult)
        if self.architecture == "columnar" and len(self.dim_mults) != 1:
            raise ValueError(f"columnar bodies take dim_mults=(1,), got {self.dim_mults}")
        if self.architecture == "unet":
            if self.levels < 1 or len(self.depths) != 2 * self.levels + 2:
                raise ValueError(
                    f"a U-net with len(dim_mults) - 1 = L >= 1 levels needs 2L + 2 depths "
                    f"(down, bottleneck, up, refinement), got dim_mults={self.dim_mults}, "
                    f"depths={self.depths}"
                )
            if self.upscale != 1:
                raise ValueError(f"unet bodies restore at scale 1, got upscale={self.upscale}")
        for i, (dim, heads) in enumerate(zip(self.stage_dims(), self.heads, strict=True)):
            _positive(f"heads[{i}]", heads)
            if dim % heads:
                raise ValueError(f"stage {i} width {dim} must be a multiple of heads={heads}")


ConfigFactory = Callable[[], SemanIRConfig]


def semanir_test_tiny_unet() -> SemanIRConfig:
    """A few thousand parameters, U-shaped, gray: for tests."""
    return SemanIRConfig(
        in_channels=1,
        out_channels=1,
        embed_dim=8,
        depths=(1, 1, 1, 1),
        heads=(1, 2, 1, 1),
        dim_mults=(1, 2),
        window_size=4,
        top_k=8,
        train_k_choices=(4, 6, 8),
        position_bias_hidden=8,
    )


def semanir_test_tiny_columnar() -> SemanIRConfig:
    """A few thousand parameters, columnar, color x2 super-resolution: for tests."""
    return SemanIRConfig(
        in_channels=3,
        out_channels=3,
        embed_dim=8,
        depths=(1, 1),
        heads=(2, 2),
        dim_mults=(1,),
        window_size=4,
        top_k=8,
        train_k_choices=(4, 6, 8),
        architecture="columnar",
        upscale=2,
        position_bias_hidden=8,
        img_mean=DIV2K_RGB_MEAN,
        upsampler_dim=8,
    )


def semanir_tiny_denoise(channels: int) -> SemanIRConfig:
    """~0.4M-parameter U-net (2 levels, window 8, k_max 32) that trains on a CPU."""
    return SemanIRConfig(
        in_channels=channels,
        out_channels=channels,
        embed_dim=32,
        depths=(2, 2, 2, 2, 2, 2),
        heads=(2, 4, 4, 4, 2, 2),
        dim_mults=(1, 2, 2),
        window_size=8,
        top_k=32,
        train_k_choices=(16, 24, 32),
        position_bias_hidden=32,
    )


def semanir_small_denoise(channels: int) -> SemanIRConfig:
    """~1M-parameter U-net: the tiny denoiser 1.5 times as wide (embed_dim 48, 16-channel heads),
    whose CPU restore still takes at most a published-size DnCNN's time per megapixel
    (``benchmarks/results/cpu_speed_small_denoise_gray.md``); trained on a GPU
    (``denoise_gray_small_gpu.yaml``)."""
    return replace(semanir_tiny_denoise(channels), embed_dim=48, heads=(3, 6, 6, 6, 3, 3))


def semanir_tiny_sr(scale: int) -> SemanIRConfig:
    """Small columnar color super-resolution model that trains on a CPU."""
    return SemanIRConfig(
        in_channels=3,
        out_channels=3,
        embed_dim=48,
        depths=(2, 2, 2, 2),
        heads=(3, 3, 3, 3),
        dim_mults=(1,),
        window_size=8,
        top_k=32,
        train_k_choices=(16, 24, 32),
        architecture="columnar",
        upscale=scale,
        position_bias_hidden=32,
        img_mean=DIV2K_RGB_MEAN,
        upsampler_dim=48,
    )


def semanir_small_sr(scale: int) -> SemanIRConfig:
    """~12M-parameter columnar super-resolution model (window 32, k_max 512)."""
    return SemanIRConfig(
        in_channels=3,
        out_channels=3,
        embed_dim=180,
        depths=(6, 6, 6, 6, 6, 6),
        heads=(6, 6, 6, 6, 6, 6),
        dim_mults=(1,),
        window_size=32,
        top_k=512,
        train_k_choices=(64, 128, 192, 256, 384, 512),
        architecture="columnar",
        upscale=scale,
        img_mean=DIV2K_RGB_MEAN,
    )


def semanir_base_unet(channels: int) -> SemanIRConfig:
    """~27M-parameter U-net (3 levels, window 16, k_max 128) for denoising-type tasks."""
    return SemanIRConfig(
        in_channels=channels,
        out_channels=channels,
        embed_dim=96,
        depths=(4, 4, 4, 6, 4, 4, 4, 4),
        heads=(3, 6, 12, 12, 12, 6, 3, 3),
        dim_mults=(1, 2, 4, 4),
        window_size=16,
        top_k=128,
        train_k_choices=(64, 96, 128),
    )


CONFIGS: dict[str, ConfigFactory] = {
    "semanir_test_tiny_unet": semanir_test_tiny_unet,
    "semanir_test_tiny_columnar": semanir_test_tiny_columnar,
    "semanir_tiny_denoise_gray": partial(semanir_tiny_denoise, 1),
    "semanir_tiny_denoise_color": partial(semanir_tiny_denoise, 3),
    "semanir_tiny_jpeg_gray": partial(semanir_tiny_denoise, 1),
    "semanir_small_denoise_gray": partial(semanir_small_denoise, 1),
    **{f"semanir_tiny_sr_x{s}": partial(semanir_tiny_sr, s) for s in (2, 3, 4)},
    **{f"semanir_small_sr_x{s}": partial(semanir_small_sr, s) for s in (2, 3, 4)},
    "semanir_base_denoise_gray": partial(semanir_base_unet, 1),
    "semanir_base_denoise_color": partial(semanir_base_unet, 3),
    "semanir_base_jpeg_gray": partial(semanir_base_unet, 1),
    "semanir_base_jpeg_color": partial(semanir_base_unet, 3),
    "semanir_base_deblur": partial(semanir_base_unet, 3),
    "semanir_base_demosaic": partial(semanir_base_unet, 3),
}
