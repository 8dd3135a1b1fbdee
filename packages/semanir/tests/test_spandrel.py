"""spandrel support (``semanir.register_spandrel``): every bundled model and a tiny random model
of every architecture variant load through ``spandrel.ModelLoader`` from their safetensors
file alone, with the right descriptor, and restore as ``semanir.restore`` does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import spandrel
import torch
from torch import nn

import semanir
from semanir import restore
from semanir.bundled import installed_models
from semanir.data.degradations import add_gaussian_noise, bicubic_downscale, jpeg_compress
from semanir.inference import load_model
from semanir.io import read_image
from semanir.metrics import psnr
from semanir.models import build_model, get_config, model_from_config
from semanir.spandrel_arch import ARCHITECTURES, is_dncnn, save_for_spandrel

TOLERANCE = 1e-4
DTYPE_PSNR_DB = 45.0  # a dtype is supported when its output is this close to fp32's
DATA = Path(
    os.environ.get("SEMANIR_DATA", Path(__file__).resolve().parents[3].parent / "shared" / "data")
)


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    semanir.register_spandrel()


def load(path: Path) -> spandrel.ImageModelDescriptor:
    descriptor = spandrel.ModelLoader().load_from_file(path)
    assert isinstance(descriptor, spandrel.ImageModelDescriptor)
    return descriptor


def assert_restores_as_semanir(descriptor: spandrel.ImageModelDescriptor, model: nn.Module) -> None:
    for height, width in [(13, 19), (26, 11)]:
        image = torch.rand(1, model.in_channels, height, width)
        assert (descriptor(image) - restore(model, image)).abs().max() <= TOLERANCE


def test_importing_semanir_leaves_spandrel_alone_and_registering_twice_is_harmless() -> None:
    code = "import sys, semanir; print('spandrel' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False\n"
    assert "SemanIR" in spandrel.MAIN_REGISTRY and "SemanIR-DnCNN" in spandrel.MAIN_REGISTRY
    count = len(spandrel.MAIN_REGISTRY)
    assert semanir.register_spandrel() == []
    assert len(spandrel.MAIN_REGISTRY) == count
    registry = spandrel.ArchRegistry()
    assert semanir.register_spandrel(registry) == list(ARCHITECTURES)


@pytest.mark.parametrize("bundled", installed_models(), ids=lambda m: m.name)
def test_every_bundled_model(bundled) -> None:
    descriptor = load(bundled.folder / "model.safetensors")
    model = load_model(bundled.name)
    assert descriptor.architecture.id == "SemanIR"
    assert descriptor.model.config == model.config
    assert descriptor.purpose == ("SR" if bundled.scale > 1 else "Restoration")
    assert descriptor.scale == bundled.scale
    channels = 1 if bundled.channels == "gray" else 3
    assert (descriptor.input_channels, descriptor.output_channels) == (channels, channels)
    assert descriptor.size_requirements.none  # the model pads to its windows itself
    assert descriptor.supports_half and descriptor.supports_bfloat16
    assert descriptor.tags == [model.config.architecture, f"{model.config.embed_dim}dim", "w8",
                               "k32"]  # fmt: skip
    assert_restores_as_semanir(descriptor, model)


def unet(**overrides) -> nn.Module:
    return model_from_config(get_config("semanir_test_tiny_unet", **overrides))


def columnar(**overrides) -> nn.Module:
    return model_from_config(get_config("semanir_test_tiny_columnar", **overrides))


# name: (model, written by save_pretrained (a shipped config's shapes) or save_for_spandrel)
VARIANTS = {
    "unet, save_pretrained": (lambda: unet(), "save_pretrained"),
    "columnar x2, save_pretrained": (lambda: columnar(), "save_pretrained"),
    "unet rgb": (lambda: unet(in_channels=3, out_channels=3), "save_for_spandrel"),
    "unet dense": (lambda: build_model("window_attention_test_tiny"), "save_for_spandrel"),
    "unet layer, pre-norm, dot": (
        lambda: unet(dictionary="layer", norm="pre", similarity="dot", inference_k=5),
        "save_for_spandrel"),
    "unet 2 levels, window 2": (
        lambda: unet(depths=(1, 1, 1, 1, 1, 1), heads=(1, 2, 2, 2, 1, 1), dim_mults=(1, 2, 2),
                     window_size=2, top_k=3, train_k_choices=(3,)), "save_for_spandrel"),
    "columnar x3, no position bias": (lambda: columnar(upscale=3, position_bias=False),
                                      "save_for_spandrel"),
    "columnar x4 gray": (
        lambda: columnar(upscale=4, in_channels=1, out_channels=1, img_mean=(0.5,)),
        "save_for_spandrel"),
    "columnar x1, no per-head tensors": (
        lambda: columnar(upscale=1, heads=(4, 2), cosine_attention=False, position_bias=False,
                         img_range=255.0), "save_for_spandrel"),
    "dncnn": (lambda: build_model("dncnn_test_tiny"), "save_pretrained"),
    "dncnn rgb without batch norm": (
        lambda: model_from_config(get_config("dncnn_test_tiny", channels=3, batch_norm=False)),
        "save_for_spandrel"),
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_architecture_variant(variant: str, tmp_path: Path) -> None:
    make, writer = VARIANTS[variant]
    torch.manual_seed(0)
    model = make().eval()
    if writer == "save_pretrained":
        model.save_pretrained(tmp_path)
        path = tmp_path / "model.safetensors"
    else:
        path = save_for_spandrel(model, tmp_path / "model.safetensors")
    descriptor = load(path)
    dncnn = variant.startswith("dncnn")
    assert descriptor.architecture.id == ("SemanIR-DnCNN" if dncnn else "SemanIR")
    assert descriptor.model.config == model.config
    assert descriptor.scale == model.upscale
    assert descriptor.purpose == ("SR" if model.upscale > 1 else "Restoration")
    assert (descriptor.input_channels, descriptor.output_channels) == (
        model.in_channels, model.out_channels)  # fmt: skip
    assert_restores_as_semanir(descriptor, model)


def test_weights_of_an_unshipped_config_without_settings_are_refused(tmp_path: Path) -> None:
    unet(embed_dim=12, heads=(1, 2, 1, 1)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"^these SemanIR weights match no shipped config and "
                       r"carry no settings \(window size, k, \.\.\.\): write them with "
                       r"semanir\.spandrel_arch\.save_for_spandrel\(model, path\)$"):  # fmt: skip
        spandrel.ModelLoader().load_from_file(tmp_path / "model.safetensors")


def test_only_semanir_dncnn_layouts_are_claimed() -> None:
    ours = build_model("dncnn_test_tiny").state_dict()
    kair = {f"model.{key[5:]}": value for key, value in ours.items()}  # spandrel's own DnCNN
    assert is_dncnn(ours) and not is_dncnn(kair)
    assert not is_dncnn({**ours, "head.weight": torch.zeros(1)})


def real_input(name: str) -> torch.Tensor:
    """The bundled model's pinned README image, degraded as there."""
    generator = torch.Generator().manual_seed(0)
    if name == "semanir_tiny_jpeg_gray":
        return jpeg_compress(read_image(DATA / "classic5" / "barbara.bmp", channels="gray"), 10)
    if name == "semanir_tiny_sr_x4":
        return bicubic_downscale(read_image(DATA / "set5" / "butterfly_GT.bmp"), 4)
    if name == "semanir_tiny_denoise_color":
        return add_gaussian_noise(read_image(DATA / "set5" / "bird_GT.bmp"), 25 / 255, generator)
    gray = read_image(DATA / "set12" / "05.png", channels="gray")
    return add_gaussian_noise(gray, 25 / 255, generator)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"no shared data at {DATA}")
