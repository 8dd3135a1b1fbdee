"""GPU lane (``nox -s gpu``): a tiny Pixelsmith cascade in fp16 and bf16 on CUDA against the
same cascade in fp32 on the CPU, same seed.

The cascade is ``generate_cascade`` 64 -> 128 px with the tiny SDXL-shaped model: plain SDXL
for the base stage, then one Pixelsmith stage (tiled VAE decode, Lanczos, tiled encode, patch
sampling with CFG and micro-conditioning), 4 DDIM steps each. Noise, patch placement and the
posterior draw come from one CPU generator, so every variant sees the same random numbers; the
final latents are compared by their relative L2 error ``||a - e|| / ||e||``:

* slider 1 (the phase fusion runs at step 0 only, where latent and guidance coincide): the
  error is the dtype's rounding carried through the steps. Bounds fp16 1.5e-2, bf16 8e-2:
  4.4x and 3.3x the largest of 20 seeds with CPU fp16 / bf16 (3.4e-3, 2.4e-2).
* slider 3 (phase fusion with the guidance and chess mask at steps 0-1): the circular mean of
  two nearly opposite phases is ill-conditioned, so rounding can turn a frequency bin by up to
  pi; with CPU fp16 the error jumped from about 2e-3 to 1.7e-2 and 4.5e-2 on 2 of 20 seeds
  (bf16 at most 3.5e-2). Bound 0.15 for both: it catches a broken low-precision path (errors of
  order 1), not rounding.

The same test body runs on the CPU in fp32 (an exact match), bf16 and fp16.

No host-synchronisation test: the sampler reads two booleans per step (its patch-plan checks),
``common_kernels.fft_phase_fusion`` checks its inputs for NaN/Inf (two reads per fused patch)
and diffusers' DDIM step compares the previous timestep on the host, so a stage synchronises by
design.
"""

from __future__ import annotations

import pytest
import torch

from common_kernels.runtime.bench import torch_dtype
from common_kernels.runtime.testing import precision_variants
from pixelsmith import PixelsmithConfig, PixelsmithPipeline, generate_cascade
from pixelsmith.pipelines.pixelsmith import ddim_from_config
from pixelsmith.tiny import SDXL_SCHEDULER_CONFIG, tiny_components

SMALL = PixelsmithConfig(patch_size=8, band=2, vae_tile=8, vae_overlap=2)
STEPS = 4
TOLERANCE = {
    1: {torch.float32: 1e-6, torch.float16: 1.5e-2, torch.bfloat16: 8e-2},
    3: {torch.float32: 1e-6, torch.float16: 0.15, torch.bfloat16: 0.15},
}
VARIANTS = precision_variants(torch_dtype)


def relative_l2_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in fp64 on the CPU.

    Args:
        actual: the tensor to check.
        expected: the reference, same shape, not all zeros.
    """
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    expected = expected.detach().cpu().double()
    norm = expected.norm()
    if norm == 0:
        raise ValueError("expected is all zeros: a relative error is undefined")
    return float((actual.detach().cpu().double() - expected).norm() / norm)


def tiny_pipeline(device: str, dtype: torch.dtype) -> PixelsmithPipeline:
    """The seeded tiny model (fresh weights, seed 0) on ``device`` in ``dtype``, SDXL's DDIM."""
    components = tiny_components(seed=0)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        components[name].to(device=device, dtype=dtype)
    components["scheduler"] = ddim_from_config(dict(SDXL_SCHEDULER_CONFIG))
    pipe = PixelsmithPipeline(**components, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def final_latents(device: str, dtype: torch.dtype, slider: int) -> torch.Tensor:
    """The (1, 4, 16, 16) fp32 CPU latent after the last step of the 64 -> 128 px cascade."""
    captured = {}

    def keep(stage: int, step: int, latents: torch.Tensor, plan) -> None:
        captured[stage, step] = latents.detach().float().cpu()

    generate_cascade(
        tiny_pipeline(device, dtype), "a lighthouse", [64, 128], [slider],
        num_inference_steps=STEPS, seed=0, config=SMALL, progress=False, callback=keep,
    )  # fmt: skip
    assert sorted(captured) == [(1, step) for step in range(STEPS)]
    return captured[1, STEPS - 1]


@pytest.fixture(scope="module")
def reference() -> dict[int, torch.Tensor]:
    """fp32 CPU latents per slider."""
    return {slider: final_latents("cpu", torch.float32, slider) for slider in TOLERANCE}


def test_relative_l2_error_of_known_tensors() -> None:
    expected = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # norm 5
    assert relative_l2_error(expected, expected) == 0.0
    assert relative_l2_error(expected * 1.01, expected) == pytest.approx(0.01)
    shifted = expected + torch.tensor([[0.0, 0.3], [0.4, 0.0]])  # difference of norm 0.5
    assert relative_l2_error(shifted.half(), expected) == pytest.approx(0.1, abs=1e-3)


def test_relative_l2_error_refuses_other_shapes_and_a_zero_reference() -> None:
    with pytest.raises(ValueError, match=r"shapes differ: \(2,\) vs \(3,\)"):
        relative_l2_error(torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="all zeros"):
        relative_l2_error(torch.ones(3), torch.zeros(3))


@pytest.mark.parametrize("slider", sorted(TOLERANCE))
@pytest.mark.parametrize(("device", "dtype"), VARIANTS)
def test_cascade_latents_match_fp32_cpu(reference, device, dtype, slider) -> None:
    latents = final_latents(device, dtype, slider)
    assert latents.shape == (1, 4, 16, 16) and torch.isfinite(latents).all()
    error = relative_l2_error(latents, reference[slider])
    assert error <= TOLERANCE[slider][dtype], f"relative L2 error {error:.3g}"
    if dtype != torch.float32:  # the stages did run in low precision
        assert error > 0
