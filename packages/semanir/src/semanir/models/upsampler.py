"""SwinIR's pixel-shuffle upsampler, run as one composed conv with its border subtracted.

After the first conv and LeakyReLU the upsampler is linear (convs and pixel shuffles), so its
tail composes into a single conv followed by one pixel shuffle (:func:`compose_linear_tail`).
The composition reads phantom rows beyond the image where the chain reads zero padding; the
difference is one more composed conv along each side (:func:`side_corrections`) and the chain
on a 3x3 patch at each corner.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

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

Steps = list[tuple[Tensor, Tensor, int]]  # a tail's (weight, bias, factor), factor 1 last


def reorder_subpixels(
    weight: Tensor, bias: Tensor, factor: int, reorder: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """``reorder`` applied to the (C, i, j) view of a shuffle conv's output channels (its
    sub-pixel rows i and columns j), in the weight and the bias; a plain conv as it is."""
    if factor == 1:
        return weight, bias
    c_out = weight.shape[0] // factor**2
    weight = reorder(weight.reshape(c_out, factor, factor, *weight.shape[1:])).flatten(0, 2)
    return weight, reorder(bias.view(c_out, factor, factor)).flatten()


def flip_steps(steps: Steps, dim: int) -> Steps:
    """The tail that computes the chain on images flipped along ``dim`` (2: rows, 3: columns):
    each kernel flipped, and each pixel shuffle's sub-pixel row (column) i sent to f - 1 - i."""
    return [
        (*reorder_subpixels(w.flip(dim), b, f, lambda t: t.flip(dim - 1)), f) for w, b, f in steps
    ]


def transpose_steps(steps: Steps) -> Steps:
    """The tail that computes the chain on transposed images: each kernel transposed, and each
    pixel shuffle's sub-pixel indices (i, j) swapped."""
    return [
        (*reorder_subpixels(w.transpose(2, 3), b, f, lambda t: t.transpose(1, 2)), f)
        for w, b, f in steps
    ]


def stack_steps(frames: list[Steps]) -> Steps:
    """Frames' steps stacked along a new leading dimension, one (weight, bias, factor) per step."""
    return [
        (torch.stack([f[n][0] for f in frames]), torch.stack([f[n][1] for f in frames]), factor)
        for n, (_, _, factor) in enumerate(frames[0])
    ]


