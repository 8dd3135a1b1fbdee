"""Model CPU offload (``offload="model"``, :mod:`diffeat.offload`): features equal to those
without it (exactly), every component on the execution device only during its own stage (a
spy on the moves; the execution device is ``cpu:0``, a device distinct from the offload
device ``cpu`` though both are this machine's memory), early exit, and bad values; with CUDA
(the GPU lane) the real moves."""

from __future__ import annotations

import copy

import pytest
import torch

from common_kernels.runtime.errors import InvalidArgument
from diffeat import ExtractorConfig, FeatureExtractor, SD3FeatureExtractor
from diffeat.backbones.mmdit import JointRecorder
from diffeat.cli import build_parser
from diffeat.command_checks import load_options
from diffeat.configs import tiny_sd3_pipeline
from diffeat.offload import OFFLOAD_DEVICE

TOKENS = 24
EXECUTION = torch.device("cpu", 0)
LAYERS = ["vae-out", "sd3-block3-q", "sd3-block5-out"]  # early exit after block 5 of 24


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3_pipeline(seed=0, max_length=TOKENS)


def make(pipe, **options) -> SD3FeatureExtractor:
    return SD3FeatureExtractor.from_pipeline(
        pipe, layers=LAYERS, max_sequence_length=TOKENS, **options
    )


def pixels() -> torch.Tensor:
    ys, xs = torch.linspace(0, 1, 32)[:, None], torch.linspace(0, 1, 48)[None, :]
    return torch.stack([ys * xs, (1 - ys) * xs, 0.5 + 0.4 * torch.sin(8 * xs + 3 * ys)])[None]


def test_features_with_offload_equal_features_without(sd3):
    plain = make(sd3)(pixels(), "a cat")
    offloaded = make(sd3, offload="model").to(EXECUTION)
    got = offloaded(pixels(), "a cat")
    assert list(got) == LAYERS
    for name in LAYERS:
        assert torch.equal(got[name], plain[name]), name
    assert offloaded.device == EXECUTION


def test_each_component_is_on_the_execution_device_only_in_its_stage(sd3, monkeypatch):
    extractor = make(sd3, offload="model").to(EXECUTION)
    parts = {
        "clip-l": extractor.text_encoders[0], "clip-g": extractor.text_encoders[1],
        "t5": extractor.text_encoders[2], "vae": extractor.vae,
        "transformer": extractor.transformer,
    }  # fmt: skip
    names = {id(module): name for name, module in parts.items()}
    where = {name: OFFLOAD_DEVICE for name in parts}  # every part was parked by .to(EXECUTION)
    moves, runs = [], []

    def spy(module, device):
        module.to(device)
        moves.append((names[id(module)], device))
        where[names[id(module)]] = device

    monkeypatch.setattr("diffeat.offload.move", spy)
    # the VAE runs through vae.encoder (vae.encode is no forward)
    hooked = {**parts, "vae": extractor.vae.encoder}
    handles = [
        module.register_forward_pre_hook(lambda m, a, name=name: runs.append((name, where[name])))
        for name, module in hooked.items()
    ]
    try:
        extractor(pixels(), "a dog")
        first = list(moves)
        moves.clear()
        extractor(pixels(), "a dog")  # the prompt is cached: no text encoder runs or moves
    finally:
        for handle in handles:
            handle.remove()
    texts = ["clip-l", "clip-g", "t5"]
    assert first == [
        *[(n, EXECUTION) for n in texts], *[(n, OFFLOAD_DEVICE) for n in texts],
        ("vae", EXECUTION), ("vae", OFFLOAD_DEVICE),
        ("transformer", EXECUTION), ("transformer", OFFLOAD_DEVICE),
    ]  # fmt: skip
    assert moves == first[6:]
    assert runs[:5] == [(n, EXECUTION) for n in (*texts, "vae", "transformer")]
    assert runs[5:] == [("vae", EXECUTION), ("transformer", EXECUTION)]
    assert all(device == OFFLOAD_DEVICE for device in where.values())