@pytest.mark.parametrize("name", [*(m.name for m in installed_models()), "dncnn"])
def test_half_and_bfloat16_flags_are_what_was_measured(name: str, tmp_path: Path) -> None:
    """fp16 and bf16 weights (spandrel's ``.half()``/``.bfloat16()``) on the CPU against fp32 on
    a real degraded image: a flag is set exactly when the dtype stays above 45 dB PSNR."""
    image = real_input("semanir_tiny_denoise_gray" if name == "dncnn" else name)[None]
    side = 32 if name == "semanir_tiny_sr_x4" else 64
    image = image[..., :side, :side]  # (1, C, side, side)
    if name == "dncnn":
        torch.manual_seed(0)
        model = build_model("dncnn_tiny_denoise_gray").eval()  # no trained DnCNN ships
        path = save_for_spandrel(model, tmp_path / "model.safetensors")
    else:
        path = installed_models()[0].folder.parent / name / "model.safetensors"
    descriptor = load(path)
    reference = descriptor(image)
    for dtype, flag in [(torch.float16, "supports_half"), (torch.bfloat16, "supports_bfloat16")]:
        descriptor.model.to(dtype)
        with torch.inference_mode():
            output = descriptor.model(image.to(dtype)).float().clamp(0, 1)
        descriptor.model.float()
        assert (psnr(output, reference).min().item() >= DTYPE_PSNR_DB) == getattr(descriptor, flag)
