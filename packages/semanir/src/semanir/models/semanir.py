"""SemanIR: image restoration with a key-semantic dictionary shared by the layers of a stage.

Ren et al., "Sharing Key Semantics in Transformer Makes Efficient Image Restoration" (NeurIPS
2024). The paper publishes no code; this file is written from the method description.

Pipeline: conv 3x3 shallow features -> body of stages -> conv 3x3 reconstruction, with a long
residual (output = input + reconstruction) for restoration or a pixel-shuffle upsampler for
super-resolution. A stage partitions its input tokens into ``window x window`` windows, builds
ONE KNN graph per window over the stage input (the key-semantic dictionary), runs L transformer
layers whose attention looks only at each query's top-k dictionary entries, then a conv 3x3 and
a stage residual.

Choices where the paper is silent (all config options):

- The dictionary is built from the stage's input tokens (cosine similarity by default).
- Random top-k: one k per forward for every stage. ``knn_graph`` guarantees that the top-j list
  is the prefix ``idx[..., :j]`` of the top-k_max list, so a stage builds exactly the k entries
  it uses: the same dictionary as slicing the k_max one, without the unused tail.
- ``norm="post"`` is the residual post-norm of Swin V2 / GRL: ``x + norm(f(x))``.
- The relative-position bias is a 2-layer MLP on window-relative coordinates scaled to [-1, 1],
  one MLP per layer, gathered at the neighbours by the attention kernel.
- The U-shaped body downsamples with a stride-2 conv 2x2, upsamples with a transposed conv 2x2
  and fuses skips by concatenation + conv 1x1; the columnar body adds a conv 3x3 and a feature
  residual around its stages (SwinIR-style).
- The long image residual applies when ``in_channels == out_channels`` and ``upscale == 1``.
- ``dictionary="dense"`` attends to every window token with ``scaled_dot_product_attention``:
  the dense window-attention baseline (no shifted windows) on the same skeleton.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from common_kernels import (
    KNNDictionary,
    add_layer_norm_,
    bias_gelu_,
    knn_attention_packed,
    knn_dictionary,
    values_checked,
    window_partition,
    window_reverse,
)
from common_kernels.runtime.files import AtomicSavePretrained

from .semanir_config import SemanIRConfig, check_k
from .upsampler import PixelShuffleUpsampler, conv3x3

MAX_LOGIT_SCALE = math.log(100.0)  # cosine attention: exp(logit scale) is clamped to <= 100
INIT_LOGIT_SCALE = math.log(10.0)
# Inference runs a stage's layers on groups of windows whose attention logits (windows x heads x
# N x N) would take about this many bytes: every intermediate of a group stays in the CPU's
# caches and is reused by the allocator (fresh large buffers cost page faults). Measured on 2
# cores of this project's machines (benchmarks/cpu_speed.py's tiny denoiser, 256 and 512 px,
# SDPA attention): 4-8 MiB is fastest; 0.5 MiB is 1.5x slower (per-call overhead), the whole
# stage at once 1.25x. With the C++ kernel (no logits tensor) 1.5-12 MiB are alike at 384 px.
# A GPU takes the whole stage in one group: there each group is a row of kernel launches (the
# likely cause of 0.4.3's bf16 inference at 3-6x 0.2.2's time, benchmarks/results/quick-cuda*).
INFERENCE_GROUP_BYTES = 6 * 2**20


def inference_group_size(windows: Tensor, heads: int) -> int:
    """Windows per group in :meth:`SemanIRStage.forward_inference`: logits of about
    :data:`INFERENCE_GROUP_BYTES` on the CPU, every window at once on other devices and inside
    ``torch.compile`` (which would trace every group's layers apart: minutes of compilation).

    Args:
        windows: (B', N, C) window tokens.
        heads: the most attention heads of the stage's layers.
    """
    count, n = windows.shape[:2]
    if windows.device.type != "cpu" or torch.compiler.is_compiling():
        return max(1, count)
    return max(1, INFERENCE_GROUP_BYTES // (heads * n * n * windows.element_size()))


def start_near_identity(conv: nn.Conv2d, gain: float = 1e-2) -> None:
    """Shrink the last conv of a residual restoration model so the model starts near the
    identity (output ~= input) and a short training budget goes to the correction. Not zero:
    every parameter still gets a gradient on the first step."""
    with torch.no_grad():
        conv.weight.mul_(gain)
        if conv.bias is not None:
            conv.bias.zero_()


def reflect_indices(size: int, padded: int, device: torch.device | None = None) -> Tensor:
    """Source index of each of ``padded`` positions when mirroring a length-``size`` axis.

    Positions beyond the end reflect without repeating the edge (``F.pad(mode="reflect")``),
    repeatedly for pads longer than the axis; a length-1 axis repeats its only value.
    """
    positions = torch.arange(padded, device=device)
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * (size - 1)
    folded = positions % period
    return torch.where(folded < size, folded, period - folded)


def reflect_pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Reflect-pad the bottom and right of (B, C, H, W) ``x`` up to multiples of ``multiple``."""
    height, width = x.shape[-2:]
    padded_h = math.ceil(height / multiple) * multiple
    padded_w = math.ceil(width / multiple) * multiple
    if (padded_h, padded_w) == (height, width):
        return x
    rows = reflect_indices(height, padded_h, x.device)
    cols = reflect_indices(width, padded_w, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)  # (B, C, H', W')


def relative_positions(window: int) -> tuple[Tensor, Tensor]:
    """Relative coordinates inside a window and the index of every token pair into them.

    Returns:
        coords: ((2w-1)**2, 2) fp32 (dy, dx) offsets scaled to [-1, 1].
        index: (w*w, w*w) int64; ``coords[index[i, j]]`` is the offset of token i from token j.
    """
    offsets = torch.arange(-(window - 1), window, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1)  # (2w-1, 2w-1, 2)
    coords = grid.reshape(-1, 2) / max(window - 1, 1)  # ((2w-1)**2, 2)
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)  # (w*w,)
    dy = ys[:, None] - ys[None, :] + window - 1  # (w*w, w*w)
    dx = xs[:, None] - xs[None, :] + window - 1  # (w*w, w*w)
    return coords, dy * (2 * window - 1) + dx


@dataclass(frozen=True)
class AttentionOptions:
    """How a layer computes attention logits (see :class:`SemanIRConfig` for each field).

    Args:
        cosine_attention: cosine logits times a learnable clamped per-head scale.
        position_bias: add an MLP relative-position bias.
        position_bias_hidden: hidden width of the position MLP.
        backend: common_kernels.knn_attention backend.
    """

    cosine_attention: bool = True
    position_bias: bool = True
    position_bias_hidden: int = 64
    backend: str = "auto"


class KeySemanticAttention(nn.Module):
    """Multi-head attention of each query over its dictionary entries (or the whole window).

    Args:
        dim: token width (a multiple of ``heads``).
        heads: attention heads.
        options: logit options.
    """

    def __init__(self, dim: int, heads: int, options: AttentionOptions) -> None:
        super().__init__()
        self.heads = heads
        self.backend = options.backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.logit_scale = None
        if options.cosine_attention:
            self.logit_scale = nn.Parameter(torch.full((heads, 1, 1), INIT_LOGIT_SCALE))
        self.position_mlp = None
        if options.position_bias:
            hidden = options.position_bias_hidden
            # no output bias: a per-head constant cancels in the softmax
            self.position_mlp = nn.Sequential(
                nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, heads, bias=False)
            )

    def cosine_scale(self) -> Tensor:
        """(heads,) multipliers of the cosine logits: exp(logit scale), at most 100."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp().view(-1)

    def position_bias(self, positions: tuple[Tensor, Tensor] | None) -> Tensor | None:
        """(heads, N, N) additive bias table of this layer, or ``None``."""
        if self.position_mlp is None or positions is None:
            return None
        coords, index = positions
        table = self.position_mlp(coords)  # ((2w-1)**2, heads)
        return table.t()[:, index]  # (heads, N, N)

    def forward(
        self, x: Tensor, dictionary: KNNDictionary | None, positions: tuple[Tensor, Tensor] | None
    ) -> Tensor:
        """Args:
            x: (B', N, C) window tokens.
            dictionary: the stage's key-semantic dictionary ((B', N, k) entries per token, with
                the masks and lists the attention backend derives from them, cached there);
                ``None`` attends to all N tokens.
            positions: the stage's :func:`relative_positions` (``None`` without position bias).

        Returns:
            (B', N, C) tokens.
        """
        return self.attend(x, dictionary, self.position_bias(positions))

    def attend(self, x: Tensor, dictionary: KNNDictionary | None, bias: Tensor | None) -> Tensor:
        """:meth:`forward` with the layer's position bias table already made (``None``: none).

        The inputs were checked by the model: nothing here reads values back to the host.
        """
        batch, n, dim = x.shape
        qkv = self.qkv(x).view(batch, n, 3, self.heads, dim // self.heads)  # (B', N, 3, h, d)
        if bias is not None:
            bias = bias.to(qkv.dtype)
        cosine = None if self.logit_scale is None else self.cosine_scale()
        out = knn_attention_packed(
            qkv, dictionary, bias=bias, cosine_scale=cosine, backend=self.backend,
            check_values=False,
        )  # (B', N, C); dictionary None: dense over the window  # fmt: skip
        return self.proj(out)


class KeySemanticLayer(nn.Module):
    """Transformer layer: key-semantic attention + MLP, each in a pre- or post-norm residual.

    Args:
        dim: token width.
        heads: attention heads.
        mlp_ratio: MLP hidden width relative to ``dim``.
        norm: ``"pre"`` or ``"post"``.
        attention: logit options of :class:`KeySemanticAttention`.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        mlp_ratio: float = 2.0,
        norm: str = "post",
        attention: AttentionOptions = AttentionOptions(),
    ) -> None:
        super().__init__()
        self.pre_norm = norm == "pre"
        self.attn = KeySemanticAttention(dim, heads, attention)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self, x: Tensor, dictionary: KNNDictionary | None, positions: tuple[Tensor, Tensor] | None
    ) -> Tensor:
        """(B', N, C) tokens -> (B', N, C) tokens; see :meth:`KeySemanticAttention.forward`."""
        bias = self.attn.position_bias(positions)
        if self.pre_norm:
            x = x + self.attn.attend(self.norm1(x), dictionary, bias)
            return x + self.mlp(self.norm2(x))
        x = x + self.norm1(self.attn.attend(x, dictionary, bias))
        return x + self.norm2(self.mlp(x))

    def forward_inference(
        self, x: Tensor, dictionary: KNNDictionary | None, bias: Tensor | None
    ) -> Tensor:
        """:meth:`forward` without autograd, the residuals added into ``x`` in place.

        Args:
            x: (B', N, C) tokens, overwritten with the layer's output.
            dictionary: as in :meth:`forward`.
            bias: this layer's :meth:`KeySemanticAttention.position_bias` table, or ``None``.
        """
        if self.pre_norm:
            x += self.attn.attend(self.norm1(x), dictionary, bias)
            x += self.mlp_inference(self.norm2(x))
        else:  # x += norm(f(x)), fused on the CPU
            add_layer_norm_(x, self.attn.attend(x, dictionary, bias), self.norm1)
            add_layer_norm_(x, self.mlp_inference(x), self.norm2)
        return x

    def mlp_inference(self, x: Tensor) -> Tensor:
        """``self.mlp(x)`` without autograd, the GELU in place over the hidden layer on the CPU
        (the modules still run as modules: their hooks and autocast apply)."""
        fc1, _, fc2 = self.mlp
        return fc2(bias_gelu_(fc1(x), None))


