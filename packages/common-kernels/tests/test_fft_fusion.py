import math

import numpy as np
import pytest
import torch

from common_kernels.fft_fusion import fft_phase_fusion


def random_pair(*shape: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)


def spectrum(t: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    return torch.fft.rfftn(t.double(), dim=dims, norm="ortho")


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 1, 7, 9), (5, 8), (4, 1, 1)])
@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 1.0])
def test_fusing_with_itself_returns_input(shape: tuple[int, ...], weight: float) -> None:
    x, _ = random_pair(*shape)
    assert torch.allclose(fft_phase_fusion(x, x, weight=weight), x, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (2, 15, 9), (1, 2, 8, 11), (3, 7, 7)])
@pytest.mark.parametrize("weight", [0.2, 0.5, 0.9])
def test_output_is_real_same_shape_and_keeps_amplitude(
    shape: tuple[int, ...], weight: float
) -> None:
    x, guide = random_pair(*shape, seed=1)
    y = fft_phase_fusion(x, guide, weight=weight)
    assert y.shape == x.shape and y.dtype == x.dtype and not y.is_complex()
    assert torch.allclose(spectrum(y).abs(), spectrum(x).abs(), atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 16, 16), (2, 7, 9)])
def test_weight_zero_returns_input(shape: tuple[int, ...]) -> None:
    x, guide = random_pair(*shape, seed=2)
    assert torch.allclose(fft_phase_fusion(x, guide, weight=0.0), x, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 16, 16), (2, 7, 9), (3, 10, 5)])
def test_weight_one_takes_guide_phase(shape: tuple[int, ...]) -> None:
    x, guide = random_pair(*shape, seed=3)
    y = fft_phase_fusion(x, guide, weight=1.0)
    x_spec, g_spec, y_spec = spectrum(x), spectrum(guide), spectrum(y)
    expected = x_spec.abs() * g_spec / g_spec.abs()  # |X| exp(i angle G)
    assert torch.allclose(y_spec, expected, atol=1e-4)


def test_half_weight_is_circular_mean_of_phases() -> None:
    x, guide = random_pair(2, 12, 10, seed=4)
    y = fft_phase_fusion(x, guide)
    x_spec, g_spec, y_spec = spectrum(x), spectrum(guide), spectrum(y)
    mean_phase = torch.angle(x_spec / x_spec.abs() + g_spec / g_spec.abs())
    distinct = (torch.angle(x_spec) - torch.angle(g_spec)).remainder(2 * math.pi)
    valid = (distinct - math.pi).abs() > 1e-3  # opposite phases have no circular mean
    phase_err = torch.angle(y_spec * torch.exp(-1j * mean_phase))
    assert phase_err[valid].abs().max() < 1e-3


def test_opposite_phases_keep_phase_of_x() -> None:
    # only the (real) DC bin is non-zero and the two phases are 0 and pi: no circular mean
    x = torch.full((2, 6, 5), 2.0)
    assert torch.allclose(fft_phase_fusion(x, -x), x, atol=1e-5)
    assert torch.allclose(fft_phase_fusion(x, -x, weight=0.6), -x, atol=1e-5)


def official_fusion(x: np.ndarray, guide: np.ndarray) -> np.ndarray:
    """The official Pixelsmith fusion restated in numpy: angle of the plain sum, no guard."""
    x_spec = np.fft.rfft2(x, norm="ortho")
    g_spec = np.fft.rfft2(guide, norm="ortho")
    phase = np.angle(np.exp(1j * np.angle(x_spec)) + np.exp(1j * np.angle(g_spec)))
    return np.fft.irfft2(np.abs(x_spec) * np.exp(1j * phase), s=x.shape[-2:], norm="ortho")


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (1, 3, 7, 9), (6, 10)])
def test_unguarded_fusion_is_the_official_formula(shape: tuple[int, ...]) -> None:
    x, guide = (t.double() for t in random_pair(*shape, seed=8))
    y = fft_phase_fusion(x, guide, guard=False)
    expected = official_fusion(x.numpy(), guide.numpy())
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opposite_dc_signs_guarded_keeps_x_unguarded_drops_the_mean(dtype: torch.dtype) -> None:
    # patches whose DC terms have opposite signs: the phases 0 and pi cancel in that bin
    x, guide = random_pair(2, 4, 8, 8, seed=9)
    x, guide = (x + 3).to(dtype), (guide - 3).to(dtype)
    assert (x.mean((-2, -1)) > 0).all() and (guide.mean((-2, -1)) < 0).all()
    guarded = fft_phase_fusion(x, guide)
    unguarded = fft_phase_fusion(x, guide, guard=False)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    # guarded: amplitude (so the DC term, the mean) of x kept; official: the DC bin turns by
    # pi/2, its real part vanishes, and irfft2 returns a zero-mean patch
    torch.testing.assert_close(guarded.mean((-2, -1)), x.mean((-2, -1)), atol=tol, rtol=0)
    torch.testing.assert_close(
        unguarded.mean((-2, -1)), torch.zeros(2, 4, dtype=dtype), atol=tol, rtol=0
    )
    expected = official_fusion(x.double().numpy(), guide.double().numpy())
    np.testing.assert_allclose(unguarded.double().numpy(), expected, atol=tol * 10, rtol=0)
    assert (guarded - unguarded).abs().max() > 1.0