def row_placement(f1: int, t1: int, t2: int) -> Tensor:
    """Where :func:`compose_row_convs`'s products land: A[jj, tap, d2, j1, d1] = 1 where the
    second conv's tap d2 at its input's sub-pixel jj reads the first's sub-pixel j1, and the
    first's tap d1 is then the composed kernel's tap (centred, odd length)."""
    lo = -((t2 - 1) // 2)  # the second's first tap, on the first's output grid
    # the second's output at f1 t + jj reads the first's output f1 (t + q) + j1
    q_low, q_high = lo // f1, (f1 - 1 + lo + t2 - 1) // f1
    radius = max(-q_low, q_high) + (t1 - 1) // 2
    placement = torch.zeros(f1, 2 * radius + 1, t2, f1, t1)
    for jj in range(f1):
        for d2 in range(t2):
            q, j1 = divmod(jj + lo + d2, f1)
            for d1 in range(t1):
                placement[jj, radius + q + d1 - (t1 - 1) // 2, d2, j1, d1] = 1
    return placement


def row_placements(factors: tuple[int, ...]) -> list[Tensor]:
    """:func:`row_placement` of each composition in :func:`side_corrections`, in its order
    (from the last piece; every piece has 3 taps, one per tail conv)."""
    placements, taps = [], 3
    for factor in reversed(factors[:-1]):
        placements.append(row_placement(factor, 3, taps))
        taps = placements[-1].shape[1]
    return placements


def compose_row_convs(first: Tensor, second: Tensor, placement: Tensor) -> Tensor:
    """Two 1-D sub-pixel convs along a row, one after the other, as one.

    A kernel K (S, C_out, f, C_in, taps) with an odd number of taps maps a row x to the row
    ``out[o, f t + j] = sum_{c, d} K[o, j, c, d] x[c, t + d - (taps - 1) // 2]`` (f outputs per
    input pixel, a pixel shuffle along the row), for S frames at once.

    Args:
        first: (S, M, f1, C, t1), applied first.
        second: (S, O, f2, M, t2), applied to the first's (shuffled) output.
        placement: :func:`row_placement` (f1, taps, t2, f1, t1).

    Returns:
        (S, O, f1 * f2, C, taps), sub-pixel index f2 * j1 + j2.
    """
    products = torch.einsum("sojmd,smkce->sojdkce", second, first)  # (S, O, f2, t2, f1, C, t1)
    out = torch.einsum("sojdkce,ptdke->sopjct", products, placement)  # (S, O, f1, f2, C, taps)
    return out.flatten(2, 3)


def top_row_pieces(steps: Steps, zero: Any, one: Any) -> list[Tensor]:
    """The composed tail minus the chain on the outputs of the top input row, away from its two
    ends, as 1-D sub-pixel convs along the row (:func:`compose_row_convs`), for S frames of the
    tail at once.

    The composed conv equals the chain run without its intermediate zero padding: above the
    image it reads the values the convs would have computed there (phantom rows), and the
    difference is the rest of the chain applied to those phantom rows, which only the top one
    (x2, x3) or two (x4) input rows reach. Every piece is a conv along the row on a few rows,
    so the rows become channel blocks and a constant channel (the last) carries the biases.

    Args:
        steps: the tail's (weight, bias, factor) stacked over S frames (:func:`stack_steps`):
            weights (S, C_out, C_in, 3, 3), factors (f, 1) or (2, 2, 1); tensors of any dtype
            (:func:`border_layout` passes the weights' flat indices).
        zero, one: the values of the kernels' empty entries and of the constant.

    Returns:
        the pieces (S, C_out', f, C_in', 3) in order; the first reads the top (x2, x3) or the
        top two (x4) input rows as channel blocks, then the constant; the last makes the
        outputs' sub-pixel rows as channel blocks (1 or 3 of them).
    """
    w1, b1, f = steps[0]
    frames, _, c = w1.shape[:3]
    w1 = w1.view(frames, -1, f, f, c, 3, 3)  # (S, C, i, j, C_in, 3, 3)
    b1 = b1.view(frames, -1, f, f)

    def kernel(rows_out: int, rows_in: int, factor: int) -> Tensor:  # + the constant channel
        k = w1.new_full((frames, rows_out * c + 1, factor, rows_in * c + 1, 3), zero)
        k[:, -1, :, -1, 1] = one  # the constant carries through
        return k

    if len(steps) == 2:
        (w2, _, _) = steps[1]
        # the first conv's phantom row above the image: its sub-pixel row f - 1 of input row -1
        phantom = kernel(1, 1, f)
        phantom[:, :c, :, :c] = w1[:, :, f - 1, :, :, 2]  # (S, C, j, C_in, 3) from input row 0
        phantom[:, :c, :, -1, 1] = b1[:, :, f - 1]
        # the last conv's output row 0 reads it through its kernel row 0
        last = w2.new_full((frames, w2.shape[1], 1, c + 1, 3), zero)
        last[:, :, 0, :c] = w2[:, :, :, 0]
        return [phantom, last]
    (w2, b2, _), (w3, _, _) = steps[1], steps[2]
    w2 = w2.view(frames, -1, 2, 2, c, 3, 3)
    b2 = b2.view(frames, -1, 2, 2)
    # middle rows -2, -1 (the first conv's phantom row) and 0 (its real row, whose kernel row 0
    # reads the zero padding), from input rows 0 and 1
    middle = kernel(3, 2, 2)
    for i in range(2):
        middle[:, i * c : (i + 1) * c, :, :c] = w1[:, :, i, :, :, 2]
        middle[:, i * c : (i + 1) * c, :, -1, 1] = b1[:, :, i]
    middle[:, 2 * c : 3 * c, :, :c] = w1[:, :, 0, :, :, 1]
    middle[:, 2 * c : 3 * c, :, c : 2 * c] = w1[:, :, 0, :, :, 2]
    middle[:, 2 * c : 3 * c, :, -1, 1] = b1[:, :, 0]
    # rows -1 (the second conv's phantom row, from all three) and 0, 1 (what middle row -1 adds
    # to the second conv's real row 0 through its kernel row 0; the bias is the chain's)
    second = kernel(3, 3, 2)
    for u in range(3):
        second[:, :c, :, u * c : (u + 1) * c] = w2[:, :, 1, :, :, u]
    second[:, :c, :, -1, 1] = b2[:, :, 1]
    for i in range(2):
        second[:, (1 + i) * c : (2 + i) * c, :, c : 2 * c] = w2[:, :, i, :, :, 0]
    # the last conv's output rows a = 0, 1, 2 read rows a - 1 + v of the three
    c_out = w3.shape[1]
    last = w3.new_full((frames, 3 * c_out, 1, 3 * c + 1, 3), zero)
    for a in range(3):
        for v in range(3 - a):
            last[:, a * c_out : (a + 1) * c_out, 0, (a + v) * c : (a + v + 1) * c] = w3[..., v, :]
    return [middle, second, last]


def side_corrections(
    pieces: list[Tensor], placements: list[Tensor], channels: int
) -> list[tuple[Tensor, Tensor]]:
    """The four sides' corrections from :func:`top_row_pieces` of the frames where each side
    is the top row: the image as it is (top), upside down (bottom), transposed (left), both
    (right); the tail computes the chain there with its kernels flipped or transposed
    (:func:`flip_steps`, :func:`transpose_steps`).

    The pieces compose from the last, which keeps few output channels throughout: at x4 and
    width 48 the one conv per side takes ~9x fewer multiply-adds than the pieces would.

    Args:
        pieces: :func:`top_row_pieces` of the four frames' tails, in the order above.
        placements: :func:`row_placements` of the tail.
        channels: the tail's input channels C.

    Returns:
        (weight, bias) for the top and the bottom rows and the left and the right columns, each
        (C_out s^2, C, r, taps) and (C_out s^2,) in :meth:`PixelShuffleUpsampler.forward`'s
        pre-shuffle layout, for :func:`side_correction` on the outer r rows (columns) in the
        image's order.
    """
    composed = pieces[-1]
    for piece, placement in zip(reversed(pieces[:-1]), placements, strict=True):
        composed = compose_row_convs(piece, composed, placement)  # (4, a C_out, J, r C + 1, taps)
    scale, taps = composed.shape[2], composed.shape[-1]
    rows_out = 1 if len(pieces) == 2 else 3  # the sub-pixel rows reached: x2 and x3, x4
    blocks = composed.shape[3] // channels
    composed = composed.view(4, rows_out, -1, scale, blocks * channels + 1, taps)
    weight = composed[..., :-1, :].unflatten(-2, (blocks, channels))  # (4, a, o, J, r, C, taps)
    weight = weight.permute(0, 2, 1, 3, 5, 4, 6)  # (4, C_out, a, J, C, r, taps)
    bias = composed[..., -1, :].sum(-1).transpose(1, 2)  # (4, C_out, a, J)
    # sub-pixel rows a >= rows_out are exact: zero corrections
    weight = F.pad(weight, (0, 0, 0, 0, 0, 0, 0, 0, 0, scale - rows_out))
    bias = F.pad(bias, (0, 0, 0, scale - rows_out))
    top = (weight[0], bias[0])
    bottom = (weight[1].flip(1, 4), bias[1].flip(1))  # rows in the image's order
    left = (weight[2].transpose(1, 2), bias[2].transpose(1, 2))  # sub-pixel (J, a) -> (i, j)
    right = (weight[3].flip(1, 4).transpose(1, 2), bias[3].flip(1).transpose(1, 2))
    return [(w.flatten(0, 2), b.flatten()) for w, b in (top, bottom, left, right)]


def side_correction(strip: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """One side's correction (:func:`side_corrections`) along its strip, as one matmul: oneDNN's
    convs on a map one or two pixels thick run at a tenth of its rate.

    Args:
        strip: (B, C, r, L) the side's outer r rows (columns, transposed), in the image's order.
        weight, bias: (C_out s^2, C, r, taps) and (C_out s^2,).

    Returns:
        (B, C_out s^2, L).
    """
    taps = weight.shape[-1]
    windows = F.pad(strip, (taps // 2, taps // 2)).unfold(-1, taps, 1)  # (B, C, r, L, taps)
    return torch.einsum("bcrlt,ocrt->bol", windows, weight) + bias[:, None]


def corner_steps(steps: Steps) -> Steps:
    """The tail for the four corners at once, each the top-left corner of a frame (the image
    as it is, flipped left-right, upside down, both): per step, the frames' kernels as the
    groups of one grouped conv."""
    mirrored = flip_steps(steps, 3)
    frames = [steps, mirrored, flip_steps(steps, 2), flip_steps(mirrored, 2)]
    return [(w.flatten(0, 1), b.flatten(), f) for w, b, f in stack_steps(frames)]


def border_layout(
    shapes: list[tuple[int, ...]], factors: tuple[int, ...]
) -> tuple[Tensor, list[torch.Size]]:
    """Where the side pieces' and the corner steps' entries sit in :func:`tail_sources`: the
    frames' flips and transposes and the pieces' blocks, worked out once on indices, so that
    one ``index_select`` builds them all (its backward: one ``index_add``).

    Args:
        shapes: the tail's weight shapes, in order.
        factors: the tail's factors.

    Returns:
        the flat index and the shape of each piece, then of each corner step's weight and bias.
    """
    steps, start = [], 0
    for shape, factor in zip(shapes, factors, strict=True):
        weight = torch.arange(start, start + math.prod(shape), dtype=torch.int32).view(shape)
        start += weight.numel()
        steps.append((weight, torch.arange(start, start + shape[0], dtype=torch.int32), factor))
        start += shape[0]
    transposed = transpose_steps(steps)
    frames = [steps, flip_steps(steps, 2), transposed, flip_steps(transposed, 2)]
    tensors = top_row_pieces(stack_steps(frames), zero=start, one=start + 1)
    tensors += [t for weight, bias, _ in corner_steps(steps) for t in (weight, bias)]
    return torch.cat([t.flatten() for t in tensors]), [t.shape for t in tensors]


def tail_sources(steps: Steps) -> Tensor:
    """The tail's weights and biases flat, in order, then a 0 and a 1."""
    weight = steps[0][0]
    flat = [t.flatten() for w, b, _ in steps for t in (w, b)]
    return torch.cat([*flat, weight.new_zeros(1), weight.new_ones(1)])


def border_indices(size: int, count: int, device: torch.device) -> Tensor:
    """The first and the last ``count`` indices of a dimension of ``size``, made on the device
    (no copy from the host)."""
    index = torch.arange(2 * count, device=device)
    return torch.where(index < count, index, index + size - 2 * count)


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


# per weight: its address, and its version counter or, for an inference tensor, its values
WeightsStamp = tuple[tuple[int, int | Tensor], ...]


def weights_stamp(weights: list[Tensor]) -> WeightsStamp:
    """What :func:`same_weights` compares to tell whether ``weights`` changed since.

    A tensor made under ``torch.inference_mode`` has no version counter, and changes in place
    there unseen, so its values are kept (a copy: the tail's weights are a small part of the
    model) where a normal tensor's version counter suffices, which avoids a comparison (and a
    device sync) per call.

    Args:
        weights: the tail's weights and biases.
    """
    return tuple(
        (w.data_ptr(), w.detach().clone() if w.is_inference() else w._version) for w in weights
    )


def same_weights(weights: list[Tensor], stamp: WeightsStamp) -> bool:
    """Whether ``weights`` are those :func:`weights_stamp` saw, unchanged: same tensors (address),
    not modified in place since (version counter, or values for inference tensors).

    Args:
        weights: the tail's weights and biases, in the order of the stamp.
        stamp: :func:`weights_stamp` of them when the composition was made.
    """
    for weight, (address, mark) in zip(weights, stamp, strict=True):
        if weight.data_ptr() != address or weight.is_inference() != isinstance(mark, Tensor):
            return False
        if isinstance(mark, Tensor):
            if weight.dtype != mark.dtype or not torch.equal(weight, mark):
                return False
        elif weight._version != mark:
            return False
    return True


class TailComposition(NamedTuple):
    """What :meth:`PixelShuffleUpsampler.forward` derives from the tail's weights."""

    weight: Tensor  # the composed conv (C s^2, C_in, 2R+1, 2R+1)
    bias: Tensor  # (C s^2,)
    radius: int  # R
    sides: list[tuple[Tensor, Tensor]]  # top, bottom, left, right (:func:`side_corrections`)
    corners: Steps  # the corner frames' grouped tail (:func:`corner_steps`)


class PixelShuffleUpsampler(nn.Sequential):
    """conv 3x3 to ``width`` + LeakyReLU, pixel-shuffle steps (x2, x2 for 4; x2 or x3), conv 3x3
    out (SwinIR's upsampler; the parameters keep their ``Sequential`` names).

    Everything after the LeakyReLU is linear, so ``forward`` runs it as one conv 5x5 to
    ``out_channels * scale**2`` and one PixelShuffle (:func:`compose_linear_tail`): at x4 and
    width 48 that conv takes 7.5x fewer multiply-adds per input pixel than the chain. The
    composition differs from the chain only in the outermost input pixel ring, where the
    chain's convs read their zero padding: along each side the difference is one more composed
    conv on the side's outer rows (:func:`side_corrections`), at the four corner pixels the
    difference of the two on 3x3 patches (:meth:`corner_corrections`), all subtracted in one
    in-place update whose backward copies nothing (:class:`SubtractBorder`). The output equals
    the chain's within float rounding, forward and backward.

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
        self._composed: tuple[WeightsStamp, TailComposition] | None = None
        # how the border's corrections are built from the weights (derived, not saved)
        shapes = [tuple(conv.weight.shape) for conv in self.tail_convs()]
        index, self.border_shapes = border_layout(shapes, self.factors)
        self.register_buffer("border_index", index, persistent=False)
        self.placement_names = [f"placement{n}" for n in range(len(factors))]
        for name, placement in zip(self.placement_names, row_placements(self.factors), strict=True):
            self.register_buffer(name, placement, persistent=False)

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

    def tail_convs(self) -> list[nn.Conv2d]:
        """The tail's convs, in order."""
        return [layer for layer in list(self)[2:] if isinstance(layer, nn.Conv2d)]

    def tail_steps(self) -> Steps:
        """The tail's (weight, bias, factor), in order."""
        convs = self.tail_convs()
        return [(c.weight, c.bias, f) for c, f in zip(convs, self.factors, strict=True)]

    def _compose(self) -> TailComposition:
        convs = self.tail_convs()
        weight, bias, radius = compose_linear_tail(list(zip(convs, self.factors, strict=True)))
        steps = self.tail_steps()
        sizes = [math.prod(shape) for shape in self.border_shapes]
        parts = tail_sources(steps).index_select(0, self.border_index).split(sizes)
        parts = [part.view(shape) for part, shape in zip(parts, self.border_shapes, strict=True)]
        pieces, corners = parts[: len(convs)], parts[len(convs) :]  # a piece per conv
        corner = [(corners[2 * n], corners[2 * n + 1], f) for n, f in enumerate(self.factors)]
        placements = [getattr(self, name) for name in self.placement_names]
        sides = side_corrections(pieces, placements, convs[0].in_channels)
        return TailComposition(weight, bias, radius, sides, corner)

    def composition(self) -> TailComposition:
        """Everything the forward derives from the tail's weights, in their dtype (autocast
        off); under no_grad and inference_mode it is kept until a weight changes (in place,
        moved or replaced; :func:`same_weights`)."""
        convs = self.tail_convs()
        with torch.autocast(convs[0].weight.device.type, enabled=False):
            if torch.is_grad_enabled() or torch.compiler.is_compiling():
                return self._compose()
            params = [p for conv in convs for p in (conv.weight, conv.bias)]
            if self._composed is None or not same_weights(params, self._composed[0]):
                self._composed = (weights_stamp(params), self._compose())
        return self._composed[1]

    def composed_tail(self) -> tuple[Tensor, Tensor, int]:
        """:func:`compose_linear_tail` of this tail (see :meth:`composition`)."""
        return self.composition()[:3]

    def corner_corrections(self, rows: Tensor, composed: TailComposition) -> Tensor:
        """The composed conv minus the chain at the four corner pixels, both on each corner's
        3x3 input patch (the chain with one-sided padding, the composed conv on the patch
        zero-padded by its radius outside the image: one output pixel, as TAIL_STRIP is the
        radius plus one). The chain runs once for the four, each patch as the top-left corner
        of its frame (:func:`corner_steps`).

        Args:
            rows: (B, C, 6, W) features: the first and the last TAIL_STRIP rows.
            composed: :meth:`composition`.

        Returns:
            (B, C_out s^2, 2, 2) corrections, (top, bottom) x (left, right), before the shuffle.
        """
        s, p, r = self.scale, TAIL_STRIP, composed.radius
        patches = [rows[..., :p, :p], rows[..., :p, -p:], rows[..., p:, :p], rows[..., p:, -p:]]
        frames = [patches[0], patches[1].flip(-1), patches[2].flip(-2), patches[3].flip(-2, -1)]
        chain = torch.cat(frames, dim=1)  # (B, 4 C, 3, 3): the frames as channel groups
        for weight, bias, factor in composed.corners:
            chain = F.conv2d(F.pad(chain, (1, 0, 1, 0)), weight, bias, groups=4)
            chain = F.pixel_shuffle(chain, factor) if factor > 1 else chain
        chain = chain[..., :s, :s].unflatten(1, (4, -1))  # (B, 4, C_out, s, s)
        blocks = [chain[:, 0], chain[:, 1].flip(-1), chain[:, 2].flip(-2), chain[:, 3].flip(-2, -1)]
        chain = F.pixel_unshuffle(torch.cat(blocks, dim=-1), s)  # (B, C s^2, 1, 4)
        outside = [(r, 0, r, 0), (0, r, r, 0), (r, 0, 0, r), (0, r, 0, r)]
        padded = [F.pad(patch, pad) for patch, pad in zip(patches, outside, strict=True)]
        out = F.conv2d(torch.cat(padded), composed.weight, composed.bias)  # (4B, C s^2, 1, 1)
        out = out.view(4, -1, out.shape[1]).permute(1, 2, 0)  # (B, C s^2, 4)
        return (out - chain.flatten(2)).view(*chain.shape[:2], 2, 2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, dim, H, W) -> (B, out_channels, H * scale, W * scale)."""
        x = self[1](self[0](x))
        height, width = x.shape[-2:]
        if min(height, width) < 2 * TAIL_STRIP:
            return self.tail(x)
        composed = self.composition()
        s, p = self.scale, TAIL_STRIP
        out = F.conv2d(x, composed.weight, composed.bias, padding=composed.radius)
        # (B, C s^2, H, W), shuffled at the end
        top, bottom, left, right = composed.sides
        r = top[0].shape[-2]  # the input rows (columns) a side's correction reads: 1 or 2
        # the border rows and columns, taken out at once (one gradient buffer each): the
        # corner patches' 3 rows at each end, the sides' r columns
        rows = x.index_select(-2, border_indices(height, p, x.device))  # (B, C, 6, W)
        columns = x.index_select(-1, border_indices(width, r, x.device)).transpose(-1, -2)
        # (B, C, 2r, H): the columns as rows, outermost first on the left
        row_sides = torch.stack(
            [side_correction(rows[:, :, :r], *top), side_correction(rows[:, :, -r:], *bottom)],
            dim=-2,
        )  # (B, C s^2, 2, W)
        column_sides = torch.stack(
            [side_correction(columns[:, :, :r], *left), side_correction(columns[:, :, r:], *right)],
            dim=-1,
        )  # (B, C s^2, H, 2)
        corners = self.corner_corrections(rows, composed)  # (B, C s^2, 2, 2)
        row_sides = torch.cat([corners[..., :1], row_sides[..., 1:-1], corners[..., 1:]], dim=-1)
        if torch.is_grad_enabled():
            out = SubtractBorder.apply(out, row_sides, column_sides[..., 1:-1, :])
        else:
            subtract_border_(out, row_sides, column_sides[..., 1:-1, :])
        return F.pixel_shuffle(out, s)