class SemanIRStage(nn.Module):
    """Windows -> one key-semantic dictionary -> L layers sharing it -> conv 3x3 -> residual.

    Args:
        dim: token width.
        depth: number of transformer layers.
        heads: attention heads.
        window_size: window side.
        dictionary: ``"stage"``, ``"layer"`` or ``"dense"`` (see :class:`SemanIRConfig`).
        similarity: dictionary similarity.
        mlp_ratio: as in :class:`KeySemanticLayer`.
        norm: as in :class:`KeySemanticLayer`.
        attention: as in :class:`KeySemanticLayer`.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        *,
        window_size: int,
        dictionary: str = "stage",
        similarity: str = "cosine",
        mlp_ratio: float = 2.0,
        norm: str = "post",
        attention: AttentionOptions = AttentionOptions(),
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.dictionary = dictionary
        self.similarity = similarity
        self.attention_backend = attention.backend
        self.layers = nn.ModuleList(
            KeySemanticLayer(dim, heads, mlp_ratio=mlp_ratio, norm=norm, attention=attention)
            for _ in range(depth)
        )
        self.conv = conv3x3(dim, dim)
        coords, index = (None, None)
        if attention.position_bias:
            coords, index = relative_positions(window_size)
        self.register_buffer("position_coords", coords, persistent=False)
        self.register_buffer("position_index", index, persistent=False)

    def build_dictionary(self, windows: Tensor, k: int) -> KNNDictionary:
        """(B', N, C) window tokens -> the dictionary of their k most similar tokens.

        Built by ``knn_dictionary`` in the form the layers' attention backend consumes (a
        neighbour mask for the dense backends, lists otherwise; the same sets); every layer that
        uses it shares what its backend derives from it (built on first use, once). The model
        checked its input, so no value is read back to the host here.
        """
        return knn_dictionary(
            windows.detach(), k, similarity=self.similarity, backend=self.attention_backend,
            check_values=False,
        )  # fmt: skip

    def positions(self) -> tuple[Tensor, Tensor] | None:
        """The :func:`relative_positions` the layers' position MLPs read, or ``None``."""
        if self.position_index is None:
            return None
        return self.position_coords, self.position_index

    def forward(self, x: Tensor, k: int | None) -> Tensor:
        """Args:
            x: (B, C, H, W) features, H and W multiples of the window size.
            k: dictionary entries per query (``None`` in dense mode).

        Returns:
            (B, C, H, W) features. Without autograd (``torch.no_grad``/``inference_mode``) the
            stage runs :meth:`forward_inference`: the same maths, in place, window group by
            window group.
        """
        if not torch.is_grad_enabled():
            return self.forward_inference(x, k)
        height, width = x.shape[-2:]
        windows = window_partition(x.permute(0, 2, 3, 1), self.window_size)  # (B*nW, N, C)
        positions = self.positions()
        dictionary = self.build_dictionary(windows, k) if self.dictionary == "stage" else None
        for layer in self.layers:
            if self.dictionary == "layer":
                dictionary = self.build_dictionary(windows, k)
            windows = layer(windows, dictionary, positions)
        tokens = window_reverse(windows, self.window_size, height, width)  # (B, H, W, C)
        return x + self.conv(tokens.permute(0, 3, 1, 2))  # (B, C, H, W)

    def forward_inference(self, x: Tensor, k: int | None) -> Tensor:
        """:meth:`forward` without autograd, for inference: the windows are copied out once,
        the position-bias tables made once, and the layers run on groups of windows
        (:func:`inference_group_size`: logits that stay in cache on the CPU, one group on a
        GPU), each group's dictionary built just before its layers, residuals added in place.

        Args:
            x: (B, C, H, W) features, H and W multiples of the window size.
            k: dictionary entries per query (``None`` in dense mode).

        Returns:
            (B, C, H, W) features (channels-last in memory).
        """
        height, width = x.shape[-2:]
        windows = window_partition(x.permute(0, 2, 3, 1), self.window_size)  # (B*nW, N, C)
        if width == self.window_size:  # one window across: a view of x, kept intact for the
            windows = windows.clone()  # residual below (a shape test: torch.compile traces it)
        positions = self.positions()
        biases = [layer.attn.position_bias(positions) for layer in self.layers]
        heads = max(layer.attn.heads for layer in self.layers)
        group = inference_group_size(windows, heads)
        for group_windows in windows.split(group):  # (g, N, C) views, updated in place
            dictionary = None
            if self.dictionary == "stage":
                dictionary = self.build_dictionary(group_windows, k)
            for layer, bias in zip(self.layers, biases, strict=True):
                if self.dictionary == "layer":
                    dictionary = self.build_dictionary(group_windows, k)
                layer.forward_inference(group_windows, dictionary, bias)
        tokens = window_reverse(windows, self.window_size, height, width)  # (B, H, W, C)
        return self.conv(tokens.permute(0, 3, 1, 2)).add_(x)  # (B, C, H, W)