def test_unguarded_weight_half_is_bitwise_the_plain_sum() -> None:
    x, guide = random_pair(3, 8, 8, seed=10)
    x_spec = torch.fft.rfft2(x, norm="ortho")
    g_spec = torch.fft.rfft2(guide, norm="ortho")
    phase = torch.angle(torch.exp(1j * x_spec.angle()) + torch.exp(1j * g_spec.angle()))
    plain = torch.fft.irfft2(x_spec.abs() * torch.exp(1j * phase), s=(8, 8), norm="ortho")
    assert torch.equal(fft_phase_fusion(x, guide, guard=False), plain)


def test_other_dims_and_batching() -> None:
    x, guide = random_pair(6, 3, 10, seed=5)
    y = fft_phase_fusion(x, guide, dims=(0, 2), weight=0.4)
    for c in range(3):
        single = fft_phase_fusion(x[:, c], guide[:, c], dims=(0, 1), weight=0.4)
        assert torch.allclose(y[:, c], single, atol=1e-6)
    y1 = fft_phase_fusion(x, guide, dims=-1)
    assert torch.allclose(spectrum(y1, (-1,)).abs(), spectrum(x, (-1,)).abs(), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_fp32(dtype: torch.dtype) -> None:
    x, guide = (t.to(dtype) for t in random_pair(2, 9, 12, seed=6))
    y = fft_phase_fusion(x, guide, weight=0.7)
    assert y.dtype == dtype
    expected = fft_phase_fusion(x.float(), guide.float(), weight=0.7).to(dtype)
    assert torch.equal(y, expected)
    assert torch.allclose(fft_phase_fusion(x, x).float(), x.float(), atol=1e-2)


def test_fp64_stays_fp64() -> None:
    x, guide = (t.double() for t in random_pair(3, 8, 8, seed=7))
    y = fft_phase_fusion(x, guide)
    assert y.dtype == torch.float64
    assert torch.allclose(fft_phase_fusion(x, x), x, atol=1e-12)


def test_errors() -> None:
    x, guide = random_pair(2, 8, 8)
    with pytest.raises(
        ValueError, match=r"guide must have the shape of x \(2, 8, 8\), got \(2, 8\)"
    ):
        fft_phase_fusion(x, guide[:, 0])
    with pytest.raises(TypeError, match=r"x must be a floating tensor"):
        fft_phase_fusion(x.long(), guide)
    with pytest.raises(TypeError, match=r"guide must be a floating tensor"):
        fft_phase_fusion(x, guide.to(torch.complex64))
    with pytest.raises(TypeError, match=r"guide must be a torch.Tensor"):
        fft_phase_fusion(x, 1.0)
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x contains NaN or Inf"):
        fft_phase_fusion(bad, guide)
    infinite = guide.clone()
    infinite[1, 2, 3] = math.inf
    with pytest.raises(ValueError, match=r"guide contains NaN or Inf"):
        fft_phase_fusion(x, infinite)
    for weight in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"weight must be in \[0, 1\], got {weight}"):
            fft_phase_fusion(x, guide, weight=weight)
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\], got nan"):
        fft_phase_fusion(x, guide, weight=math.nan)
    with pytest.raises(TypeError, match=r"weight must be a float in \[0, 1\], got str"):
        fft_phase_fusion(x, guide, weight="0.5")
    with pytest.raises(ValueError, match=r"dims must be distinct ints in \[-3, 2\].*got \(1, 3\)"):
        fft_phase_fusion(x, guide, dims=(1, 3))
    with pytest.raises(ValueError, match=r"dims must be distinct ints in \[-3, 2\].*got \(2, -1\)"):
        fft_phase_fusion(x, guide, dims=(2, -1))
    with pytest.raises(ValueError, match=r"dims must be a non-empty sequence"):
        fft_phase_fusion(x, guide, dims=())
    with pytest.raises(ValueError, match=r"dims must be a non-empty sequence"):
        fft_phase_fusion(x, guide, dims=(1.0,))


def test_value_checks_on_cpu_by_default_off_on_cuda_and_switchable() -> None:
    """The finiteness check syncs with the host, so it runs per call on the CPU only (like
    knn_attention's); value_checks() / check_values switch it for debugging."""
    from common_kernels import value_checks
    from common_kernels._checks import values_checked

    assert values_checked(None, torch.device("cpu"))
    assert not values_checked(None, torch.device("cuda", 0))
    assert values_checked(True, torch.device("cuda", 0))
    with value_checks(True):
        assert values_checked(None, torch.device("cuda", 0))
        assert not values_checked(False, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    x, guide = torch.randn(2, 8, 8, generator=gen), torch.randn(2, 8, 8, generator=gen)
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    unchecked = fft_phase_fusion(bad, guide, check_values=False)  # NaN flows through, no error
    assert unchecked.shape == x.shape and torch.isnan(unchecked[0]).all()
    assert torch.isfinite(unchecked[1]).all()  # the other batch element is untouched by it
    torch.testing.assert_close(unchecked[1], fft_phase_fusion(x, guide)[1], rtol=0, atol=0)
    with value_checks(False):
        assert torch.isnan(fft_phase_fusion(bad, guide)[0]).all()
    with pytest.raises(ValueError, match=r"x contains NaN or Inf"):
        fft_phase_fusion(bad, guide)
