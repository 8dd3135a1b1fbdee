"""Fourier phase fusion: keep a signal's amplitude spectrum, blend its phase towards a guide."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import check_float, values_checked


def _normalize_dims(dims: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """Validate ``dims`` against a tensor of ``ndim`` dims; return them as non-negative ints."""
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    accepted = f"distinct ints in [{-ndim}, {ndim - 1}]"
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) for d in dims):
        raise ValueError(f"dims must be a non-empty sequence of {accepted}, got {dims!r}")
    if any(not -ndim <= d < ndim for d in dims):
        raise ValueError(f"dims must be {accepted} for x of shape with {ndim} dims, got {dims}")
    positive = tuple(d % ndim for d in dims)
    if len(set(positive)) != len(positive):
        raise ValueError(f"dims must be {accepted} (no dimension twice), got {dims}")
    return positive


def _check_weight(weight: object) -> float:
    """Require a real number in [0, 1]."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"weight must be a float in [0, 1], got {type(weight).__name__}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    return float(weight)


def _unit_phasor(spectrum: Tensor) -> Tensor:
    """exp(i * angle(spectrum)); zero bins get phase 0."""
    angle = spectrum.angle()
    return torch.polar(torch.ones_like(angle), angle)


def _unguarded_fusion(spectrum: Tensor, guide_spectrum: Tensor, weight: float) -> Tensor:
    """The official Pixelsmith expression: |X| exp(i angle(exp(i angle X) + exp(i angle G))).

    The weights scale the two phasors; at 0.5 the scaling is exact (a power of two), so the angle
    is bitwise that of the plain sum the official code takes.
    """
    mixed = (1 - weight) * torch.exp(1j * spectrum.angle()) + weight * torch.exp(
        1j * guide_spectrum.angle()
    )
    return spectrum.abs() * torch.exp(1j * mixed.angle())


def fft_phase_fusion(
    x: Tensor,
    guide: Tensor,
    *,
    dims: int | Sequence[int] = (-2, -1),
    weight: float = 0.5,
    guard: bool = True,
    check_values: bool | None = None,
) -> Tensor:
    """Replace the Fourier phase of ``x`` by its circular mean with the phase of ``guide``.

    With X, G the orthonormal real FFTs over ``dims``, the output spectrum is
    ``|X| * exp(i * angle((1 - weight) * exp(i angle X) + weight * exp(i angle G)))``.
    Where the two phases cancel (opposite phases at ``weight=0.5``, e.g. real DC/Nyquist bins
    of opposite sign) the circular mean is undefined; with ``guard`` the phase of ``x`` is kept
    there, so the amplitude spectrum of the output always equals that of ``x``.

    Args:
        x: real tensor; its amplitude spectrum is kept. Any sizes along ``dims`` (odd too).
        guide: real tensor of the same shape as ``x``.
        dims: dimensions to transform; all others are batch dimensions.
        weight: phase weight of ``guide`` in [0, 1]; 0 keeps x, 0.5 is the plain circular mean,
            1 takes the guide's phase.
        guard: keep the phase of ``x`` where the mean is undefined (``|mixed phasor| <
            sqrt(eps)``). ``False`` is the official Pixelsmith sampler's formula, which takes the
            angle of the sum as it comes out: a real DC/Nyquist bin whose signs differ turns by
            about pi/2 and so loses its real part (irfft drops the imaginary part of those
            bins), and near-opposite complex bins turn by about pi/2. Use it only to reproduce
            the official sampler.
        check_values: check that ``x`` and ``guide`` are finite (ValueError otherwise). None
            (default): on the CPU yes, on CUDA no, where the check would synchronise with the
            host on every call, unless :func:`common_kernels.value_checks` says otherwise.

    Returns:
        Real tensor of the shape and dtype of ``x`` (computed in fp32 for fp16/bf16).
    """
    finite = values_checked(check_values, x.device)
    check_float("x", x, finite=finite)
    check_float("guide", guide, finite=finite)
    if guide.shape != x.shape:
        raise ValueError(
            f"guide must have the shape of x {tuple(x.shape)}, got {tuple(guide.shape)}"
        )
    weight = _check_weight(weight)
    dims = _normalize_dims(dims, x.ndim)
    compute = torch.promote_types(x.dtype, torch.float32)
    spectrum = torch.fft.rfftn(x.to(compute), dim=dims, norm="ortho")
    guide_spectrum = torch.fft.rfftn(guide.to(compute), dim=dims, norm="ortho")
    if guard:
        phasor = _unit_phasor(spectrum)
        mixed = (1 - weight) * phasor + weight * _unit_phasor(guide_spectrum)
        undefined = mixed.abs() < torch.finfo(compute).eps ** 0.5  # opposite phases cancel
        fused = torch.polar(spectrum.abs(), torch.where(undefined, phasor, mixed).angle())
    else:
        fused = _unguarded_fusion(spectrum, guide_spectrum, weight)
    sizes = [x.shape[d] for d in dims]
    return torch.fft.irfftn(fused, s=sizes, dim=dims, norm="ortho").to(x.dtype)
