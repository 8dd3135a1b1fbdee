"""Every bundled model loads and runs under ``torch.inference_mode``, ``torch.no_grad`` and
plain autograd, loaded in one mode and run in another, with the same output in each; the x4
upsampler's cached composition follows weight changes in every mode (it once keyed on version
counters, which inference tensors lack)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
from torch import nn

from semanir import build_model, load_model, restore
from semanir.bundled import BUNDLED_MODELS
from semanir.models.upsampler import PixelShuffleUpsampler

MODES: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "inference_mode": torch.inference_mode,
    "no_grad": torch.no_grad,
    "plain": contextlib.nullcontext,
}


def sample(model: nn.Module) -> torch.Tensor:
    """A 24x16 image in [0, 1] of the model's channels (three 8 px windows by two)."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, model.in_channels, 24, 16, generator=generator)


@pytest.mark.parametrize("name", sorted(BUNDLED_MODELS))
def test_each_bundled_model_gives_one_output_whatever_mode_loads_and_runs_it(name) -> None:
    """Loaded under each mode, each model runs (called, twice, and through restore) under each
    mode to the values it gives when loaded and called under no_grad."""
    with torch.no_grad():
        reference = load_model(name)
        x = sample(reference)
        expected = reference(x)
    assert expected.shape[-2:] == (24 * reference.upscale, 16 * reference.upscale)
    for load_mode, loading in MODES.items():
        with loading():
            model = load_model(name)
        assert not any(p.is_inference() for p in model.parameters()), load_mode
        for run_mode, running in MODES.items():
            with running():
                first, second = model(x), model(x)  # the second reuses what the first cached
                restored = restore(model, x, tile=None)
            where = f"loaded under {load_mode}, run under {run_mode}"
            assert first.requires_grad == (run_mode == "plain"), where
            # with autograd the layers take their differentiable paths, which sum in another
            # order (1.3e-6 apart at most here)
            for out in (first.detach(), second.detach()):
                torch.testing.assert_close(out, expected, rtol=0, atol=1e-5, msg=where)
            torch.testing.assert_close(restored, expected.clamp(0, 1), rtol=0, atol=0, msg=where)


def test_the_x4_composition_follows_an_optimizer_step_and_load_state_dict() -> None:
    """Cached under no_grad, the composition is made afresh after an optimizer step (plain
    mode) and after load_state_dict (no_grad): the output is then the changed weights'."""
    model = load_model("semanir_tiny_sr_x4")
    x = sample(model)
    saved = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.no_grad():
        before = model(x)
    optimizer = torch.optim.SGD(model.reconstruct.parameters(), lr=0.1)
    model(x).square().mean().backward()
    optimizer.step()
    with torch.no_grad():
        stepped = model(x)
    fresh = model(x).detach()  # with autograd: composed from the weights, never cached
    torch.testing.assert_close(stepped, fresh, rtol=0, atol=1e-5)
    assert (stepped - before).abs().max() > 1e-3
    with torch.no_grad():
        model.load_state_dict(saved)
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)


def test_inference_tensor_weights_are_composed_afresh_when_changed_in_place() -> None:
    """A model built under inference_mode has inference tensors for weights (no version
    counter): the cache compares their values, so a change in place under inference_mode, as
    load_state_dict makes there, is seen."""
    with torch.inference_mode():
        torch.manual_seed(0)
        model = build_model("semanir_test_tiny_columnar").eval()
        upsampler = next(m for m in model.modules() if isinstance(m, PixelShuffleUpsampler))
        assert upsampler.tail_convs()[0].weight.is_inference()
        x = sample(model)
        before = model(x)
        composed = upsampler.composition()
        assert upsampler.composition() is composed  # unchanged weights: kept
        torch.manual_seed(1)
        other = build_model("semanir_test_tiny_columnar").eval()
        model.load_state_dict(other.state_dict())
        assert upsampler.composition() is not composed
        after = model(x)
        expected = other(x)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)
    assert (after - before).abs().max() > 1e-3
