"""Gray models for hosts that feed every model RGB (ComfyUI's "Upscale Image (using Model)"):
``save_for_spandrel(..., luma_input=True)`` and ``write_bundled`` give files spandrel loads as a
:class:`~semanir.spandrel_arch.LumaInput` model, RGB in and out, restoring the luma as
``semanir restore`` does with a colour photo."""

from __future__ import annotations

from pathlib import Path

import pytest
import spandrel
import torch

import semanir
from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.photos import Photo
from semanir.batch import restore_photo
from semanir.bundled import installed_models
from semanir.data.degradations import bicubic_resize
from semanir.inference import load_model
from semanir.models import DnCNN, DnCNNConfig, build_model
from semanir.spandrel_arch import LumaInput, save_for_spandrel, write_bundled

BT601 = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights, stated here independently


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    semanir.register_spandrel()


def load(path: Path) -> spandrel.ImageModelDescriptor:
    descriptor = spandrel.ModelLoader().load_from_file(path).eval()
    assert isinstance(descriptor, spandrel.ImageModelDescriptor)
    return descriptor


def luma_oracle(model: torch.nn.Module, rgb: torch.Tensor) -> torch.Tensor:
    """Restore Y = 0.299 R + 0.587 G + 0.114 B, add back (R - Y, G - Y, B - Y), clamp."""
    weights = torch.tensor(BT601, dtype=rgb.dtype).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    luma = (rgb * weights).sum(dim=1, keepdim=True)  # (B, 1, H, W)
    with torch.inference_mode():
        restored = model.eval()(luma).clamp(0, 1)
    chroma = rgb - luma
    if model.upscale > 1:
        chroma = bicubic_resize(chroma, model.upscale)
    return (restored + chroma).clamp(0, 1)


def test_bundled_files_load_rgb_in_rgb_out_and_restore_as_semanir_restore(tmp_path: Path) -> None:
    names = [model.name for model in installed_models()]
    written = write_bundled(tmp_path)
    assert [path.name for path in written] == [f"{name}.safetensors" for name in names]
    assert sorted(tmp_path.iterdir()) == sorted(written)  # no temporary file left behind
    image = torch.rand(1, 3, 21, 30, generator=torch.Generator().manual_seed(0))
    for path in written:
        descriptor = load(path)
        model = load_model(path.stem)
        gray = model.in_channels == 1
        assert isinstance(descriptor.model, LumaInput) is gray
        assert ("luma-input" in descriptor.tags) is gray
        assert (descriptor.input_channels, descriptor.output_channels) == (3, 3)
        assert descriptor.scale == model.upscale
        with torch.inference_mode():
            out = descriptor(image).clamp(0, 1)  # as ComfyUI clamps
        api = restore_photo(model, Photo(image[0]), tile=None).pixels
        assert out.shape == (1, 3, 21 * model.upscale, 30 * model.upscale)
        assert torch.equal(out[0], api), path.name
        if gray:
            assert (out - luma_oracle(model, image)).abs().max() <= 1e-6


def test_a_gray_file_without_the_mark_stays_gray(tmp_path: Path) -> None:
    model = build_model("semanir_tiny_denoise_gray")
    descriptor = load(save_for_spandrel(model, tmp_path / "gray.safetensors"))
    assert not isinstance(descriptor.model, LumaInput)
    assert (descriptor.input_channels, descriptor.output_channels) == (1, 1)


def test_a_marked_dncnn_loads_as_luma_input_with_its_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DnCNN(DnCNNConfig(channels=1, features=8, depth=4))
    descriptor = load(save_for_spandrel(model, tmp_path / "dncnn.safetensors", luma_input=True))
    assert isinstance(descriptor.model, LumaInput) and descriptor.input_channels == 3
    image = torch.rand(2, 3, 12, 9)
    assert (descriptor(image) - luma_oracle(model, image)).abs().max() <= 1e-6


def test_luma_input_is_refused_for_colour_models(tmp_path: Path) -> None:
    model = build_model("semanir_tiny_denoise_color")
    with pytest.raises(InvalidArgument, match=r"luma_input.*applies to gray models; this model "
                       r"takes 3 channels"):  # fmt: skip
        save_for_spandrel(model, tmp_path / "colour.safetensors", luma_input=True)
    assert not (tmp_path / "colour.safetensors").exists()
    with pytest.raises(InvalidArgument, match=r"model.*wraps gray models \(in_channels=1\), got 3"):
        LumaInput(model)


def test_write_bundled_refuses_unknown_names_and_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"names.*not bundled models of this installation: "
                       r"nope \(these are: semanir_tiny_"):  # fmt: skip
        write_bundled(tmp_path, ["semanir_tiny_sr_x4", "nope"])
    assert list(tmp_path.iterdir()) == []  # checked before anything is written
    with pytest.raises(InvalidArgument, match=r"folder.*must be an existing folder"):
        write_bundled(tmp_path / "absent", ["semanir_tiny_sr_x4"])


def test_the_upscale_models_command_writes_files_and_names_its_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from semanir.cli import main

    assert main(["upscale-models", str(tmp_path), "--model", "semanir_tiny_jpeg_gray"]) == 0
    written = tmp_path / "semanir_tiny_jpeg_gray.safetensors"
    assert capsys.readouterr().out == f"wrote {written}\n"
    assert isinstance(load(written).model, LumaInput)
    assert main(["upscale-models", str(tmp_path / "absent")]) == 2
    assert (
        "semanir upscale-models: error: DIR: must be an existing folder" in capsys.readouterr().err
    )
    assert main(["upscale-models", str(tmp_path), "--model", "nope"]) == 2
    assert (
        "error: --model: not bundled models of this installation: nope" in capsys.readouterr().err
    )
