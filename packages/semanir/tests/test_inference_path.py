"""Without autograd SemanIR runs its inference path; it computes what the autograd path does.

The inference path (``SemanIRStage.forward_inference``) copies the windows out once, runs the
layers on groups of windows with each group's dictionary built just before them, adds the
residuals in place and reads no value back to the host. Given the same dictionaries (those it
built, replayed into the autograd path, which builds one per stage) every bundled model's
output is within 1e-5 of the autograd path's, with its real weights. Its own dictionaries are
the same sets too: a similarity computed in another order can only flip an exact near-tie.
"""

from __future__ import annotations

import pytest
import torch

from common_kernels import KNNDictionary
from semanir.bundled import BUNDLED_MODELS
from semanir.inference import load_model
from semanir.models import build_model
from semanir.models import semanir as semanir_module
from semanir.models.semanir import INFERENCE_GROUP_BYTES, inference_group_size

TOLERANCE = 1e-5


class Dictionaries:
    """Records the dictionaries ``knn_dictionary`` builds in one run and hands their masks out
    again in another, joining consecutive groups into the stage-wide dictionary the autograd
    path asks for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.build = semanir_module.knn_dictionary
        self.masks: list[torch.Tensor] = []
        self.calls = 0

    def record(self) -> None:
        def recording(x, k, **kwargs):
            dictionary = self.build(x, k, **kwargs)
            self.masks.append(dictionary.membership()[:, 0])  # (B', N, N)
            return dictionary

        self.monkeypatch.setattr(semanir_module, "knn_dictionary", recording)

    def replay(self) -> None:
        queue = list(self.masks)

        def replaying(x, k, **kwargs):
            self.calls += 1
            parts = []
            while sum(len(p) for p in parts) < len(x):
                parts.append(queue.pop(0))
            mask = torch.cat(parts)  # (B', N, N)
            assert mask.shape == (len(x), x.shape[1], x.shape[1])
            return KNNDictionary.from_mask(mask, k)

        self.monkeypatch.setattr(semanir_module, "knn_dictionary", replaying)
        self.left = queue


@pytest.mark.parametrize("name", sorted(BUNDLED_MODELS))
def test_bundled_models_compute_the_autograd_path_given_the_same_dictionaries(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(semanir_module, "INFERENCE_GROUP_BYTES", 2**18)  # several groups
    model = load_model(name)
    upscale = model.upscale
    x = torch.rand(1, model.in_channels, 72 // upscale, 104 // upscale,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    dictionaries = Dictionaries(monkeypatch)
    dictionaries.record()
    with torch.inference_mode():
        fast = model(x)
    groups = len(dictionaries.masks)
    dictionaries.replay()
    with torch.enable_grad():
        reference = model(x)
    assert groups > dictionaries.calls == len(model.stages)  # grouped, then one per stage
    assert dictionaries.left == []
    assert fast.shape == reference.shape == (1, model.out_channels, 72, 104)
    assert (fast - reference.detach()).abs().max() < TOLERANCE


@pytest.mark.parametrize("name", ["semanir_test_tiny_unet", "semanir_test_tiny_columnar"])
def test_grouping_changes_nothing_and_leaves_the_input_alone(monkeypatch, name) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.rand(2, model.in_channels, 24, 20, generator=torch.Generator().manual_seed(1))
    before = x.clone()
    outputs = []
    for group_bytes in (1, 3 * 2 * 16 * 16 * 4, 2**30):  # 1 window, 3 windows, all at once
        monkeypatch.setattr(semanir_module, "INFERENCE_GROUP_BYTES", group_bytes)
        with torch.inference_mode():
            outputs.append(model(x, k=6))
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0], rtol=1e-6, atol=1e-6)
    assert torch.equal(x, before)


def test_windows_are_grouped_for_the_cache_on_the_cpu_only() -> None:
    """CPU: logits of about INFERENCE_GROUP_BYTES per group; a GPU: the whole stage at once
    (cache-sized groups there are rows of small launches: 3-6x slower on an H200)."""
    shape = (4096, 64, 32)  # (windows, N, C)
    heads = 2
    per_window = heads * 64 * 64 * 4  # fp32 logits bytes of one window
    cpu = torch.empty(shape)
    assert inference_group_size(cpu, heads) == INFERENCE_GROUP_BYTES // per_window == 192
    assert inference_group_size(torch.empty(1, 1024, 32), 8) == 1  # one window over budget
    assert inference_group_size(torch.empty(shape, device="meta"), heads) == 4096


def test_the_upsampler_runs_channels_last_on_the_cpu_with_the_same_output() -> None:
    """x4 SR: the upsampler's input is made channels-last (oneDNN's faster convolutions); the
    output equals the NCHW upsampler's within float rounding, with and without autograd."""
    model = load_model("semanir_tiny_sr_x4")
    x = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    seen = []
    model.reconstruct.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            out = model(x)
            body = seen[-1]
            assert body.is_contiguous(memory_format=torch.channels_last)
            nchw = model.reconstruct(body.contiguous()) / model.config.img_range
        expected = (nchw + model.img_mean)[..., :80, :112]  # the input was padded to 8s
        assert out.shape == (1, 3, 80, 112)
        assert (out - expected).abs().max() < 1e-5


def test_the_inference_path_runs_under_no_grad_and_inference_mode_only(monkeypatch) -> None:
    torch.manual_seed(0)
    model = build_model("semanir_test_tiny_unet").eval()
    calls = []
    original = semanir_module.SemanIRStage.forward_inference

    def counting(self, x, k):
        calls.append(torch.is_grad_enabled())
        return original(self, x, k)

    monkeypatch.setattr(semanir_module.SemanIRStage, "forward_inference", counting)
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        model(x)
    with torch.inference_mode():
        model(x)
    assert calls == [False] * 8  # 4 stages, twice
    model(x).sum().backward()  # autograd: the general path, gradients reach the weights
    assert len(calls) == 8
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("size", [(50, 29), (8, 8), (9, 64)])
def test_a_feature_map_one_window_wide_keeps_the_stage_input(monkeypatch, size) -> None:
    """At one window across, the windows of a channels-last stage input are a view of it: the
    layers' in-place updates must not reach the input that the stage's residual adds."""
    model = load_model("semanir_tiny_denoise_gray")
    x = torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(2))
    dictionaries = Dictionaries(monkeypatch)
    dictionaries.record()
    with torch.inference_mode():
        fast = model(x)
    dictionaries.replay()
    with torch.enable_grad():
        reference = model(x)
    assert fast.shape == reference.shape == (1, 1, *size)
    assert (fast - reference.detach()).abs().max() < TOLERANCE
