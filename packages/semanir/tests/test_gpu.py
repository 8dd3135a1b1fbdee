"""GPU lane (``nox -s gpu``): a SemanIR training step with every attention backend under bf16
and fp16 autocast on CUDA, checked against the same step in fp32 on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semanir.models import build_model

pytestmark = pytest.mark.gpu

BACKENDS = ("reference", "mask", "gather", "triton", "flex")


def training_step(model, x, target, dtype):
    """One AdamW step (loss scaling for fp16); returns the loss and the updated weights."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    device = x.device.type
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        loss = F.l1_loss(model(x, k=24).float(), target)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
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
