"""SwinIR's pixel-shuffle upsampler, run as one composed conv with its border subtracted.

After the first conv and LeakyReLU the upsampler is linear (convs and pixel shuffles), so its
tail composes into a single conv followed by one pixel shuffle (:func:`compose_linear_tail`).
The composition reads phantom rows beyond the image where the chain reads zero padding; the
difference is a few one- and two-row convs along each side (:func:`ring_correction`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3x3 convolution that keeps the spatial size."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


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


# Input pixels per side of the corner patches: the one-pixel ring plus the
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


def subtract_border_(out: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """``out`` minus the corrections on its outermost ring, in place.

    Args:
        out: (B, C, H, W) maps.
        rows: (B, C, 2, W) for the first and the last row.
        columns: (B, C, H - 2, 2) for the first and the last column, corners excluded.
    """
    height, width = out.shape[-2:]
    out[..., :: height - 1, :] -= rows
    out[..., 1:-1, :: width - 1] -= columns
    return out


class SubtractBorder(torch.autograd.Function):
    """:func:`subtract_border_` with a backward that passes the gradient of ``out`` through as
    it is and slices it for the corrections: autograd's own backward of an in-place update of
    a slice copies the whole gradient, once per update."""

    @staticmethod
    def forward(ctx: Any, out: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
        ctx.mark_dirty(out)
        return subtract_border_(out, rows, columns)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        height, width = grad.shape[-2:]
        return grad, -grad[..., :: height - 1, :], -grad[..., 1:-1, :: width - 1]


class PixelShuffleUpsampler(nn.Sequential):
    """conv 3x3 to ``width`` + LeakyReLU, pixel-shuffle steps (x2, x2 for 4; x2 or x3), conv 3x3
    out (SwinIR's upsampler; the parameters keep their ``Sequential`` names).

    Everything after the LeakyReLU is linear, so ``forward`` runs it as one conv 5x5 to
    ``out_channels * scale**2`` and one PixelShuffle (:func:`compose_linear_tail`): at x4 and
    width 48 that conv takes 7.5x fewer multiply-adds per input pixel than the chain. The
    composition differs from the chain only in the outermost input pixel ring, where the
    chain's convs read their zero padding: along each side the difference is subtracted
    (:func:`ring_correction`), at the four corner pixels the difference of the two on 3x3
    patches (:meth:`corner_corrections`), all in one in-place update whose backward copies
    nothing (:class:`SubtractBorder`). The output equals the chain's within float rounding,
    forward and backward.

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

    def corner_corrections(self, rows: Tensor, weight: Tensor, bias: Tensor, radius: int) -> Tensor:
        """The composed conv minus the chain at the four corner pixels, both on each corner's
        3x3 input patch (the chain with one-sided padding, the composed conv on the patch
        zero-padded by its radius outside the image: one output pixel, as TAIL_STRIP is the
        radius plus one).

        Args:
            rows: (B, C, 6, W) features: the first and the last TAIL_STRIP rows.
            weight, bias, radius: :meth:`composed_tail`.

        Returns:
            (B, C_out s^2, 2, 2) corrections, (top, bottom) x (left, right), before the shuffle.
        """
        s, p, r = self.scale, TAIL_STRIP, radius
        patches = [rows[..., :p, :p], rows[..., :p, -p:], rows[..., p:, :p], rows[..., p:, -p:]]
        chain = [  # one-sided padding: (left, right, top, bottom)
            self.tail(patches[0], (1, 0, 1, 0))[..., :s, :s],
            self.tail(patches[1], (0, 1, 1, 0))[..., :s, -s:],
            self.tail(patches[2], (1, 0, 0, 1))[..., -s:, :s],
            self.tail(patches[3], (0, 1, 0, 1))[..., -s:, -s:],
        ]
        chain = F.pixel_unshuffle(torch.cat(chain, dim=-1), s)  # (B, C s^2, 1, 4)
        outside = [(r, 0, r, 0), (0, r, r, 0), (r, 0, 0, r), (0, r, 0, r)]
        padded = [F.pad(patch, pad) for patch, pad in zip(patches, outside, strict=True)]
        composed = F.conv2d(torch.cat(padded), weight, bias)  # (4B, C s^2, 1, 1)
        composed = composed.view(4, -1, composed.shape[1]).permute(1, 2, 0)  # (B, C s^2, 4)
        return (composed - chain.flatten(2)).view(*chain.shape[:2], 2, 2)

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
        row_sides = F.pixel_unshuffle(torch.cat([top, bottom], dim=-2), s)  # (B, C s^2, 2, W)
        left = F.pad(ring_correction(columns[..., :2], steps, True, False), (0, s - n))
        right = F.pad(ring_correction(columns[..., 2:], steps, True, True), (s - n, 0))
        column_sides = F.pixel_unshuffle(torch.cat([left, right], dim=-1), s)  # (B, C s^2, H, 2)
        corners = self.corner_corrections(rows, weight, bias, radius)  # (B, C s^2, 2, 2)
        row_sides = torch.cat([corners[..., :1], row_sides[..., 1:-1], corners[..., 1:]], dim=-1)
        if torch.is_grad_enabled():
            out = SubtractBorder.apply(out, row_sides, column_sides[..., 1:-1, :])
        else:
            subtract_border_(out, row_sides, column_sides[..., 1:-1, :])
        return F.pixel_shuffle(out, s)