class SemanIR(
    nn.Module,
    AtomicSavePretrained,
    PyTorchModelHubMixin,
    library_name="semanir",
    license="apache-2.0",
    tags=["image-restoration", "super-resolution", "semanir"],
):
    """SemanIR restoration / super-resolution network (columnar or U-shaped body).

    ``save_pretrained(dir)`` writes ``model.safetensors`` + ``config.json``;
    ``SemanIR.from_pretrained(dir_or_hub_id)`` reads them back.

    Args:
        config: a :class:`SemanIRConfig` or its dict form.
    """

    def __init__(self, config: SemanIRConfig | dict[str, Any]) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = SemanIRConfig.from_dict(config)
        self.config = config
        self._hub_mixin_config = config  # config.json always holds the full config
        mean = config.img_mean or (0.0,) * config.in_channels
        self.register_buffer("img_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.shallow = conv3x3(config.in_channels, config.embed_dim)
        self.stages = nn.ModuleList(
            self._make_stage(dim, depth, heads)
            for dim, depth, heads in zip(
                config.stage_dims(), config.depths, config.heads, strict=True
            )
        )
        if config.architecture == "unet":
            self._make_unet_resamplers()
        else:
            self.body_conv = conv3x3(config.embed_dim, config.embed_dim)
        if config.upscale > 1:
            self.reconstruct = PixelShuffleUpsampler(
                config.embed_dim, config.out_channels, config.upscale, config.upsampler_dim
            )
        else:
            self.reconstruct = conv3x3(config.embed_dim, config.out_channels)
            start_near_identity(self.reconstruct)

    def _make_stage(self, dim: int, depth: int, heads: int) -> SemanIRStage:
        c = self.config
        return SemanIRStage(
            dim,
            depth,
            heads,
            window_size=c.window_size,
            dictionary=c.dictionary,
            similarity=c.similarity,
            mlp_ratio=c.mlp_ratio,
            norm=c.norm,
            attention=AttentionOptions(
                cosine_attention=c.cosine_attention,
                position_bias=c.position_bias,
                position_bias_hidden=c.position_bias_hidden,
                backend=c.attention_backend,
            ),
        )

    def _make_unet_resamplers(self) -> None:
        """Stride-2 downsamplers, transposed-conv upsamplers and skip fusions per level."""
        widths = [self.config.embed_dim * m for m in self.config.dim_mults]
        pairs = list(itertools.pairwise(widths))  # (fine, coarse) width per level
        self.downs = nn.ModuleList(nn.Conv2d(f, c, 2, stride=2) for f, c in pairs)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(c, f, 2, stride=2) for f, c in reversed(pairs))
        self.fusions = nn.ModuleList(nn.Conv2d(2 * f, f, 1) for f, _ in reversed(pairs))

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    @property
    def upscale(self) -> int:
        return self.config.upscale

    @property
    def pad_multiple(self) -> int:
        """Inputs are reflect-padded to multiples of this (window x 2**levels)."""
        return self.config.window_size * 2**self.config.levels

    def active_k(self, k: int | None = None) -> int | None:
        """The dictionary size of one forward: ``k`` if given, else a draw from
        ``train_k_choices`` in training mode (torch's global RNG), else ``inference_k``.
        ``None`` in dense mode."""
        c = self.config
        if c.dictionary == "dense":
            if k is not None:
                raise ValueError(
                    f"k={k} only applies to dictionary='stage' or 'layer'; this model attends "
                    "densely to every window token"
                )
            return None
        if k is None and self.training:
            k = c.train_k_choices[int(torch.randint(len(c.train_k_choices), ()))]
        elif k is None:
            k = c.resolved_inference_k
        check_k("k", k, c.window_size**2, c.window_size)
        return k

    def _columnar_body(self, feats: Tensor, k: int | None) -> Tensor:
        x = feats
        for stage in self.stages:
            x = stage(x, k)
        return feats + self.body_conv(x)

    def _unet_body(self, x: Tensor, k: int | None) -> Tensor:
        levels = self.config.levels
        down_stages = self.stages[:levels]
        bottleneck = self.stages[levels]
        up_stages = self.stages[levels + 1 : 2 * levels + 1]
        refinement = self.stages[-1]
        skips = []
        for stage, down in zip(down_stages, self.downs, strict=True):
            x = stage(x, k)
            skips.append(x)
            x = down(x)  # (B, C_next, H/2, W/2)
        x = bottleneck(x, k)
        for stage, up, fuse in zip(up_stages, self.ups, self.fusions, strict=True):
            x = stage(fuse(torch.cat([up(x), skips.pop()], dim=1)), k)  # (B, C_l, H_l, W_l)
        return refinement(x, k)

    def _check_input(self, x: Tensor) -> None:
        """The model's one input check: shape, and finite values where
        :func:`common_kernels.values_checked` says so (on the CPU; never on CUDA by default,
        where it would wait for the GPU). The layers check nothing."""
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x must be a (B, {self.in_channels}, H, W) tensor for in_channels="
                f"{self.in_channels}, got {shape}"
            )
        if values_checked(None, x.device) and not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or Inf values; all entries must be finite")

    def forward(self, x: Tensor, k: int | None = None) -> Tensor:
        """Restore (or upscale) a batch of images of any size.

        Args:
            x: (B, in_channels, H, W) images.
            k: dictionary entries per query, in ``[1, window_size**2]``; default: a draw from
                ``train_k_choices`` in training mode, ``inference_k`` in eval mode.

        Returns:
            (B, out_channels, H * upscale, W * upscale) images.
        """
        self._check_input(x)
        k = self.active_k(k)
        height, width = x.shape[-2:]
        padded = reflect_pad_to_multiple(x, self.pad_multiple)  # (B, C_in, H', W')
        normed = (padded - self.img_mean) * self.config.img_range
        feats = self.shallow(normed)  # (B, C, H', W')
        if feats.device.type == "cpu":
            # a channels-last body: the stages' (B, H, W, C) tokens are views of it, oneDNN's
            # convs keep the layout, and no conv or residual add converts between layouts
            # (forward or backward); the upsampler's convs are 1.2x faster so on these CPUs
            feats = feats.contiguous(memory_format=torch.channels_last)
        if self.config.architecture == "unet":
            body = self._unet_body(feats, k)
        else:
            body = self._columnar_body(feats, k)
        recon = self.reconstruct(body) / self.config.img_range  # (B, C_out, H's, W's)
        if self.upscale == 1 and self.in_channels == self.out_channels:
            out = padded + recon
        else:
            out = recon + self.img_mean
        scale = self.upscale
        return out[..., : height * scale, : width * scale]
