"""GPU lane (``nox -s gpu``): every activation of the tiny SD 1.5- and SDXL-shaped extractors in
fp16 and bf16 on CUDA against fp32 on the CPU.

``layers="all"``: ``vae-out`` and the whole U-Net catalogue (198 names for SD 1.5, 613 for
SDXL: block outputs, q/k/v, attention maps, ...) of two images with per-image prompts, with
``latent="mean"`` (the posterior mean: no VAE draw, whose values would depend on the dtype); the
noise comes from the same CPU generator in every variant. Each activation's relative L2 error
``||a - e|| / ||e||`` is bounded, for the worst activation and for the median over all of
them: fp16 2e-2 / 6e-3, bf16 1.2e-1 / 4.5e-2, about 3-4x what CPU fp16 / bf16 give on these
models and inputs (worst 5.4e-3 / 4.1e-2, median 1.5e-3 / 1.3e-2; the same on other seeds). The
same test body runs on the CPU in fp32 (an exact match), bf16 and fp16.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Mapping

import pytest
import torch

from common_kernels.runtime.bench import torch_dtype
from common_kernels.runtime.testing import precision_variants
from diffeat import ExtractorConfig, FeatureExtractor

WORST = {torch.float32: 1e-6, torch.float16: 2e-2, torch.bfloat16: 1.2e-1}
MEDIAN = {torch.float32: 1e-6, torch.float16: 6e-3, torch.bfloat16: 4.5e-2}
NAMES = {"sd15": 198, "sdxl": 613}
PROMPTS = ["a cat on a sofa", "a red car"]
VARIANTS = precision_variants(torch_dtype)


def activation_errors(
    actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """Relative L2 error ``||a - e|| / ||e||`` of every activation, in fp64 on the CPU.

    Args:
        actual: activations by name.
        expected: the reference activations: the same names and shapes, none all zeros.
    """
    if list(actual) != list(expected):
        missing, extra = set(expected) - set(actual), set(actual) - set(expected)
        raise ValueError(f"names differ: missing {sorted(missing)}, extra {sorted(extra)}")
    errors = {}
    for name, reference in expected.items():
        value = actual[name]
        if value.shape != reference.shape:
            raise ValueError(
                f"{name}: shapes differ: {tuple(value.shape)} vs {tuple(reference.shape)}"
            )
        reference = reference.detach().cpu().double()
        norm = reference.norm()
        if norm == 0:
            raise ValueError(f"{name}: the reference is all zeros")
        errors[name] = float((value.detach().cpu().double() - reference).norm() / norm)
    return errors


@pytest.fixture(scope="module")
def sample_images(smooth_images) -> torch.Tensor:
    """Two smooth (2, 3, 64, 128) images in [0, 1] (multiples of 64, both families' factor)."""
    return smooth_images(64, 128)


def extractor(pipe, device: str, dtype: torch.dtype) -> FeatureExtractor:
    """An every-activation extractor over copies of ``pipe``'s models on ``device`` in ``dtype``."""
    models = {
        name: copy.deepcopy(getattr(pipe, name)).to(device=device, dtype=dtype)
        for name in ("unet", "vae", "text_encoder", "text_encoder_2")
        if getattr(pipe, name, None) is not None
    }
    encoders = [models[n] for n in ("text_encoder", "text_encoder_2") if n in models]
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if len(encoders) == 2 else [])
    return FeatureExtractor(
        models["unet"], models["vae"], pipe.scheduler, tokenizers, encoders,
        ExtractorConfig(layers="all", latent="mean"),
    )  # fmt: skip


def features(
    pipe, images: torch.Tensor, device: str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Every activation of ``images`` with ``PROMPTS``."""
    return dict(extractor(pipe, device, dtype)(images, PROMPTS))


@pytest.fixture(scope="module")
def reference(pipes, sample_images) -> dict[str, dict[str, torch.Tensor]]:
    """fp32 CPU activations per family."""
    return {
        kind: features(pipe, sample_images, "cpu", torch.float32) for kind, pipe in pipes.items()
    }


def test_activation_errors_of_known_tensors() -> None:
    expected = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([[1.0, 0.0], [0.0, 0.0]])}
    actual = {"a": torch.tensor([3.0, 4.5]), "b": expected["b"].bfloat16()}
    assert activation_errors(actual, expected) == pytest.approx({"a": 0.1, "b": 0.0})


def test_activation_errors_refuse_other_names_shapes_and_zero_references() -> None:
    expected = {"a": torch.ones(2), "b": torch.ones(3)}
    with pytest.raises(ValueError, match=r"missing \['b'\], extra \['c'\]"):
        activation_errors({"a": torch.ones(2), "c": torch.ones(3)}, expected)
    with pytest.raises(ValueError, match=r"b: shapes differ: \(2,\) vs \(3,\)"):
        activation_errors({"a": torch.ones(2), "b": torch.ones(2)}, expected)
    with pytest.raises(ValueError, match="a: the reference is all zeros"):
        activation_errors({"a": torch.ones(2)}, {"a": torch.zeros(2)})


@pytest.mark.parametrize("kind", sorted(NAMES))
@pytest.mark.parametrize(("device", "dtype"), VARIANTS)
def test_activations_match_fp32_cpu(pipes, reference, sample_images, kind, device, dtype) -> None:
    result = features(pipes[kind], sample_images, device, dtype)
    assert all(value.dtype == dtype for value in result.values())
    errors = activation_errors(result, reference[kind])
    assert len(errors) == NAMES[kind]
    worst = max(errors, key=errors.get)
    median = statistics.median(errors.values())
    assert errors[worst] <= WORST[dtype], f"{worst}: relative L2 error {errors[worst]:.3g}"
    assert median <= MEDIAN[dtype], f"median relative L2 error {median:.3g}"
    if dtype != torch.float32:  # the models did run in low precision
        assert median > 0
