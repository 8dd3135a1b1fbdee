"""GPU lane (``nox -s gpu``): a SemanIR training step with every attention backend under bf16
and fp16 autocast on CUDA, checked against the same step in fp32 on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semanir.models import build_model

pytestmark = pytest.mark.gpu

BACKENDS = ("reference", "mask", "gather", "triton", "flex", "tiles")
MAX_SCALER_TRIES = 24  # GradScaler halves its scale on every overflow: 2**16 down to 2**-8


def training_step(model, x, target, dtype):
    """One AdamW step that was taken; returns the loss and the updated weights.

    Under fp16 the GradScaler skips a step whose scaled gradients overflow (the first steps at
    its initial scale of 2**16 usually do) and halves the scale: the step is repeated until
    one is taken, so the weights returned are those of a real first AdamW step.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    device = x.device.type
    for _ in range(MAX_SCALER_TRIES):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            loss = F.l1_loss(model(x, k=24).float(), target)
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if not scaler.is_enabled() or scaler.get_scale() >= scale:  # no overflow: step taken
            break
    else:
        raise AssertionError(f"every fp16 step overflowed down to scale {scaler.get_scale()}")
    assert optimizer.state, "AdamW took no step"
    return loss.detach().cpu(), {n: p.detach().float().cpu() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_step_under_autocast_on_cuda(backend, dtype) -> None:
    torch.manual_seed(0)
    model = build_model("semanir_tiny_denoise_gray", attention_backend=backend)
    with torch.no_grad():
        model.reconstruct.weight.mul_(100)  # a correction large enough to compare
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 1, 64, 64, generator=g)
    x = (target + 0.1 * torch.randn(2, 1, 64, 64, generator=g)).clamp(0, 1)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    cpu_model = build_model("semanir_tiny_denoise_gray", attention_backend="reference")
    cpu_model.load_state_dict(model.state_dict())
    exact_loss, exact = training_step(cpu_model, x, target, torch.float32)
    loss, updated = training_step(model.cuda(), x.cuda(), target.cuda(), dtype)
    assert torch.isfinite(loss) and abs(loss - exact_loss) <= 0.05 * exact_loss
    assert all(torch.isfinite(w).all() for w in updated.values())
    # AdamW's first step is about lr * sign(grad): the step directions must agree
    step = torch.cat([(updated[n] - start[n]).flatten() for n in updated])
    exact_step = torch.cat([(exact[n] - start[n]).flatten() for n in updated])
    assert step.abs().max() > 0  # the step was taken (not skipped by the loss scaler)
    assert (step.sign() == exact_step.sign()).float().mean() > 0.9


@pytest.mark.parametrize("backend", ["mask", "triton", "tiles", "flex"])
def test_inference_forward_does_not_synchronise(backend) -> None:
    """Per stage a KNN graph, a dictionary and the backend's structures; per layer the
    attention: all of it launches kernels without waiting for the GPU."""
    torch.manual_seed(0)
    model = build_model("semanir_tiny_denoise_gray", attention_backend=backend).cuda().eval()
    x = torch.rand(2, 1, 64, 64, device="cuda")
    with torch.inference_mode():
        expected = model(x)  # warm-up: compiles kernels
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = model(x)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
