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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn
from torch.nn import functional as F

from common_kernels import (
    KNNDictionary,
    add_layer_norm_,
    knn_attention_packed,
    knn_dictionary,
    values_checked,
    window_partition,
    window_reverse,
)
from common_kernels.runtime.files import AtomicSavePretrained

from .semanir_config import SemanIRConfig, check_k

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
    :data:`INFERENCE_GROUP_BYTES` on the CPU, every window at once on other devices.

    Args:
        windows: (B', N, C) window tokens.
        heads: the most attention heads of the stage's layers.
    """
    count, n = windows.shape[:2]
    if windows.device.type != "cpu":
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


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3x3 convolution that keeps the spatial size."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


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
        self,
        x: Tensor,
        dictionary: KNNDictionary | None,
        positions: tuple[Tensor, Tensor] | None,
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
        self,
        x: Tensor,
        dictionary: KNNDictionary | None,
        positions: tuple[Tensor, Tensor] | None,
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
            x += self.mlp(self.norm2(x))
        else:  # x += norm(f(x)), fused on the CPU
            add_layer_norm_(x, self.attn.attend(x, dictionary, bias), self.norm1)
            add_layer_norm_(x, self.mlp(x), self.norm2)
        return x


class SemanIRStage(nn.Module):
    """Windows -> one key-semantic dictionary -> L layers sharing it -> conv 3x3 -> residual.

    Args:
        dim: token width.
        depth: number of transformer layers.
        heads: attention heads.
        window_size: window side.
        dictionary: ``"stage"``, ``"layer"`` or ``"dense"`` (see :class:`SemanIRConfig`).
        similarity: dictionary similarity.
        mlp_ratio: MLP hidden width relative to ``dim``.
        norm: ``"pre"`` or ``"post"``.
        attention: logit options of :class:`KeySemanticAttention`.
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
        if windows.data_ptr() == x.data_ptr():  # one window across: a view of x, kept intact
            windows = windows.clone()  # for the residual below
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


def subpixel_as_transposed(conv: nn.Conv2d, factor: int) -> Tensor:
    """The kernel K of ``conv_transpose2d(x, K, stride=factor, padding=factor)``, which equals
    ``PixelShuffle(factor)(conv(x))`` without its bias (``conv``: 3x3, padding 1; factor 1 is a
    plain conv).

    Returns:
        (C_in, C_out, 3 * factor, 3 * factor): K[c0, c, f(2-u) + i, f(2-v) + j] is the weight
        from input channel c0 at tap (u, v) to output channel c at sub-pixel phase (i, j).
    """
    c_in = conv.in_channels
    c_out = conv.out_channels // factor**2
    weight = conv.weight.flip(2, 3)  # (c f^2, c0, 3, 3): taps reversed, u' = 2 - u
    weight = weight.view(c_out, factor, factor, c_in, 3, 3)  # (c, i, j, c0, u', v')
    kernel = weight.permute(3, 0, 4, 1, 5, 2)  # (c0, c, u', i, v', j)
    return kernel.reshape(c_in, c_out, 3 * factor, 3 * factor)  # (c0, c, 3f, 3f)


def compose_linear_tail(steps: list[tuple[nn.Conv2d, int]]) -> tuple[Tensor, Tensor, int]:
    """One conv + PixelShuffle(scale) equal to a chain of (conv 3x3, PixelShuffle(f)) steps
    away from the image border.

    The chain is linear, so its transposed-convolution kernels compose: two strided transposed
    convolutions are one with stride s1 * s2 and kernel up_s2(K1) * K2 (a full convolution
    of the kernels over space, summed over the middle channel), which is
    ``conv_transpose2d(K1, K2, stride=s2)``. Composing from the last step keeps the middle
    channels few (the last conv has only the image's channels). The composed kernel is then
    split into its ``scale**2`` sub-pixel phases. The bias is the chain run on zeros.

    Args:
        steps: (conv, factor) pairs in order; the last has factor 1.

    Returns:
        weight (C_out * scale**2, C_in, 2R+1, 2R+1), bias (C_out * scale**2,) and R, for
        ``pixel_shuffle(conv2d(x, weight, bias, padding=R), scale)``.
    """
    conv, factor = steps[-1]
    kernel = subpixel_as_transposed(conv, factor)  # (C, C_out, L, L)
    stride, padding = factor, factor
    for conv, factor in reversed(steps[:-1]):
        step_kernel = subpixel_as_transposed(conv, factor)
        kernel = F.conv_transpose2d(step_kernel, kernel, stride=stride)  # (C_prev, C_out, L', L')
        padding += factor * stride
        stride *= factor
    scale, length = stride, kernel.shape[-1]
    # output pixel scale * t + a reads input t + d through kernel tap a + padding - scale * d
    radius = max((length - 1 - padding) // scale, (scale - 1 + padding) // scale)
    # taps run from padding - scale * radius to scale - 1 + padding + scale * radius; the pad
    # makes those outside the kernel read zeros (bounds in Python: no GPU sync)
    low = max(0, scale * radius - padding)
    high = max(0, scale - 1 + padding + scale * radius - length + 1)
    kernel = F.pad(kernel, (low, high, low, high))
    offsets = torch.arange(-radius, radius + 1)
    taps = torch.arange(scale)[:, None] + padding + low - scale * offsets  # (s, 2R+1)
    taps = taps.to(kernel.device)
    weight = kernel[:, :, taps[:, :, None, None], taps[None, None]]  # (c0, c, a, d, b, e)
    weight = weight.permute(1, 2, 4, 0, 3, 5)  # (c, a, b, c0, d, e)
    weight = weight.reshape(-1, kernel.shape[0], 2 * radius + 1, 2 * radius + 1)
    first = steps[0][0].weight
    out = first.new_zeros(1, first.shape[1], 3, 3)  # zero features, 3x3 input pixels
    for conv, factor in steps:
        out = F.pixel_shuffle(conv(out), factor) if factor > 1 else conv(out)
    center = out[..., scale : 2 * scale, scale : 2 * scale]  # the outputs of input pixel (1, 1)
    bias = F.pixel_unshuffle(center, scale).flatten()  # (C_out s^2,)
    return weight, bias, radius


# Input pixels per side of the corner patches the chain recomputes: the one-pixel ring plus the
# composed conv's radius of 2 (at scales 2, 3 and 4, tested); below twice this side the chain
# runs as it is.
TAIL_STRIP = 3


def shuffle_columns(x: Tensor, factor: int) -> Tensor:
    """(B, C * f, R, W) -> (B, C, R, W * f): channel (c, j) to column w * f + j, the column
    half of a pixel shuffle (for a conv's outputs of one sub-pixel row)."""
    batch, channels, rows, width = x.shape
    x = x.view(batch, channels // factor, factor, rows, width)  # (B, C, f, R, W)
    return x.permute(0, 1, 3, 4, 2).reshape(batch, channels // factor, rows, width * factor)


def pixel_shuffle_transposed(x: Tensor, factor: int) -> Tensor:
    """``PixelShuffle(factor)`` seen on transposed images: channel (c, i, j) to row offset j
    and column offset i, so that this of a transposed map is the pixel shuffle transposed."""
    batch, channels, height, width = x.shape
    x = x.view(batch, channels // factor**2, factor, factor, height, width)  # (B, C, i, j, H, W)
    x = x.permute(0, 1, 4, 3, 5, 2)  # (B, C, H, j, W, i)
    return x.reshape(batch, channels // factor**2, height * factor, width * factor)


def subpixel_line(
    weight: Tensor, bias: Tensor, factor: int, index: int, transposed: bool
) -> tuple[Tensor, Tensor]:
    """The output channels of a conv followed by PixelShuffle(factor) that land on sub-pixel
    row ``index`` (transposed: column), ordered (c, the other sub-pixel index)."""
    c_out = weight.shape[0] // factor**2
    weight = weight.view(c_out, factor, factor, *weight.shape[1:])  # (C, i, j, C_in, 3, 3)
    bias = bias.view(c_out, factor, factor)
    line = (slice(None), slice(None), index) if transposed else (slice(None), index)
    weight, bias = weight[line], bias[line]  # (C, f, C_in, 3, 3), (C, f)
    return weight.reshape(c_out * factor, *weight.shape[2:]), bias.reshape(-1)


def border_indices(size: int, count: int, device: torch.device) -> Tensor:
    """The first and the last ``count`` indices of a dimension of ``size``, made on the device
    (no copy from the host)."""
    index = torch.arange(2 * count, device=device)
    return torch.where(index < count, index, index + size - 2 * count)


def ring_correction(
    x: Tensor, steps: list[tuple[Tensor, Tensor, int]], transposed: bool, last: bool
) -> Tensor:
    """The composed tail minus the chain on the outputs of the first (``last``: the last) input
    row of ``x``, or column (``transposed``), away from the two sides it meets.

    The composed conv equals the chain run without its intermediate zero padding: beyond the
    image it reads the values the convs would have computed there (phantom rows). The
    difference is the rest of the chain applied to those phantom rows, which only the two
    outermost input rows reach, so every conv here makes one or two rows. Columns are worked
    as rows of the transposed map (the kernels transposed, the pixel shuffle's sub-pixel
    indices swapped). The zero padding along the row leaves all but the outputs of its first
    and last input pixels exact.

    Args:
        x: (B, C, H, W) features after the LeakyReLU, at least 2 x 3.
        steps: the tail's (weight, bias, factor), factors (f, 1) or (2, 2, 1).
        transposed: a column (left or right) instead of a row.
        last: the last row (column) instead of the first.

    Returns:
        (B, C_out, R, W * scale) rows (transposed: (B, C_out, H * scale, R) columns) to
        subtract from the composed conv's R = 1 (one pixel-shuffle step) or 3 output rows
        (columns) nearest that border, in the image's order.
    """
    shuffle = F.pixel_shuffle
    if transposed:  # columns as the rows of the transposed map
        x = x.transpose(-1, -2)
        steps = [(weight.transpose(2, 3), bias, factor) for weight, bias, factor in steps]
        shuffle = pixel_shuffle_transposed
    edge, pair = (x[..., -1:, :], x[..., -2:, :]) if last else (x[..., :1, :], x[..., :2, :])
    outer, inner = (slice(0, 1), slice(2, 3)) if last else (slice(2, 3), slice(0, 1))
    if len(steps) == 2:  # conv, PS(f), conv: the middle features' phantom row
        (w1, b1, f), (w2, _, _) = steps
        w1, b1 = subpixel_line(w1, b1, f, 0 if last else f - 1, transposed)
        phantom = shuffle_columns(F.conv2d(edge, w1[..., outer, :], b1, padding=(0, 1)), f)
        correction = F.conv2d(phantom, w2[..., inner, :], padding=(0, 1))  # (B, C, 1, W f)
    else:  # factors 2, 2
        (w1, b1, _), (w2, b2, _), (w3, _, _) = steps
        # the middle features' two phantom rows (one input row out: the conv reads the edge)
        phantom1 = shuffle(F.conv2d(edge, w1[..., outer, :], b1, padding=(0, 1)), 2)
        # the middle features' outermost real row (the conv's outer kernel row reads zeros)
        first, first_bias = subpixel_line(w1, b1, 2, 1 if last else 0, transposed)
        taps = slice(0, 2) if last else slice(1, 3)
        real = shuffle_columns(F.conv2d(pair, first[..., taps, :], first_bias, padding=(0, 1)), 2)
        middle = torch.cat([real, phantom1] if last else [phantom1, real], dim=-2)  # 3 rows
        # the second level's phantom row, from those three middle rows
        second, second_bias = subpixel_line(w2, b2, 2, 0 if last else 1, transposed)
        phantom2 = shuffle_columns(F.conv2d(middle, second, second_bias, padding=(0, 1)), 2)
        # what the middle phantom row next to the image adds to the second level's two rows
        near = phantom1[..., :1, :] if last else phantom1[..., 1:, :]
        added = shuffle(F.conv2d(near, w2[..., inner, :], padding=(0, 1)), 2)
        difference = torch.cat([added, phantom2] if last else [phantom2, added], dim=-2)
        difference = F.pad(difference, (1, 1, 2, 0) if last else (1, 1, 0, 2))
        # channels-last: oneDNN's conv to a few channels is 2.5x faster so (forward+backward)
        difference = difference.contiguous(memory_format=torch.channels_last)
        correction = F.conv2d(difference, w3)  # 3 output rows
    return correction.transpose(-1, -2) if transposed else correction


class PixelShuffleUpsampler(nn.Sequential):
    """conv 3x3 to ``width`` + LeakyReLU, pixel-shuffle steps (x2, x2 for 4; x2 or x3), conv 3x3
    out (SwinIR's upsampler; the parameters keep their ``Sequential`` names).

    Everything after the LeakyReLU is linear, so ``forward`` runs it as one conv 5x5 to
    ``out_channels * scale**2`` and one PixelShuffle (:func:`compose_linear_tail`): at x4 and
    width 48 that conv takes 7.5x fewer multiply-adds per input pixel than the chain. The
    composition differs from the chain only in the outermost input pixel ring, where the
    chain's convs read their zero padding: along each side the difference is subtracted
    (:func:`ring_correction`), and the four corner pixels are recomputed by the chain on 3x3
    patches. The output equals the chain's within float rounding, forward and backward.

    Args:
        dim: input channels.
        out_channels: image channels.
        scale: 2, 3 or 4.
        width: channels of the upsampling convs.
    """

    def __init__(self, dim: int, out_channels: int, scale: int, width: int) -> None:
        if scale not in (2, 3, 4):  # the composition's one-pixel ring is shown for these
            raise ValueError(f"scale must be 2, 3 or 4, got {scale}")
        factors = (2, 2) if scale == 4 else (scale,)
        layers: list[nn.Module] = [conv3x3(dim, width), nn.LeakyReLU(inplace=True)]
        for factor in factors:
            layers += [conv3x3(width, width * factor * factor), nn.PixelShuffle(factor)]
        layers.append(conv3x3(width, out_channels))
        super().__init__(*layers)
        self.scale = scale
        self.factors = (*factors, 1)  # of the tail's convs; 1: the last, plain conv
        self._composed: tuple[tuple[int, ...], Tensor, Tensor, int] | None = None

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        self._composed = None  # .to(), .half(), .cuda(): compose the converted weights afresh
        return super()._apply(fn, recurse)

    def tail(self, x: Tensor, padding: tuple[int, int, int, int] = (1, 1, 1, 1)) -> Tensor:
        """The linear chain after the LeakyReLU, layer by layer.

        Args:
            x: (B, width, H, W) features.
            padding: the zero padding of each conv, (left, right, top, bottom): a side with 0
                shrinks by a pixel per conv instead, which leaves the other side's outputs
                exact on a patch cut out of a larger input.
        """
        for layer in list(self)[2:]:
            if isinstance(layer, nn.Conv2d):
                x = F.conv2d(F.pad(x, padding), layer.weight, layer.bias)
            else:
                x = layer(x)
        return x

    def tail_steps(self) -> list[tuple[Tensor, Tensor, int]]:
        """(weight, bias, factor) of the tail's convs, in order."""
        convs = [layer for layer in list(self)[2:] if isinstance(layer, nn.Conv2d)]
        return [(c.weight, c.bias, f) for c, f in zip(convs, self.factors, strict=True)]

    def composed_tail(self) -> tuple[Tensor, Tensor, int]:
        """:func:`compose_linear_tail` of this tail, in the weights' dtype (autocast off); under
        no_grad it is kept until a weight changes (in place, moved or replaced)."""
        convs = [layer for layer in list(self)[2:] if isinstance(layer, nn.Conv2d)]
        steps = list(zip(convs, self.factors, strict=True))
        with torch.autocast(convs[0].weight.device.type, enabled=False):
            if torch.is_grad_enabled() or torch.compiler.is_compiling():
                return compose_linear_tail(steps)
            params = [p for conv in convs for p in (conv.weight, conv.bias)]
            key = (*(p._version for p in params), *(p.data_ptr() for p in params))
            if self._composed is None or self._composed[0] != key:
                self._composed = (key, *compose_linear_tail(steps))
        return self._composed[1:]

    def forward(self, x: Tensor) -> Tensor:
        """(B, dim, H, W) -> (B, out_channels, H * scale, W * scale)."""
        x = self[1](self[0](x))
        height, width = x.shape[-2:]
        if min(height, width) < 2 * TAIL_STRIP:
            return self.tail(x)
        weight, bias, radius = self.composed_tail()
        s, p = self.scale, TAIL_STRIP
        out = F.conv2d(x, weight, bias, padding=radius)  # (B, C s^2, H, W), shuffled at the end
        steps = self.tail_steps()
        # the border rows and columns, taken out at once (one gradient buffer each): the
        # corner patches' 3 and the corrections' 2 at each end
        rows = x.index_select(-2, border_indices(height, p, x.device))  # (B, C, 6, W)
        columns = x.index_select(-1, border_indices(width, 2, x.device))  # (B, C, H, 4)
        n = 1 if len(steps) == 2 else 3  # output rows (columns) the correction reaches
        top = F.pad(ring_correction(rows[..., :p, :], steps, False, False), (0, 0, 0, s - n))
        bottom = F.pad(ring_correction(rows[..., p:, :], steps, False, True), (0, 0, s - n, 0))
        sides = F.pixel_unshuffle(torch.cat([top, bottom], dim=-2), s)  # (B, C s^2, 2, W)
        out[..., :: height - 1, 1:-1] -= sides[..., 1:-1]
        left = F.pad(ring_correction(columns[..., :2], steps, True, False), (0, s - n))
        right = F.pad(ring_correction(columns[..., 2:], steps, True, True), (s - n, 0))
        sides = F.pixel_unshuffle(torch.cat([left, right], dim=-1), s)  # (B, C s^2, H, 2)
        out[..., 1:-1, :: width - 1] -= sides[..., 1:-1, :]
        corners = [  # the chain on the 3x3 input patch of each corner, one-sided padding
            self.tail(rows[..., :p, :p], (1, 0, 1, 0))[..., :s, :s],
            self.tail(rows[..., :p, -p:], (0, 1, 1, 0))[..., :s, -s:],
            self.tail(rows[..., p:, :p], (1, 0, 0, 1))[..., -s:, :s],
            self.tail(rows[..., p:, -p:], (0, 1, 0, 1))[..., -s:, -s:],
        ]
        corners = F.pixel_unshuffle(torch.cat(corners, dim=-1), s)  # (B, C s^2, 1, 4)
        out[..., :: height - 1, :: width - 1] = corners.view(*corners.shape[:2], 2, 2)
        return F.pixel_shuffle(out, s)


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
        if self.config.architecture == "unet":
            body = self._unet_body(feats, k)
        else:
            body = self._columnar_body(feats, k)
        if self.upscale > 1 and body.device.type == "cpu":
            # oneDNN's channels-last convolutions run the upsampler (27% of the x4 model's
            # FLOPs) 1.2x faster than NCHW on these CPUs; the output stays channels-last
            body = body.contiguous(memory_format=torch.channels_last)  # (B, C, H', W')
        recon = self.reconstruct(body) / self.config.img_range  # (B, C_out, H's, W's)
        if self.upscale == 1 and self.in_channels == self.out_channels:
            out = padded + recon
        else:
            out = recon + self.img_mean
        scale = self.upscale
        return out[..., : height * scale, : width * scale]