def test_early_exit_stops_the_pass_and_still_offloads(sd3, monkeypatch):
    extractor = make(sd3, offload="model").to(EXECUTION)
    ran = []
    handles = [
        block.register_forward_pre_hook(lambda m, a, index=index: ran.append(index))
        for index, block in enumerate(extractor.transformer.transformer_blocks)
    ]
    stopped = []
    original = JointRecorder.__exit__

    def exit_spy(self, *exc):
        stopped.append(exc[0])
        return original(self, *exc)

    monkeypatch.setattr(JointRecorder, "__exit__", exit_spy)
    moves = []
    monkeypatch.setattr("diffeat.offload.move", lambda m, d: moves.append(d) or m.to(d))
    try:
        features = extractor(pixels(), "a dog")
    finally:
        for handle in handles:
            handle.remove()
    assert ran == list(range(6))  # blocks 0-5 of 24: the pass stopped after block 5
    assert stopped[0] is not None  # the recorder's early-exit exception ended the pass
    assert moves[-2:] == [EXECUTION, OFFLOAD_DEVICE]  # the transformer parked after it
    assert features["sd3-block5-out"].shape == (1, 16, 2, 3)


def test_from_pretrained_unet_with_offload_equals_without(model_dirs, pipes, smooth_images):
    """A U-Net folder (the folder of ``pipes["sd15"]``) loaded with offload: the execution
    device is ``device=``, the features those of the pipeline without offload."""
    layers = ["vae-out", "down-level0-repeat0-res-out"]
    plain = FeatureExtractor.from_pipeline(pipes["sd15"], layers=layers)
    offloaded = FeatureExtractor.from_pretrained(
        model_dirs["sd15"], layers=layers, device="cpu", offload="model"
    )
    assert offloaded._offload.execution_device == torch.device("cpu")
    expected, got = plain(smooth_images(64, 64)), offloaded(smooth_images(64, 64))
    for name in layers:
        assert torch.equal(got[name], expected[name]), name


def test_bad_offload_values_are_one_line():
    with pytest.raises(InvalidArgument) as caught:
        ExtractorConfig(layers=["vae-out"], offload="sequential")
    assert str(caught.value) == "offload: must be None or one of ('model',); got 'sequential'"
    with pytest.raises(InvalidArgument) as caught:
        ExtractorConfig(layers=["vae-out"], offload="model", requires_grad=True)
    assert str(caught.value) == (
        "offload: does not combine with requires_grad=True (the weights leave the device after "
        "each stage, before any backward pass)"
    )


def test_cli_offload_flag_reaches_from_pretrained():
    """(A bad ``--offload`` value: tests/test_cli_flags.py's case.)"""
    parser = build_parser()
    for command in ("extract", "probe", "pca"):
        argv = [command, "a.png", "--model", "m", "-o", "f", "--offload", "model"]
        assert load_options(parser.parse_args(argv))["offload"] == "model"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the GPU lane)")
def test_on_cuda_each_stage_holds_its_weights_on_the_gpu_only_while_it_runs(sd3):
    """The real moves: each component's parameters on CUDA inside its stage, on the CPU
    after; the features those of the model kept on CUDA (the same kernels: 1e-5)."""
    cuda = torch.device("cuda")
    extractor = make(sd3, offload="model").to(cuda)
    parts = {"text": extractor.text_encoders[0], "vae": extractor.vae.encoder,
             "transformer": extractor.transformer}  # fmt: skip
    seen = []
    handles = [
        module.register_forward_pre_hook(
            lambda m, a, name=name: seen.append((name, next(m.parameters()).device.type))
        )
        for name, module in parts.items()
    ]
    try:
        got = extractor(pixels(), "a dog")
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [("text", "cuda"), ("vae", "cuda"), ("transformer", "cuda")]
    modules = [extractor.transformer, extractor.vae, *extractor.text_encoders]
    assert all(next(m.parameters()).device.type == "cpu" for m in modules)
    expected = make(copy.deepcopy(sd3)).to(cuda)(pixels(), "a dog")
    for name in LAYERS:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5)
